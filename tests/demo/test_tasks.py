"""The demo's synthetic tasks: answers are right, seeds are deterministic, held-out prompts never leak."""

from __future__ import annotations

import random

import pytest

from dllm.demo.tasks import (
    DEMO_ALPHABET,
    AddNumbers,
    CountLetter,
    ReverseWord,
    SortDigits,
    default_tasks,
    is_heldout,
    iter_examples,
    make_examples,
    make_messages_dataset,
)

ALL_TASKS = [SortDigits(), ReverseWord(), AddNumbers(), AddNumbers(min_digits=2), CountLetter(),
             AddNumbers(max_digits=3, lsd_first=False), AddNumbers(lsd_first=False, pad_answer=True)]


def _draws(task, n=300, split="train", seed=0):
    rng = random.Random(seed)
    return [task.sample(rng, split) for _ in range(n)]


def test_sort_answers_are_the_sorted_digits():
    for prompt, answer in _draws(SortDigits(min_len=2, max_len=9)):
        digits = prompt.removeprefix("sort ")
        assert answer == "".join(sorted(digits))
        assert list(answer) == sorted(answer) and sorted(answer) == sorted(digits) and 2 <= len(answer) <= 9


def test_reverse_answers_read_backwards():
    for prompt, answer in _draws(ReverseWord(min_len=3, max_len=8)):
        word = prompt.removeprefix("reverse ")
        assert answer[::-1] == word and word.isalpha() and 3 <= len(word) <= 8


@pytest.mark.parametrize("lsd_first", [True, False])
def test_add_answers_are_the_sum(lsd_first):
    task = AddNumbers(max_digits=3, lsd_first=lsd_first)
    carries = 0
    for prompt, answer in _draws(task):
        a, b = map(int, prompt.removeprefix("add ").split("+"))
        assert int(answer[::-1] if lsd_first else answer) == a + b
        assert len(answer) <= task.max_answer_length()
        carries += len(str(a + b)) > max(len(str(a)), len(str(b)))
    assert carries > 0  # the carry into a new digit is exercised


def test_add_operand_digits_respect_the_bounds():
    lengths = set()
    for prompt, _ in _draws(AddNumbers(min_digits=2, max_digits=3)):
        for operand in prompt.removeprefix("add ").split("+"):
            assert not operand.startswith("0")
            lengths.add(len(operand))
    assert lengths == {2, 3}


@pytest.mark.parametrize("lsd_first", [True, False])
def test_add_padded_answers_have_a_fixed_width(lsd_first):
    task = AddNumbers(min_digits=2, max_digits=2, lsd_first=lsd_first, pad_answer=True)
    for prompt, answer in _draws(task):
        a, b = map(int, prompt.removeprefix("add ").split("+"))
        assert len(answer) == 3 and int(answer[::-1] if lsd_first else answer) == a + b


def test_add_lsd_first_example():
    # 47 + 85 = 132, written least-significant digit first.
    class Scripted:  # an rng that draws 2 digits, then 47, then 2 digits, then 85
        values = iter([2, 47, 2, 85])

        def randint(self, low, high):
            value = next(self.values)
            assert low <= value <= high
            return value

    assert AddNumbers(max_digits=2)._draw(Scripted()) == ("add 47+85", "231")


def test_count_answers_count_the_letter():
    for prompt, answer in _draws(CountLetter()):
        _, letter, _, word = prompt.split(" ")
        assert int(answer) == word.count(letter)


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.name)
def test_every_character_is_in_the_demo_alphabet(task):
    for prompt, answer in _draws(task, 200) + _draws(task, 50, split="test"):
        assert set(prompt + answer) <= set(DEMO_ALPHABET), (prompt, answer)
        assert len(answer) <= task.max_answer_length()


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.name)
def test_splits_are_disjoint_by_prompt(task):
    train = {p for p, _ in _draws(task, 3000, "train", seed=1)}
    test = {p for p, _ in _draws(task, 300, "test", seed=2)}
    assert train and test and not train & test
    assert all(is_heldout(p, 0.1) for p in test) and not any(is_heldout(p, 0.1) for p in train)


def test_heldout_share_is_close_to_the_fraction():
    prompts = {f"add {a}+{b}" for a in range(10, 100) for b in range(10, 100)}
    share = sum(is_heldout(p, 0.1) for p in prompts) / len(prompts)
    assert 0.08 < share < 0.12


def test_small_instance_space_is_split_exhaustively():
    # One-digit additions: 100 prompts in all. Every one lands in exactly one split, and both splits are used.
    task = AddNumbers(max_digits=1)
    prompts = {f"add {a}+{b}" for a in range(10) for b in range(10)}
    heldout = {p for p in prompts if is_heldout(p, 0.2)}
    assert 0 < len(heldout) < len(prompts)
    train_seen = set()
    rng = random.Random(3)
    for _ in range(2000):
        train_seen.add(task.sample(rng, "train", heldout_fraction=0.2)[0])
    assert train_seen == prompts - heldout  # the training stream covers exactly the non-held-out prompts


def test_streams_are_deterministic_per_seed():
    tasks = default_tasks()
    first = [next(it) for it in [iter_examples(tasks, seed=5)] for _ in range(30)]
    again = [next(it) for it in [iter_examples(tasks, seed=5)] for _ in range(30)]
    other = [next(it) for it in [iter_examples(tasks, seed=6)] for _ in range(30)]
    assert first == again and first != other
    assert make_examples(tasks, 20, "test", seed=1) == make_examples(tasks, 20, "test", seed=1)


def test_make_examples_balanced_unique_test_set():
    tasks = default_tasks()
    rows = make_examples(tasks, 50, "test", seed=0)
    assert [r["task"] for r in rows[:3]] == [t.name for t in tasks]  # interleaved
    for task in tasks:
        assert sum(r["task"] == task.name for r in rows) == 50
    prompts = [r["prompt"] for r in rows]
    assert len(set(prompts)) == len(prompts)


def test_make_examples_raises_when_the_heldout_space_is_too_small():
    with pytest.raises(RuntimeError, match="distinct"):
        make_examples([AddNumbers(max_digits=1)], 50, "test", heldout_fraction=0.1)


def test_messages_dataset_rows():
    rows = make_messages_dataset(default_tasks(), 4, "train", seed=0)
    assert len(rows) == 12
    for row in rows:
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"].startswith(row["task"] + " ")
        assert assistant["content"]
