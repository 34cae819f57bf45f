"""What every ``dllm`` verb's options share: one parser behaviour, the dtype names, and ``--config`` files.

- :class:`OptionParser`: ``HfArgumentParser`` whose every mistake (an unknown flag, a bad value or choice, a
  dataclass check) raises a one-line :class:`~dllm.errors.UsageError`, with a "did you mean" for a misspelt flag.
- ``--config run.yaml`` (trl's ``TrlParser`` behaviour): the file's values become the defaults, the command line
  wins; a key that is no option of the verb is refused, naming the file and the key.
- :func:`save_options`: the resolved options of a run as YAML beside its checkpoint, readable back with
  ``--config``, so a run is repeated by ``dllm sft --config OUT/run_config.yaml``.
- :data:`DTYPES` / :func:`torch_dtype`: the weights dtype names every verb accepts.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NoReturn

import torch
from transformers import HfArgumentParser

from dllm.errors import UsageError

DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float16", "float32")
RUN_CONFIG_NAME = "run_config.yaml"


def torch_dtype(name: str) -> str | torch.dtype:
    """``"auto"`` as it is (``from_pretrained`` keeps the checkpoint's dtype), else the ``torch.dtype`` of that name.

    Raises:
        UsageError: a name outside :data:`DTYPES`.
    """
    if name not in DTYPES:
        raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return name if name == "auto" else getattr(torch, name)


class OptionParser(HfArgumentParser):
    """``HfArgumentParser`` for the ``dllm`` verbs: one-line errors, ``--config FILE.yaml``, help under ``prog``.

    Example::

        parser = OptionParser((ModelArguments, DataArguments, SFTConfig), prog="dllm sft")
        model_args, data_args, training_args = parser.parse(argv)
    """

    def __init__(self, dataclass_types: Iterable[type], prog: str | None = None, config_file: bool = True,
                 **kwargs: Any):
        super().__init__(list(dataclass_types), prog=prog, **kwargs)
        self.config_file = config_file
        if config_file:
            self.add_argument("--config", default=None, metavar="FILE.yaml",
                              help="Read option values from a YAML file (keys are option names); flags on the "
                                   "command line override them.")

    def error(self, message: str) -> NoReturn:
        raise UsageError(self._suggest(message))

    def option_names(self) -> list[str]:
        """Every ``--flag`` this parser takes."""
        return [s for action in self._actions for s in action.option_strings if s.startswith("--")]

    def _suggest(self, message: str) -> str:
        found = re.search(r"(--[\w-]+)", message) if "unrecognized" in message or "not used" in message else None
        if found:
            close = difflib.get_close_matches(found.group(1), self.option_names(), n=1, cutoff=0.8)
            if close:
                return f"{message}; did you mean {close[0]}?"
        return message

    def parse(self, argv: list[str] | None) -> tuple[Any, ...]:
        """The dataclasses of ``argv`` (``--config`` file values first, then the flags).

        Raises:
            UsageError: an unknown flag or config key, a bad value, or a dataclass check that failed.
        """
        argv = list(argv or [])
        if self.config_file:
            self.set_defaults(**read_option_file(config_path(argv), self))
        try:
            parsed = self.parse_args_into_dataclasses(args=argv)
        except UsageError:
            raise
        except ValueError as err:  # unknown flags (HfArgumentParser's own message) and the dataclasses' checks
            raise UsageError(self._suggest(" ".join(str(err).split()))) from err
        # HfArgumentParser appends the namespace of arguments outside the dataclasses: here only --config.
        return tuple(p for p in parsed if not isinstance(p, argparse.Namespace))


def config_path(argv: list[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config F`` or ``--config=F``), or None."""
    for index, item in enumerate(argv):
        if item == "--config" and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith("--config="):
            return item.split("=", 1)[1]
    return None


def read_option_file(path: str | None, parser: OptionParser | None = None) -> dict[str, Any]:
    """The options of a YAML file as ``{name: value}`` (empty for None).

    Raises:
        UsageError: no such file, not YAML, not a mapping, or (with ``parser``) a key that names no option.
    """
    if path is None:
        return {}
    import yaml

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from err
    if not isinstance(values, dict):
        raise UsageError(f"{path}: expected a mapping of option names to values, got {type(values).__name__}")
    if parser is not None:
        known = {name[2:] for name in parser.option_names()}
        for key in values:
            if str(key) not in known or key == "config":
                close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.8)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise UsageError(f"{path}: {key!r} is not an option of this command{hint}")
    return values


def option_values(options: Any) -> dict[str, Any]:
    """A parsed options dataclass as plain YAML-ready values (enums by value; ``TrainingArguments`` through its
    ``to_dict``, which hides tokens)."""
    values = options.to_dict() if hasattr(options, "to_dict") else dataclasses.asdict(options)
    init = {f.name for f in dataclasses.fields(options) if f.init}
    return {k: _plain(v) for k, v in values.items() if k in init and not k.startswith("_")}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def save_options(folder: str | Path, options: Iterable[Any], header: str = "") -> Path:
    """Write the resolved options of a run to ``folder/run_config.yaml`` (one mapping, every option of every
    dataclass; ``--config`` reads it back); returns the file."""
    import yaml

    values: dict[str, Any] = {}
    for item in options:
        values.update(option_values(item))
    path = Path(folder) / RUN_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(values, sort_keys=True, allow_unicode=True)
    path.write_text((f"# {header}\n" if header else "") + text, encoding="utf-8")
    return path
