import io

import numpy as np
import pytest
from PIL import Image
from skimage import data

from afd.data.codecs import (
    CODECS,
    IMAGENET_C_JPEG_QUALITIES,
    EvalSet,
    avif,
    degrade,
    encode_webp,
    imagenet_c_jpeg,
    jpeg,
    multi_compress,
    set_family,
)
from afd.errors import ConfigError


@pytest.fixture(scope="module")
def photo():
    return Image.fromarray(data.astronaut()).resize((128, 128), Image.BILINEAR)


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / mse)


@pytest.mark.parametrize("codec", [jpeg, avif])
def test_lossy_deterministic_and_ordered_by_quality(photo, codec):
    out = {q: codec(photo, q) for q in (25, 15, 7)}
    for img in out.values():
        assert img.mode == "RGB" and img.size == photo.size
        assert img.tobytes() != photo.tobytes()
    assert psnr(out[25], photo) > psnr(out[15], photo) > psnr(out[7], photo)
    assert codec(photo, 15).tobytes() == out[15].tobytes()


@pytest.mark.parametrize("codec", [jpeg, avif])
@pytest.mark.parametrize("quality", [0, 101, 50.0, True, "50"])
def test_quality_is_validated(photo, codec, quality):
    with pytest.raises(ConfigError, match=repr(quality).replace(".", r"\.")):
        codec(photo, quality)


def test_imagenet_c_severities(photo):
    assert IMAGENET_C_JPEG_QUALITIES == (25, 18, 15, 10, 7)
    for severity, quality in enumerate(IMAGENET_C_JPEG_QUALITIES, start=1):
        assert imagenet_c_jpeg(photo, severity).tobytes() == jpeg(photo, quality).tobytes()
    resaved = imagenet_c_jpeg(photo, 3, resave_q85=True)
    assert resaved.tobytes() != imagenet_c_jpeg(photo, 3).tobytes()
    assert resaved.tobytes() == jpeg(jpeg(photo, 15), 85).tobytes()
    for severity in (0, 6):
        with pytest.raises(ConfigError, match="severity"):
            imagenet_c_jpeg(photo, severity)


def test_multi_compress(photo):
    img, used = multi_compress(photo, 5, seed=0)
    again, used_again = multi_compress(photo, 5, seed=0)
    assert used == used_again and img.tobytes() == again.tobytes()
    assert len(used) == 5 and set(used) <= set(IMAGENET_C_JPEG_QUALITIES)
    assert img.size == photo.size and img.mode == "RGB"

    other, used_other = multi_compress(photo, 5, seed=1)
    assert used_other != used and other.tobytes() != img.tobytes()

    fewer, used_fewer = multi_compress(photo, 3, seed=0)
    assert used_fewer == used[:3]  # CT=3 is the first 3 rounds of CT=5
    assert fewer.tobytes() != img.tobytes()

    # Rounds really are sequential JPEG re-encodings, even at one repeated quality.
    once, _ = multi_compress(photo, 1, seed=0, qualities=(7,))
    twice, _ = multi_compress(photo, 2, seed=0, qualities=(7,))
    assert once.tobytes() == jpeg(photo, 7).tobytes()
    assert twice.tobytes() == jpeg(jpeg(photo, 7), 7).tobytes() != once.tobytes()

    for times in (0, -1, 1.5):
        with pytest.raises(ConfigError, match="times"):
            multi_compress(photo, times, seed=0)


def test_degrade_dispatches(photo):
    assert degrade(photo, "jpeg", 18).tobytes() == jpeg(photo, 18).tobytes()
    assert degrade(photo, "imagenet_c_jpeg", 2).tobytes() == jpeg(photo, 18).tobytes()
    assert (
        degrade(photo, "imagenet_c_jpeg_q85", 2).tobytes()
        == imagenet_c_jpeg(photo, 2, resave_q85=True).tobytes()
    )
    assert degrade(photo, "multi", 3, seed=4).tobytes() == multi_compress(photo, 3, 4)[0].tobytes()
    assert degrade(photo, "avif", 10).tobytes() == avif(photo, 10).tobytes()
    with pytest.raises(ConfigError, match="unknown degradation 'jpeg2000'; valid: jpeg, multi, avif"):
        degrade(photo, "jpeg2000", 10)


# ---- the registry -------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", list(CODECS.values()), ids=list(CODECS))
def test_every_codec_writes_files_its_suffix_names_and_degrades_with_its_level(photo, codec):
    light, heavy = codec.light_to_heavy([2, 25] if codec.harder_when_higher else [25, 7])[::1]
    data, _ = codec.encode(photo, light, seed=3)
    assert Image.open(io.BytesIO(data)).format.lower() in {".jpg": "jpeg", ".avif": "avif", ".webp": "webp"}[codec.suffix]
    assert codec.encode(photo, light, seed=3)[0] == data  # deterministic
    assert psnr(codec.degrade(photo, light, seed=3), photo) > psnr(codec.degrade(photo, heavy, seed=3), photo)


def test_an_evaluation_set_is_a_codec_at_a_level_with_one_name():
    for codec in CODECS.values():
        for level in (1, 7, 25):
            eval_set = codec.set(level)
            assert EvalSet.parse(eval_set.name) == eval_set and set_family(eval_set.name) == codec.name
    assert EvalSet("jpeg", 25).name == "jpeg_q25" and EvalSet("multi", 3).name == "multi_ct3"
    assert set_family("clean") == "clean"
    for wrong in ("clean", "jpeg_25", "jpeg_ct3", "png_q3", "jpeg_q", "jpeg_qx", ""):
        with pytest.raises(ConfigError, match="not an evaluation set name"):
            EvalSet.parse(wrong)


def test_webp_sets_hold_real_lossy_webp_files(photo):
    data, drawn = CODECS["webp"].encode(photo, 25)
    assert data[:4] == b"RIFF" and data[8:16] == b"WEBPVP8 " and drawn is None  # lossy VP8, not VP8L
    assert data == encode_webp(photo, 25) and len(encode_webp(photo, 7)) < len(data)
    for quality in (0, 101, 2.5):
        with pytest.raises(ConfigError, match="quality"):
            encode_webp(photo, quality)


def test_levels_are_ordered_from_light_to_heavy():
    assert CODECS["jpeg"].light_to_heavy([7, 25, 15]) == [25, 15, 7]
    assert CODECS["multi"].light_to_heavy([3, 1, 2]) == [1, 2, 3]
