"""Qwen3VLDataCollator: the processor's tensors, labels only on answers (found from tokens), errors naming rows."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchvision", reason="Qwen3-VL's image processor needs torchvision")

from dllm.pipelines.qwen3_vl.utils import (  # noqa: E402
    ImageTruncationError,
    Qwen3VLDataCollator,
    create_qwen3_vl_collator,
)
from tests.helpers import noise_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MLLM_DEMO = ROOT.parent / "shared" / "data" / "mllm_demo"

KOREAN_CHAT = [
    {"role": "system", "content": "당신은 표를 읽는 도우미입니다."},
    {"role": "user", "content": "<image>이 표의 제목은 무엇인가요?"},
    {"role": "assistant", "content": "2023년 매출 현황입니다."},
    {"role": "user", "content": "합계는 얼마입니까?"},
    {"role": "assistant", "content": "총 1,234억 원입니다."},
]


def _labelled_runs(labels: torch.Tensor) -> list[list[int]]:
    """Maximal runs of consecutive labelled positions, as token-id lists."""
    runs, current = [], []
    for label in labels.tolist():
        if label != -100:
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_tensors_match_the_processor(processor, image):
    row = {"messages": KOREAN_CHAT, "images": [image]}
    batch = create_qwen3_vl_collator(processor)([row])
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids",
                          "labels"}
    parts = [{"type": "image"}, {"type": "text", "text": "이 표의 제목은 무엇인가요?"}]
    chat = [dict(m, content=parts) if i == 1 else m for i, m in enumerate(KOREAN_CHAT)]
    text = processor.apply_chat_template(chat, tokenize=False)
    expected = processor(text=[text], images=[image], return_tensors="pt")
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"):
        assert torch.equal(batch[key], expected[key]), key


def test_korean_multi_turn_labels_are_exactly_the_answers(processor, image):
    tokenizer = processor.tokenizer
    batch = create_qwen3_vl_collator(processor)([{"messages": KOREAN_CHAT, "images": [image]}])
    runs = [tokenizer.decode(run) for run in _labelled_runs(batch["labels"][0])]
    assert runs == ["2023년 매출 현황입니다.<|im_end|>\n", "총 1,234억 원입니다.<|im_end|>\n"]
    labelled = batch["labels"][0] != -100
    assert torch.equal(batch["input_ids"][0][labelled], batch["labels"][0][labelled])
    vision = torch.isin(batch["input_ids"][0], torch.tensor(tokenizer.convert_tokens_to_ids(
        ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"])))
    assert vision.sum() == 2 + 4 and not labelled[vision].any()


def test_padding_and_text_only_rows(processor, image):
    rows = [{"messages": KOREAN_CHAT, "images": [image]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}]
    batch = create_qwen3_vl_collator(processor, pad_to_multiple_of=8)(rows)
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["image_grid_thw"].shape == (1, 3)
    pad = batch["attention_mask"] == 0
    assert pad[1].any() and (batch["labels"][pad] == -100).all()
    assert (batch["input_ids"][pad] == processor.tokenizer.pad_token_id).all()
    assert (batch["mm_token_type_ids"][1] == 0).all()
    assert processor.tokenizer.decode(_labelled_runs(batch["labels"][1])[0]) == "ok<|im_end|>\n"


def test_without_prompt_masking_every_text_token_but_vision_trains(processor, image):
    batch = create_qwen3_vl_collator(processor, mask_prompt_loss=False)([{"messages": KOREAN_CHAT,
                                                                           "images": [image]}])
    unlabelled = batch["labels"][0] == -100
    assert int(unlabelled.sum()) == 6  # <|vision_start|>, 4 image tokens, <|vision_end|>


def test_list_content_paths_bytes_and_single_image_column(processor, image, tmp_path):
    path = tmp_path / "img.png"
    image.save(path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]},
                {"role": "assistant", "content": "Noise."}]
    by_pil = create_qwen3_vl_collator(processor)([{"messages": messages, "image": image}])
    by_path = create_qwen3_vl_collator(processor)([{"messages": messages, "images": [str(path)]}])
    by_root = create_qwen3_vl_collator(processor, image_root=str(tmp_path))([{"messages": messages,
                                                                              "images": ["img.png"]}])
    by_bytes = create_qwen3_vl_collator(processor)([{"messages": messages,
                                                     "image": {"bytes": path.read_bytes(), "path": None}}])
    for other in (by_path, by_root, by_bytes):
        assert all(torch.equal(by_pil[k], other[k]) for k in by_pil)


@pytest.mark.parametrize("row,error,match", [
    ({"id": "doc-7", "messages": KOREAN_CHAT, "images": []}, ValueError, r"batch row 1 \(id='doc-7'\): 1 image"),
    ({"messages": KOREAN_CHAT, "images": [noise_image(), noise_image(1)]}, ValueError, "batch row 1: 1 image placeholders .* 2 images"),
    ({"messages": KOREAN_CHAT, "images": ["/no/such/image.png"]}, FileNotFoundError, "batch row 1 image 0: no such image file"),
    ({"messages": [], "images": []}, ValueError, "batch row 1: empty conversation"),
    ({}, ValueError, "batch row 1: empty conversation.*remove_unused_columns"),
])
def test_errors_name_the_row(processor, image, row, error, match):
    good = {"messages": KOREAN_CHAT, "images": [image]}
    with pytest.raises(error, match=match):
        create_qwen3_vl_collator(processor)([good, row])


def test_unreadable_image_file_names_the_row(processor, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"batch row 0 image 0: cannot read the image .*broken.jpg"):
        create_qwen3_vl_collator(processor)([{"messages": KOREAN_CHAT, "images": [str(bad)]}])


def test_truncation_never_cuts_an_image(processor, image, caplog):
    row = {"messages": KOREAN_CHAT, "images": [image]}
    full = create_qwen3_vl_collator(processor)([row])["input_ids"].shape[1]
    image_end = int((create_qwen3_vl_collator(processor)([row])["mm_token_type_ids"][0] == 1).nonzero().max())
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
    collator = Qwen3VLDataCollator(processor, max_seq_length=image_end)  # cuts through the image
    with caplog.at_level(logging.WARNING):
        batch = collator([row, short])
    assert batch["input_ids"].shape[0] == 1 and "pixel_values" not in batch and collator.num_dropped == 1
    assert "1 would be cut through an image" in caplog.text
    with pytest.raises(ImageTruncationError, match="batch row 0"):
        Qwen3VLDataCollator(processor, max_seq_length=image_end, on_image_truncation="raise")([row])
    cut = Qwen3VLDataCollator(processor, max_seq_length=full - 5)([row])  # cuts the last answer only
    assert cut["input_ids"].shape[1] == full - 5 and cut["image_grid_thw"].shape == (1, 3)
    assert (cut["labels"] != -100).any()


def test_real_mllm_demo_rows(processor):
    if not (MLLM_DEMO / "mllm_demo.json").is_file():
        pytest.skip(f"mllm_demo data not found at {MLLM_DEMO}")
    from dllm.data import load_sft_dataset

    rows = load_sft_dataset(str(MLLM_DEMO / "mllm_demo.json"))["train"]
    collator = create_qwen3_vl_collator(processor)
    batch = collator([rows[i] for i in range(len(rows))])
    n_images = sum(len(r["images"]) for r in rows)
    assert batch["image_grid_thw"].shape[0] == n_images and batch["input_ids"].shape[0] == len(rows)
    merge = processor.image_processor.merge_size
    assert int((batch["mm_token_type_ids"] == 1).sum()) == int((batch["image_grid_thw"].prod(-1) // merge**2).sum())
    for b, row in enumerate(rows):
        answers = [m["content"] + "<|im_end|>\n" for m in row["messages"] if m["role"] == "assistant"]
        decoded = [processor.tokenizer.decode(run) for run in _labelled_runs(batch["labels"][b])]
        # The character tokenizer maps characters outside its alphabet to <|unk|>; compare lengths then.
        assert len(decoded) == len(answers)
        assert [len(processor.tokenizer(a, add_special_tokens=False)["input_ids"]) for a in answers] == \
            [len(run) for run in _labelled_runs(batch["labels"][b])]
