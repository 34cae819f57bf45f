"""Packaging promises: the wheel holds every subpackage and the configs; importing dllm stays light."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers import import_step

ROOT = Path(__file__).resolve().parents[1]


OPTIONAL = ("deepspeed", "lm_eval", "peft", "fastapi", "uvicorn", "openai", "gradio", "matplotlib")


DLLM_IMPORT = import_step("dllm", 1, "import dllm, dllm.data.utils, dllm.pipelines, dllm.cli, dllm.core.models, "
                          "dllm.auto, dllm.core.sampling, dllm.core.likelihood, dllm.inference.loading, "
                          "dllm.eval.exact_match")
# Last: transformers.trainer itself imports peft when it is installed; dllm's trainer must add nothing to that.
TRANSFORMERS_TRAINER_IMPORT = import_step("transformers.trainer", 4, "import transformers.trainer")
TRAINER_IMPORT = import_step("dllm's trainer", 5, "import dllm.core.trainers.mdlm_trainer, dllm.sft.recipe")


def imported_optional(footprint: set[str]) -> list[str]:
    return [m for m in OPTIONAL if m in footprint]


def test_import_dllm_pulls_no_optional_extra(import_footprint):
    assert imported_optional(import_footprint[DLLM_IMPORT]) == []


def test_trainer_imports_no_optional_extra_beyond_transformers_own(import_footprint):
    baseline = set(imported_optional(import_footprint[TRANSFORMERS_TRAINER_IMPORT]))
    assert set(imported_optional(import_footprint[TRAINER_IMPORT])) <= baseline


@pytest.mark.slow
def test_wheel_contains_every_subpackage_and_imports_outside_the_repo(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("dllm-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.relative_to(ROOT)) for p in (ROOT / "dllm").rglob("__init__.py")}
    assert packages and packages <= names, sorted(packages - names)
    assert any(n.startswith("dllm/configs/accelerate/") and n.endswith(".yaml") for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import dllm, dllm.core.trainers.mdlm_trainer as t, dllm.configs as c; "
            "assert dllm.__file__.startswith(%r), dllm.__file__; print(t.MDLMTrainer.__name__, "
            "c.accelerate_config_path('ddp').exists())" % str(target))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["MDLMTrainer", "True"]
