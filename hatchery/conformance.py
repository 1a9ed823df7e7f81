"""`hatchery conformance ADDRESS`: checks a running reward service, in any language,
against the hatchery.v1.RewardService contract, one finding per rule.

The rules (docs/conformance.md lists them with what each sends) only use what any
grader does: samples are scored one at a time first, and the rules about order and
repeatability use those whose results differ. Every call has a deadline, so a server
that hangs fails its rules instead of hanging the kit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from hatchery.service.security import Tls
from hatchery.service.serving import channel
from hatchery.v1 import reward_pb2 as pb
from hatchery.v1 import reward_pb2_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["RewardService"].full_name
PASSED, FAILED, WARNING, NOT_APPLICABLE = "passed", "failed", "warning", "not applicable"
UNKNOWN_GRADER = "hatchery-conformance-no-such-grader"
UNSTATED_LIMIT_PROBE = 5000  # samples sent when the server states no limit: more than Hatchery's own 4096
LARGE_COMPLETION = 1_000_000  # characters
LARGE_CALLS = 6  # times --timeout, for the calls that carry megabytes or thousands of samples
UNICODE = "Ünïcödé ✓ 数 ١٢٣ 🙂 e\u0301 \u200f\u05e9\u05dc\u05d5\u05dd \x00"
SHORT_DEADLINE = 0.05  # seconds: long enough to reach the server, short of scoring 8 MB
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


def _sample(completion: str, reference: str = "", prompt: str = "What is 2 + 3?", **metadata: str) -> pb.Sample:
    return pb.Sample(prompt=prompt, completion=completion, reference=reference, metadata=metadata)


# Samples that the usual graders (exact match, first integer, numeric, length, countdown,
# a format regex) score differently from one another; --samples adds an author's own.
PROBES = (
    _sample("5", "5"), _sample("4", "5"), _sample("The answer is 5.", "5"), _sample("", "5"),
    _sample("5 apples", "five"), _sample("a" * 40, "aaaa"), _sample("yes", "yes"), _sample("no", "yes"),
    _sample("\\boxed{5}", "5"), _sample("#### 5", "5.0"),
    _sample("I add them.</think>\n<answer>2 + 3</answer>", "5", numbers="2,3", target="5"),
    _sample("<answer>2 * 3</answer>", "6", numbers="2,3", target="5"),
    _sample("<answer>2 + 3</answer>", "", numbers="2,3"),
)


@dataclass(frozen=True)
class Finding:
    rule: str
    outcome: str  # passed, failed, warning, not applicable
    detail: str = ""


def _outcome(result: pb.SampleScore) -> tuple:
    """What a result says, comparable across calls (NaN equal to NaN)."""
    score = "nan" if math.isnan(result.score) else result.score
    return result.status, score, tuple(sorted(result.sub_scores.items())), result.error


def _describe(result: pb.SampleScore) -> str:
    status = pb.ScoreStatus.Name(result.status).removeprefix("SCORE_STATUS_")
    error = result.error if len(result.error) <= 60 else result.error[:59] + "…"
    return f"{status} {result.score:g}" + (f" ({error})" if error else "")


class Probe:
    """The server under test: its stub, the grader the rules use, and every result seen."""

    def __init__(self, address: str, grader: str = "", token: str = "", tls: Tls | None = None,
                 timeout: float = 10.0, samples: Sequence[pb.Sample] = ()):
        self.address, self.token, self.tls, self.timeout = address, token, tls, timeout
        self.channel = channel(address, tls, token)
        self.stub = reward_pb2_grpc.RewardServiceStub(self.channel)
        self.grader = grader
        self.samples = list(samples) + list(PROBES)
        self.seen: list[pb.SampleScore] = []
        self.description: pb.DescribeResponse | None = None
        self._alone: list[tuple[pb.Sample, pb.SampleScore]] | None = None

    def score(self, samples: Sequence[pb.Sample], grader: str | None = None,
              timeout: float | None = None) -> list[pb.SampleScore]:
        reply = self.stub.Score(pb.ScoreRequest(samples=samples, grader=self.grader if grader is None else grader),
                                timeout=timeout or self.timeout)
        self.seen.extend(reply.results)
        return list(reply.results)

    def alone(self) -> list[tuple[pb.Sample, pb.SampleScore]]:
        """Each sample scored in a batch of its own, once: the reference the batch rules compare to."""
        if self._alone is None:
            self._alone = []
            for sample in self.samples:
                results = self.score([sample])
                if len(results) != 1:
                    raise ContractBroken(f"a batch of one sample got {len(results)} results")
                self._alone.append((sample, results[0]))
        return self._alone

    def distinct(self, limit: int = 8) -> list[tuple[pb.Sample, pb.SampleScore]]:
        """Samples whose results alone all differ from one another."""
        chosen: dict[tuple, tuple[pb.Sample, pb.SampleScore]] = {}
        for sample, result in self.alone():
            chosen.setdefault(_outcome(result), (sample, result))
        return list(chosen.values())[:limit]


class ContractBroken(Exception):
    """A rule's precondition already broke the contract: the rule fails with this."""


