"""Accelerate launch configs shipped inside the package, for installs without the repository's ``scripts/``.

The files are copies of ``scripts/accelerate_configs/*.yaml`` (a test keeps the two identical)::

    accelerate launch --config_file "$(python -c 'import dllm.configs as c; print(c.accelerate_config_path("ddp"))')" \
        --num_processes 1 examples/llama3/sft.py --lora True
"""

from __future__ import annotations

from pathlib import Path

ACCELERATE_CONFIG_DIR = Path(__file__).resolve().parent / "accelerate"


def available_accelerate_configs() -> list[str]:
    """Names accepted by :func:`accelerate_config_path` (``"cpu"``, ``"ddp"``, ``"fsdp"``, ``"deepspeed"``, ...)."""
    return sorted(path.stem for path in ACCELERATE_CONFIG_DIR.glob("*.yaml"))


def accelerate_config_path(name: str) -> Path:
    """Path of the packaged accelerate config ``name`` (with or without ``.yaml``)."""
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    path = ACCELERATE_CONFIG_DIR / f"{stem}.yaml"
    if "/" in stem or "\\" in stem or not path.is_file():
        raise FileNotFoundError(
            f"no accelerate config named {name!r} in {ACCELERATE_CONFIG_DIR}; "
            f"available: {', '.join(available_accelerate_configs())}"
        )
    return path
