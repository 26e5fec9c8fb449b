"""A corpus of bad and odd image files, generated here, through the CLI and a data stage: each file
is converted and used, or refused with one line naming the file and the problem; no traceback."""

import ast
import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pillow_avif  # noqa: F401  (registers AVIF with Pillow)
import pytest
from PIL import Image

from afd.data.sets import folder_photos, make_patches

OK = "ok"


def _photo(size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    rgb = np.stack([x * 255 // size[0], y * 255 // size[1], rng.integers(0, 255, (size[1], size[0]))], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def build_corpus(folder: Path) -> dict[str, tuple[str, str]]:
    """name -> (what classify does, what the patches stage at 64 px does): OK or a reason's start."""
    photo = _photo()
    jpeg, png = _bytes(photo, "JPEG", quality=90), _bytes(photo, "PNG")
    corpus: dict[str, tuple[str, str]] = {}

    def add(name: str, content: bytes, classify: str = OK, patches: str | None = None) -> None:
        (folder / name).write_bytes(content)
        corpus[name] = (classify, classify if patches is None else patches)

    add("good.jpg", jpeg)
    add("good.png", png)
    add("truncated.jpg", jpeg[: len(jpeg) // 2], "truncated or corrupt")
    add("only_soi.jpg", b"\xff\xd8", "not an image")
    add("zero_bytes.jpg", b"", "empty file (0 bytes)")
    add("text_named.jpg", b"not a picture\n" * 20, "not an image")
    add("html_named.png", b"<!doctype html><html><body>hi</body></html>", "not an image")
    add("zip_named.jpg", b"PK\x03\x04" + bytes(200), "not an image")
    broken_data = bytearray(png)
    idat = png.index(b"IDAT")
    broken_data[idat + 8] ^= 0xFF
    add("bad_data_crc.png", bytes(broken_data), "truncated or corrupt")
    broken_header = bytearray(png)
    broken_header[29] ^= 0xFF  # IHDR's CRC
    add("bad_header_crc.png", bytes(broken_header), "not an image")
    add("truncated.png", png[: len(png) // 2], "truncated or corrupt")
    webp = _bytes(photo, "WEBP", quality=80)
    add("truncated.webp", webp[: len(webp) // 2], "truncated or corrupt")
    add("random_bytes.png", np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not an image")
    add("cmyk.jpg", _bytes(photo.convert("CMYK"), "JPEG", quality=90))
    add("gray.jpg", _bytes(photo.convert("L"), "JPEG", quality=90))
    add("gray.png", _bytes(photo.convert("L"), "PNG"))
    add("bilevel.png", _bytes(photo.convert("1"), "PNG"))
    sixteen = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    add("16bit.png", _bytes(Image.fromarray(sixteen), "PNG"))
    add("int32.tif", _bytes(photo.convert("I"), "TIFF"))
    add("float.tif", _bytes(photo.convert("F"), "TIFF"))
    add("palette.png", _bytes(photo.convert("P"), "PNG"))
    transparent = photo.convert("P")
    transparent.info["transparency"] = 0
    add("palette_alpha.png", _bytes(transparent, "PNG", transparency=0))
    add("rgba.png", _bytes(photo.convert("RGBA"), "PNG"))
    add("gray_alpha.png", _bytes(photo.convert("LA"), "PNG"))
    add("tiny_1x1.png", _bytes(photo.resize((1, 1)), "PNG"), OK, "too small")
    add("small_100x100.png", _bytes(photo.resize((100, 100)), "PNG"), OK, OK)
    add("small_40x40.png", _bytes(photo.resize((40, 40)), "PNG"), OK, "too small")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: shown upright after a 90-degree turn
    add("exif_rotated.jpg", _bytes(photo, "JPEG", quality=90, exif=exif.tobytes()))
    add("photo.avif", _bytes(photo, "AVIF", quality=80))
    add("photo.webp", _bytes(photo, "WEBP", quality=80))
    add("photo.bmp", _bytes(photo, "BMP"))
    # The data stages read the usual photo formats only; other image files are counted as skipped.
    add("photo.gif", _bytes(photo.convert("P"), "GIF"), OK, "not one of the formats")
    add("photo.ppm", _bytes(photo, "PPM"), OK, "not one of the formats")
    add("strip_2x20000.png", _bytes(Image.new("RGB", (2, 20000)), "PNG"), "aspect ratio 2x20000", "too small")
    add("newline\nerror: fake.jpg", b"not a picture", "not an image")  # one error line all the same
    add("jpeg_named.png", jpeg)  # the content decides, not the extension
    add(os.fsdecode(b"non_utf8_\xff\xfe.jpg"), jpeg)  # a name that is not UTF-8
    # A 60,000 x 60,000 header with almost no data: Pillow's decompression-bomb guard must refuse it.
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 100))
    add("bomb.png", bomb + _png_chunk(b"IEND", b""), "decompression bomb")
    os.symlink("loop_b.jpg", folder / "loop_a.jpg")
    os.symlink("loop_a.jpg", folder / "loop_b.jpg")
    corpus["loop_a.jpg"] = corpus["loop_b.jpg"] = ("symlink loop", "symlink loop")
    os.symlink("missing.jpg", folder / "dangling.jpg")
    corpus["dangling.jpg"] = ("file does not exist", "file does not exist")
    (folder / "folder.jpg").mkdir()
    corpus["folder.jpg"] = ("is a directory", None)  # a data stage lists files only
    os.mkfifo(folder / "fifo.jpg")  # opening it for reading used to block forever
    corpus["fifo.jpg"] = ("not a regular file (a FIFO)", "not a regular file (a FIFO)")
    return corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return folder, build_corpus(folder)


def test_the_corpus_is_large_and_really_bad(corpus):
    folder, expected = corpus
    assert len(expected) >= 30
    assert sum(classify != OK for classify, _ in expected.values()) >= 15
    assert Image.open(folder / "16bit.png").mode.startswith("I")
    assert Image.open(folder / "cmyk.jpg").mode == "CMYK"


def _unquoted(name: str) -> str:
    """A file name as the messages quote it (Python-quoted when it holds a newline)."""
    return ast.literal_eval(name) if name.startswith("'") else name


def _split_error(message: str) -> tuple[str, str]:
    """(file, reason) of `<file>: <reason>`, the file maybe quoted."""
    if message.startswith("'"):
        end = message.index("': ") + 1
        return _unquoted(message[:end]), message[end + 2:]
    path, reason = message.split(": ", 1)
    return path, reason


def test_classify_handles_every_file_of_the_corpus(corpus):
    folder, expected = corpus
    names = sorted(expected)
    result = subprocess.run([sys.executable, "-m", "afd.cli", "classify", "--top-k", "1",
                             *(str(folder / name) for name in names)], capture_output=True, text=True,
                            errors="surrogateescape")
    assert result.returncode == 1  # some files were refused
    assert "Traceback" not in result.stderr
    classified = {_unquoted(line.split(": ", 1)[0]) for line in result.stdout.splitlines()}
    errors = {}
    for line in result.stderr.splitlines():
        if line.startswith("error: "):
            path, reason = _split_error(line.removeprefix("error: "))
            errors[Path(path).name] = reason
    for name, (outcome, _) in expected.items():
        if outcome == OK:
            assert str(folder / name) in classified, (name, errors.get(name))
        else:
            assert errors.get(name, "").startswith(outcome), (name, errors.get(name))
    assert len(classified) + len(errors) == len(names)


def test_a_data_stage_uses_or_skips_every_file_with_a_counted_reason(corpus, tmp_path):
    folder, expected = corpus
    manifest = make_patches(folder_photos(str(folder)), 40, 64, 0, tmp_path / "patches", str(folder))
    skipped = {entry["file"]: entry["reason"] for entry in manifest["skipped"]}
    used = {patch["photo"] for patch in manifest["patches"]}
    for name, (_, outcome) in expected.items():
        if outcome is None:
            assert name not in skipped and name not in used
        elif outcome == OK:
            assert name in used, (name, skipped.get(name))
        else:
            assert skipped.get(name, "").startswith(outcome), (name, skipped.get(name))
    for patch in manifest["patches"]:
        assert Image.open(tmp_path / "patches" / f"{patch['id']}.png").size == (64, 64)
