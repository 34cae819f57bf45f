"""Encoder checkpoints (BERT, RoBERTa, ModernBERT) as masked diffusion LMs: loading (with and without a head), the
mask token, position limits, the masked-only head, packing, sampling and its caches, SFT, save/reload, dllm sample.

Tiny configs and tokenizers (WordPiece for BERT, byte-level BPE for RoBERTa and ModernBERT) are built in-process."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertConfig,
    BertTokenizerFast,
    ModernBertConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaTokenizerFast,
)

from dllm.auto import AutoModelForMaskedDiffusion, check_sequence_length, load_encoder_tokenizer, recipe_family
from dllm.core.models import add_mask_token
from dllm.core.models.encoder import EncoderMaskedLMMixin, position_limit
from dllm.core.sampling import DiffusionGenerationConfig, forward, generate, generate_text
from dllm.data.chat_templates import DEFAULT_CHAT_TEMPLATE, supply_chat_template
from dllm.data.collator import tokenize_messages
from dllm.errors import UsageError

TEXTS = ["user: repeat 12 twice", "assistant: 12 12", "what is the sum of 3 and 4", "hello world, say it again",
         "sort these digits 8 2 1 3", "reverse the word abc"] * 4
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def wordpiece_tokenizer() -> BertTokenizerFast:
    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    backend.train_from_iterator(TEXTS, trainers.WordPieceTrainer(vocab_size=120, special_tokens=BERT_SPECIALS,
                                                                 show_progress=False))
    return BertTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]")


def byte_bpe(specials: list[str]) -> Tokenizer:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return backend


def roberta_tokenizer() -> RobertaTokenizerFast:
    return RobertaTokenizerFast(tokenizer_object=byte_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]),
                                bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                                unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def modernbert_tokenizer() -> PreTrainedTokenizerFast:  # ModernBERT's own is BPE with BERT's special tokens
    return PreTrainedTokenizerFast(tokenizer_object=byte_bpe(BERT_SPECIALS), unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


SHAPE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def tiny(kind: str) -> tuple[object, PreTrainedTokenizerFast]:
    """A tiny config of ``kind`` with its tokenizer; 32 usable positions each."""
    if kind == "bert":
        tok = wordpiece_tokenizer()
        return BertConfig(vocab_size=len(tok), max_position_embeddings=32, pad_token_id=tok.pad_token_id,
                          **SHAPE), tok
    if kind == "roberta":
        tok = roberta_tokenizer()
        return RobertaConfig(vocab_size=len(tok), max_position_embeddings=34, pad_token_id=tok.pad_token_id,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **SHAPE), tok
    tok = modernbert_tokenizer()
    ids = {f"{name}_token_id": getattr(tok, f"{name}_token_id") for name in ("pad", "cls", "sep")}
    return ModernBertConfig(vocab_size=len(tok), max_position_embeddings=32, local_attention=4,
                            global_attn_every_n_layers=2, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                            **ids, **SHAPE), tok


KINDS = ("bert", "roberta", "modernbert")


def save_masked_lm(path, kind: str):
    """A transformers ``*ForMaskedLM`` checkpoint of ``kind`` (what the hub ships) with its tokenizer."""
    config, tok = tiny(kind)
    torch.manual_seed(0)
    AutoModelForMaskedLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("encoders")
    return {kind: save_masked_lm(root / kind, kind) for kind in KINDS}


def batch(tok, texts: list[str]) -> dict[str, torch.Tensor]:
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


@pytest.mark.parametrize("kind", KINDS)
def test_from_pretrained_keeps_the_checkpoints_head_and_mask_token(checkpoints, kind):
    model = AutoModelForMaskedDiffusion.from_pretrained(str(checkpoints[kind])).eval()
    reference = AutoModelForMaskedLM.from_pretrained(str(checkpoints[kind])).eval()
    assert isinstance(model, EncoderMaskedLMMixin) and isinstance(model, type(reference))
    assert type(model).__name__.endswith("ForMaskedDiffusionLM") and not model.takes_kv_cache
    tok = load_encoder_tokenizer(str(checkpoints[kind]))
    rows = len(tok)
    assert add_mask_token(model, tok) == tok.mask_token_id == AutoTokenizer.from_pretrained(
        str(checkpoints[kind])).mask_token_id  # its own [MASK] / <mask>, nothing added
    assert len(tok) == rows == model.get_input_embeddings().weight.shape[0]
    inputs = batch(tok, ["hello world", "sort these digits 8 2"])
    with torch.no_grad():  # the checkpoint's own head: transformers' logits, unchanged
        torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits)
    assert recipe_family(model.config).name == "encoder"


@pytest.mark.parametrize("kind", KINDS)
def test_a_headless_checkpoint_gets_a_tied_head_named_in_one_log_line(tmp_path, caplog, kind):
    config, tok = tiny(kind)
    config.tie_word_embeddings = False  # a sentence-embedding checkpoint may say so; the new head is tied anyway
    AutoModel.from_config(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    base = {"bert": "BertModel", "roberta": "RobertaModel", "modernbert": "ModernBertModel"}[kind]
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [base]
    caplog.clear()  # saving logs lines of its own
    with caplog.at_level(logging.INFO):
        model = AutoModelForMaskedDiffusion.from_pretrained(str(tmp_path))
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, lines
    head = sorted(name for name, _ in model.named_parameters() if not name.startswith(model.base_model_prefix + "."))
    assert head and lines[0].endswith("new parameters (random until trained): " + ", ".join(head)
                                      + "; its output layer is tied to the word embeddings")
    decoder, embedding = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert decoder.data_ptr() == embedding.data_ptr()  # one storage: the head's output layer is the embedding
    body = AutoModel.from_pretrained(str(tmp_path))
    backbone = dict(model.base_model.named_parameters())
    for name, weight in body.named_parameters():  # the backbone is the checkpoint's (BERT's pooler is not kept)
        if not name.startswith("pooler."):
            torch.testing.assert_close(backbone[name], weight)


def test_position_limits_before_training_and_sampling(checkpoints):
    bert, roberta = (AutoModelForMaskedDiffusion.from_pretrained(str(checkpoints[k])) for k in ("bert", "roberta"))
    assert position_limit(bert.config) == 32 and position_limit(roberta.config) == 34 - 2  # RoBERTa: pad id + 1
    check_sequence_length(roberta.config, 32, "ckpt")
    with pytest.raises(UsageError, match=r"--max_seq_length 33 exceeds the 32 positions of ckpt .*514|offset 2"):
        check_sequence_length(roberta.config, 33, "ckpt")
    with pytest.raises(ValueError, match="33 positions exceed the 32"):
        bert(input_ids=torch.ones(1, 33, dtype=torch.long))
    from dllm.inference.engine import ContextLengthError, check_fits

    with pytest.raises(ContextLengthError, match="32 positions"):
        check_fits(roberta.config, 10, 23)
    check_fits(roberta.config, 10, 22)


@pytest.mark.parametrize("kind", KINDS)
def test_masked_only_head_equals_the_full_head(checkpoints, kind):
    model = AutoModelForMaskedDiffusion.from_pretrained(str(checkpoints[kind])).eval()
    tok = AutoTokenizer.from_pretrained(str(checkpoints[kind]))
    inputs = batch(tok, ["hello world, say it again", "reverse the word"])
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    selected = torch.rand(labels.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    with torch.no_grad():
        full = model(**inputs)
        part = model(**inputs, logits_mask=selected, labels=labels)
        kept = model(**inputs, logits_to_keep=torch.tensor([1, 3]))
    torch.testing.assert_close(part.logits, full.logits[selected])  # [N, V]
    torch.testing.assert_close(kept.logits, full.logits[:, [1, 3]])
    want = torch.nn.functional.cross_entropy(full.logits[selected], labels[selected], ignore_index=-100)
    torch.testing.assert_close(part.loss, want)


@pytest.mark.parametrize("kind", KINDS)
def test_packed_documents_see_only_themselves(checkpoints, kind):
    model = AutoModelForMaskedDiffusion.from_pretrained(str(checkpoints[kind]), attn_implementation="sdpa").eval()
    tok = AutoTokenizer.from_pretrained(str(checkpoints[kind]))
    docs = [tok("hello world, say it again", add_special_tokens=False)["input_ids"],
            tok("sort these digits 8 2 1 3", add_special_tokens=False)["input_ids"]]
    packed = torch.tensor([docs[0] + docs[1]])
    positions = torch.tensor([list(range(len(docs[0]))) + list(range(len(docs[1])))])
    documents = torch.tensor([[0] * len(docs[0]) + [1] * len(docs[1])])
    with torch.no_grad():
        together = model(input_ids=packed, position_ids=positions, document_ids=documents).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([d])).logits[0] for d in docs])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    model.config._attn_implementation = "flash_attention_2"  # no mask of this shape reaches flash-attention
    with pytest.raises(ValueError, match="packing .*'sdpa' or 'eager'"):
        model(input_ids=packed, position_ids=positions, document_ids=documents)


@pytest.mark.parametrize("kind", KINDS)
def test_sampling_fills_the_answer_and_caches_fall_back_to_none(checkpoints, kind, caplog, monkeypatch):
    model = AutoModelForMaskedDiffusion.from_pretrained(str(checkpoints[kind])).eval()
    tok = load_encoder_tokenizer(str(checkpoints[kind]))
    config = DiffusionGenerationConfig(gen_length=6, block_size=3, steps=4, mask_token_id=tok.mask_token_id,
                                       pad_token_id=tok.pad_token_id)
    ids = torch.tensor([tok("user: hello", add_special_tokens=False)["input_ids"]])
    exact = generate(model, ids, config)
    assert exact.sequences.shape == (1, ids.shape[1] + 6)
    assert not (exact.sequences[:, ids.shape[1]:] == tok.mask_token_id).any()
    monkeypatch.setattr(forward, "_FELL_BACK", set())
    for cache, lines in (("prefix", 1), ("dual", 1), ("prefix", 0)):  # one line per model class and mode
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            out = generate(model, ids, DiffusionGenerationConfig(**{**vars(config), "cache": cache}))
        assert torch.equal(out.sequences, exact.sequences) and out.forward_passes == exact.forward_passes
        said = [r.getMessage() for r in caplog.records if "needs a key/value cache" in r.getMessage()]
        assert len(said) == lines and all("sampling with cache='none'" in line for line in said)
    with pytest.raises(ValueError, match="cache='block' needs a block-diffusion model"):
        generate(model, ids, DiffusionGenerationConfig(**{**vars(config), "cache": "block"}))
    assert len(generate_text(model, tok, ["hello", "sort 8 2"], config)) == 2  # through the chat template


def test_the_default_chat_template_is_supplied_and_overridable(tmp_path):
    tok = supply_chat_template(wordpiece_tokenizer())
    assert tok.chat_template == DEFAULT_CHAT_TEMPLATE and tok.eos_token == "[SEP]"
    messages = [{"role": "user", "content": "repeat 12"}, {"role": "assistant", "content": "12 12"}]
    assert tok.apply_chat_template(messages, tokenize=False) == "[CLS]user: repeat 12[SEP]assistant: 12 12[SEP]"
    row = tokenize_messages(tok, messages)  # prefix-consistent: the answer and its [SEP] are trained
    trained = [t for t, label in zip(row["input_ids"], row["labels"]) if label != -100]
    assert tok.decode(trained) == "12 12 [SEP]"
    roberta = supply_chat_template(roberta_tokenizer())
    assert roberta.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True) == \
        "<s>user: repeat 12</s>assistant:"
    own = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.chat_template = own
    assert supply_chat_template(tok).chat_template == own  # the tokenizer's own is kept
    (tmp_path / "t.jinja").write_text("{{ messages[0]['content'] }}")
    assert supply_chat_template(tok, str(tmp_path / "t.jinja")).chat_template == "{{ messages[0]['content'] }}"
    with pytest.raises(UsageError, match="--chat_template nope: no such file"):
        supply_chat_template(tok, "nope")


def test_block_diffusion_is_refused_for_encoders(checkpoints):
    from dllm.core.trainers import BD3LMTrainer, MDLMTrainer

    family = recipe_family(AutoModelForMaskedDiffusion.from_pretrained(str(checkpoints["bert"])).config)
    assert family.trainer_for(MDLMTrainer) is MDLMTrainer
    with pytest.raises(UsageError, match="--objective bd3lm: .*encoder"):
        family.trainer_for(BD3LMTrainer)


SFT_FLAGS = ["--max_steps", "3", "--per_device_train_batch_size", "4", "--use_cpu", "True", "--report_to", "none",
             "--learning_rate", "1e-3", "--max_seq_length", "32", "--logging_steps", "1", "--save_strategy", "no",
             "--dtype", "float32", "--gen_length", "8"]
TEMPLATE = ("{% for m in messages %}{{ m['role'] + ' - ' + m['content'] + eos_token }}{% endfor %}"
            "{% if add_generation_prompt %}{{ 'assistant -' }}{% endif %}")


@pytest.fixture(scope="module")
def sft_run(checkpoints, tmp_path_factory):
    """``dllm sft`` (the recipe's command line, in-process) for 3 steps on the tiny BERT with --chat_template."""
    from dllm.sft.recipe import run

    tmp = tmp_path_factory.mktemp("sft")
    data = tmp / "rows.json"
    data.write_text(json.dumps([{"instruction": f"repeat {i}", "input": "", "output": f"{i} {i}"} for i in range(12)]))
    (tmp / "chat.jinja").write_text(TEMPLATE)
    out = tmp / "out"
    trainer = run(None, ["--model_name_or_path", str(checkpoints["bert"]), "--dataset_args", str(data),
                         "--output_dir", str(out), "--chat_template", str(tmp / "chat.jinja"), *SFT_FLAGS])
    return trainer, out, data


def test_sft_trains_saves_and_reloads_with_identical_logits(sft_run, checkpoints):
    trainer, out, _ = sft_run
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and len(set(losses)) == 3 and all(torch.isfinite(torch.tensor(losses)))
    start = AutoModelForMaskedDiffusion.from_pretrained(str(checkpoints["bert"]))
    reloaded = AutoModelForMaskedDiffusion.from_pretrained(str(out)).eval()
    assert not torch.equal(start.bert.encoder.layer[0].attention.self.query.weight,
                           reloaded.bert.encoder.layer[0].attention.self.query.weight)  # it trained
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.chat_template == TEMPLATE and tok.eos_token == "[SEP]" and tok.mask_token == "[MASK]"
    inputs = batch(tok, ["repeat 3", "hello world"])
    trained = trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, trained(**inputs).logits)
    saved = json.loads((out / "diffusion_generation_config.json").read_text())
    assert saved["cache"] == "none" and saved["gen_length"] == 8 and saved["mask_token_id"] is None


