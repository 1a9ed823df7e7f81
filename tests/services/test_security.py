"""TLS, mutual TLS and bearer tokens, with certificates made in the test."""

import os
import subprocess
import sys

import grpc
import pytest
import yaml

from certs import CA
from hatchery.service.security import Tls
from hatchery.service.serving import channel
from hatchery.v1 import reward_pb2 as pb
from hatchery.v1 import reward_pb2_grpc
from reward_svc.server import reward_server

SAMPLE = pb.ScoreRequest(samples=[pb.Sample(completion="7", reference="7")])


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ours, theirs = CA("ours", folder), CA("theirs", folder)
    return {"ca": str(ours.path), "other_ca": str(theirs.path), "server": ours.issue("server", server=True),
            "client": ours.issue("client", server=False), "stranger": theirs.issue("stranger", server=False)}


def _score(address, tls=None, token=""):
    ch = channel(address, tls, token)
    try:
        return reward_pb2_grpc.RewardServiceStub(ch).Score(SAMPLE, timeout=5)
    finally:
        ch.close()


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_tls_server_refuses_plaintext_and_untrusted_servers_are_refused(pki):
    cert, key = pki["server"]
    server = reward_server(tls=Tls(cert, key))
    server.start()
    try:
        assert _score(server.address, Tls(ca=pki["ca"])).results[0].score == 1.0
        assert _code(lambda: _score(server.address)) == grpc.StatusCode.UNAVAILABLE  # plaintext client
        # a client that trusts another CA will not talk to this server
        assert _code(lambda: _score(server.address, Tls(ca=pki["other_ca"]))) == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_mutual_tls_needs_a_client_certificate_from_the_same_ca(pki):
    cert, key = pki["server"]
    server = reward_server(tls=Tls(cert, key, pki["ca"], require_client_cert=True))
    server.start()
    try:
        client_cert, client_key = pki["client"]
        assert _score(server.address, Tls(client_cert, client_key, pki["ca"])).results[0].score == 1.0
        assert _code(lambda: _score(server.address, Tls(ca=pki["ca"]))) == grpc.StatusCode.UNAVAILABLE  # no cert
        stranger_cert, stranger_key = pki["stranger"]
        assert _code(lambda: _score(server.address, Tls(stranger_cert, stranger_key, pki["ca"]))
                     ) == grpc.StatusCode.UNAVAILABLE  # a certificate from another CA
    finally:
        server.stop()


def test_bearer_token_over_mutual_tls(pki):
    cert, key = pki["server"]
    server = reward_server(token="t0ken", tls=Tls(cert, key, pki["ca"], require_client_cert=True))
    server.start()
    client = Tls(*pki["client"], pki["ca"])
    try:
        assert _code(lambda: _score(server.address, client)) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: _score(server.address, client, "wrong")) == grpc.StatusCode.PERMISSION_DENIED
        assert _score(server.address, client, "t0ken").results[0].status == pb.SCORE_STATUS_OK
    finally:
        server.stop()


def test_incomplete_tls_settings_are_refused_before_start(pki, tmp_path):
    with pytest.raises(ValueError, match="go together"):
        Tls(cert=pki["server"][0]).check()
    with pytest.raises(ValueError, match="needs --tls-cert"):
        Tls(ca=pki["ca"], require_client_cert=True).check()
    with pytest.raises(ValueError, match="cannot read"):
        Tls(ca=str(tmp_path / "missing.pem")).check()
    out = subprocess.run([sys.executable, "-m", "hatchery.cli", "reward", "--tls-cert", pki["server"][0]],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--tls-cert and --tls-key go together" in out.stderr


def test_a_run_with_mutual_tls_and_tokens_on_every_service(pki, tiny_llama_dir, tmp_path, procs):
    """optimizer, reward and inference as processes, each serving mTLS with a token, each
    client presenting its certificate and the token of the service it calls; `hatchery
    status` with the same credentials works, and no secret reaches a log or the status."""
    from hatchery.launcher import spawn_service, wait_for_port

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "run_dir": str(tmp_path / "run"), "model": {"source": str(tiny_llama_dir)}, "grader": "length",
        "task": {"name": "arith", "heldout_size": 4, "max_new_tokens": 4},
        "es": {"population": 4, "rank": 1}, "train": {"generations": 2, "prompts_per_member": 1, "eval_every": 2}}))
    tokens = {"HATCHERY_OPTIMIZER_TOKEN": "opt-s3cret", "HATCHERY_REWARD_TOKEN": "rew-s3cret",
              "HATCHERY_INFERENCE_TOKEN": "inf-s3cret"}
    server_cert, server_key = pki["server"]
    env = {**tokens, "HATCHERY_TLS_CERT": server_cert, "HATCHERY_TLS_KEY": server_key,
           "HATCHERY_TLS_CA": pki["ca"], "HATCHERY_TLS_REQUIRE_CLIENT_CERT": "true"}
    for name, args in (("reward", ["reward"]), ("optimizer", ["optimizer", "--config", str(config)])):
        procs[name] = spawn_service([*args, "--port", "0", "--port-file", str(tmp_path / name)],
                                    tmp_path / f"{name}.log", env)
    ports = {name: wait_for_port(tmp_path / name, procs[name], name) for name in ("reward", "optimizer")}
    # the services' certificate doubles as the worker's client certificate, as one pod identity would
    procs["inference"] = spawn_service(
        ["inference", "--port", "0", "--optimizer-address", f"localhost:{ports['optimizer']}",
         "--reward-address", f"localhost:{ports['reward']}"], tmp_path / "inference.log", env)
    status = subprocess.run([sys.executable, "-m", "hatchery.cli", "status", f"localhost:{ports['optimizer']}",
                             "--tls-ca", pki["ca"], "--tls-cert", pki["client"][0], "--tls-key", pki["client"][1]],
                            capture_output=True, text=True, timeout=60, env={**os.environ, **tokens})
    assert status.returncode == 0, status.stderr
    assert procs["optimizer"].wait(timeout=180) == 0
    assert procs["inference"].wait(timeout=60) == 0
    assert (tmp_path / "run" / "updates.jsonl").read_text().count("\n") == 2
    seen = status.stdout + "".join((tmp_path / f"{n}.log").read_text() for n in procs)
    assert not any(token in seen for token in tokens.values())
