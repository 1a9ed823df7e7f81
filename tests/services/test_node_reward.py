"""The Node.js example reward service (examples/reward-node) scores exactly like the Python built-ins.

Needs node and `npm ci --prefix examples/reward-node`; skipped without them, except in CI.
"""

import json
import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from node import node_for

from hatchery.launcher import wait_for_port
from hatchery.service.serving import channel
from hatchery.v1 import reward_pb2 as pb
from hatchery.v1 import reward_pb2_grpc
from reward_svc.server import reward_server

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "reward-node"


def countdown(answer: str, numbers: str = "3,5,7", target: str = "22", think: str = "I combine them.</think>\n",
              after: str = "") -> pb.Sample:
    return pb.Sample(prompt="Use 3, 5 and 7 to make 22.", completion=f"{think}<answer>{answer}</answer>{after}",
                     metadata={"numbers": numbers, "target": target})


def typed_countdown(answer: str, numbers: list, target) -> pb.Sample:
    """As a worker sends a dataset's columns: typed in `columns`, JSON text in `metadata`."""
    columns = struct_pb2.Struct()
    columns.update({"numbers": numbers, "target": target})
    return pb.Sample(completion=f"</think>\n<answer>{answer}</answer>", columns=columns,
                     metadata={"numbers": json.dumps(numbers), "target": target if isinstance(target, str) else
                               json.dumps(target)})


def integer(completion: str, reference: str) -> pb.Sample:
    return pb.Sample(prompt="How many?", completion=completion, reference=reference)


def nested(levels: int) -> str:
    return "(" * levels + "3*5" + ")" * levels + "+7"