Rule = Callable[[Probe], Finding]
RULES: dict[str, tuple[str, Rule]] = {}


def rule(name: str, summary: str) -> Callable[[Callable[[Probe], tuple[str, str]]], Callable]:
    """Registers a check; it returns (outcome, detail), and an RPC error or a broken
    precondition fails it with what was seen."""
    def register(check: Callable[[Probe], tuple[str, str]]) -> Callable:
        def run(probe: Probe) -> Finding:
            try:
                return Finding(name, *check(probe))
            except grpc.RpcError as err:
                return Finding(name, FAILED, f"{err.code().name}: {err.details()}")
            except ContractBroken as err:
                return Finding(name, FAILED, str(err))
        RULES[name] = (summary, run)
        return check
    return register


@rule("health", "grpc.health.v1 answers SERVING")
def _health(probe: Probe) -> tuple[str, str]:
    stub = health_pb2_grpc.HealthStub(probe.channel)
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=probe.timeout)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNIMPLEMENTED:
            return FAILED, "no grpc.health.v1 service: Kubernetes probes and `hatchery health` cannot see it"
        raise
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return (PASSED, name) if reply.status == health_pb2.HealthCheckResponse.SERVING else (FAILED, name)


@rule("reflection", f"server reflection lists {SERVICE} (a warning when absent)")
def _reflection(probe: Probe) -> tuple[str, str]:
    try:
        services = list(ProtoReflectionDescriptorDatabase(probe.channel).get_services())
    except grpc.RpcError as err:
        return WARNING, f"no server reflection ({err.code().name}): grpcurl and the like need the .proto"
    return (PASSED, "listed") if SERVICE in services else (WARNING, f"reflection lists {services}, not {SERVICE}")


@rule("describe", "Describe names the server and its graders, the default first")
def _describe_rule(probe: Probe) -> tuple[str, str]:
    probe.description = probe.stub.Describe(pb.DescribeRequest(), timeout=probe.timeout)
    graders = list(probe.description.graders)
    if not graders:
        return FAILED, "Describe lists no grader"
    if probe.grader and probe.grader not in graders:
        return FAILED, f"--grader {probe.grader} is not among its graders {graders}"
    stated = probe.description.max_samples
    return PASSED, (f"{probe.description.name} {probe.description.version}: graders {graders}; "
                    f"at most {stated or 'an unstated number of'} samples a request")


@rule("default-grader", "a request that names no grader is scored by the default grader")
def _default_grader(probe: Probe) -> tuple[str, str]:
    results = probe.score(probe.samples[:1], grader="")
    if len(results) != 1:
        return FAILED, f"{len(results)} results for 1 sample"
    return PASSED, _describe(results[0])


@rule("one-result-per-sample", "exactly one result per sample, in request order")
def _in_order(probe: Probe) -> tuple[str, str]:
    chosen = probe.distinct()
    if len(chosen) < 2:
        return NOT_APPLICABLE, "every probe sample scored alike alone; give --samples whose scores differ"
    batch = chosen[:1] + chosen + chosen[1:][::-1]  # not its own reverse: a reversed reply cannot pass
    results = probe.score([sample for sample, _ in batch])
    if len(results) != len(batch):
        return FAILED, f"{len(results)} results for {len(batch)} samples"
    for i, ((_, alone), got) in enumerate(zip(batch, results)):
        if _outcome(got) != _outcome(alone):
            return FAILED, (f"result {i} is {_describe(got)}, but that sample alone scored {_describe(alone)}: "
                            "results are out of order or depend on the batch")
    return PASSED, f"{len(batch)} samples with {len(chosen)} different results, each in its place"


@rule("empty-batch", "a request with no samples gets no results and no error")
def _empty(probe: Probe) -> tuple[str, str]:
    results = probe.score([])
    return (PASSED, "0 results") if not results else (FAILED, f"{len(results)} results for 0 samples")


@rule("unknown-grader", "a grader the server does not have gives INVALID_ARGUMENT")
def _unknown_grader(probe: Probe) -> tuple[str, str]:
    try:
        results = probe.score(probe.samples[:1], grader=UNKNOWN_GRADER)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return PASSED, err.details()[:120]
        raise
    return FAILED, f"grader {UNKNOWN_GRADER!r} was answered with {len(results)} results"


@rule("batch-limit", "a batch over the server's limit gives INVALID_ARGUMENT or is scored in full, never cut short")
def _batch_limit(probe: Probe) -> tuple[str, str]:
    stated = probe.description.max_samples if probe.description else 0
    n = stated + 1 if stated else UNSTATED_LIMIT_PROBE
    try:
        results = probe.score([probe.samples[0]] * n, timeout=probe.timeout * LARGE_CALLS)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return PASSED, f"{n} samples refused: {err.details()[:100]}"
        raise
    if len(results) != n:
        return FAILED, f"{len(results)} results for {n} samples: cut short without an error"
    return PASSED, f"{n} samples, all scored" + ("" if stated else " (the server states no limit)")


