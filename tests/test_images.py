import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from skimage import data
from torchvision import transforms

import afd.data.images
from afd.data.images import (
    classifier_input,
    load_image,
    random_crop,
    resize_center_crop,
    to_batch,
    to_pil,
    to_tensor,
)
from afd.data.samples import sample_photos
from afd.errors import ConfigError, ImageLoadError, display_name


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def _row(mode, values):
    """A 1-pixel-high image of `mode` with the given pixel values left to right."""
    img = Image.new(mode, (len(values), 1))
    for x, v in enumerate(values):
        img.putpixel((x, 0), v)
    return img


def _pixels(img):
    return [img.getpixel((x, 0)) for x in range(img.width)]


WHITE, BLACK = (255, 255, 255), (0, 0, 0)


@pytest.mark.parametrize(
    "mode, fmt, values, expected",
    [
        ("L", "png", [0, 7, 255], [BLACK, (7, 7, 7), WHITE]),
        ("1", "png", [0, 255], [BLACK, WHITE]),
        ("LA", "png", [(7, 0), (7, 255)], [WHITE, (7, 7, 7)]),
        ("RGBA", "png", [(1, 2, 3, 0), (10, 20, 30, 255), (0, 0, 0, 128)],
         [WHITE, (10, 20, 30), (127, 127, 127)]),
        ("PA", "tiff", [(1, 0), (1, 255)], [WHITE, (10, 20, 30)]),
        ("CMYK", "tiff", [(255, 0, 0, 0), (0, 0, 0, 255)], [(0, 255, 255), BLACK]),
        ("YCbCr", "tiff", [(255, 128, 128), (76, 85, 255)], [WHITE, (254, 0, 0)]),
        # 65000 / 257 = 252.9 -> 253 (dividing by 256 would give 254)
        ("I;16", "png", [0, 32768, 65000, 65535], [BLACK, (128,) * 3, (253,) * 3, WHITE]),
        ("I;16B", "tiff", [0, 32768, 65535], [BLACK, (128,) * 3, WHITE]),
        ("I", "tiff", [0, 32768, 65535, 70000, -5], [BLACK, (128,) * 3, WHITE, WHITE, BLACK]),
        ("I", "ppm", [0, 32768, 65535], [BLACK, (128,) * 3, WHITE]),
        ("F", "tiff", [0.0, 0.5, 1.0, 2.0, -1.0], [BLACK, (128,) * 3, WHITE, WHITE, BLACK]),
    ],
)
def test_every_mode_becomes_8bit_rgb(tmp_path, mode, fmt, values, expected):
    img = _row(mode, values)
    if mode in ("P", "PA"):
        img.putpalette([0, 0, 0, 10, 20, 30])
    path = _save(img, tmp_path / f"x.{fmt}")
    assert Image.open(path).mode == mode  # the file really holds that mode
    out = load_image(path)
    assert out.mode == "RGB"
    for got, want in zip(_pixels(out), expected):
        assert got == want


def test_palette_with_and_without_transparency(tmp_path):
    img = _row("P", [0, 1])
    img.putpalette([0, 0, 0, 10, 20, 30])
    assert _pixels(load_image(_save(img, tmp_path / "p.png"))) == [BLACK, (10, 20, 30)]
    img_t = _save(img, tmp_path / "pt.png", transparency=1)
    assert Image.open(img_t).info["transparency"] == 1
    assert _pixels(load_image(img_t)) == [BLACK, WHITE]


