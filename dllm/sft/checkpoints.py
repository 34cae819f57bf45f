"""A training run's folders: where it may write, and which checkpoint it resumes from.

Called by the recipes before any weights load, so a mistake costs nothing::

    resume = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    check_output_dir(training_args.output_dir, [model_name_or_path], resume_from_checkpoint=resume)

``Trainer._save_checkpoint`` writes a ``checkpoint-N`` folder in order: the model weights, the optimizer, the
scheduler and RNG states, and ``trainer_state.json`` last. A run killed while saving therefore leaves a folder
without ``trainer_state.json`` (or with a truncated weights file), which ``Trainer`` would fail on halfway
through loading, after the model was built; here it is found first and named, with the complete checkpoint to
resume from instead.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from safetensors import SafetensorError, safe_open

from dllm.errors import UsageError

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME, written last
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # transformers.trainer_utils.PREFIX_CHECKPOINT_DIR + "-N"


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir``, oldest (smallest N) first; none when it is not a folder."""
    folder = Path(output_dir).expanduser()
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)))


def checkpoint_problem(folder: str | Path) -> str | None:
    """Why ``folder`` is not a complete Trainer checkpoint, or None when it is one: ``trainer_state.json`` (written
    last) present and valid JSON, and every ``.safetensors`` file whole (safetensors checks that the file covers
    the tensors its header lists)."""
    folder = Path(folder)
    state = folder / TRAINER_STATE_NAME
    if not state.is_file():
        return f"no {TRAINER_STATE_NAME}, which Trainer writes last: the run was stopped while saving it"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{TRAINER_STATE_NAME} is not valid JSON ({err})"
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except SafetensorError as err:
            return f"{weights.name} is corrupt or truncated ({err})"
    return None


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete ``checkpoint-N`` of ``output_dir`` with the largest N, or None."""
    return next((p for p in reversed(checkpoint_folders(output_dir)) if checkpoint_problem(p) is None), None)


def _instead(folders: Sequence[Path]) -> str:
    """What to resume from instead: the newest complete checkpoint of ``folders`` (first folder first)."""
    for folder in dict.fromkeys(folders):
        complete = latest_complete_checkpoint(folder)
        if complete is not None:
            return f"the latest complete one is {complete}: pass --resume_from_checkpoint {complete}"
    names = " or ".join(str(folder) for folder in dict.fromkeys(folders))
    return f"no complete checkpoint-N in {names}; start without --resume_from_checkpoint"


def resolve_resume_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint folder ``--resume_from_checkpoint`` names, checked complete; None to start afresh.

    ``True`` (or the string ``"True"``, which is what ``TrainingArguments`` parses the flag into) means the newest
    ``checkpoint-N`` of ``output_dir``, as ``Trainer.train(resume_from_checkpoint=True)`` does; ``False``, ``""``
    and None start a new run.

    Raises:
        UsageError: no such folder, no checkpoint in ``output_dir`` (for ``True``), or an incomplete checkpoint
            (naming what is missing and the newest complete checkpoint, if any).
    """
    value = resume_from_checkpoint
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in ("", "false")):
        return None
    if value is True or value.strip().lower() == "true":
        found = checkpoint_folders(output_dir)
        if not found:
            raise UsageError(f"--resume_from_checkpoint True: no checkpoint-N folder in --output_dir {output_dir} "
                             "to resume from; give a checkpoint folder, or start without the flag")
        problem = checkpoint_problem(found[-1])
        if problem is not None:
            raise UsageError(f"--resume_from_checkpoint True: the latest checkpoint {found[-1]} is incomplete "
                             f"({problem}); {_instead([Path(output_dir)])}")
        return str(found[-1])
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UsageError(f"--resume_from_checkpoint {value}: no such checkpoint folder; "
                         f"{_instead([path.parent, Path(output_dir)])}")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise UsageError(f"--resume_from_checkpoint {value}: incomplete checkpoint ({problem}); "
                         f"{_instead([path.parent, Path(output_dir)])}")
    return str(path)


def _named(flag: str, path: str | Path) -> str:
    """``--output_dir PATH`` in messages; the path alone for a positional argument (``flag=""``)."""
    return f"{flag} {path}" if flag else str(path)


def check_writable(folder: str | Path, flag: str = "--output_dir") -> None:
    """Refuse a folder that cannot be written (a file in its place, or the nearest existing parent refuses a new
    file), before any work whose result would then be lost. Creates nothing that stays."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{_named(flag, folder)}: exists and is not a folder")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{_named(flag, folder)}: {existing} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".dllm-write-test-"):
            pass
    except OSError as err:
        raise UsageError(f"{_named(flag, folder)}: cannot write in {existing} ({err.strerror or err})") from err


def refuse_model_folders(output_dir: str | Path, model_paths: Sequence[str | Path], flag: str = "--output_dir") -> None:
    """Refuse an output folder that is, or holds, a model folder being read: saving would overwrite its files
    (and Trainer's checkpoint rotation could delete a ``checkpoint-N`` inside it). Hub ids are skipped."""
    out = Path(output_dir).expanduser().resolve()
    for model in model_paths:
        model_path = Path(model).expanduser()
        if not model_path.exists():
            continue
        if model_path.resolve() == out:
            raise UsageError(f"{_named(flag, output_dir)}: is the model being read ({model}); saving there would "
                             "overwrite it (refused even with overwrite); choose another folder")
        if out in model_path.resolve().parents:
            raise UsageError(f"{_named(flag, output_dir)}: holds the model being read ({model}), which saving or "
                             "checkpoint rotation could overwrite or delete; choose a folder outside it")


def check_output_dir(output_dir: str, model_paths: Sequence[str | Path], *,
                     resume_from_checkpoint: str | None = None) -> None:
    """Check a training run's ``--output_dir`` before any work: not a model being read
    (:func:`refuse_model_folders`), writable (:func:`check_writable`), whatever ``overwrite_output_dir`` says; and warn when it already
    holds another run's ``checkpoint-N`` folders (a new run, not resuming: its checkpoints of the same steps would
    replace them, and ``--resume_from_checkpoint True`` would later pick up whichever is newest).

    Raises:
        UsageError: an unwritable folder, or one that is or holds a model in ``model_paths``.
    """
    refuse_model_folders(output_dir, model_paths)  # first: the write test must not touch a model's folder
    check_writable(output_dir)
    found = checkpoint_folders(output_dir)
    if found and resume_from_checkpoint is None:
        names = ", ".join(p.name for p in found[-3:])
        logger.warning("%s already holds %d checkpoints of another run (%s); this run's checkpoints of the same "
                       "steps will replace them: pass --resume_from_checkpoint True to continue that run, or "
                       "choose an empty --output_dir", output_dir, len(found), names)
