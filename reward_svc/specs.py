"""Named graders built from their specs (hatchery.core.grader_specs): plug-in processes start here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hatchery.core.grader_specs import CombinedSpec, PythonSpec, RegexSpec, parse_specs
from reward_svc.graders import BatchGrader, Combined, PerSample, Regex, builtin_graders


def build_graders(data: Mapping[str, Any], builtins: Mapping[str, BatchGrader] | None = None
                  ) -> dict[str, BatchGrader]:
    """`builtins` (default: builtin_graders()) plus the graders the specs define; plug-in
    processes start here."""
    from reward_svc.http_bridge import OpenRLHFHttpGrader
    from reward_svc.plugins import PluginGrader

    specs = parse_specs(data)
    graders = dict(builtin_graders() if builtins is None else builtins)
    ordered = sorted(specs.items(), key=lambda item: isinstance(item[1], CombinedSpec))  # parts first
    for name, spec in ordered:
        if isinstance(spec, RegexSpec):
            graders[name] = PerSample(Regex(spec.pattern, spec.mode, spec.match_score, spec.miss_score,
                                            spec.timeout_seconds))
        elif isinstance(spec, CombinedSpec):
            graders[name] = Combined([(part, weight, graders[part]) for part, weight in spec.parts.items()])
        elif isinstance(spec, PythonSpec):
            graders[name] = PluginGrader(spec.function, spec.path, spec.timeout_seconds, spec.memory_mb,
                                         spec.processes, spec.batch_size, spec.confined)
        else:
            graders[name] = OpenRLHFHttpGrader(spec.url, spec.headers, spec.timeout_seconds, spec.retries,
                                               spec.batch_size)
    return graders


def close_graders(graders: Mapping[str, BatchGrader]) -> None:
    """Stops plug-in processes."""
    for grader in graders.values():
        close = getattr(grader, "close", None)
        if close:
            close()
