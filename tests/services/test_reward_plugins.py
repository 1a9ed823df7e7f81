"""Python reward plug-ins and the OpenRLHF HTTP bridge, served by a real reward
server on loopback: misbehaving graders cost their own samples, and the server
keeps serving."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from hatchery.core.grader_specs import parse_specs
from hatchery.core.schema import ConfigError
from hatchery.service.serving import channel
from hatchery.v1 import reward_pb2 as pb
from hatchery.v1 import reward_pb2_grpc
from reward_svc import landlock
from reward_svc.graders import Status
from reward_svc.server import reward_server
from reward_svc.specs import build_graders, close_graders

PLUGINS = str(Path(__file__).parents[1] / "plugins")
OK, FAILED, TIMED_OUT, NA = (pb.SCORE_STATUS_OK, pb.SCORE_STATUS_FAILED, pb.SCORE_STATUS_TIMED_OUT,
                             pb.SCORE_STATUS_NOT_APPLICABLE)


def plugin(function, **settings):
    return {"type": "python", "function": f"chaos_graders:{function}", "path": PLUGINS, **settings}


@pytest.fixture(scope="module")
def rewards():
    graders = build_graders({
        "chaos": plugin("chaos", timeout_seconds=2.0, memory_mb=512, batch_size=16),
        "wrong_count": plugin("wrong_count", processes=1),
        "exact": plugin("matches_reference", processes=1),
        "target": plugin("target_column", processes=1),
        "typed": plugin("typed_columns", processes=1),
        "exact_and_short": {"type": "combined", "parts": {"exact": 1.0, "length": 0.5}},
        "chaos_and_short": {"type": "combined", "parts": {"chaos": 1.0, "length": 0.5}},
        "backtracks": {"type": "regex", "pattern": "(a|aa)+$", "timeout_seconds": 0.2},
    })
    server = reward_server(graders=graders)
    server.start()
    yield reward_pb2_grpc.RewardServiceStub(channel(server.address))
    server.stop()
    close_graders(graders)


def score(stub, grader, completions, **fields):
    samples = [pb.Sample(completion=c, **fields) for c in completions]
    return stub.Score(pb.ScoreRequest(samples=samples, grader=grader), timeout=120).results


def test_each_misbehaviour_costs_only_its_own_sample(rewards):
    batch = ["ok:1", "sleep", "ok:2", "raise", "nan", "exit", "none", "hog", "ok:3"]
    results = score(rewards, "chaos", batch)
    assert [r.status for r in results] == [OK, TIMED_OUT, OK, FAILED, FAILED, FAILED, NA, FAILED, OK]
    assert [r.score for r in results if r.status == OK] == [1.0, 2.0, 3.0]
    errors = [r.error for r in results]
    assert "2 s" in errors[1] and "on purpose" in errors[3] and "nan" in errors[4]
    assert "exited with code 3" in errors[5] and "MemoryError" in errors[7]
    # the service, and the plug-in's restarted processes, keep serving
    again = score(rewards, "chaos", ["ok:4"] * 40)
    assert [r.status for r in again] == [OK] * 40 and {r.score for r in again} == {4.0}


def test_a_regex_that_backtracks_past_its_time_limit_costs_only_its_own_sample(rewards):
    # (a|aa)+$ tries about 2^40 ways to split 40 a's before the b: with Python's re it never returns
    results = score(rewards, "backtracks", ["a" * 40 + "b", "aa", "b"])
    assert [r.status for r in results] == [TIMED_OUT, OK, OK]
    assert [r.score for r in results[1:]] == [1.0, 0.0]
    assert "'(a|aa)+$' ran past 0.2 s" in results[0].error


@pytest.mark.parametrize("spec, key", [
    ({"pattern": "("}, "graders.fmt.pattern"),
    ({"pattern": "x", "mode": "match"}, "graders.fmt.mode"),
    ({"pattern": "x", "timeout_seconds": 0}, "graders.fmt.timeout_seconds"),
])
def test_a_bad_regex_spec_is_refused_naming_the_key(spec, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_specs({"fmt": {"type": "regex", **spec}})


def test_wrong_number_of_scores_fails_the_samples_not_the_server(rewards):
    results = score(rewards, "wrong_count", ["a", "b", "c"])
    assert [r.status for r in results] == [FAILED] * 3
    assert "returned 2 scores for 1 sample" in results[0].error


def test_async_plugins_read_reference_and_metadata_columns(rewards):
    results = score(rewards, "exact", ["7", " 7 ", "8"], reference="7")
    assert [(r.status, r.score) for r in results] == [(OK, 1.0), (OK, 1.0), (OK, 0.0)]
    samples = [pb.Sample(completion="abc", metadata={"target": "3"}), pb.Sample(completion="abc"),
               pb.Sample(completion="ab", metadata={"target": "3"})]
    results = rewards.Score(pb.ScoreRequest(samples=samples, grader="target"), timeout=60).results
    assert [(r.status, r.score) for r in results] == [(OK, 1.0), (NA, 0.0), (OK, 0.0)]


def test_typed_columns_and_conversations_reach_a_plugin_as_trl_passes_them(rewards):
    columns = struct_pb2.Struct()
    columns.update({"level": 3, "tags": ["a", "b"], "ratio": 0.5})
    chat = [pb.Message(role="system", content="Be brief."), pb.Message(role="user", content="2 + 2?")]
    sample = pb.Sample(prompt="2 + 2?", completion="4", columns=columns, messages=chat,
                       metadata={"level": "3", "tags": '["a", "b"]', "ratio": "0.5"})
    (result,) = rewards.Score(pb.ScoreRequest(samples=[sample], grader="typed"), timeout=60).results
    assert (result.status, result.score, result.error) == (OK, 5.5, "")
    # an older client sends text alone: the plug-in gets the text, as before
    old = pb.Sample(prompt="2 + 2?", completion="4", metadata={"level": "3", "tags": "[]", "ratio": "0.5"})
    (result,) = rewards.Score(pb.ScoreRequest(samples=[old], grader="typed"), timeout=60).results
    assert result.status == FAILED and "got str prompt, '3'" in result.error


def test_combined_grader_weights_parts_and_names_them(rewards):
    (right, wrong) = score(rewards, "exact_and_short", ["7", "77"], reference="7")
    assert right.score == 1.0 and dict(right.sub_scores) == {"exact": 1.0, "length": 0.0}
    assert wrong.score == pytest.approx(-0.5) and dict(wrong.sub_scores) == {"exact": 0.0, "length": -1.0}
    (broken,) = score(rewards, "chaos_and_short", ["raise"])  # a failing part fails the sample, naming the part
    assert broken.status == FAILED and broken.error.startswith("chaos:")


def test_a_plugin_that_cannot_load_is_refused_before_serving():
    with pytest.raises(RuntimeError, match="no_such_module"):
        build_graders({"broken": {"type": "python", "function": "no_such_module:f", "path": PLUGINS}})
    with pytest.raises(RuntimeError, match="no_such_function"):
        build_graders({"broken": plugin("no_such_function")})


class _RewardModel(BaseHTTPRequestHandler):
    """An OpenRLHF-style remote reward model: reward = len(query), after one 503."""

    calls: list[dict] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"body": body, "auth": self.headers.get("Authorization")})
        if len(self.calls) == 1:
            self.send_error(503, "warming up")
            return
        rewards = [float(len(q)) for q in body["query"]]
        if self.path == "/short":
            rewards = rewards[:-1]
        payload = json.dumps({"rewards": rewards, "extra_logs": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_openrlhf_http_bridge_retries_sends_headers_and_checks_counts(monkeypatch):
    monkeypatch.setenv("RM_TOKEN", "s3cret")
    http = ThreadingHTTPServer(("127.0.0.1", 0), _RewardModel)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{http.server_address[1]}"
    spec = {"type": "openrlhf_http", "headers": {"Authorization": "Bearer ${RM_TOKEN}"}, "retries": 2,
            "timeout_seconds": 5.0}
    graders = build_graders({"rm": {**spec, "url": url + "/rm"}, "short": {**spec, "url": url + "/short"},
                             "gone": {**spec, "url": "http://127.0.0.1:9/rm", "retries": 1}})
    server = reward_server(graders=graders)
    server.start()
    try:
        stub = reward_pb2_grpc.RewardServiceStub(channel(server.address))
        samples = [pb.Sample(prompt="Q: ", completion="ab", reference="x"), pb.Sample(prompt="Q: ", completion="a")]
        results = stub.Score(pb.ScoreRequest(samples=samples, grader="rm"), timeout=60).results
        assert [(r.status, r.score) for r in results] == [(OK, 5.0), (OK, 4.0)]
        assert len(_RewardModel.calls) == 2  # one 503, one retry
        assert _RewardModel.calls[1] == {"body": {"query": ["Q: ab", "Q: a"], "prompts": ["Q: ", "Q: "],
                                                  "labels": ["x", ""]}, "auth": "Bearer s3cret"}
        short = stub.Score(pb.ScoreRequest(samples=samples, grader="short"), timeout=60).results
        assert [r.status for r in short] == [FAILED, FAILED] and "1 rewards for 2 samples" in short[0].error
        gone = stub.Score(pb.ScoreRequest(samples=samples, grader="gone"), timeout=60).results
        assert [r.status for r in gone] == [FAILED, FAILED] and "unreachable" in gone[0].error
    finally:
        server.stop()
        http.shutdown()


def test_http_bridge_refuses_a_header_whose_variable_is_unset(monkeypatch):
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ValueError, match="NOT_SET_ANYWHERE"):
        build_graders({"rm": {"type": "openrlhf_http", "url": "http://127.0.0.1:9",
                              "headers": {"Authorization": "Bearer ${NOT_SET_ANYWHERE}"}}})


def test_malformed_requests_still_get_invalid_argument(rewards):
    with pytest.raises(grpc.RpcError) as err:
        rewards.Score(pb.ScoreRequest(samples=[pb.Sample()], grader="missing"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_plugin_cannot_reach_outside_its_folder(tmp_path, monkeypatch):
    """Reading or listing outside its folder, writing, deleting, forking, spawning, loading
    native code or spinning forever: each is refused (or timed out) and reported for its sample.
    Issue 24, finding 5: a database file, chdir then a relative open, a path with "..", and the
    service's token in the environment each got through before (the four new actions fail there)."""
    monkeypatch.setenv("HATCHERY_REWARD_TOKEN", "the-services-secret")  # as a reward service behind a token has
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    graders = build_graders({"reach": {"type": "python", "function": "hostile_graders:reach", "path": PLUGINS,
                                       "timeout_seconds": 2.0, "processes": 1}})
    server = reward_server(graders=graders)
    server.start()
    try:
        stub = reward_pb2_grpc.RewardServiceStub(channel(server.address))
        actions = ["read-own", "read-outside", "list-outside", "write", "delete", "fork", "subprocess", "native",
                   "environment", "sqlite", "chdir-then-dir-fd", "climb", "spin", "read-own"]
        samples = [pb.Sample(completion=a, metadata={"target": str(secret if a != "list-outside" else tmp_path)})
                   for a in actions]
        results = stub.Score(pb.ScoreRequest(samples=samples, grader="reach"), timeout=120).results
        outcome = dict(zip(actions, results))
        assert outcome["read-own"].status == OK and outcome["read-own"].score == 42.0
        expected = {"read-outside": "may not read", "list-outside": "may not list", "write": "may not write",
                    "delete": "may not change files", "fork": "may not fork", "subprocess": "may not Popen",
                    "native": "may not dlopen", "sqlite": "may not open a database file",
                    "chdir-then-dir-fd": "may not change its working directory", "climb": "may not read"}
        for action, words in expected.items():
            assert outcome[action].status == FAILED and words in outcome[action].error, (action, outcome[action])
        assert outcome["spin"].status == TIMED_OUT
        assert outcome["environment"].status == OK and outcome["environment"].score == 0.0
        assert secret.read_text() == "do not read" and not (Path(PLUGINS) / "planted.txt").exists()
        assert not (Path(PLUGINS) / "planted.db").exists()
    finally:
        server.stop()
        close_graders(graders)