ONES = "1 +" + "+".join(["1"] * 499)  # 1000 characters: the longest equation scored
BIG = "9" * 5000
NA = "not applicable"
# (sample, what the Python service must say for it, by grader: a score or NA); Node must say the same
CASES = [
    # countdown: score = 0.1 x format + answer
    (countdown("3*5+7"), {"countdown": 1.1}),
    (countdown("3*5-7"), {"countdown": 0.1}),  # wrong value
    (countdown("3*5+7", think=""), {"countdown": 1.05}),  # no </think>: format 0.5
    (countdown("3*5+7", after="\n"), {"countdown": 1.1}),  # one final \n: Python's $ allows it (Qiu et al.)
    (countdown("3*5+7", after="\n\n"), {"countdown": 1.06}),  # anything more after </answer>: format 0.6
    (countdown("3*5+7", think="x</think>\r\n"), {"countdown": 1.06}),  # \r\n is not \n
    (countdown("  3*5+7 "), {"countdown": 1.1}),  # spaces anywhere
    (countdown("3*5+7\n"), {"countdown": 1.1}),  # and one final newline, as Python's $ allows
    (countdown("\t\v\f 3*5+7 \r\n"), {"countdown": 0.1}),  # other whitespace is not an equation character
    (countdown("\u00a03*5+7"), {"countdown": 0.1}),  # a non-breaking space is not
    (countdown("\u0663*5+7"), {"countdown": 0.1}),  # nor is an Arabic-Indic 3 a digit
    (countdown("3*3+5+7", target="21"), {"countdown": 0.1}),  # a number used twice
    (countdown("3*5", target="15"), {"countdown": 0.1}),  # a number missing
    (countdown("07+3*5"), {"countdown": 0.1}),  # Python's eval refuses the literal 07, so Qiu et al. score 0
    (countdown("00+22", numbers="0,22", target="22"), {"countdown": 1.1}),  # 00 it reads: 0
    (countdown("7/(5-5)", numbers="5,5,7", target="0"), {"countdown": 0.1}),  # division by zero
    (countdown("2 ** 3", numbers="2,3", target="8"), {"countdown": 0.1}),
    (countdown("7 // 2", numbers="7,2", target="3"), {"countdown": 1.1}),  # floor division, as Python's
    (countdown("(2-7) // 2", numbers="2,7,2", target="-3"), {"countdown": 1.1}),  # floors towards -infinity
    (countdown("7 / / 2", numbers="7,2", target="3"), {"countdown": 0.1}),
    (countdown("7//(5-5)", numbers="7,5,5", target="0"), {"countdown": 0.1}),
    (countdown("-5+3", numbers="3,5", target="-2"), {"countdown": 0.1}),  # no unary minus
    (countdown("3 (5) + 7"), {"countdown": 0.1}),  # no implicit multiplication
    (countdown("3*5+7=22"), {"countdown": 0.1}),  # a character outside the equation alphabet
    (countdown("3*5+7)"), {"countdown": 0.1}),  # unbalanced
    (countdown("(3*5+7"), {"countdown": 0.1}),
    (countdown(""), {"countdown": 0.1}),
    (countdown("()"), {"countdown": 0.1}),
    (countdown(nested(100)), {"countdown": 1.1}),  # the deepest nesting allowed
    (countdown(nested(101)), {"countdown": 0.1}),
    (countdown(ONES, numbers=",".join(["1"] * 500), target="500"), {"countdown": 1.1}),
    (countdown(ONES.replace(" ", "  "), numbers=",".join(["1"] * 500), target="500"), {"countdown": 0.1}),  # 1001
    (countdown("(1/10+2/10)*10", numbers="1,10,2,10,10", target="3"), {"countdown": 1.1}),  # floats miss: exact
    (countdown("100000000000000000001/100000000000000000000", numbers="100000000000000000001,100000000000000000000",
               target="1"), {"countdown": 1.1}),  # within 1e-5 of the target, as Qiu et al.'s float comparison
    (countdown("1000001/1000000", numbers="1000001,1000000", target="1"), {"countdown": 1.1}),  # 1e-6 off: a hit
    (countdown("100001/100000", numbers="100001,100000", target="1"), {"countdown": 0.1}),  # 1e-5 off: a miss
    (countdown("(100000000000000000001-100000000000000000000)*7",
               numbers="100000000000000000001,100000000000000000000,7", target="7"), {"countdown": 1.1}),
    (countdown("7/2*2-7/2*2", numbers="7,2,2,7,2,2", target="-0"), {"countdown": 1.1}),  # -0 is 0
    (countdown("(7+5)/3", numbers=" 07, 5 ,3", target=" 4\n"), {"countdown": 1.1}),  # canonicalised
    (countdown("3*5+7", numbers="-3,5,7"), {"countdown": 0.1}),  # -3 is a number no equation can use
    (pb.Sample(completion="</think>\n<answer>1+1</answer> no, <answer>3*5+7</answer>",
               metadata={"numbers": "3,5,7", "target": "22"}), {"countdown": 1.1}),  # the last answer counts;
    # the format still matches: its lazy <answer>.*?</answer> may span both answers
    (pb.Sample(completion="<answer>3*5+7</answer><answer>3+5+7</answer>",
               metadata={"numbers": "3,5,7", "target": "22"}), {"countdown": 0.05}),
    (pb.Sample(completion="<answer>3*5+7</answer>", metadata={"numbers": "3,5,7"}), {"countdown": NA}),
    (pb.Sample(completion="<answer>3*5+7</answer>", metadata={"target": "22"}), {"countdown": NA}),
    (countdown("3*5+7", numbers="three,5,7"), {"countdown": NA}),
    (countdown("3*5+7", numbers="3,5,7,"), {"countdown": NA}),
    (countdown("3*5+7", numbers="+3,5,7"), {"countdown": NA}),
    (countdown("5/2", numbers="5,2", target="2.5"), {"countdown": NA}),
    (countdown("3*5+7", target="\u00a022"), {"countdown": NA}),
    # a dataset's typed columns: Node reads `columns`, Python the same values as JSON text
    (typed_countdown("3*5+7", [3, 5, 7], 22), {"countdown": 1.1}),
    (typed_countdown("3*5+7", [3, 5, 7], 23), {"countdown": 0.1}),
    (typed_countdown("3*5+7", [3, 5.5, 7], 22), {"countdown": NA}),
    (typed_countdown("3*5+7", [3, 5, 7], "22"), {"countdown": 1.1}),  # a target column of text
    (typed_countdown("3*5+7", [3, 5, True], 22), {"countdown": NA}),
    # first_integer
    (integer("The answer is -12, not 12.", "-12"), {"first_integer": 1.0}),
    (integer("I do not know.", "7"), {"first_integer": 0.0}),
    (integer("x = 007", " 7\n"), {"first_integer": 1.0}),  # leading zeros
    (integer("7", "07"), {"first_integer": 1.0}),
    (integer("-0 degrees", "0"), {"first_integer": 1.0}),
    (integer("0", "-00"), {"first_integer": 1.0}),
    (integer("--5", "-5"), {"first_integer": 1.0}),
    (integer("7.5", "7"), {"first_integer": 1.0}),  # the first integer of 7.5 is 7
    (integer(BIG, BIG), {"first_integer": 1.0}),  # any length
    (integer("000" + BIG, " " + BIG), {"first_integer": 1.0}),
    (integer(BIG, BIG[:-1] + "8"), {"first_integer": 0.0}),
    (integer("\u0667 apples, 3 pears", "3"), {"first_integer": 1.0}),  # an Arabic-Indic 7 is not a digit
    (integer("\u0667", "7"), {"first_integer": 0.0}),
    (integer("7", "\u0667"), {"first_integer": NA}),
    (integer("7", "\u00a07"), {"first_integer": NA}),  # a non-breaking space is not whitespace
    (integer("7", "7.0"), {"first_integer": NA}),
    (integer("7", "+7"), {"first_integer": NA}),
    (integer("1000", "1_000"), {"first_integer": NA}),
    (integer("42", "  "), {"first_integer": NA}),
    (integer("42", "forty-two"), {"first_integer": NA}),
    # length
    (integer(" \U0001F600\U0001F600 ", "ab"), {"length": 0.0}),  # code points, not UTF-16 units
    (integer("\t\v\f\r\nabc \n", "abc"), {"length": 0.0}),
    (integer("\u00a0abc\u3000", "abc"), {"length": -2.0}),  # only ASCII whitespace is stripped
    (integer("h\u00e9llo w\u00f6rld", "hi"), {"length": -9.0}),
]
SAMPLES = [sample for sample, _ in CASES]


