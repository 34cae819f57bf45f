"""The demo's synthetic instruction tasks: short English prompts with one exact answer each.

None of the tasks can be solved by copying the prompt in order:

* ``sort``     ``sort 5391``          -> ``1359``  (digits in ascending order)
* ``reverse``  ``reverse hello``      -> ``olleh`` (letters in reverse order)
* ``add``      ``add 47+85``          -> ``231``   (the sum 132, least-significant digit first)
* ``count``    ``count a in abcab``   -> ``2``     (occurrences of a letter; not in the default mix)

The demo trains on the first three (:func:`default_tasks`): sort 3-6 digits, reverse 3-6 letters, add two
2-digit numbers. Splits by prompt hash and exact match, as :class:`~dllm.tasks.base.Task` does by default.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from dllm.tasks.base import Task

# Every character any task prompt or answer uses; the demo builds its character tokenizer from this.
DEMO_ALPHABET = string.ascii_lowercase + string.digits + " +"


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