def test_dllm_sample_on_the_trained_bert(sft_run, capsys):
    from dllm.cli import main as cli_main

    _, out, _ = sft_run
    assert cli_main(["sample", str(out), "repeat 3", "repeat 4"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert cli_main(["sample", str(out), "repeat 3", "--cache", "prefix", "--block_size", "4"]) == 0
    assert cli_main(["sample", str(out), "repeat 3", "--gen_length", "40"]) == 2  # beyond 32 positions
    assert "32 positions" in capsys.readouterr().err
    assert cli_main(["sample", str(out), "repeat 3", "--cache", "block"]) == 2
    err = capsys.readouterr().err  # one line, after the weights' progress bar
    assert "Traceback" not in err and "cache='block' needs a block-diffusion model" in err.splitlines()[-1]


def test_a_max_seq_length_beyond_the_positions_is_one_line_before_training(sft_run, checkpoints, tmp_path):
    from dllm.sft.recipe import run

    _, _, data = sft_run
    flags = [f if f != "32" else "64" for f in SFT_FLAGS]
    with pytest.raises(UsageError, match="--max_seq_length 64 exceeds the 32 positions"):
        run(None, ["--model_name_or_path", str(checkpoints["bert"]), "--dataset_args", str(data),
                   "--output_dir", str(tmp_path / "o"), *flags])
    assert not (tmp_path / "o").exists()


def test_dllm_serve_and_chat_settings_on_the_trained_bert(sft_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from dllm.core.sampling.config import SamplerSettingError
    from dllm.inference.chat import parse_settings
    from dllm.inference.loading import CheckpointArguments, load_checkpoint
    from dllm.inference.server import ServeArguments, create_app

    loaded = load_checkpoint(str(sft_run[1]), CheckpointArguments(device="cpu"))
    with pytest.raises(SamplerSettingError, match="32 positions"):
        parse_settings(loaded.generation_config, "gen_length=40", loaded.model.config)
    with TestClient(create_app(loaded, ServeArguments(max_tokens_limit=8))) as client:
        reply = client.post("/v1/chat/completions", json={
            "model": loaded.default_name, "messages": [{"role": "user", "content": "repeat 3"}], "cache": "prefix"})
    assert reply.status_code == 200, reply.text
    assert isinstance(reply.json()["choices"][0]["message"]["content"], str)


def test_the_elbo_of_an_encoder_does_not_depend_on_the_padding_side(checkpoints):
    from dllm.core.likelihood import elbo_nll

    model = AutoModelForMaskedDiffusion.from_pretrained(str(checkpoints["roberta"])).eval()
    tok = AutoTokenizer.from_pretrained(str(checkpoints["roberta"]))
    prompts = [tok("user: hello world", add_special_tokens=False)["input_ids"], [tok.bos_token_id]]
    answers = [tok(" 12 12", add_special_tokens=False)["input_ids"], tok(" sort", add_special_tokens=False)["input_ids"]]
    left, right = (elbo_nll(model, prompts, answers, tok.mask_token_id, num_samples=4, pad_token_id=tok.pad_token_id,
                            padding_side=side).nll for side in ("left", "right"))
    torch.testing.assert_close(left, right)


def test_the_demo_builds_a_tiny_bert_and_refuses_block_diffusion_for_it():
    from dllm.demo.run import DemoArguments, demo_config, parse_arguments
    from dllm.demo.tokenizer import build_char_tokenizer

    config = demo_config(DemoArguments(model_type="bert"), build_char_tokenizer())
    assert isinstance(config, BertConfig) and config.max_position_embeddings == 128
    assert AutoModelForMaskedDiffusion.class_for_config(config).__name__ == "BertForMaskedDiffusionLM"
    with pytest.raises(UsageError, match="--objective bd3lm .*--model_type bert"):
        parse_arguments(["--model_type", "bert", "--objective", "bd3lm"])


@pytest.mark.parametrize("kind", KINDS)
def test_dllm_pt_trains_an_encoder_on_raw_text_and_it_continues_text(checkpoints, kind, tmp_path, capsys):
    """``dllm pt`` (the one recipe's raw-text mode) on each encoder: rows within its positions, every token
    trained, a checkpoint that reloads as the encoder's masked-diffusion class and continues raw text."""
    from dllm.cli import main as cli
    from dllm.sft.recipe import run

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    out = tmp_path / "out"
    def with_length(length: str) -> list[str]:
        flags = list(SFT_FLAGS)
        flags[flags.index("--max_seq_length") + 1] = length
        return flags

    trainer = run(None, ["--model_name_or_path", str(checkpoints[kind]), "--dataset_args", str(corpus),
                         "--output_dir", str(out), *with_length("24")], mode="pt")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    reloaded = AutoModelForMaskedDiffusion.from_pretrained(str(out))
    assert isinstance(reloaded, EncoderMaskedLMMixin)
    with pytest.raises(UsageError, match="exceeds the 32 positions"):
        run(None, ["--model_name_or_path", str(checkpoints[kind]), "--dataset_args", str(corpus),
                   "--output_dir", str(tmp_path / "long"), *with_length("64")], mode="pt")
    capsys.readouterr()
    assert cli(["sample", str(out), "hello world", "--gen_length", "6", "--steps", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