@pytest.fixture(scope="module")
def start_node(tmp_path_factory, request):
    """Starts the Node server (optionally with a bearer token); returns (address, process)."""
    node = node_for("reward-node")
    procs: list[subprocess.Popen] = []

    def stop_all():
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    request.addfinalizer(stop_all)

    def start(token: str = "") -> tuple[str, subprocess.Popen]:
        tmp = tmp_path_factory.mktemp("reward-node")
        env = {k: v for k, v in os.environ.items() if k != "HATCHERY_REWARD_TOKEN"}
        if token:
            env["HATCHERY_REWARD_TOKEN"] = token
        with open(tmp / "stderr", "wb") as log:
            proc = subprocess.Popen([node, str(EXAMPLE / "server.js"), "--port", "0", "--port-file", str(tmp / "port")],
                                    stdout=subprocess.DEVNULL, stderr=log, env=env)
        procs.append(proc)
        try:
            port = wait_for_port(tmp / "port", proc, "node reward", timeout=30)
        except (RuntimeError, TimeoutError) as err:
            pytest.fail(f"{err}\n{(tmp / 'stderr').read_text()}")
        return f"127.0.0.1:{port}", proc

    return start


@pytest.fixture(scope="module")
def node_stub(start_node):
    ch = channel(start_node()[0])
    yield reward_pb2_grpc.RewardServiceStub(ch)
    ch.close()


@pytest.fixture(scope="module")
def python_stub():
    server = reward_server()
    server.start()
    ch = channel(server.address)
    yield reward_pb2_grpc.RewardServiceStub(ch)
    ch.close()
    server.stop()


@pytest.mark.parametrize("grader", ["first_integer", "countdown", "length", ""])
def test_node_scores_like_python(grader, node_stub, python_stub):
    request = pb.ScoreRequest(grader=grader, samples=SAMPLES)
    want = python_stub.Score(request, timeout=60).results
    got = node_stub.Score(request, timeout=60).results
    assert len(got) == len(want) == len(SAMPLES)
    for i, (w, g) in enumerate(zip(want, got)):
        where = f"sample {i}: {SAMPLES[i].completion[:60]!r} / {SAMPLES[i].reference[:20]!r}"
        assert g.status == w.status, f"{where}: node {g.status} ({g.error}), python {w.status} ({w.error})"
        assert g.score == pytest.approx(w.score, abs=1e-12), where
        assert dict(g.sub_scores) == pytest.approx(dict(w.sub_scores), abs=1e-12), where
        for r in (w, g):
            assert bool(r.error) == (r.status != pb.SCORE_STATUS_OK), f"{where}: {r}"
    # the batch exercises what it claims to, so two identically broken servers cannot pass
    for i, (_, expected) in enumerate(CASES):
        score = expected.get(grader or "first_integer")
        if score == NA:
            assert want[i].status == pb.SCORE_STATUS_NOT_APPLICABLE, f"sample {i}"
        elif score is not None:
            assert (want[i].status, want[i].score) == (pb.SCORE_STATUS_OK, pytest.approx(score)), f"sample {i}"


