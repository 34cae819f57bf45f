"""Check the Qwen3-VL integration end to end, offline, on a tiny random Qwen3-VL; prints PASS/FAIL per step.

    python scripts/test_qwen3_vl_setup.py                 # tiny model, generated data (+ mllm_demo when present)
    python scripts/test_qwen3_vl_setup.py --data path/to/mllm_demo.json

Steps: data loading (a {messages, images} JSON file and a KoDocumentTable-style parquet), the model (bidirectional,
vision frozen, mask token), the collator (label masks), one Qwen3VLTrainer forward + backward. Exit status 1 when
any step fails. Needs torchvision (Qwen3-VL's image processor).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

RESULTS: list[tuple[str, bool, str]] = []


def step(name):
    def run(fn):
        try:
            detail = fn() or ""
            RESULTS.append((name, True, detail))
        except Exception as err:  # a check script reports every failure and goes on
            RESULTS.append((name, False, f"{type(err).__name__}: {err}"))
            traceback.print_exc()
        return fn
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="a {messages, images} JSON file to load as well")
    args = parser.parse_args(argv)
    from PIL import Image

    tmp = Path(tempfile.mkdtemp(prefix="qwen3-vl-setup-"))
    state: dict = {}

    @step("data: {messages, images} JSON and KoDocumentTable parquet")
    def _():
        from datasets import Dataset
        from datasets import Image as ImageFeature

        from dllm.data import load_sft_dataset

        Image.new("RGB", (64, 48), (120, 30, 200)).save(tmp / "a.png")
        rows = [{"messages": [{"role": "user", "content": "<image>이 그림은?"},
                              {"role": "assistant", "content": "보라색 사각형입니다."}], "images": ["a.png"]}]
        (tmp / "chat.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        chat = load_sft_dataset(str(tmp / "chat.json"))["train"]
        content = json.dumps([{"type": "image"}, {"type": "text", "text": "표의 합계는?"}], ensure_ascii=False)
        Dataset.from_dict({"id": ["d0"], "image": [Image.new("RGB", (64, 64), "white")], "metadata": ["{}"],
                           "conversations": [[{"role": "user", "content": content},
                                              {"role": "assistant", "content": "100원"}]]}).cast_column(
            "image", ImageFeature()).to_parquet(str(tmp / "ko.parquet"))
        ko = load_sft_dataset(str(tmp / "ko.parquet"))["train"]
        state["rows"] = [chat[0], ko[0]]
        extra = load_sft_dataset(args.data)["train"] if args.data else None
        if extra is not None:
            state["rows"].append(extra[0])
        return f"{len(state['rows'])} rows" + (f" (+ {len(extra)} from {args.data})" if extra is not None else "")

    @step("model: tiny Qwen3VLForMaskedLM, bidirectional, vision frozen, mask token")
    def _():
        from dllm.core.models import add_mask_token
        from dllm.core.models.masked_lm import is_bidirectional
        from dllm.pipelines.qwen3_vl.testing import build_tiny_qwen3_vl

        model, processor = build_tiny_qwen3_vl()
        model.freeze_vision_components()
        add_mask_token(model, processor.tokenizer)
        assert is_bidirectional(model), "the language model is still causal"
        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        assert frozen and all(n.startswith("model.visual.") for n in frozen), "wrong parameters frozen"
        state.update(model=model, processor=processor)
        return f"{len(frozen)} vision tensors frozen, mask id {processor.tokenizer.mask_token_id}"

    @step("collator: tensors and label masks")
    def _():
        from dllm.pipelines.qwen3_vl.utils import create_qwen3_vl_collator

        processor = state["processor"]
        batch = create_qwen3_vl_collator(processor)(state["rows"])
        for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids", "labels"):
            assert key in batch, f"missing {key}"
        labelled = batch["labels"] != -100
        assert not labelled[batch["mm_token_type_ids"] != 0].any(), "an image token has a label"
        answer = processor.tokenizer.decode(batch["labels"][0][labelled[0]])
        assert answer == "보라색 사각형입니다.<|im_end|>\n", f"row 0 trains on {answer!r}"
        state["batch"] = batch
        return f"input_ids {tuple(batch['input_ids'].shape)}, {int(labelled.sum())} answer tokens"

    @step("trainer: one forward + backward through Qwen3VLTrainer")
    def _():
        from dllm.core.trainers.mdlm_trainer import MDLMConfig
        from dllm.pipelines.qwen3_vl.trainer import Qwen3VLTrainer

        model, processor = state["model"], state["processor"]
        trainer = Qwen3VLTrainer(model=model, processing_class=processor,
                                 args=MDLMConfig(output_dir=str(tmp / "out"), report_to=[], use_cpu=True))
        loss = trainer.compute_loss(model, dict(state["batch"]))
        loss.backward()
        assert torch.isfinite(loss), f"loss {loss}"
        grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
        assert all(g is not None for g in grads[:1]) and any(g is not None and g.abs().sum() > 0 for g in grads)
        assert all(p.grad is None for p in model.model.visual.parameters()), "a frozen parameter got a gradient"
        return f"loss {loss.item():.3f}"

    width = max(len(name) for name, _, _ in RESULTS)
    for name, ok, detail in RESULTS:
        print(f"{'PASS' if ok else 'FAIL'}  {name:<{width}}  {detail}")
    failed = sum(not ok for _, ok, _ in RESULTS)
    print(f"{len(RESULTS) - failed}/{len(RESULTS)} passed" + ("" if not failed else f", {failed} FAILED"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
