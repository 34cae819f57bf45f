"""The offline tasks: generators are seeded, train and test puzzles never meet, references pass their verifiers,
the verifiers agree with brute-force references and refuse what is not an answer, and the trl reward functions
read dataset columns."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from fractions import Fraction

import pytest

from dllm.tasks import (
    TASK_SETS,
    Countdown,
    Sudoku,
    check_expression,
    check_grid,
    countdown_reward,
    make_examples,
    sudoku_reward,
    task_reward,
    tasks_named,
)
from dllm.tasks.sudoku import count_solutions, is_solution
from tests.helpers import import_step


def _reachable(numbers: list[Fraction]) -> set[Fraction]:
    """Every value an expression using each of ``numbers`` once reaches (brute force over splits and operators)."""
    if len(numbers) == 1:
        return {numbers[0]}
    values = set()
    for mask in range(1, 2 ** len(numbers) - 1):
        left = [n for i, n in enumerate(numbers) if mask >> i & 1]
        right = [n for i, n in enumerate(numbers) if not mask >> i & 1]
        for a in _reachable(left):
            for b in _reachable(right):
                values |= {a + b, a - b, a * b} | ({a / b} if b else set())
    return values


@pytest.mark.parametrize("task", [Countdown(), Sudoku(), Countdown(num_numbers=4, max_number=20)])
def test_rows_are_seeded_and_their_references_pass(task):
    rows = make_examples([task], 40, "test", seed=3)
    assert rows == make_examples([task], 40, "test", seed=3)
    assert rows != make_examples([task], 40, "test", seed=4)
    assert all(task.verify(row, row["answer"]) for row in rows)
    assert all(len(row["answer"]) <= task.max_answer_length() for row in rows)
    assert all(task.verify(row, f"I think <answer>{row['answer']}</answer>") for row in rows)


@pytest.mark.parametrize("task", [Countdown(), Sudoku()])
def test_train_and_test_puzzles_are_disjoint(task):
    train = {task.split_key(r) for r in make_examples([task], 600, "train", seed=0, heldout_fraction=0.3)}
    test = {task.split_key(r) for r in make_examples([task], 200, "test", seed=1, heldout_fraction=0.3)}
    assert len(test) == 200 and not train & test


def test_countdown_split_key_ignores_the_order_of_the_numbers():
    task = Countdown()
    row = make_examples([task], 1, "test", seed=0)[0]
    swapped = {**row, "numbers": row["numbers"][::-1]}
    assert task.split_key(swapped) == task.split_key(row)


def test_countdown_targets_are_reachable_and_the_verifier_matches_brute_force():
    task = Countdown(num_numbers=3, max_number=9, max_target=30)
    rows = make_examples([task], 30, "test", seed=0)
    for row in rows:
        assert row["target"] in _reachable([Fraction(n) for n in row["numbers"]])
    a, b, c = 3, 4, 6
    candidates = [f"{x}{o1}{y}{o2}{z}" for x, y, z in itertools.permutations((a, b, c)) for o1 in "+-*/"
                  for o2 in "+-*/"] + [f"({x}{o1}{y}){o2}{z}" for x, y, z in itertools.permutations((a, b, c))
                                       for o1 in "+-*/" for o2 in "+-*/"]
    for expression in candidates:
        value = eval(expression)  # the test's own literals only
        for target in (int(value), 7):
            assert check_expression(expression, [a, b, c], target) == (value == target), (expression, target)


@pytest.mark.parametrize("answer, ok", [
    ("(3+4)*6", True), ("6*(4+3) = 42", True), ("  (3+4)*6\n", True), ("3*4/2*6-...", False),
    ("(3+4)*6*1", False),  # a number not given
    ("(3+3)*7", False),  # a number twice, one missing
    ("7*6", False),  # 7 is not a given number
    ("-3+4*6+21", False), ("(3+4)**6", False), ("__import__('os')", False), ("6/(4-4)*3", False),
    ("(3.0+4)*6", False), ("", False), ("42", False), ("True*42", False),
])
def test_countdown_verifier_refuses_what_is_not_a_solution(answer, ok):
    assert check_expression(answer, [3, 4, 6], 42) is ok


def test_countdown_accepts_exact_rational_intermediates():
    assert check_expression("(1/3+1)*3", [1, 3, 1, 3], 4)
    assert not check_expression("1/3*3", [1, 3, 3], 1.0000001)


def test_sudoku_counts_match_brute_force():
    grids = ["".join(rows) for rows in itertools.product(map("".join, itertools.permutations("1234")), repeat=4)]
    solutions = [g for g in grids if is_solution(g)]
    assert len(solutions) == 288  # the number of 4x4 Sudoku grids
    for row in make_examples([Sudoku()], 25, "test", seed=0):
        consistent = [s for s in solutions if check_grid(s, row["puzzle"])]
        assert consistent == [row["solution"]]  # unique, and the verifier agrees with brute force
        assert count_solutions(list(row["puzzle"])) == 1
        assert 6 <= row["puzzle"].count("0") <= 10


def test_sudoku_verifier_needs_a_valid_grid_keeping_the_givens():
    row = make_examples([Sudoku()], 1, "test", seed=0)[0]
    task, solution = Sudoku(), row["solution"]
    assert task.verify(row, solution) and task.verify(row, " | ".join(solution))
    broken = solution[1] + solution[0] + solution[2:]  # two cells of one row swapped: columns break
    assert not task.verify(row, broken)
    assert not task.verify(row, solution[:-1]) and not task.verify(row, solution + "1")
    other = next(s for s in ("1234341221434321", "2143341212344321") if s != solution)
    assert is_solution(other) and not task.verify(row, other)  # a valid grid, but not this puzzle's


def test_bad_generator_settings_are_refused():
    with pytest.raises(ValueError, match="max_empty"):
        Sudoku(max_empty=13)
    with pytest.raises(ValueError, match="num_numbers"):
        Countdown(num_numbers=1)


def test_reward_functions_take_trl_batches():
    rows = make_examples([Countdown()], 3, "test", seed=0)
    tagged = [{"role": "assistant", "content": f"<answer>{rows[2]['answer']}</answer>"}]
    completions = [rows[0]["answer"], "1+1", tagged]
    columns = {"numbers": [r["numbers"] for r in rows], "target": [r["target"] for r in rows]}
    assert countdown_reward([r["prompt"] for r in rows], completions, completion_ids=None, **columns) == [1.0, 0.0, 1.0]
    assert countdown_reward.__name__ == "countdown_reward"
    sudoku_rows = make_examples([Sudoku()], 2, "test", seed=0)
    assert sudoku_reward(None, [sudoku_rows[0]["answer"], sudoku_rows[0]["answer"]],
                         puzzle=[r["puzzle"] for r in sudoku_rows]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="puzzle"):
        sudoku_reward(None, ["1"], answer=["1"])
    sort = tasks_named("demo")[0]
    assert task_reward(sort)(None, ["123 ", "321"], answer=["123", "123"]) == [1.0, 0.0]


TASKS_IMPORT = import_step("dllm.tasks", 0, "import dllm.tasks")  # first: every other step imports torch


def test_task_sets_and_importing_pulls_no_heavy_package(import_footprint):
    assert set(TASK_SETS) == {"demo", "countdown", "sudoku"}
    with pytest.raises(KeyError, match="countdown"):
        tasks_named("gsm8k")
    assert [m for m in ("torch", "transformers") if m in import_footprint[TASKS_IMPORT]] == []


def test_seeded_sampling_is_stable_across_processes():
    code = "import random; from dllm.tasks import Sudoku; print(Sudoku().sample_row(random.Random(5))['puzzle'])"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outs) == 1 and len(outs.pop().strip()) == 16  # no dependence on hash randomisation
