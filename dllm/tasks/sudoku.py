"""4x4 Sudoku (the planning task of d1, arXiv 2504.12216): fill a grid so that every row, column and 2x2 box
holds 1-4 once.

``Solve the 4x4 sudoku (rows top to bottom, 0 = empty; every row, column and 2x2 box holds 1 2 3 4 once):
1030 0200 0010 0403`` -> ``1234 3412 2143 4321``-style answers. A completion is right when its digits (16 of
them; spaces and separators ignored) form a valid grid that keeps every given (:func:`check_grid`); puzzles are
drawn with exactly one solution, so that is also the reference.

The generator fills a random solution by backtracking over shuffled digits, then empties cells in a random order
while the puzzle keeps a unique solution, until ``min_empty``..``max_empty`` cells are empty. The split key is the
puzzle (the prompt is a function of it).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from dllm.tasks.answers import extract_answer
from dllm.tasks.base import Task

SIZE, BOX = 4, 2
DIGITS = "1234"
MAX_EMPTY = 12
"""A 4x4 puzzle with a unique solution has at least 4 givens."""


def _units() -> list[list[int]]:
    """The cell indices (row-major, 0..15) of every row, column and box."""
    rows = [[r * SIZE + c for c in range(SIZE)] for r in range(SIZE)]
    columns = [[r * SIZE + c for r in range(SIZE)] for c in range(SIZE)]
    boxes = [[(br + r) * SIZE + bc + c for r in range(BOX) for c in range(BOX)]
             for br in range(0, SIZE, BOX) for bc in range(0, SIZE, BOX)]
    return rows + columns + boxes


UNITS = _units()


def is_solution(grid: str) -> bool:
    """Whether ``grid`` (16 characters, row-major) holds 1-4 once in every row, column and box."""
    return len(grid) == SIZE * SIZE and all(sorted(grid[i] for i in unit) == list(DIGITS) for unit in UNITS)


def check_grid(answer: str, puzzle: str) -> bool:
    """Whether the digits of ``answer`` are a solution of ``puzzle`` (16 characters, ``0`` = empty) keeping
    every given."""
    digits = "".join(re.findall(r"\d", answer))
    return is_solution(digits) and all(p in ("0", d) for p, d in zip(puzzle, digits))


def count_solutions(grid: list[str], limit: int = 2) -> int:
    """Solutions of a partial grid (``"0"`` = empty), counted up to ``limit`` (backtracking)."""
    if "0" not in grid:
        return 1
    cell = grid.index("0")
    taken = {grid[i] for unit in UNITS if cell in unit for i in unit}
    found = 0
    for digit in DIGITS:
        if digit not in taken:
            grid[cell] = digit
            found += count_solutions(grid, limit - found)
            grid[cell] = "0"
            if found >= limit:
                break
    return found


def _fill(grid: list[str], rng: random.Random) -> bool:
    """Fill the empty cells of ``grid`` in place with a random solution; False when there is none."""
    if "0" not in grid:
        return True
    cell = grid.index("0")
    taken = {grid[i] for unit in UNITS if cell in unit for i in unit}
    for digit in rng.sample(DIGITS, len(DIGITS)):
        if digit not in taken:
            grid[cell] = digit
            if _fill(grid, rng):
                return True
    grid[cell] = "0"
    return False


def _rows(grid: str) -> str:
    return " ".join(grid[r * SIZE:(r + 1) * SIZE] for r in range(SIZE))


@dataclass(frozen=True)
class Sudoku(Task):
    """A 4x4 puzzle with ``min_empty``..``max_empty`` empty cells and a unique solution."""

    min_empty: int = 6
    max_empty: int = 10
    name = "sudoku"
    version = 1

    def __post_init__(self):
        if not 0 <= self.min_empty <= self.max_empty <= MAX_EMPTY:
            raise ValueError(f"sudoku: need 0 <= min_empty <= max_empty <= {MAX_EMPTY}, got "
                             f"{self.min_empty}, {self.max_empty}")

    def _puzzle(self, rng: random.Random) -> tuple[list[str], list[str]] | None:
        """A random solution and a puzzle of it with a unique solution and the drawn number of empty cells."""
        solution = ["0"] * (SIZE * SIZE)
        _fill(solution, rng)
        puzzle, want = list(solution), rng.randint(self.min_empty, self.max_empty)
        for cell in rng.sample(range(SIZE * SIZE), SIZE * SIZE):
            if puzzle.count("0") == want:
                break
            puzzle[cell] = "0"
            if count_solutions(list(puzzle)) > 1:
                puzzle[cell] = solution[cell]
        return (puzzle, solution) if puzzle.count("0") == want else None

    def _draw_row(self, rng: random.Random) -> dict[str, Any]:
        for _ in range(1000):
            drawn = self._puzzle(rng)
            if drawn is not None:
                break
        else:
            raise RuntimeError(f"sudoku: no unique puzzle with {self.min_empty}..{self.max_empty} empty cells")
        puzzle, solution = drawn
        puzzle_text, solution_text = "".join(puzzle), "".join(solution)
        prompt = ("Solve the 4x4 sudoku (rows top to bottom, 0 = empty; every row, column and 2x2 box holds "
                  f"1 2 3 4 once): {_rows(puzzle_text)}")
        return {"prompt": prompt, "answer": _rows(solution_text), "puzzle": puzzle_text, "solution": solution_text}

    def split_key(self, row: dict[str, Any]) -> str:
        return f"sudoku {row['puzzle']}"

    def verify(self, row: dict[str, Any], completion: str) -> bool:
        return check_grid(extract_answer(completion), row["puzzle"])

    def max_answer_length(self) -> int:
        return SIZE * SIZE + SIZE - 1
