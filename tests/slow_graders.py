"""A grader that runs long on one completion, hosted by reward_svc.isolation in the tests: no
built-in grader runs long on any input any more, so the time limit needs a grader that does."""

import time

from reward_svc.graders import Grade, PerSample


def _sleepy(prompt: str, completion: str, reference: str, metadata) -> Grade:
    if completion == "slow":
        time.sleep(60)
    return Grade(1.0, {"calls": 1.0})


def graders() -> dict:
    return {"sleepy": PerSample(_sleepy, ("calls",))}
