r"""Grader specs: the `graders` mapping of a run config or a graders file, checked as data.

    graders:
      boxed:   {type: regex, pattern: '\\boxed\{.+\}'}
      mix:     {type: combined, parts: {numeric: 1.0, boxed: 0.1}}
      mine:    {type: python, function: my_rewards:accuracy, path: ./plugins, timeout_seconds: 5}
      remote:  {type: openrlhf_http, url: http://rm:5000/get_reward, headers: {Authorization: Bearer ${RM_TOKEN}}}

The built-in graders (first_integer, countdown, numeric, length) are always
there by name; a spec may not redefine them. Parsing starts nothing, so a config is
checked before any service runs; reward_svc.specs builds the graders from these specs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import regex

from hatchery.core.schema import ConfigError, check, from_dict


@dataclass(frozen=True)
class RegexSpec:
    pattern: str
    mode: str = "search"  # or "fullmatch"
    match_score: float = 1.0
    miss_score: float = 0.0
    timeout_seconds: float = 1.0  # per completion; past it the sample is TIMED_OUT, the service carries on


@dataclass(frozen=True)
class CombinedSpec:
    parts: dict[str, float]  # grader name -> weight


@dataclass(frozen=True)
class PythonSpec:
    function: str  # module:function, TRL reward-function signature
    path: str = ""  # a folder put first on the plug-in's sys.path
    timeout_seconds: float = 10.0  # per call; a call scores up to batch_size samples
    memory_mb: int = 2048  # address-space limit of each plug-in process; 0: none
    processes: int = 2
    batch_size: int = 16
    confined: bool = True  # read only its own folder; no writes, processes or native libraries


@dataclass(frozen=True)
class HttpSpec:
    url: str
    headers: dict[str, str] = field(default_factory=dict)  # values may use ${ENV_VAR}
    timeout_seconds: float = 30.0
    retries: int = 3
    batch_size: int = 256


SPEC_TYPES: dict[str, type] = {"regex": RegexSpec, "combined": CombinedSpec, "python": PythonSpec,
                               "openrlhf_http": HttpSpec}
BUILTIN_NAMES = ("first_integer", "countdown", "numeric", "length")


def parse_specs(data: Mapping[str, Any], prefix: str = "graders.") -> dict[str, Any]:
    """Checks every spec without starting anything: types, ranges, references between graders."""
    specs: dict[str, Any] = {}
    for name, raw in data.items():
        key = f"{prefix}{name}"
        check(re.fullmatch(r"[A-Za-z_][\w.-]*", str(name)) is not None, key, "a grader name must be an identifier",
              name)
        check(name not in BUILTIN_NAMES, key, "redefines a built-in grader", name)
        if not isinstance(raw, dict) or "type" not in raw:
            raise ConfigError(f"{key}: expected a mapping with a 'type' (one of {sorted(SPEC_TYPES)})")
        kind, rest = raw["type"], {k: v for k, v in raw.items() if k != "type"}
        check(kind in SPEC_TYPES, f"{key}.type", f"must be one of {sorted(SPEC_TYPES)}", kind)
        spec = from_dict(SPEC_TYPES[kind], rest, key + ".")
        _check_spec(spec, key)
        specs[name] = spec
    for name, spec in specs.items():
        if isinstance(spec, CombinedSpec):
            for part in spec.parts:
                check(part in BUILTIN_NAMES or (part in specs and not isinstance(specs[part], CombinedSpec)),
                      f"{prefix}{name}.parts", "each part must be a built-in or a non-combined grader defined here",
                      part)
    return specs


def _check_spec(spec: Any, key: str) -> None:
    if isinstance(spec, RegexSpec):
        check(spec.mode in ("search", "fullmatch"), f"{key}.mode", "must be 'search' or 'fullmatch'", spec.mode)
        check(spec.timeout_seconds > 0, f"{key}.timeout_seconds", "must be > 0", spec.timeout_seconds)
        try:
            regex.compile(spec.pattern)
        except regex.error as err:
            raise ConfigError(f"{key}.pattern: bad regular expression {spec.pattern!r}: {err}") from None
    elif isinstance(spec, CombinedSpec):
        check(bool(spec.parts), f"{key}.parts", "needs at least one grader", spec.parts)
    elif isinstance(spec, PythonSpec):
        check(re.fullmatch(r"[\w.]+:\w+", spec.function) is not None, f"{key}.function",
              "must be 'module:function'", spec.function)
        check(spec.timeout_seconds > 0, f"{key}.timeout_seconds", "must be > 0", spec.timeout_seconds)
        check(spec.memory_mb == 0 or spec.memory_mb >= 64, f"{key}.memory_mb", "must be 0 (none) or >= 64",
              spec.memory_mb)
        check(1 <= spec.processes <= 64, f"{key}.processes", "must be between 1 and 64", spec.processes)
        check(spec.batch_size >= 1, f"{key}.batch_size", "must be >= 1", spec.batch_size)
    elif isinstance(spec, HttpSpec):
        check(spec.url.startswith(("http://", "https://")), f"{key}.url", "must be an http(s) URL", spec.url)
        check(spec.timeout_seconds > 0, f"{key}.timeout_seconds", "must be > 0", spec.timeout_seconds)
        check(spec.retries >= 0, f"{key}.retries", "must be >= 0", spec.retries)
        check(spec.batch_size >= 1, f"{key}.batch_size", "must be >= 1", spec.batch_size)
