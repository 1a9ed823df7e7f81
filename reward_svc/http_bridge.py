"""A bridge to an HTTP reward server speaking OpenRLHF's remote-RM JSON.

Request:  {"query": [prompt + completion, ...], "prompts": [...], "labels": [reference, ...]}
Response: {"rewards": [float, ...]} (extra keys such as "scores" or "extra_logs" are ignored).
Header values may name environment variables as ${NAME}, so tokens stay out of configs.
"""

from __future__ import annotations

import json
import logging
import os
import string
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

from reward_svc.graders import Outcome, SampleLike, Status

log = logging.getLogger("hatchery.reward.http")
RETRYABLE_HTTP = {429, 500, 502, 503, 504}


class OpenRLHFHttpGrader:
    """A BatchGrader that posts batches to an OpenRLHF-style remote reward model."""

    sub_score_names: tuple[str, ...] = ()

    def __init__(self, url: str, headers: Mapping[str, str] | None = None, timeout_seconds: float = 30.0,
                 retries: int = 3, batch_size: int = 256, backoff_seconds: float = 0.5):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        self.url, self.timeout_seconds, self.retries = url, timeout_seconds, retries
        self.batch_size, self.backoff_seconds = batch_size, backoff_seconds
        self.headers = {"Content-Type": "application/json"}
        for key, value in (headers or {}).items():
            try:
                self.headers[key] = string.Template(value).substitute(os.environ)
            except KeyError as err:
                raise ValueError(f"header {key}: environment variable {err} is not set") from None

    def score(self, samples: Sequence[SampleLike]) -> list[Outcome]:
        return [o for i in range(0, len(samples), self.batch_size) for o in self._post(samples[i:i + self.batch_size])]

    def _post(self, samples: Sequence[SampleLike]) -> list[Outcome]:
        body = json.dumps({"query": [s.prompt + s.completion for s in samples],
                           "prompts": [s.prompt for s in samples],
                           "labels": [s.reference for s in samples]}).encode()
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                    return self._parse(response.read(), len(samples))
            except urllib.error.HTTPError as err:
                if err.code not in RETRYABLE_HTTP:
                    return [Outcome.failed(f"{self.url} answered HTTP {err.code}: {err.reason}")] * len(samples)
                problem, status = f"HTTP {err.code}", Status.FAILED
            except TimeoutError:
                problem, status = f"no answer within {self.timeout_seconds:g} s", Status.TIMED_OUT
            except (urllib.error.URLError, ConnectionError) as err:
                problem, status = f"unreachable ({getattr(err, 'reason', err)})", Status.FAILED
            if attempt < self.retries:
                log.warning("%s: %s; retry %d of %d", self.url, problem, attempt + 1, self.retries)
                time.sleep(self.backoff_seconds * 2**attempt)
        return [Outcome.failed(f"{self.url}: {problem} after {self.retries} retries", status)] * len(samples)

    def _parse(self, payload: bytes, expected: int) -> list[Outcome]:
        try:
            rewards = json.loads(payload)["rewards"]
            if not isinstance(rewards, list):
                raise TypeError(f"'rewards' is a {type(rewards).__name__}")
        except (ValueError, KeyError, TypeError) as err:
            return [Outcome.failed(f"{self.url} answered no reward list: {err}")] * expected
        if len(rewards) != expected:
            return [Outcome.failed(f"{self.url} returned {len(rewards)} rewards for {expected} samples")] * expected
        return [Outcome.of_score(r) for r in rewards]
