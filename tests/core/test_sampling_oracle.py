"""The sampler against an oracle whose logits put (almost) all mass on a known target: every setting must
reproduce the target, commit what the schedule says, and run the forward passes the config implies."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from dllm.core.sampling import DiffusionGenerationConfig, block_bounds, generate, infill, mask_spans, steps_per_block

MASK, EOS, PAD, V = 4, 2, 0, 16


def distinct_strength(positions: torch.Tensor) -> torch.Tensor:
    """Target logits 2..8.5 without ties. The sampler never predicts the mask token, so the target gets
    p = e^s / (e^s + V - 2), from 0.35 to 0.9987."""
    return 2.0 + (positions * 5 % 14).float() / 2


class Oracle(torch.nn.Module):
    """Predicts ``targets[b][p]`` at real position ``p`` with logit ``strength(p)`` (0 elsewhere). Its forward
    has a real decoder's signature: ``position_ids``, ``past_key_values``/``use_cache``, ``logits_to_keep``.

    It stores each fed token's position in the cache as its "key", so every call checks that the cached positions
    plus the fed ones are exactly the row's canvas, each once, and that the attention mask covers both. When
    ``strict`` it also checks that every committed input token is the target, so a misplaced commit fails at once.
    """

    def __init__(self, targets: list[list[int]], strength=distinct_strength, strict: bool = True):
        super().__init__()
        width = max(map(len, targets))
        self.lengths = [len(t) for t in targets]
        self.targets = torch.tensor([t + [PAD] * (width - len(t)) for t in targets])  # [B, N]
        self.strength, self.strict = strength, strict
        self.calls: list[SimpleNamespace] = []
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids, past_key_values=None, use_cache=False,
                logits_to_keep=0, **kwargs):
        batch, q = input_ids.shape
        cached = past_key_values.get_seq_length() if past_key_values is not None else 0
        assert attention_mask.shape == (batch, cached + q)
        assert (past_key_values is not None) == bool(use_cache)
        seen = position_ids
        if past_key_values is not None:
            key = position_ids[:, None, :, None].float()  # [B, 1, Q, 1]
            seen = past_key_values.update(key, key, 0)[0][:, 0, :, 0].long()  # [B, cached + Q]
        for b in range(batch):
            real = seen[b][attention_mask[b].bool()].sort().values
            assert real.tolist() == list(range(self.lengths[b])), "the keys are not the row's canvas"
        target = self.targets.gather(1, position_ids)  # [B, Q]
        given = (input_ids != MASK) & attention_mask[:, cached:].bool()
        if self.strict:
            assert (input_ids[given] == target[given]).all(), "a committed token is not the target"
        logits = torch.nn.functional.one_hot(target, V).float() * self.strength(position_ids)[..., None]
        self.calls.append(SimpleNamespace(fed=q, cached=cached, keep=logits_to_keep, positions=position_ids,
                                          kwargs=kwargs))
        if isinstance(logits_to_keep, torch.Tensor):
            logits = logits[:, logits_to_keep]
        return SimpleNamespace(logits=logits)


PROMPTS = [[1, 9, 10, 11], [1, 12]]
ANSWERS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [14, 13, 12, 11, 10, 9, 8, 7, 6, 5]]
G = 10


def left_padded(rows: list[list[int]]):
    width = max(map(len, rows))
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, attention


def setup(prompts=PROMPTS, answers=ANSWERS, **oracle_kwargs):
    """Left-padded prompts, an oracle whose target is prompt + answer, and the expected output rows."""
    ids, attention = left_padded(prompts)
    width = ids.shape[1]
    want = [[PAD] * (width - len(p)) + p + a for p, a in zip(prompts, answers)]
    return ids, attention, Oracle([p + a for p, a in zip(prompts, answers)], **oracle_kwargs), want


SETTINGS = list(itertools.product([None, 5, 3], [None, 4, 3], [None, 0.9], ["none", "prefix", "dual"]))


@pytest.mark.parametrize("remasking", ["low_confidence", "random", "margin", "entropy"])
@pytest.mark.parametrize("steps,block_size,threshold,cache", SETTINGS)
def test_reproduces_the_target(steps, block_size, threshold, cache, remasking):
    ids, attention, oracle, want = setup()
    if threshold is not None and remasking == "entropy":
        threshold = -0.5  # entropy's confidence is minus an entropy (<= 0): its threshold is on that scale
    lengths = [b - a for a, b in block_bounds(0, G, block_size)]
    settings = dict(gen_length=G, steps=steps, block_size=block_size, threshold=threshold, cache=cache,
                    remasking=remasking, mask_token_id=MASK, record_history=True)
    if steps is not None and steps < len(lengths):  # refused when the settings are made, before any work
        with pytest.raises(ValueError, match="at least the number of blocks"):
            DiffusionGenerationConfig(**settings)
        return
    config = DiffusionGenerationConfig(**settings)
    out = generate(oracle, ids, config, attention_mask=attention, generator=torch.Generator().manual_seed(0))
    assert out.sequences.tolist() == want
    budget = sum(steps_per_block(steps, lengths))
    assert out.forward_passes == len(oracle.calls) == len(out.history)
    if threshold is None:
        assert out.forward_passes == budget == (steps or G)
    else:
        assert out.forward_passes <= budget
    times = torch.stack([h.committed for h in out.history]).sum(0)  # [B, T]
    assert times[:, -G:].eq(1).all() and times[:, :-G].eq(0).all()  # each answer position once, prompt never


def test_threshold_commits_every_confident_position_at_once():
    ids, attention, oracle, want = setup()
    config = DiffusionGenerationConfig(gen_length=G, threshold=0.9, mask_token_id=MASK, record_history=True)
    out = generate(oracle, ids, config, attention_mask=attention)
    assert out.sequences.tolist() == want
    first = out.history[0]
    confident = distinct_strength(torch.arange(ids.shape[1], ids.shape[1] + G)) >= math.log(0.9 * (V - 2) / 0.1)
    assert first.committed[0, -G:].tolist() == confident.tolist()  # row 0 has no padding: positions = columns
    assert out.forward_passes == 1 + G - int(confident.sum())  # then one per step (the schedule's k = 1)
    assert out.forward_passes < G


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("block_size", [None, 4, 5])
def test_steps_equal_to_gen_length_commit_one_token_per_step(cache, block_size):
    ids, attention, oracle, want = setup()
    config = DiffusionGenerationConfig(gen_length=G, steps=G, block_size=block_size, cache=cache,
                                       mask_token_id=MASK, record_history=True)
    out = generate(oracle, ids, config, attention_mask=attention)
    assert out.sequences.tolist() == want and len(out.history) == G
    for record in out.history:
        assert record.committed.sum(dim=1).tolist() == [1, 1]
        answer_cols = record.committed.nonzero()[:, 1] - ids.shape[1]
        assert (answer_cols // (block_size or G) == record.block).all()  # inside the current block only


def test_low_confidence_commits_in_descending_confidence_and_records_it():
    ids, attention, oracle, want = setup(PROMPTS[:1], ANSWERS[:1])  # no padding: positions are columns
    config = DiffusionGenerationConfig(gen_length=G, mask_token_id=MASK, record_history=True)
    out = generate(oracle, ids, config, attention_mask=attention)
    order = torch.tensor([int(h.committed[0].nonzero()[0, 0]) for h in out.history])
    strengths = distinct_strength(order)
    assert strengths.tolist() == sorted(strengths.tolist(), reverse=True)
    recorded = torch.stack([h.confidence[0, c] for h, c in zip(out.history, order)])
    assert torch.allclose(recorded, strengths.exp() / (strengths.exp() + V - 2), atol=1e-5)  # mask excluded
    assert torch.isnan(out.history[0].confidence[0, ids.shape[1]:]).sum() == G - 1  # NaN where nothing committed


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_cache_feeds_only_what_it_must(cache):
    """Block start: the whole canvas; later steps: block and suffix (prefix) or the block alone (dual)."""
    ids, attention, oracle, _ = setup()
    generate(oracle, ids, DiffusionGenerationConfig(gen_length=G, block_size=4, cache=cache, mask_token_id=MASK),
             attention_mask=attention)
    P = ids.shape[1]
    T = P + G
    blocks = [(P, P + 4)] * 4 + [(P + 4, P + 8)] * 4 + [(P + 8, T)] * 2  # the block of each call
    assert len(oracle.calls) == len(blocks)
    for i, (call, (s, e)) in enumerate(zip(oracle.calls, blocks)):
        first = cache == "none" or i in (0, 4, 8)
        fed = T if first else {"prefix": T - s, "dual": e - s}[cache]
        assert (call.fed, call.cached) == (fed, T - fed), i
        assert 1 <= len(call.keep) <= e - s and int(call.keep.max()) < fed  # the head sees the block only


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_guidance_doubles_the_forward_passes(cache):
    ids, attention, oracle, want = setup()
    config = DiffusionGenerationConfig(gen_length=G, steps=4, block_size=5, cfg_scale=1.5, cache=cache,
                                       mask_token_id=MASK)
    out = generate(oracle, ids, config, attention_mask=attention)
    assert out.sequences.tolist() == want and out.forward_passes == len(oracle.calls) == 8


@pytest.mark.parametrize("cfg_scale", [0.0, 1.5])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_model_kwargs_per_position_are_sliced_and_prompt_level_ones_go_to_whole_canvas_forwards(cache, cfg_scale):
    """Tensors ending in [B, T] follow the fed columns like the positions; other inputs go only to forwards that
    feed the whole canvas; guidance's unconditional pass gets none of them."""
    from dllm.core.sampling import position_ids

    ids, attention, oracle, want = setup()
    canvas = torch.nn.functional.pad(attention, (0, G), value=1)  # [B, T]
    positions = position_ids(canvas)  # [B, T], the sampler's own
    extra = {"types": positions * 10, "stacked": torch.stack([positions, -positions]),  # [B, T], [2, B, T]
             "image": torch.ones(3, 5), "grid": [(1, 2, 2)]}
    config = DiffusionGenerationConfig(gen_length=G, block_size=4, cache=cache, cfg_scale=cfg_scale, mask_token_id=MASK)
    assert generate(oracle, ids, config, attention_mask=attention, model_kwargs=extra).sequences.tolist() == want
    T, whole = canvas.shape[1], 0
    for i, call in enumerate(oracle.calls):
        if cfg_scale and i % 2:  # GuidedForward runs the conditional pass, then the unconditional one
            assert call.kwargs == {}, i
            continue
        assert torch.equal(call.kwargs["types"], call.positions * 10), i
        assert torch.equal(call.kwargs["stacked"], torch.stack([call.positions, -call.positions])), i
        assert ("image" in call.kwargs) == ("grid" in call.kwargs) == (call.fed == T), i
        whole += call.fed == T
    assert whole == (len(oracle.calls) // (2 if cfg_scale else 1) if cache == "none" else 3)  # 3 block starts


class PromptReader(torch.nn.Module):
    """Likes token 7 a bit with the prompt in view (7: 2.0, 8: 1.5) and much more without it (7: 4.0)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.saw_prompt: list[bool] = []

    def forward(self, input_ids, attention_mask, position_ids, logits_to_keep=0, **kwargs):
        sees_prompt = bool((input_ids[:, :2] != MASK).all())
        self.saw_prompt.append(sees_prompt)
        logits = torch.zeros(*input_ids.shape, V)
        logits[..., 7], logits[..., 8] = (2.0 if sees_prompt else 4.0), 1.5
        return SimpleNamespace(logits=logits[:, logits_to_keep])


def test_guidance_uses_the_masked_prompt_as_unconditional_input():
    prompt = torch.tensor([[1, 9]])
    config = DiffusionGenerationConfig(gen_length=2, mask_token_id=MASK)
    assert generate(PromptReader(), prompt, config).sequences[0, 2:].tolist() == [7, 7]
    model = PromptReader()
    # guided logit of 7: 4 + (1 + 1) * (2 - 4) = 0 < 1.5 of token 8
    assert generate(model, prompt, replace(config, cfg_scale=1.0)).sequences[0, 2:].tolist() == [8, 8]
    assert model.saw_prompt == [True, False, True, False]


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_stops_after_the_block_holding_eos(cache):
    answer = [5, 6, 7, EOS] + [EOS] * 6
    ids, attention, oracle, want = setup(PROMPTS[:1], [answer])
    config = DiffusionGenerationConfig(gen_length=G, block_size=2, cache=cache, mask_token_id=MASK,
                                       eos_token_id=EOS)
    out = generate(oracle, ids, config, attention_mask=attention)
    assert out.sequences.tolist() == want
    assert out.forward_passes == 4  # blocks 0 and 1 (EOS at answer position 3), two steps each, instead of 10
    assert generate(oracle, ids, replace(config, eos_token_id=None), attention_mask=attention).forward_passes == G


def test_batch_stops_when_every_row_has_finished():
    answers = [[5, EOS] + [EOS] * 8, [5, 6, 7, 8, 9, EOS] + [EOS] * 4]
    ids, attention, oracle, want = setup(PROMPTS, answers)
    config = DiffusionGenerationConfig(gen_length=G, block_size=2, mask_token_id=MASK, eos_token_id=EOS,
                                       record_history=True)
    out = generate(oracle, ids, config, attention_mask=attention)
    assert out.sequences.tolist() == want
    assert out.forward_passes == 6  # row 1 finishes in block 2
    assert sum(int(h.committed[0].sum()) for h in out.history[2:]) == 0  # row 0 was done (tail filled with EOS)


def test_sampling_filters_pick_the_target_at_temperature_one():
    """Weak logits: plain sampling strays from the target; top_k=1 or a tiny top_p never does."""
    ids, attention, oracle, want = setup(PROMPTS[:1], ANSWERS[:1], strength=lambda p: torch.full(p.shape, 0.5))
    base = DiffusionGenerationConfig(gen_length=G, temperature=1.0, mask_token_id=MASK)
    for config in (replace(base, top_k=1), replace(base, top_p=0.01), replace(base, top_k=3, top_p=0.01)):
        out = generate(oracle, ids, config, attention_mask=attention, generator=torch.Generator().manual_seed(0))
        assert out.sequences.tolist() == want
    with pytest.raises(AssertionError, match="not the target"):  # the oracle rejects a wrong commit
        generate(oracle, ids, base, attention_mask=attention, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("block_size", [None, 3])
def test_infill_fills_only_the_masked_spans(cache, block_size):
    texts = [[1, 5, 6, 7, 8, 9, 10, 11], [1, 12, 13, 14, 15]]
    ids, attention = left_padded(texts)
    spans = [[(2, 2), (6, 1)], [(2, 1)]]
    holes = mask_spans(ids, spans, MASK, attention)
    assert holes.eq(MASK).sum(dim=1).tolist() == [3, 1] and holes[1, 5] == MASK  # counted from the first real token
    # The oracle confidently predicts 3 at every given position: those must never be touched.
    oracle = Oracle([[3, 3, 13, 14, 3, 3, 12, 3], [3, 3, 6, 3, 3]], strict=False)
    config = DiffusionGenerationConfig(block_size=block_size, cache=cache, mask_token_id=MASK, eos_token_id=EOS,
                                       record_history=True)
    out = infill(oracle, ids, config, attention_mask=attention, spans=spans)
    assert out.sequences.tolist() == [[1, 5, 13, 14, 8, 9, 12, 11], [PAD, PAD, PAD, 1, 12, 6, 14, 15]]
    assert out.forward_passes == len(out.history) == 3  # one token per step, rows in parallel
    assert infill(oracle, holes, config, attention_mask=attention).sequences.tolist() == out.sequences.tolist()
    with pytest.raises(ValueError, match="row 1"):
        mask_spans(ids, [[(0, 1)], [(4, 2)]], MASK, attention)
