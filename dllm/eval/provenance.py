"""What a result file records so that the run can be repeated and checked: dllm's version and git commit, the
checkpoint and a hash of its weights, the machine and the library versions; and writing results safely.

:func:`check_writable` runs before any evaluation, so ``--output`` into a folder that cannot take it fails at once
instead of after an hour of sampling.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from dllm.errors import UsageError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
WEIGHT_PREFIXES = ("model", "pytorch_model", "adapter_model", "consolidated")
"""Weight files as transformers and peft name them; a trainer checkpoint's training_args.bin, optimizer.pt and
rng_state.pth are not weights."""
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def git_commit(directory: Path = PACKAGE_DIR) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git work tree holding ``directory`` (dllm's source), or None when it is
    not one (an installed wheel) or git is missing."""
    try:
        commit = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        status = subprocess.run(["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if commit.returncode != 0:
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def weights_hash(checkpoint: str) -> dict[str, Any] | None:
    """SHA-256 over the weight files of a checkpoint folder (names and contents, in name order) and their names,
    or None for a hub id (its files are not local)."""
    folder = Path(checkpoint)
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES) and p.name.startswith(WEIGHT_PREFIXES))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode("utf-8") + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return {"sha256": digest.hexdigest(), "files": [p.name for p in files]}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The CPU and GPU models, core count, and the versions of Python, torch, transformers and CUDA."""
    import os

    import torch
    import transformers

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "gpus": gpus, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "cuda": torch.version.cuda}


def provenance(checkpoint: str) -> dict[str, Any]:
    """dllm's version and commit, the checkpoint's path and weights hash, and the machine."""
    from dllm import __version__

    return {"dllm_version": __version__, "git": git_commit(), "checkpoint": checkpoint,
            "checkpoint_resolved": str(Path(checkpoint).resolve()) if Path(checkpoint).is_dir() else None,
            "weights": weights_hash(checkpoint), "machine": machine()}


def markdown_path(path: Path) -> Path:
    """Where the Markdown table goes next to a JSON result file."""
    return path.with_suffix(".md")


def check_writable(output: str | None, flag: str = "--output") -> Path | None:
    """The output path, after making sure it and its Markdown sibling can be written (creating the folder).

    Raises:
        UsageError: the folder cannot be created or a file cannot be opened for writing there.
    """
    if output is None:
        return None
    path = Path(output)
    for target in (path, markdown_path(path)):
        existed = target.exists()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "a", encoding="utf-8"):
                pass
        except OSError as err:
            raise UsageError(f"{flag} {output}: cannot write {target} ({err.strerror or err})") from err
        if not existed:
            target.unlink()
    return path


def write_results(path: Path, results: dict[str, Any], markdown: str) -> None:
    """The results as JSON at ``path`` and the table as Markdown beside it."""
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    markdown_path(path).write_text(markdown + "\n", encoding="utf-8")
