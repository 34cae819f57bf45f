"""Each decision of a denoising step against its closed form, and the step schedule."""

from __future__ import annotations

import ast
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import dllm.core.sampling as sampling
from dllm.core.sampling import (
    DiffusionGenerationConfig,
    block_bounds,
    commit_counts,
    confidence,
    filter_logits,
    guide,
    position_ids,
    sample_tokens,
    select_commits,
    steps_per_block,
    tokens_per_step,
)


def test_commit_counts_reproduce_the_even_schedule():
    for n in range(1, 25):
        for s in range(1, n + 1):
            left, got = torch.tensor([n]), []
            for t in range(s):
                k = commit_counts(left, s - t)
                got.append(int(k))
                left = left - k
            assert got == tokens_per_step(n, s), (n, s)
    assert commit_counts(torch.tensor([0, 1, 7]), 3).tolist() == [0, 1, 3]


def test_blocks_and_steps_per_block():
    assert block_bounds(5, 15, 4) == [(5, 9), (9, 13), (13, 15)]
    assert block_bounds(5, 15, None) == [(5, 15)]
    assert steps_per_block(None, [4, 4, 2]) == [4, 4, 2]
    assert steps_per_block(10, [4, 4, 2]) == [4, 4, 2]  # steps == length: one token per step everywhere
    assert steps_per_block(5, [4, 4, 2]) == [2, 2, 1]
    assert steps_per_block(3, [4, 4, 1]) == [1, 1, 1]
    assert sum(steps_per_block(7, [3, 3, 3, 3])) == 7
    with pytest.raises(ValueError, match="fewer than"):
        steps_per_block(2, [4, 4, 2])


def test_config_is_checked_on_replace():
    config = DiffusionGenerationConfig()
    for field, bad in [("remasking", "lowest"), ("cache", "full"), ("top_p", 0.0), ("top_k", 0),
                       ("temperature", -1.0), ("block_size", 0), ("cfg_scale", -0.5), ("steps", 0)]:
        with pytest.raises(ValueError, match=field):
            replace(config, **{field: bad})


def test_guidance_formula():
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 2.0])
    assert guide(cond, uncond, 0.0).tolist() == cond.tolist()
    assert guide(cond, uncond, 1.0).tolist() == [3 + 2 * (1 - 3), 2.0]


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]]))  # [1, 1, 4]
    inf = float("-inf")
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 0]).tolist() == [False, False, True, True]
    # nucleus 0.7: 0.5 alone falls short, 0.5 + 0.3 reaches it -> two tokens; 0.81 needs a third
    assert torch.isinf(filter_logits(logits, top_p=0.7)[0, 0]).tolist() == [False, False, True, True]
    assert torch.isinf(filter_logits(logits, top_p=0.81)[0, 0]).tolist() == [False, False, False, True]
    assert torch.isinf(filter_logits(logits, top_p=0.1)[0, 0]).tolist() == [False, True, True, True]
    assert filter_logits(logits, top_k=4, top_p=1.0).eq(logits).all()
    assert inf not in filter_logits(logits)[0, 0].tolist()


def test_sampling_is_reproducible_and_follows_the_distribution():
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1])).expand(1, 4000, 3)  # [1, C, V]
    a = sample_tokens(logits, 1.0, generator=torch.Generator().manual_seed(3))
    b = sample_tokens(logits, 1.0, generator=torch.Generator().manual_seed(3))
    assert a.equal(b)
    freq = torch.bincount(a.flatten(), minlength=3).float() / a.numel()
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)
    cold = sample_tokens(logits, 0.05, generator=torch.Generator().manual_seed(3))  # low temperature: argmax
    assert cold.eq(0).float().mean() > 0.99
    assert sample_tokens(logits, 0.0).eq(0).all()


