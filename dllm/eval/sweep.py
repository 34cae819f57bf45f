"""``dllm eval --sweep "threshold=none,0.9 cache=none,prefix,dual block_size=8,32"``: every combination of the
listed sampler settings, run on the same prompts, and the table that compares them.

The spec is space-separated ``field=v1,v2,...`` groups, each field a
:class:`~dllm.core.sampling.DiffusionGenerationConfig` option; values are read by the field's type (``none`` is
None for an optional field, unless ``none`` is one of the field's own choices, as for ``cache``). The grid is the
Cartesian product in the order written (the last field varies fastest); each combination overrides the
checkpoint's settings (and the sampler flags), and every one is checked before anything is sampled.
"""

from __future__ import annotations

import itertools
import types
import typing
from dataclasses import fields, replace
from typing import Any, Literal

from dllm.core.sampling import DiffusionGenerationConfig
from dllm.errors import UsageError

_NOT_SWEPT = ("record_history", "progress")


def _parse_value(name: str, text: str, kind: Any) -> Any:
    """``text`` as a value of a field of type ``kind``; raises ValueError when it is none of the field's types."""
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    options = [a for a in typing.get_args(kind) if a is not type(None)] if union else [kind]
    for option in options:
        if typing.get_origin(option) is Literal:
            if text in typing.get_args(option):
                return text
        elif option is bool and text.lower() in ("true", "false"):
            return text.lower() == "true"
        elif option in (int, float):
            try:
                return option(text)
            except ValueError:
                continue
        elif option is str:
            return text
    if text.lower() == "none" and type(None) in typing.get_args(kind):
        return None
    raise ValueError(f"{name}={text!r} is not a valid {name}")


def parse_sweep(spec: str) -> list[dict[str, Any]]:
    """The combinations a sweep spec lists, each ``{field: value}``.

    Raises:
        UsageError: a group is not ``field=v1,v2``, names an unknown or repeated field, or has a bad value.
    """
    hints = typing.get_type_hints(DiffusionGenerationConfig)
    names = [f.name for f in fields(DiffusionGenerationConfig) if f.name not in _NOT_SWEPT]
    grid: dict[str, list[Any]] = {}
    for group in spec.split():
        name, sep, values = group.partition("=")
        if not sep or not values or name in grid:
            raise UsageError(f"--sweep {spec!r}: {group!r} is not a new field=value1,value2,... group")
        if name not in names:
            raise UsageError(f"--sweep {spec!r}: unknown sampler option {name!r}; options are {', '.join(names)}")
        try:
            grid[name] = [_parse_value(name, text, hints[name]) for text in values.split(",")]
        except ValueError as err:
            raise UsageError(f"--sweep {spec!r}: {err}") from err
    if not grid:
        raise UsageError(f"--sweep {spec!r}: no field=value1,value2,... group")
    return [dict(zip(grid, combination)) for combination in itertools.product(*grid.values())]


def sweep_configs(base: DiffusionGenerationConfig, combinations: list[dict[str, Any]]
                  ) -> list[DiffusionGenerationConfig]:
    """``base`` with each combination applied, all checked first.

    Raises:
        UsageError: a combination the sampler refuses (the message names it).
    """
    configs = []
    for combination in combinations:
        try:
            configs.append(replace(base, **combination))  # the constructor checks every field
        except ValueError as err:
            raise UsageError(f"--sweep combination {settings_label(combination)}: {err}") from err
    return configs


def settings_label(settings: dict[str, Any]) -> str:
    """``threshold=0.9 cache=dual``; ``(checkpoint settings)`` when there is nothing swept."""
    return " ".join(f"{k}={'none' if v is None else v}" for k, v in settings.items()) or "(checkpoint settings)"


def _cell(row: dict[str, Any], key: str, digits: int = 1, scale: float = 1.0) -> str:
    value = row.get(key)
    return "-" if value is None else f"{scale * value:.{digits}f}"


def sweep_table(runs: list[dict[str, Any]]) -> str:
    """One Markdown row per run (its overall row): settings, metric with its 95% interval, N, tokens/s, forward
    passes per answer, latency p50 / p95 per answer, peak memory."""
    metric = runs[0]["overall"]["metric"]
    lines = [f"| settings | {metric} (95% CI) | N | tokens/s | passes/answer | latency p50 (s) | latency p95 (s) "
             "| peak memory (MB) |", "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        row = run["overall"]
        low, high = row[f"{metric}_ci95"]
        lines.append(f"| {settings_label(run['settings'])} | {100 * row[metric]:.1f}% "
                     f"[{100 * low:.1f}, {100 * high:.1f}] | {row['n']} | {_cell(row, 'tokens_per_second')} | "
                     f"{_cell(row, 'forward_passes_per_answer')} | {_cell(row, 'latency_p50', 3)} | "
                     f"{_cell(row, 'latency_p95', 3)} | {_cell(run['peak_memory'], 'mb', 0)} |")
    return "\n".join(lines)