@rule("idempotent", "the same request twice gives the same results")
def _idempotent(probe: Probe) -> tuple[str, str]:
    batch = [sample for sample, _ in probe.distinct()] or probe.samples[:1]
    first, second = probe.score(batch), probe.score(batch)
    for i, (a, b) in enumerate(zip(first, second)):
        if _outcome(a) != _outcome(b):
            return FAILED, f"sample {i}: {_describe(a)}, then {_describe(b)}"
    return (PASSED, f"{len(batch)} samples, twice") if len(first) == len(second) else (
        FAILED, f"{len(first)} results, then {len(second)}")


@rule("large-and-unicode", "a 1 MB completion and unicode text are scored, and the server goes on")
def _large_and_unicode(probe: Probe) -> tuple[str, str]:
    batch = [_sample("7 " * (LARGE_COMPLETION // 2), "7"), _sample(UNICODE, UNICODE, prompt=UNICODE, note=UNICODE)]
    results = probe.score(batch, timeout=probe.timeout * LARGE_CALLS)
    if len(results) != len(batch):
        return FAILED, f"{len(results)} results for {len(batch)} samples"
    after = probe.score(probe.samples[:1])
    return (PASSED, f"{_describe(results[0])}; {_describe(results[1])}") if len(after) == 1 else (
        FAILED, f"afterwards, {len(after)} results for 1 sample")


@rule("deadline", "a call past its deadline ends with DEADLINE_EXCEEDED, and the server still answers the next")
def _deadline(probe: Probe) -> tuple[str, str]:
    batch = [_sample("7 " * (LARGE_COMPLETION // 2), "7")] * 8
    try:
        probe.score(batch, timeout=SHORT_DEADLINE)
        ended = f"answered within {SHORT_DEADLINE * 1000:.0f} ms"
    except grpc.RpcError as err:
        if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            raise
        ended = "DEADLINE_EXCEEDED"
    try:
        after = probe.score(probe.samples[:1])
    except grpc.RpcError as err:
        return FAILED, f"after a call that ran out of time ({ended}), the next got {err.code().name}"
    return (PASSED, f"{ended}, then the next call answered") if len(after) == 1 else (
        FAILED, f"afterwards, {len(after)} results for 1 sample")


@rule("auth", "with a token configured, calls without it or with a wrong one are refused")
def _auth(probe: Probe) -> tuple[str, str]:
    if not probe.token:
        return NOT_APPLICABLE, "no --token-env given"
    for label, token in (("without a token", ""), ("with a wrong token", probe.token + "-wrong")):
        stub = reward_pb2_grpc.RewardServiceStub(channel(probe.address, probe.tls, token))
        try:
            stub.Score(pb.ScoreRequest(samples=probe.samples[:1], grader=probe.grader), timeout=probe.timeout)
        except grpc.RpcError as err:
            if err.code() not in REFUSED:
                return FAILED, f"a call {label} got {err.code().name}, not UNAUTHENTICATED or PERMISSION_DENIED"
            continue
        return FAILED, f"a call {label} was answered"
    return PASSED, "refused without the token and with a wrong one"


@rule("finite-ok-scores", "no OK result carries NaN or infinity")
def _finite(probe: Probe) -> tuple[str, str]:
    bad = [r for r in probe.seen if r.status == pb.SCORE_STATUS_OK and not math.isfinite(r.score)]
    return (FAILED, f"{len(bad)} OK results were {bad[0].score}") if bad else (
        PASSED, f"{len(probe.seen)} results seen")


@rule("errors-explained", "every result that is not OK carries an error")
def _explained(probe: Probe) -> tuple[str, str]:
    not_ok = [r for r in probe.seen if r.status != pb.SCORE_STATUS_OK]
    if not not_ok:
        return NOT_APPLICABLE, "every result seen was OK"
    silent = [r for r in not_ok if not r.error]
    if silent:
        return FAILED, f"{len(silent)} of {len(not_ok)} results that are not OK carry no error"
    return PASSED, f"{len(not_ok)} results not OK, each with its error"


@dataclass
class Report:
    address: str
    grader: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(f.outcome == FAILED for f in self.findings)

    def lines(self) -> list[str]:
        return [f"{f.outcome.upper() if f.outcome == FAILED else f.outcome:<14} {f.rule:<22} {f.detail}"
                for f in self.findings]

    def to_json(self) -> str:
        return json.dumps({"address": self.address, "grader": self.grader, "failed": self.failed,
                           "findings": [asdict(f) for f in self.findings]}, indent=2)


def check(probe: Probe) -> Report:
    """Every rule, in order (the rules over all results seen run last)."""
    return Report(probe.address, probe.grader, [run(probe) for _, run in RULES.values()])


def read_samples(path: str) -> list[pb.Sample]:
    """--samples: JSON lines of Sample fields (prompt, completion, reference, metadata)."""
    samples = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    samples.append(pb.Sample(**json.loads(line)))
                except (ValueError, TypeError) as err:
                    raise ValueError(f"{path}, line {i}: not a Sample: {err}") from None
    return samples
