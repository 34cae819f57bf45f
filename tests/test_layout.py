"""Architecture rules: the core is at the bottom, pipelines are leaves, one table maps a family to its class,
and the public import paths of the project guide keep working."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dllm_imports(path: Path) -> set[str]:
    """Every ``dllm...`` module a source file imports (absolute imports; the package uses no relative ones)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names.add(node.module or "")
    return {name for name in names if name == "dllm" or name.startswith("dllm.")}


def test_core_imports_nothing_from_the_rest_of_dllm_in_source():
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in dllm_imports(path) if not n.startswith("dllm.core"))
        for path in (ROOT / "dllm" / "core").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_core_imports_nothing_from_the_rest_of_dllm_at_run_time():
    modules = [str(p.relative_to(ROOT).with_suffix("")).replace("/", ".").removesuffix(".__init__")
               for p in (ROOT / "dllm" / "core").rglob("*.py")]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(' '.join(sorted(m for m in sys.modules if m.startswith('dllm.') "
              "and not m.startswith('dllm.core'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == []


def module_name(path: Path) -> str:
    return str(path.relative_to(ROOT).with_suffix("")).replace("/", ".").removesuffix(".__init__")


def test_pipelines_are_leaves():
    """Only the family table (dllm/auto.py) and the demos (which build a family's tiny model from its pipeline's
    builders) import a pipeline."""
    importers = {
        str(path.relative_to(ROOT)): sorted(n for n in dllm_imports(path) if n.startswith("dllm.pipelines"))
        for path in (ROOT / "dllm").rglob("*.py")
        if "pipelines" not in path.parts and path.name != "auto.py" and "demo" not in path.parts
    }
    assert {k: v for k, v in importers.items() if v} == {}


def test_pipelines_import_only_the_core_and_the_data_layer():
    """Counting imports inside functions too (ast.walk): a pipeline never reaches up to auto, sft, inference..."""
    allowed = ("dllm.core", "dllm.data", "dllm.errors", "dllm.pipelines")
    offenders = {
        str(path.relative_to(ROOT)): sorted(n for n in dllm_imports(path) if not n.startswith(allowed))
        for path in (ROOT / "dllm" / "pipelines").rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_no_import_cycle_between_modules():
    """The module graph of dllm (every import, in functions too; a package's import counts as its __init__) has
    no cycle (the Qwen3-VL recipe once made sft.recipe -> auto -> pipelines.qwen3_vl.recipe -> sft.recipe)."""
    modules = {module_name(p): p for p in (ROOT / "dllm").rglob("*.py")}
    graph = {name: {n for n in dllm_imports(path) if n in modules and n != name} for name, path in modules.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target] if target in stack else [name, target])
            elif target not in state:
                visit(target, stack + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    # dllm/__init__ and dllm.data re-export their submodules, which import them back by absolute name; a package
    # importing its own submodule is not a cycle between layers.
    real = [c for c in cycles if not any(a == b.rsplit(".", 1)[0] or b == a.rsplit(".", 1)[0]
                                         for a, b in zip(c, c[1:]))]
    assert real == []


def test_no_module_called_utils_holds_code():
    """``utils`` modules may only re-export (the guide's public import paths), never define functions."""
    for path in (ROOT / "dllm").rglob("utils.py"):
        tree = ast.parse(path.read_text())
        defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert defined == [], f"{path.relative_to(ROOT)} defines {defined}"
    assert not (ROOT / "dllm" / "utils").exists()


def test_guide_import_paths():
    from dllm.core.trainers.mdlm_trainer import MDLMTrainer
    from dllm.data import loading
    from dllm.data.utils import load_sft_dataset

    assert load_sft_dataset is loading.load_sft_dataset
    assert MDLMTrainer.compute_loss is not None


@pytest.mark.parametrize("script", ["examples/llama3/sft.py", "examples/gemma2/sft.py", "examples/qwen3_vl/sft.py"])
def test_example_scripts_are_thin(script):
    tree = ast.parse((ROOT / script).read_text())
    functions = [n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert functions == [], f"{script} defines {functions}: recipe code belongs in dllm.sft.recipe"


# Paths of the machines the library was built on (a user's clone has none of them).
LOCAL_PATHS = ("../shared", "/work/", "/home/", "/root/", "/tmp/")


def test_no_path_outside_the_repository_in_the_product():
    shipped = [ROOT / "README.md", *(ROOT / "dllm").rglob("*.py"), *(ROOT / "examples").rglob("*.py"),
               *(ROOT / "scripts").rglob("*"), *(ROOT / "docs").rglob("*.md")]
    offenders = [str(p.relative_to(ROOT)) for p in shipped
                 if p.is_file() and any(local in p.read_text() for local in LOCAL_PATHS)]
    assert offenders == []


def test_functions_are_short_and_public_ones_typed():
    """No function over 60 lines; public functions (and ``__init__``) annotate their return type and every
    named parameter, models, tokenizers and processors included (the style guide)."""
    long, untyped, bare = [], [], []
    for path in (ROOT / "dllm").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
            if node.end_lineno - node.lineno + 1 > 60:
                long.append(where)
            if node.name.startswith("_") and node.name != "__init__":
                continue
            if node.returns is None and node.name != "__init__":
                untyped.append(where)
            named = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
            bare += [f"{where}({a.arg})" for a in named if a.annotation is None and a.arg not in ("self", "cls")]
    assert long == [] and untyped == [] and bare == [], {
        "over 60 lines": long, "no return annotation": untyped, "unannotated parameters": bare}
