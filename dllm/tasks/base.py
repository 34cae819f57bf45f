"""What every offline task shares: a seeded generator of rows, a train / test split by a stable hash, and an
exact verifier.

A task draws rows ``{"prompt", "answer", ...}`` from a seeded ``random.Random`` (:meth:`Task.sample_row`). The
split is a property of the *puzzle* (:meth:`Task.split_key`, by default the prompt): a stable hash puts each
puzzle in one bucket (:func:`is_heldout`), so the test puzzles are disjoint from every training puzzle whatever
the seeds or sample counts, and a model can only score on them by learning the rule. :meth:`Task.verify` decides
whether a completion solves a row; by default it must equal the row's answer after whitespace normalisation.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

SPLITS = ("train", "test")


def heldout_bucket(key: str) -> float:
    """A stable pseudo-random number in [0, 1) determined by ``key`` alone (blake2b, not Python's hash)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_heldout(key: str, heldout_fraction: float) -> bool:
    """Whether ``key`` (a prompt, or a task's canonical puzzle) belongs to the held-out split."""
    return heldout_bucket(key) < heldout_fraction


def normalize_answer(text: str) -> str:
    """Whitespace-normalised answer: leading and trailing whitespace dropped, every inner run one space."""
    return " ".join(text.split())


@dataclass(frozen=True)
class Task(ABC):
    """A family of rows; a subclass implements ``_draw`` (or ``_draw_row`` for rows with more columns than
    prompt and answer) and ``max_answer_length``, and may override ``split_key`` and ``verify``."""

    name = "task"
    version = 1
    """Bumped whenever the rows a seed draws or the verifier change (result files record it)."""

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        """One (prompt, answer) pair from either split."""
        row = self._draw_row(rng)
        return row["prompt"], row["answer"]

    def _draw_row(self, rng: random.Random) -> dict[str, Any]:
        """One row from either split: ``prompt``, ``answer`` and the columns :meth:`verify` reads."""
        prompt, answer = self._draw(rng)
        return {"prompt": prompt, "answer": answer}

    def split_key(self, row: dict[str, Any]) -> str:
        """The string whose hash decides the row's split: the prompt (one puzzle, one prompt)."""
        return row["prompt"]

    def sample_row(self, rng: random.Random, split: str = "train", heldout_fraction: float = 0.1) -> dict[str, Any]:
        """Draw one row of ``split`` ("train" or "test") by rejection on its held-out bucket."""
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        for _ in range(10_000):
            row = self._draw_row(rng)
            if is_heldout(self.split_key(row), heldout_fraction) == (split == "test"):
                return row
        raise RuntimeError(f"task {self.name!r}: no {split} prompt in 10000 draws "
                           f"(heldout_fraction={heldout_fraction})")

    def sample(self, rng: random.Random, split: str = "train", heldout_fraction: float = 0.1) -> tuple[str, str]:
        """Draw one (prompt, answer) pair of ``split``; see :meth:`sample_row`."""
        row = self.sample_row(rng, split, heldout_fraction)
        return row["prompt"], row["answer"]

    def verify(self, row: dict[str, Any], completion: str) -> bool:
        """Whether ``completion`` solves ``row``: here, it equals the answer up to whitespace."""
        return normalize_answer(completion) == normalize_answer(row["answer"])

    @abstractmethod
    def max_answer_length(self) -> int:
        """Longest answer in characters, so a sampler can fix its generation length."""


def iter_examples(tasks: Sequence[Task], split: str = "train", seed: int = 0, heldout_fraction: float = 0.1
                  ) -> Iterator[dict]:
    """Endless round-robin stream of rows (``prompt``, ``answer``, ``task`` and the task's own columns) over
    ``tasks``, deterministic in ``seed``."""
    rng = random.Random(f"{split}-{seed}")
    while True:
        for task in tasks:
            yield {**task.sample_row(rng, split, heldout_fraction), "task": task.name}


def make_examples(tasks: Sequence[Task], num_per_task: int, split: str = "train", seed: int = 0,
                  heldout_fraction: float = 0.1, unique: bool | None = None) -> list[dict]:
    """``num_per_task`` examples of every task from ``split``, in round-robin order.

    ``unique`` (default: True for "test", False for "train") keeps only the first occurrence of each prompt,
    so an evaluation set does not count the same question twice. A task whose held-out space holds fewer
    than ``num_per_task`` distinct prompts raises instead of looping forever.
    """
    unique = split == "test" if unique is None else unique
    rows: dict[str, list[dict]] = {task.name: [] for task in tasks}
    seen: set[str] = set()
    misses = 0
    for row in iter_examples(tasks, split, seed, heldout_fraction):
        bucket = rows[row["task"]]
        if len(bucket) >= num_per_task:
            if all(len(b) >= num_per_task for b in rows.values()):
                break
            continue
        if unique and row["prompt"] in seen:
            misses += 1
            if misses > 100 * num_per_task * len(tasks):
                raise RuntimeError(f"task {row['task']!r}: fewer than {num_per_task} distinct {split} prompts")
            continue
        seen.add(row["prompt"])
        bucket.append(row)
    # Interleave the tasks again so any prefix of the list is balanced.
    return [rows[task.name][i] for i in range(num_per_task) for task in tasks]


def to_messages(example: dict) -> dict:
    """A row -> ``{"messages": [user, assistant], "task", ...}`` (chat format; the task's columns kept)."""
    rest = {k: v for k, v in example.items() if k not in ("prompt", "answer")}
    return {
        "messages": [
            {"role": "user", "content": example["prompt"]},
            {"role": "assistant", "content": example["answer"]},
        ],
        **rest,
    }


def make_messages_dataset(tasks: Sequence[Task], num_per_task: int, split: str = "train", seed: int = 0,
                          heldout_fraction: float = 0.1, unique: bool | None = None) -> list[dict]:
    """Rows ``{"messages": [...], "task": name, ...}`` for the SFT collator; see ``make_examples``."""
    return [to_messages(ex) for ex in make_examples(tasks, num_per_task, split, seed, heldout_fraction, unique)]
