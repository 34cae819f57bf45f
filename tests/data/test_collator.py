"""tokenize_messages and SFTDataCollator: prompt masking, padding, truncation, drops, eos padding."""

from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset

from dllm.data import IGNORE_INDEX, ChatTemplateError, SFTDataCollator, tokenize_messages
from dllm.demo.tokenizer import build_char_tokenizer

EOS = "<|eos|>"
PROMPT_PREFIX = "<|bos|><|user|>"


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def tokens(tok, ids) -> str:
    """Concatenated token strings (the char tokenizer has one token per character)."""
    return "".join(tok.convert_ids_to_tokens([int(i) for i in ids]))


def trained(tok, batch: dict, b: int) -> str:
    """Token text at positions row b trains on; also checks labels equal the input there."""
    keep = batch["labels"][b] != IGNORE_INDEX
    assert torch.equal(batch["labels"][b][keep], batch["input_ids"][b][keep])
    return tokens(tok, batch["input_ids"][b][keep])


def test_labels_mask_exactly_prompt_and_padding(tok) -> None:
    rows = [chat("What is two plus two?", "four"), chat("Hi", "Hello there, friend")]
    batch = SFTDataCollator(tok)(rows)
    pairs = [(m[0]["content"], m[1]["content"]) for m in (row["messages"] for row in rows)]
    lengths = [len(tok.tokenize(f"{PROMPT_PREFIX}{q}<|assistant|>{a}{EOS}")) for q, a in pairs]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.long and t.shape == (2, max(lengths)) for t in batch.values())
    for b, (row, n) in enumerate(zip(rows, lengths)):
        question, answer = (m["content"] for m in row["messages"])
        prompt = f"{PROMPT_PREFIX}{question}<|assistant|>"
        assert trained(tok, batch, b) == answer + EOS
        masked = batch["labels"][b] == IGNORE_INDEX
        assert tokens(tok, batch["input_ids"][b][:n][masked[:n]]) == prompt  # masked = the whole prompt ...
        assert masked[n:].all()  # ... and the padding
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert (batch["input_ids"][b][n:] == tok.pad_token_id).all()
    assert lengths[0] != lengths[1]  # so one row really is padded


def test_multi_turn_trains_every_assistant_turn(tok) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hey"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Ciao"},
    ]
    out = tokenize_messages(tok, messages)
    text = tokens(tok, out["input_ids"])
    assert text == f"<|bos|><|system|>Be brief.<|user|>Hi<|assistant|>Hey{EOS}<|user|>Bye<|assistant|>Ciao{EOS}"
    labelled = [t if l != IGNORE_INDEX else None for t, l in zip(out["input_ids"], out["labels"])]
    runs, current = [], []
    for t in labelled + [None]:
        if t is None and current:
            runs.append(tokens(tok, current))
            current = []
        elif t is not None:
            current.append(t)
    assert runs == [f"Hey{EOS}", f"Ciao{EOS}"]


def test_no_prompt_masking_trains_every_token(tok) -> None:
    batch = SFTDataCollator(tok, mask_prompt_loss=False)([chat("Hi", "Yo"), chat("Hello", "Yo")])
    attended = batch["attention_mask"] == 1
    assert torch.equal(batch["labels"][attended], batch["input_ids"][attended])
    assert (batch["labels"][~attended] == IGNORE_INDEX).all()


def test_truncation_keeps_prompt_and_cuts_answer(tok) -> None:
    prompt = f"{PROMPT_PREFIX}Spell it<|assistant|>"
    max_len = len(tok.tokenize(prompt)) + 4
    collator = SFTDataCollator(tok, max_seq_length=max_len)
    batch = collator([chat("Spell it", "abcdefghij")])
    assert batch["input_ids"].shape == (1, max_len)
    assert tokens(tok, batch["input_ids"][0]) == prompt + "abcd"
    assert trained(tok, batch, 0) == "abcd"
    assert collator.num_dropped == 0


def test_row_without_room_for_an_answer_is_dropped_and_counted(tok, caplog) -> None:
    collator = SFTDataCollator(tok, max_seq_length=12)
    long_prompt, short = chat("A very long question indeed", "x"), chat("Hi", "Hey")
    with caplog.at_level(logging.WARNING, logger="dllm.data.collator"):
        batch = collator([long_prompt, short])
    assert batch["input_ids"].shape[0] == 1
    assert trained(tok, batch, 0) == f"Hey{EOS}"
    assert collator.num_dropped == 1
    assert any("dropped 1 of 2 rows" in r.getMessage() for r in caplog.records)
    collator([long_prompt, short, long_prompt])
    assert collator.num_dropped == 3  # running counter
    with pytest.raises(ValueError, match="all 2 rows of the batch have no answer token within max_seq_length=12"):
        collator([long_prompt, long_prompt])


