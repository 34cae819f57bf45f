import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, Gemma2ForCausalLM, LlamaForCausalLM
from transformers.modeling_outputs import MaskedLMOutput

from dllm.auto import AutoModelForMaskedDiffusion
from dllm.core.models import add_mask_token, check_mask_token_id, is_bidirectional
from dllm.pipelines.gemma2 import Gemma2ForMaskedLM
from dllm.pipelines.llama3 import Llama3ForMaskedLM
from tests.helpers import tiny_gemma2_config, tiny_llama_config

FAMILIES = {
    "llama3-eager": (Llama3ForMaskedLM, LlamaForCausalLM, lambda: tiny_llama_config(), "eager"),
    "llama3-sdpa": (Llama3ForMaskedLM, LlamaForCausalLM, lambda: tiny_llama_config(), "sdpa"),
    "gemma2-eager": (Gemma2ForMaskedLM, Gemma2ForCausalLM, lambda: tiny_gemma2_config(), "eager"),
}


def saved_causal(tmp_path, causal_cls, config):
    torch.manual_seed(0)
    causal_cls(config).save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.fixture(params=list(FAMILIES))
def family_model(request, tmp_path):
    masked_cls, causal_cls, make_config, attn = FAMILIES[request.param]
    path = saved_causal(tmp_path, causal_cls, make_config())
    return masked_cls.from_pretrained(path, attn_implementation=attn).eval()


def test_loads_causal_checkpoint_as_bidirectional(family_model):
    assert is_bidirectional(family_model)
    ids = torch.randint(5, 100, (1, 12))
    out = family_model(ids)
    assert isinstance(out, MaskedLMOutput) and out.logits.shape == (1, 12, 128)


def test_changing_last_token_changes_first_logits(family_model):
    ids = torch.randint(5, 100, (2, 6))  # shorter than Gemma's window: every layer sees position 5
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % 100 + 5
    with torch.no_grad():
        a, b = family_model(ids).logits[:, 0], family_model(changed).logits[:, 0]
    assert (a - b).abs().max() > 1e-4


def test_causal_original_is_unaffected_by_later_tokens(tmp_path):
    """Control for the test above: the same weights loaded causally ignore the last token at position 0."""
    path = saved_causal(tmp_path, LlamaForCausalLM, tiny_llama_config())
    model = LlamaForCausalLM.from_pretrained(path).eval()
    ids = torch.randint(5, 100, (1, 6))
    changed = ids.clone()
    changed[0, -1] += 1
    with torch.no_grad():
        assert torch.allclose(model(ids).logits[:, 0], model(changed).logits[:, 0])


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_invariance(family_model, side):
    ids = torch.randint(5, 100, (1, 7))
    pad = torch.zeros(1, 3, dtype=torch.long)
    padded = torch.cat([ids, pad], 1) if side == "right" else torch.cat([pad, ids], 1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 3)], 1) if side == "right" else \
        torch.cat([torch.zeros(1, 3), torch.ones(1, 7)], 1)
    real = slice(0, 7) if side == "right" else slice(3, 10)
    position_ids = (mask.long().cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        alone = family_model(ids).logits
        batched = family_model(padded, attention_mask=mask.long(), position_ids=position_ids).logits[:, real]
    assert torch.allclose(alone, batched, atol=1e-5)


def test_batch_rows_are_independent(family_model):
    ids = torch.randint(5, 100, (3, 8))
    with torch.no_grad():
        together = family_model(ids).logits
        apart = torch.cat([family_model(ids[i : i + 1]).logits for i in range(3)])
    assert torch.allclose(together, apart, atol=1e-5)


def test_gemma2_sliding_window_is_symmetric(tmp_path):
    # One sliding-window layer only (window 4), so nothing else can carry information further.
    config = tiny_gemma2_config(num_hidden_layers=1, layer_types=["sliding_attention"])
    model = Gemma2ForMaskedLM.from_pretrained(saved_causal(tmp_path, Gemma2ForCausalLM, config)).eval()
    assert model.config._attn_implementation == "eager"
    assert model.config.final_logit_softcapping is not None  # softcapping kept
    ids = torch.randint(5, 100, (1, 16))

    def moved(pos):
        changed = ids.clone()
        changed[0, pos] = (ids[0, pos] + 1) % 100 + 5
        with torch.no_grad():
            return (model(ids).logits[0] - model(changed).logits[0]).abs().amax(-1)  # [L]

    diff = moved(8)
    assert (diff[4:13] > 1e-5).all()  # |q - 8| <= 4 on both sides sees the change
    assert (diff[:4] < 1e-6).all() and (diff[13:] < 1e-6).all()  # outside the window it cannot


def test_forward_loss_is_unshifted_masked_cross_entropy(family_model):
    ids = torch.randint(5, 100, (2, 5))
    labels = ids.clone()
    labels[:, :2] = -100
    out = family_model(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, 2:].flatten(0, 1), ids[:, 2:].flatten())
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_reuses_existing_mask_token(tmp_path, char_tokenizer):
    model = Llama3ForMaskedLM(tiny_llama_config(vocab_size=len(char_tokenizer)))
    n = len(char_tokenizer)
    assert add_mask_token(model, char_tokenizer) == char_tokenizer.convert_tokens_to_ids("<|mask|>")
    assert len(char_tokenizer) == n and model.get_input_embeddings().weight.shape[0] == n


def test_adds_mask_token_resizes_and_round_trips(tmp_path, char_tokenizer):
    from transformers import PreTrainedTokenizerFast

    # A tokenizer without a mask token, as LLaMA 3's.
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=char_tokenizer.backend_tokenizer,
                                        bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    tokenizer.chat_template = char_tokenizer.chat_template
    # Drop the backend's <|mask|> from the count: a fresh vocabulary the size of the model.
    model = Llama3ForMaskedLM(tiny_llama_config(vocab_size=len(tokenizer)))
    before = model.get_input_embeddings().weight.detach().clone()
    assert tokenizer.mask_token_id is None
    mask_id = add_mask_token(model, tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    assert mask_id == tokenizer.mask_token_id and 0 <= mask_id < rows
    assert rows == len(tokenizer) and model.get_output_embeddings().weight.shape[0] == rows
    assert torch.equal(model.get_input_embeddings().weight[: before.shape[0]], before)  # old rows kept
    assert model.config.mask_token_id == mask_id

    path = tmp_path / "with-mask"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    reloaded_tok = AutoTokenizer.from_pretrained(path)
    reloaded = AutoModelForMaskedDiffusion.from_pretrained(str(path))
    assert reloaded_tok.mask_token_id == mask_id
    assert AutoConfig.from_pretrained(path).mask_token_id == mask_id
    assert AutoConfig.from_pretrained(path).is_causal is False
    assert is_bidirectional(reloaded) and reloaded.get_input_embeddings().weight.shape[0] == rows
    ids = torch.tensor([[1, 6, mask_id, mask_id, 2]])
    with torch.no_grad():
        assert torch.allclose(model.eval()(ids).logits, reloaded.eval()(ids).logits, atol=1e-6)


def test_mask_id_outside_embeddings_is_refused():
    model = Llama3ForMaskedLM(tiny_llama_config(vocab_size=20))
    with pytest.raises(ValueError, match="not a row of the embedding matrix"):
        check_mask_token_id(model, 20)
    with pytest.raises(ValueError, match="not a row"):
        check_mask_token_id(model, None)