@pytest.mark.skipif(not landlock.abi_version(), reason="no Landlock on this kernel: the audit hook is the only layer")
def test_the_kernel_holds_a_plugin_that_switches_its_audit_hook_off(tmp_path):
    """Issue 24, finding 5: the hook can be switched off from Python (through gc), after which a
    plug-in reads anything and starts processes (before: both went through). With Landlock and
    seccomp the kernel still refuses both, whatever the plug-in's Python does."""
    secret = tmp_path / "secret.txt"
    secret.write_text("do not read")
    graders = build_graders({"reach": {"type": "python", "function": "hostile_graders:reach", "path": PLUGINS,
                                       "timeout_seconds": 5.0, "processes": 1}})
    try:
        assert graders["reach"].kernel_layers == ("landlock", "seccomp")
        read, fork = graders["reach"].score([pb.Sample(completion=action, metadata={"target": str(secret)})
                                             for action in ("disarm-then-read", "disarm-then-fork")])
        assert read.status is Status.FAILED and "Permission denied" in read.error, read
        assert fork.status is Status.FAILED and "Operation not permitted" in fork.error, fork
    finally:
        close_graders(graders)


@pytest.mark.skipif(not landlock.abi_version(), reason="no Landlock on this kernel: top-level code runs unconfined")
def test_a_plugins_top_level_code_is_already_confined():
    """Issue 24, finding 5: module top-level code ran before confinement. With a plug-in folder
    given, the kernel layers are in force before the module is imported (before: it read 1.0)."""
    graders = build_graders({"top": {"type": "python", "function": "toplevel_graders:read_at_import",
                                     "path": PLUGINS, "processes": 1}})
    try:
        (outcome,) = graders["top"].score([pb.Sample(completion="x")])
        assert outcome.status is Status.OK and outcome.score == 0.0
    finally:
        close_graders(graders)
