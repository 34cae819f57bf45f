"""The ``dllm`` command itself: no command, ``--version``, and ``--help`` of every verb without the optional extras."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import dllm
from dllm.cli import COMMANDS, EXTRAS
from dllm.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
EXTRA_MODULES = ("gradio", "fastapi", "uvicorn", "lm_eval", "deepspeed", "matplotlib")


def test_no_command_lists_the_verbs_and_exits_2(capsys):
    assert cli_main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: dllm <command> [flags]")
    listed = {line.split()[0] for line in err.splitlines() if line.startswith("  ") and not line.startswith("   ")}
    assert set(COMMANDS) <= listed


@pytest.mark.parametrize("argv", [["--version"], ["version"]])
def test_version(capsys, argv):
    assert cli_main(argv) == 0
    assert capsys.readouterr() == (f"{dllm.__version__}\n", "")


@pytest.mark.parametrize(("argv", "expected"), [
    (["sft", "llama3", "--time_eps", "2"], "time_eps must be in [0, 1], got 2.0"),
    (["sft", "qwen3_vl", "--no_such_flag", "1"], "not used by the HfArgumentParser: ['--no_such_flag', '1']"),
    (["pt", "llama3", "--model_name_or_path", "{missing}", "--max_seq_length", "0"],
     "max_seq_length must be a positive integer, got 0"),
    (["sft", "llama3", "--model_name_or_path", "{missing}"], "{missing}: no such checkpoint folder"),
])
def test_a_flag_mistake_of_a_named_family_comes_before_an_unreadable_checkpoint(tmp_path, capsys, argv, expected):
    """One line, status 2, and the flag's mistake rather than the missing checkpoint (or the unreachable Hub) when
    both are wrong; the checkpoint's when only it is."""
    missing = str(tmp_path / "nope")
    assert cli_main([a.format(missing=missing) for a in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected.format(missing=missing) in err, err


def _without(monkeypatch, *modules: str) -> None:
    """Make ``modules`` absent: ``import`` fails and ``importlib.util.find_spec`` answers None."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("command", list(EXTRAS))
def test_a_verb_without_its_extra_says_how_to_install_it(monkeypatch, capsys, command):
    extra, modules = EXTRAS[command]
    _without(monkeypatch, *modules)
    assert cli_main([command, "outputs/demo"]) == 2
    assert capsys.readouterr().err == (f"dllm {command}: needs {' and '.join(modules)}: "
                                       f"pip install -e '.[{extra}]'\n")


def test_help_of_a_verb_without_its_extra_lists_the_flags_and_says_what_it_needs(monkeypatch, capsys):
    _without(monkeypatch, "gradio")
    with pytest.raises(SystemExit) as info:
        cli_main(["playground", "--help"])
    out, err = capsys.readouterr()
    assert info.value.code == 0
    assert out.startswith("usage: dllm playground") and "--port" in out
    assert err == "dllm playground needs gradio: pip install -e '.[web]'\n"


def test_help_of_a_verb_whose_module_needs_its_extra_says_what_it_needs(monkeypatch, capsys):
    """dllm.inference.server imports fastapi at the top, so without it even --help can only say what it needs."""
    _without(monkeypatch, "fastapi", "uvicorn")
    monkeypatch.delitem(sys.modules, "dllm.inference.server", raising=False)  # imported afresh, without fastapi
    assert cli_main(["serve", "--help"]) == 2
    assert capsys.readouterr() == ("", "dllm serve: needs fastapi and uvicorn: pip install -e '.[serve]'\n")


@pytest.mark.slow
def test_every_verbs_help_works_without_the_optional_extras():
    """In a fresh interpreter where no optional extra can be imported, each verb's --help prints its usage and
    exits 0."""
    code = (f"import sys\nfor name in {EXTRA_MODULES!r}:\n    sys.modules[name] = None\n"
            "from dllm.cli import COMMANDS, main\n"
            "for verb in COMMANDS:\n"
            "    try:\n        main([verb, '--help'])\n    except SystemExit as done:\n"
            "        print(f'@@ {verb} {done.code}', flush=True)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    codes = dict(line.split()[1:] for line in run.stdout.splitlines() if line.startswith("@@ "))
    # serve imports fastapi at the top; lm-eval's --help is lm-eval's own: both say in one line what they need
    assert codes == {verb: "0" for verb in COMMANDS if verb not in ("serve", "lm-eval")}, run.stderr[-3000:]
    helps = re.split(r"^@@ .*\n", run.stdout, flags=re.M)[:-1]  # each verb's output comes before its marker
    assert len(helps) == len(codes) and all(h.startswith("usage: ") and "-h, --help" in h for h in helps)
    assert "dllm serve: needs fastapi and uvicorn: pip install -e '.[serve]'" in run.stderr
    assert "dllm lm-eval: needs lm-evaluation-harness: pip install -e '.[eval]'" in run.stderr