def test_countdown_takes_integers_of_any_length(node_stub, python_stub):
    request = pb.ScoreRequest(grader="countdown", samples=[countdown("3*5+7", numbers=f"3,5,7,{BIG}")])
    got = node_stub.Score(request, timeout=30).results[0]
    assert (got.status, got.score) == (pb.SCORE_STATUS_OK, pytest.approx(0.1))  # a number left unused
    want = python_stub.Score(request, timeout=30).results[0]
    assert want == got


ASTRAL = "\U0001F600" * ((1 << 19) + 1)  # within the limit in characters, past it in UTF-16 units
BAD = {
    "no_such_grader": pb.ScoreRequest(grader="no_such_grader", samples=SAMPLES[:1]),
    "4096": pb.ScoreRequest(samples=[pb.Sample()] * 4097),
    "sample 1: a text field": pb.ScoreRequest(samples=[pb.Sample(completion=ASTRAL),
                                                       pb.Sample(prompt="x" * ((1 << 20) + 1))]),
    "sample 0: 65 metadata entries": pb.ScoreRequest(samples=[pb.Sample(metadata={str(i): "" for i in range(65)})]),
    "sample 2: a metadata entry": pb.ScoreRequest(samples=[pb.Sample(), pb.Sample(),
                                                           pb.Sample(metadata={"k": "v" * (1 << 16)})]),
}


@pytest.mark.parametrize("needle", BAD)
def test_node_refuses_bad_requests_like_python(needle, node_stub, python_stub):
    errors = []
    for stub in (python_stub, node_stub):
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(BAD[needle], timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.value.details()
        errors.append(err.value.details())
    if needle != "no_such_grader":  # the graders on offer differ
        assert errors[0] == errors[1]


def test_node_takes_what_python_takes(node_stub, python_stub):
    """Right at the limits, counted in characters (code points)."""
    metadata = {str(i): "" for i in range(63)} | {"k": "v" * ((1 << 16) - 1)}
    request = pb.ScoreRequest(grader="length", samples=[
        pb.Sample(completion=ASTRAL, reference="x" * (1 << 20), metadata=metadata)])
    assert python_stub.Score(request, timeout=30).results == node_stub.Score(request, timeout=30).results


def test_node_describe(node_stub):
    d = node_stub.Describe(pb.DescribeRequest(), timeout=10)
    assert d.name == "hatchery-node-example"
    assert d.version == json.loads((EXAMPLE / "package.json").read_text())["version"]
    assert list(d.graders) == ["first_integer", "countdown", "length"]  # the default first
    assert list(d.sub_score_names) == ["format", "answer"]


def test_node_bearer_token_and_clean_exit(start_node):
    address, proc = start_node(token="xyz")
    ch = channel(address)
    stub = reward_pb2_grpc.RewardServiceStub(ch)
    request = pb.ScoreRequest(samples=[pb.Sample(completion="7", reference="7")])
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "missing bearer token" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Describe(pb.DescribeRequest(), timeout=10, metadata=(("authorization", "Bearer xy"),))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "wrong bearer token" in err.value.details()
    result = stub.Score(request, timeout=10, metadata=(("authorization", "Bearer xyz"),)).results[0]
    assert (result.status, result.score) == (pb.SCORE_STATUS_OK, 1.0)
    ch.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_the_node_example_passes_conformance(start_node):
    from hatchery.conformance import PASSED, Probe, check

    for token in ("", "s3cret"):
        address, _ = start_node(token)
        report = check(Probe(address, token=token))
        assert not report.failed, "\n".join(report.lines())
        outcomes = {f.rule: f.outcome for f in report.findings}
        assert outcomes["reflection"] == outcomes["health"] == outcomes["batch-limit"] == PASSED
        assert outcomes["auth"] == (PASSED if token else "not applicable")
