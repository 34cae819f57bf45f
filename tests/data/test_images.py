"""The one helper that turns a user-supplied image into a PIL image: what it accepts (PIL images, base64 data URLs,
paths and file:// URLs where files are allowed), what it refuses, and that every refusal is one line naming where
the image came from."""

from __future__ import annotations

import base64
import io

import pytest

from dllm.errors import UsageError
from dllm.data.images import load_image
from tests.helpers import noise_image

pytest.importorskip("PIL")


def data_url(image, kind: str = "image/png") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"data:{kind};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def same_pixels(a, b) -> bool:
    return a.size == b.size and a.tobytes() == b.tobytes()


def test_pil_images_data_urls_paths_and_file_urls_give_the_same_rgb_image(tmp_path):
    image = noise_image(3)
    path = tmp_path / "a b.png"  # a space: the file URL quotes it
    image.save(path)
    grey = image.convert("L")
    for source in (image, data_url(image), str(path), path, path.as_uri(), f"file://localhost{path}"):
        loaded = load_image(source, "where")
        assert loaded.mode == "RGB" and same_pixels(loaded, image), source if isinstance(source, str) else source
    assert load_image(grey).mode == "RGB"
    assert same_pixels(load_image(data_url(image, "image/png;name=x")), image)  # data URL parameters are allowed


def test_a_folder_rule_reads_only_files_inside_it(tmp_path):
    inside, outside = tmp_path / "media", tmp_path / "other"
    inside.mkdir()
    outside.mkdir()
    noise_image(1).save(inside / "in.png")
    noise_image(2).save(outside / "out.png")
    (inside / "link.png").symlink_to(outside / "out.png")
    assert same_pixels(load_image("in.png", "img", inside), noise_image(1))  # relative: inside the folder
    assert same_pixels(load_image((inside / "in.png").as_uri(), "img", inside), noise_image(1))
    for escape in (str(outside / "out.png"), "../other/out.png", "link.png", (outside / "out.png").as_uri(),
                   str(outside / "missing.png")):  # nothing is told about files outside, not even existence
        with pytest.raises(UsageError, match=f"^img: only image files inside {inside} are accepted$"):
            load_image(escape, "img", inside)
    with pytest.raises(UsageError, match="^img: no such image file$"):
        load_image("missing.png", "img", inside)


@pytest.mark.parametrize("source,files,message", [
    ("http://example.com/cat.png", True, r"^img: http URLs are not fetched; send the image inline as a data URL"),
    ("HTTPS://example.com/cat.png", True, "^img: HTTPS URLs are not fetched"),
    ("ftp://example.com/cat.png", True, "^img: ftp URLs are not fetched"),
    ("file://server/share/cat.png", True, r"^img: file URLs on another host \(server\) are not read$"),
    ("/tmp/cat.png", False, "^img: local image files are not accepted here; send the image inline as a data URL"),
    ("file:///tmp/cat.png", False, "^img: local image files are not accepted here"),
    ("data:image/png;base64,%%%", True, r"^img: the data URL is not valid base64"),
    ("data:text/plain;base64,aGk=", True, "^img: the data URL holds 'text/plain', not an image$"),
    ("data:image/png,rawbytes", True, r"^img: expected a base64 data URL \(data:image/png;base64,...\)$"),
    ("data:image/png;base64,aGVsbG8=", True, r"^img: cannot read the image \(cannot identify image file"),
    (42, True, "^img: expected an image, a data URL or a file path, got int$"),
])
def test_refusals_are_one_line_naming_where(source, files, message):
    with pytest.raises(UsageError, match=message) as refused:
        load_image(source, "img", files)
    assert "\n" not in str(refused.value)


def test_without_where_a_path_names_itself(tmp_path):
    with pytest.raises(UsageError, match=f"^{tmp_path / 'missing.png'}: no such image file$"):
        load_image(str(tmp_path / "missing.png"))
    (tmp_path / "not.png").write_text("not an image")
    with pytest.raises(UsageError, match=f"^{tmp_path / 'not.png'}: cannot read the image"):
        load_image(tmp_path / "not.png")
