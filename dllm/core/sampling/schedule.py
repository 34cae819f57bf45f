"""How many positions each step commits and how steps are spread over semi-autoregressive blocks."""

from __future__ import annotations

import torch


def tokens_per_step(gen_length: int, steps: int) -> list[int]:
    """How many positions each step commits: ``gen_length`` spread evenly, earlier steps take the remainder.

    Equals the running rule of :func:`commit_counts`: step ``t`` of ``s`` commits ``ceil(left_t / (s - t))``.
    """
    if not 1 <= steps <= gen_length:
        raise ValueError(f"steps must be in [1, gen_length={gen_length}], got {steps}")
    base, extra = divmod(gen_length, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def commit_counts(masked_left: torch.Tensor, steps_left: int) -> torch.Tensor:
    """Positions each row commits now so its ``masked_left`` [B] positions are done in ``steps_left`` steps.

    ``k = ceil(masked_left / steps_left)``: with ``n`` masked positions and ``s`` steps this reproduces
    ``tokens_per_step(n, s)``, it is never 0 while something is masked, and rows with different counts (infilling)
    each follow their own even schedule (LLaDA's ``get_num_transfer_tokens``).
    """
    return (masked_left + steps_left - 1) // steps_left


def block_bounds(start: int, end: int, block_size: int | None) -> list[tuple[int, int]]:
    """Column ranges ``[a, b)`` of consecutive blocks covering ``[start, end)``; the last may be shorter."""
    size = end - start if block_size is None else block_size
    return [(a, min(a + size, end)) for a in range(start, end, max(size, 1))]


def steps_per_block(steps: int | None, lengths: list[int]) -> list[int]:
    """Split ``steps`` over blocks in proportion to their ``lengths`` (at least one each).

    Block ``b`` gets ``floor(steps * C_b / N) - floor(steps * C_{b-1} / N)`` steps, ``C_b`` the cumulative length and
    ``N`` the total, so ``steps == N`` gives every block one step per position. ``None`` means one step per position.
    """
    if steps is None:
        return list(lengths)
    if steps < len(lengths):
        raise ValueError(f"steps={steps} is fewer than the {len(lengths)} blocks; every block needs a step")
    total, cumulative, previous, budget = sum(lengths), 0, 0, []
    for length in lengths:
        cumulative += length
        edge = steps * cumulative // total
        budget.append(max(1, edge - previous))
        previous = edge
    return budget
