"""Offline tasks with seeded generators and exact verifiers, shared by ``dllm eval``, the demos and post-training
rewards. Pure Python: importing this package imports neither torch nor transformers.

- :mod:`~dllm.tasks.base`: :class:`Task` (``sample_row``, ``verify``, ``split_key``), the hash split
  (:func:`is_heldout`), :func:`make_examples` / :func:`iter_examples` / :func:`to_messages`.
- :mod:`~dllm.tasks.demo`: the demo's sort / reverse / add / count tasks (:func:`default_tasks`).
- :mod:`~dllm.tasks.countdown`: :class:`Countdown` (reach a target with + - * /), :func:`check_expression`.
- :mod:`~dllm.tasks.sudoku`: :class:`Sudoku` (4x4), :func:`check_grid`.
- :mod:`~dllm.tasks.rewards`: the verifiers as trl reward functions (:data:`countdown_reward`,
  :data:`sudoku_reward`, :func:`task_reward`).

:func:`tasks_named` maps the names ``dllm eval --task`` takes to their task lists.
"""

from __future__ import annotations

from dllm.tasks.answers import completion_text, extract_answer
from dllm.tasks.base import (
    Task,
    heldout_bucket,
    is_heldout,
    iter_examples,
    make_examples,
    make_messages_dataset,
    normalize_answer,
    to_messages,
)
from dllm.tasks.countdown import Countdown, check_expression
from dllm.tasks.demo import DEMO_ALPHABET, AddNumbers, CountLetter, ReverseWord, SortDigits, default_tasks
from dllm.tasks.rewards import countdown_reward, sudoku_reward, task_reward
from dllm.tasks.sudoku import Sudoku, check_grid

TASK_SETS = {"demo": default_tasks, "countdown": lambda: [Countdown()], "sudoku": lambda: [Sudoku()]}
"""``dllm eval --task NAME``: the tasks of each generated task set."""


def tasks_named(name: str) -> list[Task]:
    """The tasks of the set ``name`` (a key of :data:`TASK_SETS`).

    Raises:
        KeyError: no such set (the message lists them).
    """
    if name not in TASK_SETS:
        raise KeyError(f"no task set {name!r}; choose one of {', '.join(TASK_SETS)}")
    return TASK_SETS[name]()


__all__ = [
    "DEMO_ALPHABET", "TASK_SETS", "AddNumbers", "CountLetter", "Countdown", "ReverseWord", "SortDigits", "Sudoku",
    "Task", "check_expression", "check_grid", "completion_text", "countdown_reward", "default_tasks",
    "extract_answer", "heldout_bucket", "is_heldout", "iter_examples", "make_examples", "make_messages_dataset",
    "normalize_answer", "sudoku_reward", "task_reward", "tasks_named", "to_messages",
]