def test_jpeg_cmyk(tmp_path):
    path = _save(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), tmp_path / "c.jpg", quality=95)
    assert Image.open(path).mode == "CMYK"
    r, g, b = load_image(path).getpixel((8, 8))
    assert r <= 5 and g >= 250 and b >= 250


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (2, 1))
    img.putpixel((0, 0), (255, 0, 0))
    img.putpixel((1, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    assert load_image(_save(img, tmp_path / "o.jpg", exif=exif)).size == (1, 2)
    upright = load_image(_save(img, tmp_path / "o.png", exif=exif))
    assert upright.size == (1, 2)
    assert upright.getpixel((0, 0)) == (255, 0, 0) and upright.getpixel((0, 1)) == (0, 0, 255)


@pytest.fixture
def jpeg_bytes():
    img = Image.fromarray(data.astronaut()[:128, :128])
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def png_bytes():
    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()[:64, :64]).save(buffer, format="PNG")
    return buffer.getvalue()


def _load_error(path) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    message = str(info.value)
    assert display_name(path) in message and info.value.path == path
    return message


def test_missing_file(tmp_path):
    assert "file does not exist" in _load_error(tmp_path / "nope.jpg")


def test_directory(tmp_path):
    assert "is a directory" in _load_error(tmp_path)


def test_permission_denied(tmp_path, monkeypatch):
    # Tests run as root here, where chmod 000 does not stop a read; fake the OS answer instead.
    class DeniedOS:
        def __getattr__(self, name):
            return getattr(os, name)

        def open(self, path, flags, mode=0o777):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(afd.data.images, "os", DeniedOS())
    assert "permission denied" in _load_error(tmp_path / "x.jpg")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    assert "empty file (0 bytes)" in _load_error(path)


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture\n" * 10)
    assert "not an image" in _load_error(path)


def test_truncated_jpeg(tmp_path, jpeg_bytes, monkeypatch):
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg_bytes[: len(jpeg_bytes) // 2])
    assert "truncated or corrupt" in _load_error(path)
    # Even when someone turned Pillow lenient process-wide; the setting is left as found.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert "truncated or corrupt" in _load_error(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_png_with_broken_data_crc(tmp_path, png_bytes):
    broken = bytearray(png_bytes)
    idat = broken.find(b"IDAT")
    length = int.from_bytes(broken[idat - 4 : idat], "big")
    broken[idat + 4 + length] ^= 0xFF  # the IDAT CRC; the pixel data itself still decodes
    path = tmp_path / "crc.png"
    path.write_bytes(bytes(broken))
    assert "truncated or corrupt" in _load_error(path)


def test_png_with_broken_header_crc(tmp_path, png_bytes):
    broken = bytearray(png_bytes)
    broken[29] ^= 0xFF  # last byte of the IHDR CRC
    path = tmp_path / "hdr.png"
    path.write_bytes(bytes(broken))
    assert "corrupt header" in _load_error(path)


@pytest.fixture
def small_limits(monkeypatch):
    """The decoding limits scaled down to 1,000 / 2,000 pixels, so tiny files exercise them."""
    monkeypatch.setattr(afd.data.images, "MAX_DECODED_PIXELS", 1000)
    monkeypatch.setattr(afd.data.images, "MAX_DECLARED_PIXELS", 2000)


def test_an_image_over_the_decoding_limit_is_refused_unless_it_is_a_jpeg(tmp_path, small_limits):
    path = _save(Image.new("RGB", (40, 40)), tmp_path / "large.png")  # 1,600 pixels
    assert "too large to decode: 40x40 = 1,600 pixels, over the limit of 1,000" in _load_error(path)
    path = _save(Image.new("RGB", (40, 40), (200, 10, 10)), tmp_path / "large.jpg")
    assert load_image(path).size == (20, 20)  # a JPEG decodes at 1/2 scale instead: 400 pixels


def test_a_decompression_bomb_is_refused_whatever_pillows_global_limit_says(tmp_path, small_limits, monkeypatch):
    for suffix in (".png", ".jpg"):
        path = _save(Image.new("RGB", (100, 100)), tmp_path / f"bomb{suffix}")  # 10,000 pixels
        assert "decompression bomb: 100x100 = 10,000 pixels" in _load_error(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # another library turned Pillow's check off
    assert "decompression bomb" in _load_error(tmp_path / "bomb.png")


def test_a_phone_sized_jpeg_decodes_at_reduced_scale(tmp_path):
    """108 megapixels (12000 x 9000), over Pillow's 89.5 M bomb warning: decoded at 1/2 scale."""
    path = _save(Image.new("RGB", (12000, 9000), (30, 120, 200)), tmp_path / "phone.jpg")
    img = load_image(path)
    assert img.size == (6000, 4500) and img.getpixel((3000, 2000)) == pytest.approx((30, 120, 200), abs=3)


@pytest.mark.parametrize("size, problem", [((2, 20000), "aspect ratio 2x20000 is beyond 16:1"),
                                           ((20000, 2), "aspect ratio 20000x2 is beyond 16:1")])
def test_a_strip_that_would_resize_to_gigabytes_is_refused(size, problem):
    with pytest.raises(ImageLoadError, match=f"strip.png: {problem}"):
        classifier_input(Image.new("RGB", size), 256, 224, name="strip.png")


def test_a_resize_past_the_pixel_limit_is_refused():
    with pytest.raises(ImageLoadError, match="resizing 400x300 to 100000 on its shorter side would make"):
        resize_center_crop(Image.new("RGB", (400, 300)), 100000, 224, name="photo.png")


def test_symlink_loop(tmp_path):
    path = tmp_path / "loop.jpg"
    os.symlink(path, path)
    assert "symlink loop" in _load_error(path)


def test_tensor_roundtrip():
    img = Image.fromarray(data.astronaut()[:32, :48])
    t = to_tensor(img)
    assert t.shape == (3, 32, 48) and t.dtype == torch.float32
    assert 0.0 <= t.min() and t.max() <= 1.0
    assert torch.equal(t[:, 5, 7], torch.tensor(img.getpixel((7, 5))) / 255.0)
    assert to_pil(t).tobytes() == img.tobytes()


def test_to_pil_rounds_and_clamps():
    t = torch.tensor([1.6 / 255, -0.2, 1.3]).view(3, 1, 1)
    assert to_pil(t).getpixel((0, 0)) == (2, 0, 255)


def test_to_batch():
    imgs = [Image.new("RGB", (8, 4), (i, 0, 0)) for i in range(3)]
    batch = to_batch(imgs)
    assert batch.shape == (3, 3, 4, 8)
    assert torch.equal(batch[2], to_tensor(imgs[2]))
    with pytest.raises(ValueError, match="differ in size"):
        to_batch([Image.new("RGB", (8, 4)), Image.new("RGB", (4, 8))])


def test_resize_center_crop_matches_torchvision():
    img = Image.fromarray(data.chelsea())  # 451 x 300, not square
    expected = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])(img)
    out = resize_center_crop(img)
    assert out.size == (224, 224)
    assert out.tobytes() == expected.tobytes()
    assert resize_center_crop(img, 64, 48).size == (48, 48)


@pytest.mark.parametrize("resize, crop", [(224, 256), (0, 0), (256, -1)])
def test_resize_center_crop_rejects_bad_sizes(resize, crop):
    with pytest.raises(ConfigError):
        resize_center_crop(Image.new("RGB", (300, 300)), resize, crop)


def _coordinate_image(width, height):
    """Red = x, green = y: a crop's top-left pixel tells where the crop was taken."""
    ys, xs = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.uint8))


