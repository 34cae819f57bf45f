"""Synthetic instruction tasks for the offline demo: short English prompts with one exact answer each.

Every task draws ``(prompt, answer)`` pairs from a seeded ``random.Random``. The train / held-out split is
a property of the *prompt* (a stable hash puts each prompt in one bucket), so the held-out prompts are
disjoint from every training prompt, whatever the seeds or sample counts, and a model can only score on
them by learning the rule.

None of the tasks can be solved by copying the prompt in order:

* ``sort``     ``sort 5391``          -> ``1359``  (digits in ascending order)
* ``reverse``  ``reverse hello``      -> ``olleh`` (letters in reverse order)
* ``add``      ``add 47+85``          -> ``231``   (the sum 132, least-significant digit first)
* ``count``    ``count a in abcab``   -> ``2``     (occurrences of a letter; not in the default mix)

The demo trains on the first three (:func:`default_tasks`): sort 3-6 digits, reverse 3-6 letters, add two
2-digit numbers.
"""

from __future__ import annotations

import hashlib
import random
import string
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterator, Sequence

# Every character any task prompt or answer uses; the demo builds its character tokenizer from this.
DEMO_ALPHABET = string.ascii_lowercase + string.digits + " +"


def heldout_bucket(prompt: str) -> float:
    """A stable pseudo-random number in [0, 1) determined by the prompt alone (blake2b, not Python's hash)."""
    digest = hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def is_heldout(prompt: str, heldout_fraction: float) -> bool:
    """Whether ``prompt`` belongs to the held-out split; the same prompt always gets the same answer."""
    return heldout_bucket(prompt) < heldout_fraction


@dataclass(frozen=True)
class Task(ABC):
    """A family of (prompt, answer) pairs; subclasses implement ``_draw`` and ``max_answer_length``."""

    name = "task"

    @abstractmethod
    def _draw(self, rng: random.Random) -> tuple[str, str]:
        """One (prompt, answer) pair from either split."""

    def sample(self, rng: random.Random, split: str = "train", heldout_fraction: float = 0.1) -> tuple[str, str]:
        """Draw one pair from ``split`` ("train" or "test") by rejection on the prompt's held-out bucket."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        want_heldout = split == "test"
        for _ in range(10_000):
            prompt, answer = self._draw(rng)
            if is_heldout(prompt, heldout_fraction) == want_heldout:
                return prompt, answer
        raise RuntimeError(f"task {self.name!r}: no {split} prompt in 10000 draws "
                           f"(heldout_fraction={heldout_fraction})")

    @abstractmethod
    def max_answer_length(self) -> int:
        """Longest answer in characters, so a sampler can fix its generation length."""


@dataclass(frozen=True)
class SortDigits(Task):
    """``sort 5391`` -> ``1359``: a string of ``min_len``..``max_len`` random digits, sorted ascending."""

    min_len: int = 3
    max_len: int = 6
    name = "sort"

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        digits = [rng.choice(string.digits) for _ in range(rng.randint(self.min_len, self.max_len))]
        return "sort " + "".join(digits), "".join(sorted(digits))

    def max_answer_length(self) -> int:
        return self.max_len


@dataclass(frozen=True)
class ReverseWord(Task):
    """``reverse hello`` -> ``olleh``: ``min_len``..``max_len`` random lowercase letters, reversed."""

    min_len: int = 3
    max_len: int = 6
    name = "reverse"

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(self.min_len, self.max_len)))
        return "reverse " + word, word[::-1]

    def max_answer_length(self) -> int:
        return self.max_len


@dataclass(frozen=True)
class AddNumbers(Task):
    """``add 47+85`` -> ``231``: two numbers of ``min_digits``..``max_digits`` digits and their sum.

    ``lsd_first`` writes the sum least-significant digit first (132 -> "231"), the usual help for left-to-right
    decoders: each digit then depends on the operand digits at its place plus the carry from the one before.
    ``pad_answer`` zero-pads the sum to ``max_digits + 1`` digits ("add 12+34" -> "046"), which puts every answer
    digit at a fixed offset from the operand digits it depends on.
    """

    min_digits: int = 1
    max_digits: int = 2
    lsd_first: bool = True
    pad_answer: bool = False
    name = "add"

    def _number(self, rng: random.Random) -> int:
        digits = rng.randint(self.min_digits, self.max_digits)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        a, b = self._number(rng), self._number(rng)
        total = str(a + b).zfill(self.max_digits + 1 if self.pad_answer else 1)
        return f"add {a}+{b}", total[::-1] if self.lsd_first else total

    def max_answer_length(self) -> int:
        return self.max_digits + 1


@dataclass(frozen=True)
class CountLetter(Task):
    """``count a in banana`` -> ``3``: how often a letter occurs in a word of ``min_len``..``max_len`` letters
    drawn from a small alphabet (so counts above one are common)."""

    min_len: int = 3
    max_len: int = 8
    letters: str = "abcde"
    name = "count"

    def _draw(self, rng: random.Random) -> tuple[str, str]:
        word = "".join(rng.choice(self.letters) for _ in range(rng.randint(self.min_len, self.max_len)))
        letter = rng.choice(self.letters)
        return f"count {letter} in {word}", str(word.count(letter))

    def max_answer_length(self) -> int:
        return len(str(self.max_len))


def default_tasks() -> list[Task]:
    """The demo's task mix: three tasks that each need a rule other than copying."""
    return [SortDigits(), ReverseWord(), AddNumbers(min_digits=2, max_digits=2)]


def iter_examples(tasks: Sequence[Task], split: str = "train", seed: int = 0, heldout_fraction: float = 0.1
                  ) -> Iterator[dict]:
    """Endless round-robin stream of ``{"prompt", "answer", "task"}`` over ``tasks``, deterministic in ``seed``."""
    rng = random.Random(f"{split}-{seed}")
    while True:
        for task in tasks:
            prompt, answer = task.sample(rng, split, heldout_fraction)
            yield {"prompt": prompt, "answer": answer, "task": task.name}


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
    """``{"prompt", "answer", "task"}`` -> ``{"messages": [user, assistant], "task"}`` (chat format)."""
    return {
        "messages": [
            {"role": "user", "content": example["prompt"]},
            {"role": "assistant", "content": example["answer"]},
        ],
        "task": example["task"],
    }


def make_messages_dataset(tasks: Sequence[Task], num_per_task: int, split: str = "train", seed: int = 0,
                          heldout_fraction: float = 0.1, unique: bool | None = None) -> list[dict]:
    """Rows ``{"messages": [...], "task": name}`` for the SFT collator; see ``make_examples``."""
    return [to_messages(ex) for ex in make_examples(tasks, num_per_task, split, seed, heldout_fraction, unique)]