def test_train_on_eos_padding_extends_with_trained_eos(tok) -> None:
    collator = SFTDataCollator(tok, train_on_eos_padding=True, pad_to_multiple_of=8)
    short, long = chat("Hi", "Yo"), chat("Hi", "Hello there")
    batch = collator([short, long])
    length = batch["input_ids"].shape[1]
    n_short = len(tok.tokenize(f"{PROMPT_PREFIX}Hi<|assistant|>Yo{EOS}"))
    n_long = len(tok.tokenize(f"{PROMPT_PREFIX}Hi<|assistant|>Hello there{EOS}"))
    assert length % 8 == 0 and length >= n_long
    assert (batch["attention_mask"] == 1).all()
    assert (batch["input_ids"][0, n_short:] == tok.eos_token_id).all()
    assert trained(tok, batch, 0) == "Yo" + EOS * (length - n_short + 1)
    assert trained(tok, batch, 1) == "Hello there" + EOS * (length - n_long + 1)
    assert (batch["labels"][0, :n_short - 3] == IGNORE_INDEX).all()  # prompt still masked


def test_eos_padding_does_not_teach_a_false_end_after_truncation(tok) -> None:
    prompt_len = len(tok.tokenize(f"{PROMPT_PREFIX}Hi<|assistant|>"))
    collator = SFTDataCollator(tok, max_seq_length=prompt_len + 3, train_on_eos_padding=True, pad_to_multiple_of=32)
    batch = collator([chat("Hi", "abcdefgh")])
    assert batch["input_ids"].shape == (1, 32)
    assert trained(tok, batch, 0) == "abc"
    assert (batch["input_ids"][0, prompt_len + 3 :] == tok.eos_token_id).all()


def test_pad_to_multiple_of_and_eos_fallback_without_pad_token(tok) -> None:
    no_pad = build_char_tokenizer()
    no_pad.pad_token = None
    assert no_pad.pad_token_id is None
    batch = SFTDataCollator(no_pad, pad_to_multiple_of=16)([chat("Hi", "Yo")])
    n = len(no_pad.tokenize(f"{PROMPT_PREFIX}Hi<|assistant|>Yo{EOS}"))
    assert batch["input_ids"].shape == (1, 16)
    assert (batch["input_ids"][0, n:] == no_pad.eos_token_id).all()
    assert (batch["attention_mask"][0, n:] == 0).all() and (batch["labels"][0, n:] == IGNORE_INDEX).all()


@pytest.mark.parametrize(
    "options",
    [{}, {"max_seq_length": 14, "train_on_eos_padding": True}, {"mask_prompt_loss": False, "pad_to_multiple_of": 8}],
)
def test_pretokenized_rows_give_identical_batches(tok, options) -> None:
    rows = [chat("Hi", "Hello"), chat("What?", "Nothing at all"), chat("Ok", "Sure")]
    mask = options.get("mask_prompt_loss", True)
    dataset = Dataset.from_list(rows).map(
        lambda row: tokenize_messages(tok, row["messages"], mask_prompt_loss=mask), remove_columns=["messages"]
    )
    collator = SFTDataCollator(tok, **options)
    from_messages, from_tokens = collator(rows), collator(list(dataset))
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(from_messages[key], from_tokens[key]), key


def test_prefix_inconsistent_template_is_rejected(tok) -> None:
    odd = build_char_tokenizer()
    # Numbering turns from the end rewrites earlier text whenever a message is added.
    odd.chat_template = "{% for m in messages %}{{ (messages|length - loop.index)|string + m['content'] }}{% endfor %}"
    with pytest.raises(ChatTemplateError, match=r"not prefix-consistent at messages\[1\]"):
        tokenize_messages(odd, chat("Hi", "Yo")["messages"])


def test_bad_rows_are_named(tok) -> None:
    collator = SFTDataCollator(tok)
    with pytest.raises(ValueError, match=r"batch row 1: pre-tokenized row has 'input_ids' but no 'labels'"):
        collator([chat("Hi", "Yo"), {"input_ids": [1, 2]}])
    expected = r"batch row 0: expected 'messages' or 'input_ids'\+'labels', got keys \['text'\]"
    with pytest.raises(ValueError, match=expected):
        collator([{"text": "hi"}])


def test_rows_emptied_by_remove_unused_columns_get_a_hint(char_tokenizer):
    with pytest.raises(ValueError, match=r"batch row 0: .*got keys \[\]; Trainer dropped the dataset's columns: "
                                         r"set remove_unused_columns=False"):
        SFTDataCollator(char_tokenizer)([{}])


def test_rows_tokenised_once_by_the_recipe_collate_exactly_like_message_rows(char_tokenizer):
    """`dllm sft` tokenises once with datasets.map (tokenize_once); the batches must not change."""
    from datasets import Dataset, DatasetDict

    from dllm.sft.recipe import tokenize_dataset

    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q{i} " * (i + 1)},
                          {"role": "assistant", "content": f"A{i}"}, {"role": "user", "content": "again"},
                          {"role": "assistant", "content": "yes " * i + "done"}]} for i in range(5)]
    messages = DatasetDict({"train": Dataset.from_list(rows)})
    for mask_prompt_loss in (True, False):
        tokenized = tokenize_dataset(messages, char_tokenizer, mask_prompt_loss)["train"]
        assert tokenized.column_names == ["input_ids", "labels"]
        collator = SFTDataCollator(char_tokenizer, max_seq_length=40, mask_prompt_loss=mask_prompt_loss,
                                   train_on_eos_padding=True)
        once, each_time = collator(list(tokenized)), collator(rows)
        assert once.keys() == each_time.keys()
        for key in once:
            assert torch.equal(once[key], each_time[key]), key
