"""Task verifiers as reward functions of trl's signature, ``reward(prompts, completions, **columns) -> list[float]``:
1.0 for a completion that solves its row, else 0.0.

trl's ``GRPOTrainer(reward_funcs=[countdown_reward])`` calls a reward function with the batch's prompts, its
completions (strings, or conversations whose last message is the completion) and every other dataset column as a
keyword argument of per-row lists, so a dataset of a task's rows (``prompt`` plus the task's columns: ``numbers``
and ``target`` for Countdown, ``puzzle`` for Sudoku, ``answer`` for the exact-match tasks) feeds them directly.
Extra keywords trl adds (``completion_ids``, ``trainer_state``, ...) are accepted and ignored.
"""

from __future__ import annotations

from typing import Any, Callable

from dllm.tasks.answers import completion_text
from dllm.tasks.base import Task
from dllm.tasks.countdown import Countdown
from dllm.tasks.sudoku import Sudoku

RewardFunction = Callable[..., list[float]]
"""``(prompts, completions, **columns) -> list[float]``, one reward per completion."""


def task_reward(task: Task, columns: tuple[str, ...] = ("answer",)) -> RewardFunction:
    """A reward function scoring completions with ``task.verify``; ``columns`` are the dataset columns the
    verifier reads (each passed by trl as a per-row list). Named ``<task>_reward`` (trl logs rewards by name)."""

    def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
        missing = [name for name in columns if name not in kwargs]
        if missing:
            raise ValueError(f"{task.name}_reward needs the dataset column(s) {missing} (got {sorted(kwargs)})")
        rows = [{name: kwargs[name][i] for name in columns} for i in range(len(completions))]
        return [float(task.verify(row, completion_text(c))) for row, c in zip(rows, completions)]

    reward.__name__ = reward.__qualname__ = f"{task.name}_reward"
    reward.__doc__ = f"1.0 when a completion solves its {task.name} row (columns {', '.join(columns)}), else 0.0."
    return reward


countdown_reward: RewardFunction = task_reward(Countdown(), ("numbers", "target"))
"""Countdown: the expression uses each of ``numbers`` once and equals ``target`` (columns ``numbers``, ``target``)."""

sudoku_reward: RewardFunction = task_reward(Sudoku(), ("puzzle",))
"""4x4 Sudoku: the completion's 16 digits solve ``puzzle`` keeping its givens (column ``puzzle``)."""