def test_confidence_scores():
    probs = torch.tensor([[[0.6, 0.3, 0.1], [0.4, 0.4, 0.2]]])  # [1, 2, 3]
    logits, tokens = probs.log(), torch.tensor([[1, 0]])
    assert torch.allclose(confidence(logits, tokens, "low_confidence"), torch.tensor([[0.3, 0.4]]))
    assert torch.allclose(confidence(logits, tokens, "margin"), torch.tensor([[0.3, 0.0]]))
    entropy = -(probs * probs.log()).sum(-1)
    assert torch.allclose(confidence(logits, tokens, "entropy"), -entropy)
    # a one-hot distribution (other logits -inf) has entropy 0, not NaN
    sharp = torch.tensor([[[0.0, float("-inf"), float("-inf")]]])
    assert confidence(sharp, torch.tensor([[0]]), "entropy").item() == 0.0
    r = confidence(logits, tokens, "random", generator=torch.Generator().manual_seed(0))
    assert r.equal(confidence(logits, tokens, "random", generator=torch.Generator().manual_seed(0)))
    assert ((0 <= r) & (r < 1)).all()


def test_select_commits_takes_k_best_masked_and_everything_over_threshold():
    score = torch.tensor([[0.9, 0.1, 0.5, 0.7], [0.2, 0.95, 0.96, 0.3]])
    masked = torch.tensor([[False, True, True, True], [True, True, True, True]])
    assert select_commits(score, masked, torch.tensor([1, 2])).tolist() == \
        [[False, False, False, True], [False, True, True, False]]
    assert select_commits(score, masked, torch.tensor([0, 1]), threshold=0.6).tolist() == \
        [[False, False, False, True], [False, True, True, False]]
    assert select_commits(score, masked, torch.tensor([5, 5])).tolist() == masked.tolist()  # k beyond the masks


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_sampling_package_imports_only_core():
    """dllm.core never imports the rest of dllm (data, pipelines, demo...)."""
    root = Path(sampling.__file__).parent
    for path in [*root.glob("*.py"), root.parent / "generation.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith("dllm") or name.startswith("dllm.core"), (path.name, name)


def test_entropy_scale_runs_from_minus_log_v_to_zero():
    uniform = confidence(torch.zeros(1, 1, 4), torch.tensor([[0]]), "entropy").item()
    assert math.isclose(uniform, -math.log(4), rel_tol=1e-6)


def test_generation_config_round_trips_with_a_checkpoint(tmp_path):
    from dllm.core.sampling import GENERATION_CONFIG_NAME, DiffusionGenerationConfig

    saved = DiffusionGenerationConfig(gen_length=9, steps=3, block_size=3, threshold=0.9, cache="prefix",
                                      record_history=True)
    path = saved.save_pretrained(tmp_path)
    assert path.name == GENERATION_CONFIG_NAME and "record_history" not in path.read_text()
    loaded = DiffusionGenerationConfig.from_pretrained(tmp_path)
    assert (loaded.gen_length, loaded.steps, loaded.block_size, loaded.threshold, loaded.cache) == (9, 3, 3, 0.9,
                                                                                                     "prefix")
    assert loaded.record_history is False
    assert DiffusionGenerationConfig.from_pretrained(tmp_path, steps=9).steps == 9  # overrides win
    assert DiffusionGenerationConfig.from_pretrained(tmp_path / "none") == DiffusionGenerationConfig()


def test_generation_config_file_errors_name_the_file(tmp_path):
    import pytest

    from dllm.core.sampling import GENERATION_CONFIG_NAME, DiffusionGenerationConfig

    path = tmp_path / GENERATION_CONFIG_NAME
    path.write_text('{"gen_length": 4, "colour": "red"}')
    with pytest.raises(ValueError, match=rf"{path}: unknown sampler settings \['colour'\]"):
        DiffusionGenerationConfig.from_pretrained(tmp_path)
    path.write_text('{"gen_length": 0}')
    with pytest.raises(ValueError, match=rf"{path}: DiffusionGenerationConfig.gen_length must be at least 1"):
        DiffusionGenerationConfig.from_pretrained(tmp_path)
    path.write_text("[1]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        DiffusionGenerationConfig.from_pretrained(tmp_path)
