"""A minimal reward service in Python: any server implementing hatchery.v1.RewardService works.

    python examples/reward-python/server.py --port 50060

Scores 1.0 when the completion, stripped, equals the reference; not applicable
when a sample has no reference. Uses the stubs Hatchery ships (hatchery.v1);
a project of its own would generate them from protos/hatchery/v1/reward.proto.
Serves grpc.health.v1 (for probes) and reflection, and passes `hatchery conformance`.
"""

import argparse
import os
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hatchery.v1 import reward_pb2 as pb
from hatchery.v1 import reward_pb2_grpc

MAX_SAMPLES = 4096


class ExactMatch(reward_pb2_grpc.RewardServiceServicer):
    def Score(self, request, context):
        if request.grader not in ("", "exact_match"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown grader {request.grader!r}")
        if len(request.samples) > MAX_SAMPLES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"more than {MAX_SAMPLES} samples")
        results = []
        for sample in request.samples:
            if not sample.reference:
                results.append(pb.SampleScore(status=pb.SCORE_STATUS_NOT_APPLICABLE, error="no reference"))
            else:
                match = sample.completion.strip() == sample.reference.strip()
                results.append(pb.SampleScore(status=pb.SCORE_STATUS_OK, score=float(match)))
        return pb.ScoreResponse(results=results)

    def Describe(self, request, context):
        return pb.DescribeResponse(name="exact-match-example", version="1.0", graders=["exact_match"],
                                   max_samples=MAX_SAMPLES)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=50060)
    parser.add_argument("--port-file", help="write the bound port here once serving")
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    reward_pb2_grpc.add_RewardServiceServicer_to_server(ExactMatch(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)  # the server as a whole: SERVING
    reflection.enable_server_reflection([pb.DESCRIPTOR.services_by_name["RewardService"].full_name,
                                         reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    if args.port_file:  # written whole, then renamed, so a reader never sees half a number
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(args.port_file + ".tmp", args.port_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