def test_random_crop_on_the_16_grid_and_seeded():
    img = _coordinate_image(200, 150)
    rng = np.random.default_rng(0)
    corners = set()
    for _ in range(30):
        crop = random_crop(img, 64, rng)
        assert crop.size == (64, 64)
        left, top, _ = crop.getpixel((0, 0))
        assert left % 16 == 0 and top % 16 == 0
        assert left + 64 <= 200 and top + 64 <= 150
        corners.add((left, top))
    assert len(corners) > 5
    first = [random_crop(img, 64, np.random.default_rng(7)).getpixel((0, 0)) for _ in range(2)]
    assert first[0] == first[1]


def test_random_crop_too_small():
    with pytest.raises(ImageLoadError, match=r"small\.png: too small for a 64x64 crop \(50x40\)"):
        random_crop(Image.new("RGB", (50, 40)), 64, np.random.default_rng(0), name="small.png")
    with pytest.raises(ConfigError):
        random_crop(Image.new("RGB", (50, 40)), 0, np.random.default_rng(0))


def test_sample_photos():
    photos = sample_photos()
    assert len(photos) >= 8
    assert list(photos) == sorted(photos)
    for path in photos.values():
        img = load_image(path)
        assert img.mode == "RGB" and min(img.size) >= 256


def test_center_crop_stays_on_the_16_pixel_grid_and_refuses_small_images():
    from afd.data.images import center_crop

    img = Image.new("RGB", (300, 250))
    img.putpixel((32, 0), (255, 0, 0))  # (300-224)/2 = 38 -> 32 on the grid; (250-224)/2 = 13 -> 0
    crop = center_crop(img, 224)
    assert crop.size == (224, 224) and crop.getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(ImageLoadError, match="small.jpg: too small for a 224x224 crop"):
        center_crop(Image.new("RGB", (100, 300)), 224, name="small.jpg")


@pytest.mark.parametrize("kind", ["fifo", "proc", "directory", "device"])
def test_special_files_are_refused_without_blocking(tmp_path, kind):
    """A FIFO named x.jpg used to block forever; /proc's pseudo-files gave a traceback."""
    path = {"proc": Path("/proc/self/status"), "device": Path("/dev/null")}.get(kind, tmp_path / "x.jpg")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    reason = {"fifo": "not a regular file (a FIFO)", "proc": "empty file (0 bytes)",
              "directory": "is a directory", "device": "not a regular file (a character device)"}[kind]
    assert _load_error(path) == f"{path}: {reason}"


def test_a_name_with_a_newline_stays_on_one_line(tmp_path):
    path = tmp_path / "evil\nerror: fake.jpg"
    path.write_text("not an image")
    message = _load_error(path)
    assert "\n" not in message and message.startswith(repr(str(path)))
