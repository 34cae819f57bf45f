"""The dataset spec grammar: ``name_or_path[train:N,test:M]`` parts joined by ``+``.

Examples::

    tatsu-lab/alpaca
    examples/data/alpaca_example.json[train:30,test:5]
    a.json[train:100]+b.jsonl[train:50,test:5]

The bracket part and each key in it are optional; N and M are positive integers. Whitespace around parts,
keys and counts is ignored. Names containing ``+``, ``[`` or ``]`` cannot be written in a spec. This
module only parses; :mod:`dllm.data.loading` decides what a name refers to and loads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dllm.errors import UsageError

# The split names a spec may give counts for.
SPLITS: tuple[str, ...] = ("train", "test")

_SPEC_PART = re.compile(r"^(?P<name>[^\[\]]+?)\s*(?:\[(?P<options>[^\[\]]*)\])?$")


@dataclass(frozen=True)
class DatasetSource:
    """One ``+``-separated part of a dataset spec.

    Attributes:
        name: local path or hub id.
        train: number of train rows to take (None: all).
        test: number of test rows to take (None: the source's own test split if it has one, else
            ``test_size`` rows of a seeded split, else no test rows).
    """

    name: str
    train: int | None = None
    test: int | None = None


def _spec_error(spec: str, problem: str) -> ValueError:
    """The error for a malformed spec (or part of one): ``bad spec '<spec>': <problem>``."""
    return UsageError(f"bad spec {spec!r}: {problem}")


def _parse_options(part: str, options: str) -> dict[str, int]:
    """Parse ``train:N,test:M`` (either key optional) into a dict."""
    if not options.strip():
        raise _spec_error(part, "empty brackets; expected e.g. [train:100,test:10]")
    counts: dict[str, int] = {}
    for item in options.split(","):
        key, sep, value = (s.strip() for s in item.partition(":"))
        if not sep:
            raise _spec_error(part, f"expected 'key:count', got {item.strip()!r}")
        if key not in SPLITS:
            raise _spec_error(part, f"unknown key {key!r}; expected 'train' or 'test'")
        if key in counts:
            raise _spec_error(part, f"{key!r} given twice")
        if not value.isdigit() or int(value) < 1:
            raise _spec_error(part, f"{key} count must be a positive integer, got {value!r}")
        counts[key] = int(value)
    return counts


def parse_dataset_spec(spec: str) -> list[DatasetSource]:
    """Parse ``name[train:N,test:M]+name2[...]`` into sources, in spec order.

    Raises:
        ValueError: ``bad spec '<part>': <problem>`` for an empty spec or part, bad brackets, unknown
            keys, repeated keys or counts that are not positive integers.
    """
    if not spec or not spec.strip():
        raise _spec_error(spec, "empty spec")
    sources = []
    for raw_part in spec.split("+"):
        part = raw_part.strip()
        if not part:
            raise _spec_error(spec, "empty source around '+'")
        match = _SPEC_PART.match(part)
        if match is None:
            raise _spec_error(part, "expected name_or_path[train:N,test:M] with the bracket part optional")
        options = match.group("options")
        counts = _parse_options(part, options) if options is not None else {}
        sources.append(DatasetSource(match.group("name").strip(), counts.get("train"), counts.get("test")))
    return sources
