"""The public names of ``dllm.core.generation`` (a re-export of ``dllm.core.sampling``): fake models whose logits
are known, the text helpers on the char tokenizer, and one tiny plain LLaMA made bidirectional."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from dllm.core.generation import (
    DiffusionGenerationConfig,
    GenerationOutput,
    answer_ids,
    denoise_step,
    encode_prompt,
    encode_prompts,
    generate,
    generate_text,
    generate_text_output,
    infill_text,
    left_pad,
    tokens_per_step,
)

MASK, EOS, PAD, V = 4, 2, 0, 16


class ScriptedModel(torch.nn.Module):
    """Predicts ``target[l]`` at position ``l`` with confidence rising with ``order[l]``; records every call."""

    def __init__(self, target: list[int], confidence: list[float]):
        super().__init__()
        self.target = torch.tensor(target)
        self.confidence = torch.tensor(confidence)
        self.calls: list[torch.Tensor] = []
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        self.calls.append(input_ids.clone())
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, V)
        target = self.target[-length:]  # right-aligned: the answer block is last
        logits[:, torch.arange(length), target] = self.confidence[-length:] * 10
        return SimpleNamespace(logits=logits)


def test_tokens_per_step_spreads_evenly():
    assert tokens_per_step(8, 8) == [1] * 8
    assert tokens_per_step(10, 4) == [3, 3, 2, 2]
    assert sum(tokens_per_step(37, 5)) == 37
    with pytest.raises(ValueError):
        tokens_per_step(4, 5)


def test_commits_most_confident_positions_first():
    prompt = [1, 5, 6]
    answer = [7, 8, 9, 10, EOS]
    confidence = [1.0] * len(prompt) + [0.3, 0.9, 0.1, 0.5, 0.7]
    model = ScriptedModel(prompt + answer, confidence)
    config = DiffusionGenerationConfig(gen_length=5, mask_token_id=MASK)
    out = generate(model, torch.tensor([prompt]), config).sequences
    assert out[0].tolist() == prompt + answer
    # Order in which answer positions were unmasked, read from the inputs of successive calls.
    states = model.calls[1:] + [out]
    order = [int(((a != MASK) & (b == MASK))[0].nonzero()[0, 0]) - len(prompt) for a, b in zip(states, model.calls)]
    assert order == [1, 4, 3, 0, 2]  # descending confidence
    assert len(model.calls) == 5


def test_several_tokens_per_step():
    prompt = [1, 5]
    confidence = [1.0, 1.0] + [0.2, 0.8, 0.6, 0.4]
    model = ScriptedModel(prompt + [7, 8, 9, 10], confidence)
    out = generate(model, torch.tensor([prompt]), DiffusionGenerationConfig(gen_length=4, steps=2, mask_token_id=MASK))
    assert isinstance(out, GenerationOutput) and out.forward_passes == 2
    out = out.sequences
    assert out[0].tolist() == prompt + [7, 8, 9, 10]
    assert (model.calls[1][0, 2:] != MASK).tolist() == [False, True, True, False]  # 0.8 and 0.6 first


class FickleModel(torch.nn.Module):
    """Changes its mind every call (predicts 10 + call index everywhere), most confident at the left."""

    def __init__(self):
        super().__init__()
        self.n = 0
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, V)
        logits[..., 10 + self.n] = torch.linspace(5, 1, length)
        self.n += 1
        return SimpleNamespace(logits=logits)


def test_never_remasks_or_overwrites_committed_tokens():
    out = generate(FickleModel(), torch.tensor([[1, 5]]), DiffusionGenerationConfig(gen_length=4, mask_token_id=MASK))
    out = out.sequences
    # Position i was committed at step i and kept the prediction of that step, not a later one.
    assert out[0].tolist() == [1, 5, 10, 11, 12, 13]


def test_denoise_step_leaves_prompt_and_committed_positions_alone():
    x = torch.tensor([[1, 5, 12, MASK, MASK]])
    model = FickleModel()
    config = DiffusionGenerationConfig(gen_length=3, mask_token_id=MASK)

    def forward(canvas, cols):  # the step asks for the logits of the block's masked columns only
        assert cols.tolist() == [3, 4]
        return model(canvas).logits[:, cols]

    new, committed, scores = denoise_step(forward, x, (2, 5), 1, config)
    assert new[0, :3].tolist() == [1, 5, 12] and (new != MASK).all()
    assert committed[0].tolist() == [False, False, False, True, True] and scores[0, :3].isnan().all()


def test_answer_ids_cut_at_first_eos():
    out = torch.tensor([[9, 9, 7, 8, EOS, 6, EOS], [9, 9, EOS, EOS, EOS, EOS, EOS], [9, 9, 7, 7, 7, 7, 7]])
    assert answer_ids(out, 2, EOS) == [[7, 8], [], [7, 7, 7, 7, 7]]


class PaddingSensitiveModel(torch.nn.Module):
    """Predicts the sum of the attended token ids mod V, surer further right: leaked padding would change it."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, **kwargs):
        total = (input_ids * attention_mask).sum(dim=1) % V  # [B]
        sureness = torch.arange(1, input_ids.shape[1] + 1, dtype=torch.float)  # [L], no ties
        logits = torch.nn.functional.one_hot(total, V).float()[:, None, :] * sureness[None, :, None]  # [B, L, V]
        return SimpleNamespace(logits=logits)


