"""The visual demo: its rendered grids hold the right colour in the right cell, its answers match its questions,
its held-out grids never occur in training (read back from the images it wrote), and the whole run with a few
training steps ends with the accuracy line and saves a figure and a reloadable checkpoint."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

pytest.importorskip("torchvision", reason="Qwen3-VL's image processor needs torchvision")
pytest.importorskip("PIL")

from dllm.demo.vl import (  # noqa: E402 (after the skips)
    COLOURS,
    Grid,
    VLDemoArguments,
    cell_colour,
    is_heldout,
    random_grid,
    render_grid,
    write_data,
)

QUESTION = re.compile(r"^What colour is row (\d), column (\d)\?$")
NAME_OF = {rgb: name for name, rgb in COLOURS.items()}


def read_grid(path: Path, cell: int) -> Grid:
    """The grid an image shows, read from the centre pixel of each cell."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        rows, cols = image.height // cell, image.width // cell
        names = list(COLOURS)
        return Grid(rows, cols, tuple(names.index(NAME_OF[cell_colour(image, r, c, cell)])
                                      for r in range(rows) for c in range(cols)))


def test_render_fills_each_cell_with_its_colour():
    import numpy as np

    grid = Grid(2, 3, (0, 1, 2, 3, 4, 5))
    image = render_grid(grid, cell=32)
    assert image.size == (96, 64)
    pixels = np.asarray(image)  # [H, W, 3]
    names = list(COLOURS)
    for r in range(2):
        for c in range(3):
            block = pixels[32 * r:32 * (r + 1), 32 * c:32 * (c + 1)].reshape(-1, 3)
            expected = COLOURS[names[grid.colour_at(r, c)]]
            assert (block == expected).all(), (r, c)  # every pixel of the cell, not only its centre
            assert cell_colour(image, r, c, 32) == expected


def test_heldout_is_a_property_of_the_grid_alone():
    rng = random.Random(0)
    grids = [random_grid(3, 3, 6, rng) for _ in range(2000)]
    share = sum(is_heldout(g, 0.1) for g in grids) / len(grids)
    assert 0.07 < share < 0.13
    assert all(is_heldout(g, 0.1) == is_heldout(Grid(g.rows, g.cols, g.colours), 0.1) for g in grids)
    assert not any(is_heldout(g, 0.0) for g in grids) and all(is_heldout(g, 1.0) for g in grids)


def test_every_answer_fills_the_same_canvas():
    """One token per colour word: the number of answer positions cannot tell the colours apart (with characters it
    did, and the model learned the length instead of the image), and the sampler's canvas is what training saw."""
    from dllm.data.collator import tokenize_messages
    from dllm.demo.vl import ANSWER_CANVAS, build_tokenizer

    tokenizer = build_tokenizer()
    for name in COLOURS:
        row = tokenize_messages(tokenizer, [{"role": "user", "content": "What colour is row 2, column 3?"},
                                            {"role": "assistant", "content": name}])
        answer = [i for i, label in zip(row["input_ids"], row["labels"]) if label != -100]
        assert len(answer) == ANSWER_CANVAS, name
        assert tokenizer.decode(answer[:1]) == name and answer[1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in tokenizer("What colour is row 2, column 3?")["input_ids"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    args = VLDemoArguments(num_train_images=150, num_eval=40, seed=3)
    folder = tmp_path_factory.mktemp("vl-data")
    return args, folder, write_data(args, folder)


def test_answers_are_the_colours_the_images_show(written):
    args, folder, data = written
    train = json.loads((folder / "train.json").read_text())
    rows = [(r["messages"][0]["content"].removeprefix("<image>"), r["messages"][1]["content"], r["images"][0])
            for r in train] + [(r["question"], r["answer"], r["image"]) for r in data.heldout]
    for question, answer, image in rows:
        row, col = (int(x) - 1 for x in QUESTION.match(question).groups())
        grid = read_grid(folder / image, args.cell_pixels)
        assert list(COLOURS)[grid.colour_at(row, col)] == answer, (image, question)
    assert {r["answer"] for r in data.heldout} <= set(list(COLOURS)[:args.num_colours])


def test_heldout_grids_never_occur_in_training(written):
    args, folder, data = written
    train = json.loads((folder / "train.json").read_text())
    seen = {read_grid(folder / r["images"][0], args.cell_pixels) for r in train}
    heldout = {read_grid(folder / r["image"], args.cell_pixels) for r in data.heldout}
    assert len(heldout) == args.num_eval  # distinct, full-size
    assert all((g.rows, g.cols) == (args.grid_rows, args.grid_cols) for g in heldout)
    assert seen.isdisjoint(heldout)
    assert any((g.rows, g.cols) != (3, 3) for g in seen) and any((g.rows, g.cols) == (3, 3) for g in seen)


def test_demo_runs_end_to_end(tmp_path, capsys):
    from transformers import AutoProcessor

    from dllm.auto import AutoModelForMaskedDiffusion
    from dllm.demo.vl import main

    out = tmp_path / "demo-vl"
    result = main(["--output_dir", str(out), "--max_steps", "4", "--num_train_images", "40", "--num_eval", "12",
                   "--eval_batch_size", "5", "--batch_size", "8", "--logging_steps", "2", "--num_samples_to_show", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.match(r"^held-out accuracy: \d+\.\d% \(\d+/\d+\) in \d+ s$", lines[-1]), lines[-1]
    assert lines[-1].startswith(f"held-out accuracy: {100 * result['accuracy']:.1f}% ({result['hits']}/12)")
    assert any(line.startswith("held-out accuracy (12 questions") and "chance 16.7%" in line for line in lines)
    assert result["figure"].is_file() and result["figure"].stat().st_size > 1000
    assert (out / "data" / "train.json").is_file() and (out / "data" / "heldout.json").is_file()
    model = AutoModelForMaskedDiffusion.from_pretrained(str(result["checkpoint"]))
    processor = AutoProcessor.from_pretrained(result["checkpoint"])
    assert model.config.text_config.mask_token_id == processor.tokenizer.mask_token_id is not None


@pytest.mark.parametrize(("flags", "says"), [
    (["--num_colours", "1"], "num_colours must be in [2, "),
    (["--cell_pixels", "33"], "cell_pixels must be a multiple of 32, got 33"),
    (["--num_eval", "10000000"], "10000000 distinct held-out 3x3 grids"),
])
def test_bad_sizes_are_one_line_and_exit_status_2(tmp_path, capsys, flags, says):
    from dllm.cli import main as cli_main

    status = cli_main(["demo-vl", "--output_dir", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("dllm demo-vl: ") and says in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "init").exists()  # stopped before building a model
