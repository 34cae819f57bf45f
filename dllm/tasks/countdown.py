"""Countdown: reach a target number with given numbers, each used once, and ``+ - * /`` (the arithmetic task of
d1, arXiv 2504.12216, and of TinyZero).

``Using the numbers 3, 7, 25 once each, with + - * / and parentheses, write an expression equal to 82.`` ->
``(25+7)*3-14``-style answers; any expression that uses exactly the given numbers (as a multiset), only those
operators and parentheses, and evaluates exactly (rational arithmetic, no rounding) to the target is correct
(:func:`check_expression`), not only the reference the generator built.

The generator draws the numbers, then combines them in a random order with random operators, keeping every
intermediate value a positive integer (a subtraction takes the larger first; a division must be exact), so each
puzzle has at least the reference solution. The split key is the sorted numbers and the target, so a puzzle
whose numbers are listed in another order lands in the same split.
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from dllm.tasks.answers import extract_answer
from dllm.tasks.base import Task

_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.Div: lambda a, b: a / b}
_SYMBOLS = {"+": ast.Add, "-": ast.Sub, "*": ast.Mult, "/": ast.Div}
MAX_EXPRESSION_CHARS = 200
"""Longer answers are wrong without being parsed (bounded work per completion)."""


def _evaluate(node: ast.AST, used: list[int]) -> Fraction:
    """The exact value of an expression of integer literals, ``+ - * /`` and parentheses; appends each literal
    to ``used``. Raises ValueError on anything else (names, calls, unary minus, powers, floats)."""
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left, used), _evaluate(node.right, used)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ValueError("division by zero")
        return _OPERATORS[type(node.op)](left, right)
    raise ValueError(f"not allowed in a countdown answer: {type(node).__name__}")


def check_expression(expression: str, numbers: list[int], target: int) -> bool:
    """Whether ``expression`` (an optional trailing ``= ...`` is ignored) uses each of ``numbers`` exactly once,
    only ``+ - * /`` and parentheses, and equals ``target`` exactly."""
    expression = expression.split("=")[0].strip()
    if not expression or len(expression) > MAX_EXPRESSION_CHARS:
        return False
    try:
        used: list[int] = []
        value = _evaluate(ast.parse(expression, mode="eval"), used)
    except (SyntaxError, ValueError, RecursionError):
        return False
    return sorted(used) == sorted(numbers) and value == target


@dataclass(frozen=True)
class Countdown(Task):
    """``num_numbers`` numbers in ``min_number``..``max_number`` and a target in 1..``max_target`` reachable
    with them."""

    num_numbers: int = 3
    min_number: int = 1
    max_number: int = 50
    max_target: int = 100
    name = "countdown"
    version = 1

    def _combine(self, rng: random.Random, numbers: list[int]) -> tuple[int, str] | None:
        """A random expression over all ``numbers`` with positive integer intermediates: (value, text)."""
        items = [(n, str(n)) for n in numbers]
        rng.shuffle(items)
        while len(items) > 1:
            (a, left), (b, right) = items.pop(), items.pop()
            symbol = rng.choice("+-*/")
            if symbol == "-" and a < b or symbol == "/" and a % b and b % a == 0:  # the larger first
                (a, left), (b, right) = (b, right), (a, left)
            value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if a % b == 0 else None}[symbol]
            if not value:  # a zero difference or an inexact division
                return None
            wrap = (lambda text: f"({text})") if items else (lambda text: text)
            items.append((value, wrap(f"{left}{symbol}{right}")))
        return items[0]

    def __post_init__(self):
        if self.num_numbers < 2 or not 1 <= self.min_number <= self.max_number or self.max_target < 1:
            raise ValueError(f"countdown: need num_numbers >= 2, 1 <= min_number <= max_number, max_target >= 1; "
                             f"got {self.num_numbers}, {self.min_number}, {self.max_number}, {self.max_target}")

    def _draw_row(self, rng: random.Random) -> dict[str, Any]:
        for _ in range(10_000):
            numbers = [rng.randint(self.min_number, self.max_number) for _ in range(self.num_numbers)]
            combined = self._combine(rng, numbers)
            if combined is not None and 1 <= combined[0] <= self.max_target:
                break
        else:
            raise RuntimeError(f"countdown: no target in 1..{self.max_target} in 10000 draws")
        target, expression = combined
        listed = ", ".join(map(str, numbers))
        prompt = (f"Using the numbers {listed} once each, with + - * / and parentheses, write an expression "
                  f"equal to {target}.")
        return {"prompt": prompt, "answer": expression, "numbers": numbers, "target": target}

    def split_key(self, row: dict[str, Any]) -> str:
        return f"countdown {sorted(row['numbers'])} {row['target']}"

    def verify(self, row: dict[str, Any], completion: str) -> bool:
        return check_expression(extract_answer(completion), list(row["numbers"]), int(row["target"]))

    def max_answer_length(self) -> int:
        # the numbers, one operator between each two, a pair of parentheses round every inner combination
        return self.num_numbers * len(str(self.max_number)) + (self.num_numbers - 1) + 2 * (self.num_numbers - 2)
