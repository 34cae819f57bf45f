"""Raw text for ``dllm pt`` (:mod:`dllm.data.text`): every input format through the real ``datasets.load_dataset``
readers, mistakes named in one line, over-long documents split (no token lost), both packings, streaming, LLaDA's
variable-length rows, every token a label."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from datasets import Dataset, DatasetDict, IterableDataset

from dllm.data import loading
from dllm.data.collator import SFTDataCollator
from dllm.data.text import crop_rows, load_text_dataset, make_rows, prepare_pretraining_rows
from dllm.errors import UsageError

DOCS = ["alpha beta gamma", "the second document is a little longer than the first one", "x", "short text here"]


@pytest.fixture
def tokenizer():
    from transformers import PreTrainedTokenizerFast

    from dllm.demo.tokenizer import build_char_tokenizer

    char = build_char_tokenizer()  # a base model's tokenizer: no chat template, no automatic BOS
    return PreTrainedTokenizerFast(tokenizer_object=char.backend_tokenizer, bos_token="<|bos|>",
                                   eos_token="<|eos|>", pad_token="<|pad|>")


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _texts(dataset):
    return list(dataset["text"]) if isinstance(dataset, Dataset) else [row["text"] for row in dataset]


def test_txt_one_document_per_line_paragraph_or_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("first line\nsecond line\n\nthird after a blank\n")
    assert _texts(load_text_dataset(str(path))["train"]) == ["first line", "second line", "third after a blank"]
    paragraphs = _texts(load_text_dataset(str(path), txt_documents="paragraph")["train"])
    assert [p.strip() for p in paragraphs] == ["first line\nsecond line", "third after a blank"]
    assert _texts(load_text_dataset(str(path), txt_documents="file")["train"]) == [path.read_text()]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_rows_with_a_text_column_and_a_named_column(tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    rows = Dataset.from_list([{"body": d, "id": i} for i, d in enumerate(DOCS)])
    rows.to_parquet(str(path)) if suffix == ".parquet" else rows.to_json(str(path), lines=suffix == ".jsonl")
    loaded = load_text_dataset(str(path), text_column="body")["train"]
    assert loaded.column_names == ["text"] and _texts(loaded) == DOCS


def test_a_folder_splits_by_file_name_and_mixes_suffixes(tmp_path):
    (tmp_path / "train.txt").write_text("a b\nc d\n")
    _write_jsonl(tmp_path / "train-more.jsonl", [{"text": "e f"}])
    _write_jsonl(tmp_path / "test.jsonl", [{"text": "held out"}])
    loaded = load_text_dataset(str(tmp_path))
    assert sorted(_texts(loaded["train"])) == ["a b", "c d", "e f"] and _texts(loaded["test"]) == ["held out"]


def test_a_hub_id_goes_through_load_dataset(monkeypatch):
    calls = []

    def load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return DatasetDict({"train": Dataset.from_dict({"text": DOCS, "meta": [0] * 4}),
                            "test": Dataset.from_dict({"text": ["t"], "meta": [1]})})

    monkeypatch.setattr(loading.datasets, "load_dataset", load_dataset)
    loaded = load_text_dataset("org/corpus[train:2]")
    assert calls == [("org/corpus", {})]
    assert len(loaded["train"]) == 2 and set(_texts(loaded["train"])) <= set(DOCS) and _texts(loaded["test"]) == ["t"]


def test_blank_rows_are_skipped_and_counts_hold_out_a_test_split(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in DOCS] + [{"text": "  "}, {"text": None}])
    loaded = load_text_dataset(f"{path}[test:1]")
    assert len(loaded["train"]) == 3 and len(loaded["test"]) == 1
    assert sorted(_texts(loaded["train"]) + _texts(loaded["test"])) == sorted(DOCS)


@pytest.mark.parametrize("content,streaming,message", [
    ([{"content": "a"}], False, r"c.jsonl: no 'text' column \(found \['content'\]\); name the column .* --text_column"),
    ([{"content": "a"}], True, r"c.jsonl: no 'text' column \(found \['content'\]\)"),
    ([{"text": 3}, {"text": "a"}], False, r"c.jsonl, row 0: 'text' is int, expected a string"),
    ([{"text": 3}], True, r"c.jsonl, row 0: 'text' is int, expected a string"),
    ([{"text": ""}, {"text": " "}], False, r"c.jsonl: no text"),
])
def test_bad_rows_name_the_file_row_and_column(tmp_path, content, streaming, message):
    path = _write_jsonl(tmp_path / "c.jsonl", content)
    with pytest.raises(UsageError, match=message):
        load_text_dataset(str(path), streaming=streaming)


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("name", ["empty.txt", "empty.jsonl"])
def test_an_empty_or_missing_file_is_named(tmp_path, name, streaming):
    (tmp_path / name).write_text("")
    with pytest.raises(UsageError, match=rf"{name}: no rows \(empty file\)"):
        load_text_dataset(str(tmp_path / name), streaming=streaming)
    with pytest.raises(UsageError, match="dataset file not found: .*nope.txt"):
        load_text_dataset(str(tmp_path / "nope.txt"), streaming=streaming)


def test_a_bad_txt_documents_choice_is_refused(tmp_path):
    with pytest.raises(UsageError, match="txt_documents must be one of line, paragraph, file"):
        load_text_dataset(str(tmp_path / "x.txt"), txt_documents="page")


def _tokenised(tokenizer, texts):
    return [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]


@pytest.mark.parametrize("packing", ["document", "concat"])
def test_long_documents_are_split_and_no_token_is_lost(tokenizer, packing):
    texts = [d * 5 for d in DOCS]  # several documents longer than a row
    rows = prepare_pretraining_rows(DatasetDict({"train": Dataset.from_dict({"text": texts})}), tokenizer, 16,
                                    packing=packing)["train"]
    expected = _tokenised(tokenizer, texts)
    assert max(len(ids) for ids in expected) > 16 and all(len(ids) <= 16 for ids in rows["input_ids"])
    packed = Counter(t for ids in rows["input_ids"] for t in ids)
    assert packed == Counter(t for ids in expected for t in ids)  # the documents' tokens plus one EOS each
    assert packed[tokenizer.eos_token_id] == len(texts)
    assert all(labels == ids for ids, labels in zip(rows["input_ids"], rows["labels"]))  # every token trained
    if packing == "concat":  # documents in order, wrapped: the rows joined are the documents joined
        assert [t for ids in rows["input_ids"] for t in ids] == [t for ids in expected for t in ids]
        assert "seq_lengths" not in rows.column_names
    else:  # every document's pieces, each at most a row, in the packs' document lengths
        assert all(sum(lengths) == len(ids) for ids, lengths in zip(rows["input_ids"], rows["seq_lengths"]))
        assert sorted(n for lengths in rows["seq_lengths"] for n in lengths) == sorted(
            n for ids in expected for n in [16] * (len(ids) // 16) + ([len(ids) % 16] if len(ids) % 16 else []))


def test_the_collator_trains_every_token_and_pads_untrained(tokenizer):
    rows = make_rows(Dataset.from_dict({"input_ids": [[5, 6, 7, 2], [8, 9, 2]]}), 3, packing="concat")
    batch = SFTDataCollator(tokenizer, max_seq_length=3)(list(rows))
    assert batch["labels"].tolist() == [[5, 6, 7], [2, 8, 9], [2, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 1], [1, 0, 0]]
    packed = SFTDataCollator(tokenizer, max_seq_length=8)(list(make_rows(
        Dataset.from_dict({"input_ids": [[5, 6, 7, 2], [8, 9, 2]]}), 8)))
    assert (packed["labels"] == packed["input_ids"]).all() and packed["document_ids"].tolist() == [[0] * 4 + [1] * 3]


def test_streaming_holds_out_the_first_documents_and_packs_as_in_memory(tmp_path, tokenizer):
    texts = [d * (i % 3 + 1) for i, d in enumerate(DOCS * 3)]
    path = _write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts])
    streamed = prepare_pretraining_rows(load_text_dataset(f"{path}[train:9,test:2]", streaming=True), tokenizer, 24,
                                        shuffle_buffer_size=0)
    assert isinstance(streamed["train"], IterableDataset)
    rows = {split: [dict(r) for r in streamed[split]] for split in ("train", "test")}
    for split, expected in (("test", texts[:2]), ("train", texts[2:11])):
        tokens = Counter(t for r in rows[split] for t in r["input_ids"])
        assert tokens == Counter(t for ids in _tokenised(tokenizer, expected) for t in ids), split
    in_memory = make_rows(Dataset.from_dict({"input_ids": _tokenised(tokenizer, texts[2:11])}), 24)
    assert [r["input_ids"] for r in rows["train"]] == in_memory["input_ids"]  # the same packs, read lazily


def test_streaming_refuses_a_fractional_test_size(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in DOCS])
    with pytest.raises(UsageError, match="fraction, which a stream"):
        load_text_dataset(str(path), streaming=True, test_size=0.5)


def test_variable_length_rows_are_the_asked_fraction_and_keep_every_token():
    rows = Dataset.from_dict({"input_ids": [list(range(64))] * 2000, "labels": [list(range(64))] * 2000,
                              "seq_lengths": [[10, 54]] * 2000})
    cropped = rows.map(crop_rows, batched=True, with_indices=True, fn_kwargs={"fraction": 0.1, "seed": 3})
    cut = len(cropped) - len(rows)  # each cut row becomes two
    assert 150 <= cut <= 250, cut  # Binomial(2000, 0.1): mean 200, sd 13.4
    assert sum(len(ids) for ids in cropped["input_ids"]) == 2000 * 64
    assert all(sum(lengths) == len(ids) for ids, lengths in zip(cropped["input_ids"], cropped["seq_lengths"]))
    lengths = sorted(len(ids) for ids in cropped["input_ids"] if len(ids) < 64)
    assert len(set(lengths)) > 30  # uniform cut points, not one length
    again = rows.map(crop_rows, batched=True, with_indices=True, fn_kwargs={"fraction": 0.1, "seed": 3})
    assert again["input_ids"] == cropped["input_ids"]  # seeded by (seed, row): the same rows every run
