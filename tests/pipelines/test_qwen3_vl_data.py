"""Multimodal data through load_sft_dataset: KoDocumentTableVisualSFT parquet and the {messages, images} format."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset, Features, Image, List, Value

from dllm.data import DataValidationError, load_sft_dataset
from dllm.data.ko_document_table import KO_DOCUMENT_TABLE_HUB_ID, ko_document_table_to_messages
from dllm.data.loading import NAMED_FORMATS
from tests.helpers import noise_image

KO_FEATURES = Features({
    "id": Value("string"),
    "image": Image(),
    "metadata": Value("string"),
    "conversations": List({"role": Value("string"), "content": Value("string")}),
})


def _ko_row(i: int) -> dict:
    question = json.dumps([{"type": "image"}, {"type": "text", "text": f"표 {i}의 합계는?"}], ensure_ascii=False)
    answer = json.dumps([{"type": "text", "text": f"합계는 {i}00원입니다."}], ensure_ascii=False)
    return {"id": f"doc-{i}", "image": noise_image(i), "metadata": "{}",
            "conversations": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


@pytest.fixture
def ko_parquet(tmp_path):
    path = tmp_path / "train-00000-of-00001.parquet"
    Dataset.from_list([_ko_row(i) for i in range(6)], features=KO_FEATURES).to_parquet(str(path))
    return path


def test_ko_document_table_parquet_loads_as_messages_with_undecoded_images(ko_parquet):
    assert KO_DOCUMENT_TABLE_HUB_ID in NAMED_FORMATS
    train = load_sft_dataset(f"{ko_parquet}[train:4,test:2]", seed=0)
    rows = train["train"]
    assert sorted(rows.column_names) == ["image", "messages"] and len(train["test"]) == 2
    assert rows.features["image"] == Image(decode=False)  # decoded by the collator, not here
    row = rows[0]
    assert isinstance(row["image"]["bytes"], bytes)
    user, assistant = row["messages"]
    assert user["role"] == "user" and user["content"].startswith("<image>표 ") and user["content"].endswith("합계는?")
    assert assistant == {"role": "assistant", "content": assistant["content"]}
    assert assistant["content"].startswith("합계는 ") and "<image>" not in assistant["content"]


@pytest.mark.parametrize("content,expected", [
    ([{"type": "image"}, {"type": "text", "text": "무엇?"}], "<image>무엇?"),  # already a list
    ("표를 읽어 주세요", "<image>표를 읽어 주세요"),  # plain text: the image goes first
    ('[{"type": "text", "text": "앞"}, {"type": "image"}]', "앞<image>"),
])
def test_ko_document_table_content_variants(content, expected):
    row = {"image": {"bytes": b"x", "path": None},
           "conversations": [{"role": "human", "content": content}, {"role": "gpt", "content": "답"}]}
    messages = ko_document_table_to_messages(row, "src", 3)
    assert messages == [{"role": "user", "content": expected}, {"role": "assistant", "content": "답"}]


def test_ko_document_table_errors_name_the_row():
    two_images = json.dumps([{"type": "image"}, {"type": "image"}])
    row = {"image": {"bytes": b"x"}, "conversations": [{"role": "user", "content": two_images},
                                                          {"role": "assistant", "content": "답"}]}
    with pytest.raises(DataValidationError, match="src row 5: 2 image parts but 1 images"):
        ko_document_table_to_messages(row, "src", 5)
    with pytest.raises(DataValidationError, match="src row 5: 'conversations' must be a list"):
        ko_document_table_to_messages({"image": None, "conversations": None}, "src", 5)


def test_messages_images_format_resolves_paths_against_the_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    noise_image(0).save(tmp_path / "imgs" / "a.png")
    rows = [{"messages": [{"role": "user", "content": "<image>이건?"}, {"role": "assistant", "content": "잡음"}],
             "images": ["imgs/a.png"]},
            {"messages": [{"role": "user", "content": "글만"}, {"role": "assistant", "content": "네"}], "images": []}]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    loaded = load_sft_dataset(str(path))["train"]
    assert loaded[0]["images"] == [str((tmp_path / "imgs" / "a.png").resolve())] and loaded[1]["images"] == []
    assert loaded[0]["messages"][0]["content"] == "<image>이건?"


def test_messages_images_format_checks_the_image_count(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "<image><image>?"}, {"role": "assistant", "content": "a"}],
             "images": ["x.png"]}]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DataValidationError, match=r"bad.json row 0: 2 <image> placeholders but 1 images"):
        load_sft_dataset(str(path))


def test_ko_parquet_rows_collate(ko_parquet):
    pytest.importorskip("torchvision", reason="Qwen3-VL's image processor needs torchvision")
    from dllm.pipelines.qwen3_vl.testing import build_tiny_qwen3_vl_processor
    from dllm.pipelines.qwen3_vl.utils import create_qwen3_vl_collator

    processor = build_tiny_qwen3_vl_processor()
    rows = load_sft_dataset(str(ko_parquet))["train"]
    batch = create_qwen3_vl_collator(processor)([rows[0], rows[1]])
    assert batch["image_grid_thw"].shape == (2, 3)
    answer = [t for t in batch["labels"][0].tolist() if t != -100]
    assert processor.tokenizer.decode(answer) == rows[0]["messages"][1]["content"] + "<|im_end|>\n"