def test_left_padding_is_masked_out():
    prompts = [[1, 5, 6, 7], [1, 9]]
    ids, attention = left_pad(prompts, PAD)
    assert ids.tolist() == [[1, 5, 6, 7], [PAD, PAD, 1, 9]] and attention.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    config = DiffusionGenerationConfig(gen_length=3, mask_token_id=MASK)
    batched = generate(PaddingSensitiveModel(), ids, config, attention_mask=attention).sequences
    for row, prompt in zip(batched, prompts):
        alone = generate(PaddingSensitiveModel(), torch.tensor([prompt]), config).sequences
        assert row[-3:].tolist() == alone[0, -3:].tolist()


def test_requires_a_mask_token():
    with pytest.raises(ValueError, match="mask_token_id"):
        generate(FickleModel(), torch.tensor([[1]]), DiffusionGenerationConfig(gen_length=2))


@pytest.mark.parametrize("settings", [{}, dict(cache="prefix", block_size=2), dict(cache="dual", block_size=3),
                                      dict(remasking="margin", cache="prefix", block_size=3)])
def test_tiny_llama_batched_matches_one_by_one(char_tokenizer, settings):
    """A plain ``LlamaForCausalLM`` made bidirectional (no dllm wrapper): left-padded batch generation equals
    one-prompt-at-a-time generation, with and without caches."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(char_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    config.is_causal = False
    model = LlamaForCausalLM(config).eval()
    for module in model.modules():
        if isinstance(getattr(module, "is_causal", None), bool):
            module.is_causal = False

    prompts = ["sort 93", "reverse abcdef", "hi"]
    config = DiffusionGenerationConfig(gen_length=6, **settings)
    batched = generate_text(model, char_tokenizer, prompts, config)
    alone = [generate_text(model, char_tokenizer, [p], config)[0] for p in prompts]
    assert batched == alone
    assert all(isinstance(a, str) and len(a) <= 6 for a in batched)
    # Fewer steps (two tokens per step) still fills every position of every answer: no mask token is left.
    few = generate_text_output(model, char_tokenizer, prompts, replace(config, steps=3))
    answers = torch.cat([output.sequences[:, -6:] for output in few.outputs])
    assert answers.shape == (3, 6) and not (answers == char_tokenizer.mask_token_id).any()


def test_generate_text_decodes_up_to_the_first_eos(char_tokenizer):
    """The answer block reads 'o', 'k', EOS, 'z': the text is 'ok', and 'z' after the EOS is dropped."""
    vocab = char_tokenizer.get_vocab()
    block = [vocab["o"], vocab["k"], char_tokenizer.eos_token_id, vocab["z"]]

    class Spell(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None, **kwargs):
            logits = torch.zeros(*input_ids.shape, len(char_tokenizer))  # [B, L, V]
            logits[:, -4:][:, torch.arange(4), block] = 5.0  # right-aligned: the answer block is last
            return SimpleNamespace(logits=logits)

    answers = generate_text(Spell(), char_tokenizer, ["sort 21", "reverse abc"], DiffusionGenerationConfig(gen_length=4))
    assert answers == ["ok", "ok"]


def test_batched_chat_template_equals_encode_then_left_pad(char_tokenizer):
    prompts = ["sort 93", "reverse abcdef", "hi", "", "a<|mask|>b"]
    ids, attention = encode_prompts(char_tokenizer, prompts, pad_token_id=PAD)
    by_hand = left_pad([encode_prompt(char_tokenizer, p) for p in prompts], char_tokenizer.pad_token_id)
    assert ids.tolist() == by_hand[0].tolist() and attention.tolist() == by_hand[1].tolist()
    assert attention[2, 0] == 0  # left padding, although the tokenizer's own side is right
    assert char_tokenizer.padding_side == "right"


def test_tokenizer_without_pad_token_is_padded_by_hand(char_tokenizer):
    from transformers import PreTrainedTokenizerFast

    no_pad = PreTrainedTokenizerFast(tokenizer_object=char_tokenizer.backend_tokenizer, bos_token="<|bos|>",
                                     eos_token="<|eos|>", mask_token="<|mask|>")
    no_pad.chat_template = char_tokenizer.chat_template
    ids, attention = encode_prompts(no_pad, ["hi", "sort 93"], pad_token_id=77)
    assert ids[0, 0] == 77 and attention[0, 0] == 0
    assert ids.tolist() == encode_prompts(char_tokenizer, ["hi", "sort 93"], PAD)[0].masked_fill(
        attention == 0, 77).tolist()


class Echo(torch.nn.Module):
    """Predicts 'x' everywhere, most confident on the left; counts calls."""

    def __init__(self, tokenizer):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.x, self.vocab = tokenizer.get_vocab()["x"], len(tokenizer)

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab)  # [B, L, V]
        logits[..., self.x] = torch.linspace(5, 1, input_ids.shape[1])
        return SimpleNamespace(logits=logits[:, logits_to_keep])


def test_demo_call_and_richer_output(char_tokenizer, capsys):
    """How ``dllm.demo.run`` calls it, and the sibling that also returns forward counts and history."""
    prompts = ["sort 21", "reverse abc", "hi"]
    config = DiffusionGenerationConfig(gen_length=3)
    assert generate_text(Echo(char_tokenizer), char_tokenizer, prompts, config, batch_size=2) == ["xxx"] * 3
    out = generate_text_output(Echo(char_tokenizer), char_tokenizer, prompts,
                               replace(config, record_history=True, progress=True), batch_size=2)
    assert out.texts == ["xxx"] * 3 and len(out.outputs) == 2 and out.forward_passes == 6
    assert all(len(o.history) == 3 for o in out.outputs)
    assert "3/3" in capsys.readouterr().err  # the progress bar over prompts
    generate_text(Echo(char_tokenizer), char_tokenizer, prompts, config)
    assert capsys.readouterr().err == ""  # off by default


def test_infill_text_keeps_the_given_text(char_tokenizer):
    texts = ["ab<|mask|><|mask|>ef", "<|mask|>bc", "abc"]
    filled = infill_text(Echo(char_tokenizer), char_tokenizer, texts, DiffusionGenerationConfig())
    assert filled == ["abxxef", "xbc", "abc"]
