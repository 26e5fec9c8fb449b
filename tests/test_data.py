import hashlib
import json
import logging
import re
import runpy
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import fsspec
import numpy as np
import pytest
import yaml
from PIL import Image
from skimage import data as skdata

from afd.data.codecs import CODECS, encode_jpeg
from afd.data.images import load_image
from afd.data.samples import COLLECTIONS, embedded_photos
from afd.data.sets import (
    PairedImages,
    copy_imagenet_c,
    embedded_split,
    folder_photos,
    image_folder,
    labels,
    list_images,
    load_set,
    make_compressed_sets,
    make_eval_clean,
    make_patches,
    read_image,
)
from afd.errors import AFDError, ConfigError, ImageLoadError
from afd.ops.params import load_params

REPO = Path(__file__).resolve().parents[1]
EVAL_PHOTOS = ["chelsea", "coffee", "grace_hopper", "rocket"]
TRAIN_PHOTOS = ["astronaut", "china", "flower", "motorcycle_left", "motorcycle_right", "retina"]


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.float64)


def _mse(a: Image.Image, b: Image.Image) -> float:
    return float(np.mean((_pixels(a) - _pixels(b)) ** 2))


def _hidden_entries(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def eval_clean(tmp_path_factory) -> Path:
    """A small clean eval set from the embedded eval photos: 6 views."""
    out = tmp_path_factory.mktemp("eval") / "clean"
    make_eval_clean(embedded_split(TRAIN_PHOTOS, EVAL_PHOTOS)[1], out, [256], 6, "embedded")
    return out


def _astronaut(size=300) -> Image.Image:
    return Image.fromarray(skdata.astronaut()[:size, :size])


# ---- clean sets ---------------------------------------------------------------------------------


def test_patches_are_deterministic_and_on_the_grid(tmp_path):
    train, _ = embedded_split(TRAIN_PHOTOS, EVAL_PHOTOS)
    first = make_patches(train, 10, 64, 3, tmp_path / "a", "embedded")
    make_patches(train, 10, 64, 3, tmp_path / "b", "embedded")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")  # byte-identical, manifest included
    names = sorted(_files(tmp_path / "a"))
    assert names == ["manifest.json"] + [f"p{i:05d}.png" for i in range(10)]

    patches = first["patches"]
    assert [p["photo"] for p in patches[:6]] == [photo.name for photo in train]  # round-robin
    photos = {photo.name: load_image(photo.uri) for photo in train}
    for patch in patches:
        assert patch["left"] % 16 == 0 and patch["top"] % 16 == 0
        box = (patch["left"], patch["top"], patch["left"] + 64, patch["top"] + 64)
        expected = photos[patch["photo"]].crop(box)
        assert load_image(tmp_path / "a" / f"{patch['id']}.png").tobytes() == expected.tobytes()
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest == {"source": "embedded", "photos": first["photos"], "patches": patches, "skipped": []}

    other = make_patches(train, 10, 64, 4, tmp_path / "c", "embedded")["patches"]
    assert [(p["left"], p["top"]) for p in other] != [(p["left"], p["top"]) for p in patches]


def test_eval_views_and_max_images(tmp_path, eval_clean):
    manifest = json.loads((eval_clean / "manifest.json").read_text())
    images = manifest["images"]
    assert [r["id"] for r in images] == [f"e{i:05d}" for i in range(6)]
    # 6 of 5 views per photo: 2 evenly spaced photos, the second cut short.
    assert [r["photo"] for r in images] == ["chelsea"] * 5 + ["grace_hopper"]
    assert [r["view"] for r in images[:5]] == ["s256_c", "s256_tl", "s256_tr", "s256_bl", "s256_br"]
    assert all(r["label"] is None for r in images) and labels(eval_clean) == {
        r["id"]: None for r in images
    }
    for image_id, path in load_set(eval_clean):
        assert path.suffix == ".png" and load_image(path).size == (224, 224)

    everything = make_eval_clean(embedded_split(TRAIN_PHOTOS, EVAL_PHOTOS)[1], tmp_path / "all", [256, 320], 0,
                                 "embedded")
    assert len(everything["images"]) == 4 * 2 * 5
    assert len({(r["photo"], r["view"]) for r in everything["images"]}) == 40


# ---- degraded sets ------------------------------------------------------------------------------


def _compress(clean: Path, out: Path, codec: str, levels: list[int], seed: int = 0, **settings) -> Path:
    make_compressed_sets(clean, out, CODECS[codec], levels, seed, **settings)
    return out


def test_jpeg_sets_hold_real_jpeg_files(tmp_path, eval_clean):
    out = _compress(eval_clean, tmp_path / "jpeg", "jpeg", [25, 7])
    assert sorted(p.name for p in out.iterdir()) == ["jpeg_q25", "jpeg_q7"]  # one folder per level
    errors = {}
    for quality in (25, 7):
        assert sorted(_files(out / f"jpeg_q{quality}")) == [f"e{i:05d}.jpg" for i in range(6)]
        errors[quality] = []
        for (image_id, clean), (same_id, degraded) in zip(load_set(eval_clean), load_set(out / f"jpeg_q{quality}")):
            assert image_id == same_id
            raw = degraded.read_bytes()
            assert raw[:2] == b"\xff\xd8"
            assert Image.open(degraded).format == "JPEG"
            clean_img, jpeg_img = load_image(clean), load_image(degraded)
            assert raw == encode_jpeg(clean_img, quality)
            assert jpeg_img.size == (224, 224) and jpeg_img.tobytes() != clean_img.tobytes()
            errors[quality].append(_mse(clean_img, jpeg_img))
    assert np.mean(errors[7]) > np.mean(errors[25])

    _compress(eval_clean, tmp_path / "resaved", "jpeg", [7], resave_q85=True)
    clean_img = load_image(eval_clean / "e00000.png")
    assert (tmp_path / "resaved" / "jpeg_q7" / "e00000.jpg").read_bytes() == encode_jpeg(clean_img, 7, True)
    with pytest.raises(TypeError, match="resave_q85"):  # a setting of another codec
        _compress(eval_clean, tmp_path / "x", "avif", [7], resave_q85=True)
    assert not (tmp_path / "x").exists()


def test_multi_compression_prefix_property(tmp_path, eval_clean):
    out = _compress(eval_clean, tmp_path / "multi", "multi", [1, 2, 3], seed=5, qualities=[25, 10, 7])
    qualities = {}
    for times in (1, 2, 3):
        qualities[times] = json.loads((out / f"multi_ct{times}" / "encodings.json").read_text())
        assert sorted(qualities[times]) == [image_id for image_id, _ in load_set(eval_clean)]
        assert sorted(p.name for p in (out / f"multi_ct{times}").glob("*.jpg")) == [f"e{i:05d}.jpg" for i in range(6)]
    for image_id, used in qualities[3].items():
        assert len(used) == 3 and set(used) <= {25, 10, 7}
        assert qualities[2][image_id] == used[:2] and qualities[1][image_id] == used[:1]
    assert len({tuple(used) for used in qualities[3].values()}) > 1  # each image its own sequence

    clean_img = load_image(eval_clean / "e00000.png")
    q1, q2 = qualities[2]["e00000"]
    once = out / "multi_ct1" / "e00000.jpg"
    assert once.read_bytes() == encode_jpeg(clean_img, q1)
    twice = out / "multi_ct2" / "e00000.jpg"
    assert twice.read_bytes() == encode_jpeg(load_image(once), q2)

    again = _compress(eval_clean, tmp_path / "again", "multi", [3], seed=5, qualities=[25, 10, 7])
    assert _files(again / "multi_ct3") == _files(out / "multi_ct3")


def test_avif_set_decodes(tmp_path, eval_clean):
    avif_set = load_set(_compress(eval_clean, tmp_path / "avif", "avif", [10]) / "avif_q10")
    for (image_id, clean), (_, degraded) in zip(load_set(eval_clean), avif_set):
        assert degraded.name == f"{image_id}.avif" and degraded.read_bytes()[4:12] == b"ftypavif"
        img = load_image(degraded)
        assert img.size == (224, 224) and img.tobytes() != load_image(clean).tobytes()


def test_a_failing_set_leaves_nothing_half_written(tmp_path, eval_clean):
    clean = tmp_path / "clean"
    shutil.copytree(eval_clean, clean)
    out = tmp_path / "jpeg"
    (clean / "e00003.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")

    with pytest.raises(ImageLoadError, match="e00003.png"):
        _compress(clean, out, "jpeg", [25, 10])
    assert not out.exists() and _hidden_entries(tmp_path) == []

    _compress(eval_clean, out, "jpeg", [10])
    before = _files(out / "jpeg_q10")
    with pytest.raises(ImageLoadError):
        _compress(clean, out, "jpeg", [25])
    assert _files(out / "jpeg_q10") == before and _hidden_entries(tmp_path) == []

    _compress(eval_clean, out, "jpeg", [25])  # a good run replaces the old sets as a whole
    assert sorted(p.name for p in out.iterdir()) == ["jpeg_q25"] and _hidden_entries(tmp_path) == []


# ---- sources ------------------------------------------------------------------------------------


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    photo = _astronaut()
    photo.save(folder / "good.jpg", quality=95)
    buffer = (folder / "good.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(buffer[: len(buffer) // 2])
    (folder / "notes.JPG").write_text("not a picture\n" * 10)
    (folder / "empty.png").touch()
    photo.resize((100, 100)).save(folder / "small.png")
    photo.convert("L").save(folder / "sub" / "gray.png")
    photo.convert("CMYK").save(folder / "sub" / "cmyk.jpg", quality=95)
    sixteen = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(folder / "sub" / "deep.png")
    (folder / "readme.txt").write_text("ignored: not an image extension")
    return folder


def test_bad_files_are_skipped_and_odd_modes_converted(tmp_path, messy_folder, caplog):
    assert Image.open(messy_folder / "sub" / "deep.png").mode.startswith("I")
    uris = list_images(str(messy_folder))
    assert [Path(u).relative_to(messy_folder).as_posix() for u in uris] == [
        "cut.jpg", "empty.png", "good.jpg", "notes.JPG", "small.png",
        "sub/cmyk.jpg", "sub/deep.png", "sub/gray.png",
    ]
    with caplog.at_level(logging.INFO, logger="afd.data.sets"):
        manifest = make_patches(folder_photos(str(messy_folder)), 8, 224, 0, tmp_path / "out",
                                str(messy_folder))
    reasons = {s["file"]: s["reason"] for s in manifest["skipped"]}
    assert sorted(reasons) == ["cut.jpg", "empty.png", "notes.JPG", "small.png"]
    assert reasons["cut.jpg"].startswith("truncated or corrupt")
    assert reasons["notes.JPG"].startswith("not an image")
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert reasons["small.png"].startswith("too small (100x100")
    used = {p["photo"] for p in manifest["patches"]}
    assert used == {"good.jpg", "sub/cmyk.jpg", "sub/deep.png", "sub/gray.png"}
    assert "used 4, skipped 4 (1 empty file, 1 not an image, 1 too small, " in caplog.text
    for patch in manifest["patches"]:
        assert Image.open(tmp_path / "out" / f"{patch['id']}.png").mode == "RGB"


def test_unusable_sources_raise(tmp_path, messy_folder):
    for name in ("good.jpg", "sub/gray.png", "sub/cmyk.jpg", "sub/deep.png"):
        (messy_folder / name).unlink()
    with pytest.raises(AFDError, match=f"no usable images in {messy_folder}: used 0, skipped 4"):
        make_patches(folder_photos(str(messy_folder)), 4, 224, 0, tmp_path / "out",
                     str(messy_folder))
    assert not (tmp_path / "out").exists()

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty: no image files"):
        list_images(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="nowhere: no such folder"):
        list_images(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="not a folder"):
        list_images(str(messy_folder / "readme.txt"))


def test_urls_read_through_fsspec_with_load_images_errors(tmp_path):
    fs = fsspec.filesystem("memory")
    buffer = tmp_path / "x.png"
    _astronaut(64).save(buffer)
    fs.pipe("/bucket/photos/a/x.png", buffer.read_bytes())
    fs.pipe("/bucket/photos/empty.jpg", b"")
    uris = list_images("memory://bucket/photos")
    assert uris == ["memory:///bucket/photos/a/x.png", "memory:///bucket/photos/empty.jpg"]
    assert read_image(uris[0]).tobytes() == load_image(buffer).tobytes()
    empty = r"memory:///bucket/photos/empty.jpg: empty file \(0 bytes\)"
    with pytest.raises(ImageLoadError, match=empty):
        read_image(uris[1])
    with pytest.raises(ImageLoadError, match="memory://bucket/nope.png: file does not exist"):
        read_image("memory://bucket/nope.png")
    with pytest.raises(ConfigError, match="memory://bucket/none: no such folder"):
        list_images("memory://bucket/none")


def test_embedded_split():
    train, evaluation = embedded_split(TRAIN_PHOTOS, EVAL_PHOTOS)
    assert [p.name for p in evaluation] == EVAL_PHOTOS and [p.name for p in train] == TRAIN_PHOTOS
    assert {p.origin for p in evaluation} == {"scikit-image 0.26.0", "matplotlib 3.11.2"}
    with pytest.raises(ConfigError, match="coffee on both the train and the eval side"):
        embedded_split(["coffee", "china"], ["coffee"])
    with pytest.raises(ConfigError, match="one scene.*not only motorcycle_left on the eval side"):
        embedded_split(["china"], ["chelsea", "motorcycle_left"])
    with pytest.raises(ConfigError, match="unknown embedded photo or collection 'lena'; known: ai_benchmark_"):
        embedded_split(["china"], ["chelsea", "lena"])
    with pytest.raises(ConfigError, match="sources.embedded.train: names no photos"):
        embedded_split([], ["chelsea"])


def test_embedded_collections_are_the_packages_photos_with_their_labels():
    """ai-benchmark's 100 classification, 100 street and 30 cat photos (not their 30 overlays) and
    foolbox's 20 ImageNet photos, labelled by the class index in their file names."""
    counts = {name: len(embedded_photos([name])) for name in COLLECTIONS}
    assert counts == {"ai_benchmark_classification": 100, "ai_benchmark_enhancement": 100,
                      "ai_benchmark_segmentation": 30, "foolbox_imagenet": 20}
    segmentation = embedded_photos(["ai_benchmark_segmentation"])
    assert not any("segmented" in p.name for p in segmentation)
    assert [p.name for p in segmentation[:3]] == [f"ai_benchmark_segmentation/{i}.jpg" for i in range(3)]
    foolbox = embedded_photos(["foolbox_imagenet"])
    assert foolbox[4].name == "foolbox_imagenet/imagenet_04_949.jpg" and foolbox[4].label == 949
    assert all(p.label is not None and p.origin == "foolbox 3.3.4" for p in foolbox)
    assert all(p.label is None and p.origin == "ai-benchmark 0.1.2"
               for p in embedded_photos(["ai_benchmark_classification"]))


def test_set_manifests_record_each_photos_package_and_sha256(tmp_path):
    train, evaluation = embedded_split(["ai_benchmark_segmentation"], ["foolbox_imagenet"])
    manifest = make_eval_clean(evaluation[:3], tmp_path / "clean", [], 0, "embedded")
    first = evaluation[0]
    assert manifest["photos"][first.name] == {
        "origin": "foolbox 3.3.4", "sha256": hashlib.sha256(Path(first.uri).read_bytes()).hexdigest()}
    assert [r["label"] for r in manifest["images"]] == [243, 559, 438]
    patches = make_patches(train[:2], 3, 224, 0, tmp_path / "patches", "embedded")
    assert sorted(patches["photos"]) == ["ai_benchmark_segmentation/0.jpg", "ai_benchmark_segmentation/1.jpg"]


def test_image_folder_labels_are_imagenet_indices_of_the_wnids_whichever_are_present(tmp_path, caplog):
    """n01530575 is brambling, index 10 of ImageNet-1k, whether or not the classes before it are
    there (labels were once positions among the folders present: 0, tench)."""
    root = tmp_path / "val"
    photo = _astronaut(64)
    for wnid, name in [("n01530575", "b.JPEG"), ("n01440764", "a.JPEG"), (".cache", "x.JPEG")]:
        (root / wnid).mkdir(parents=True)
        photo.save(root / wnid / name)
    photos = image_folder(str(root))
    assert [(p.name, p.label) for p in photos] == [("n01440764/a.JPEG", 0), ("n01530575/b.JPEG", 10)]
    manifest = make_eval_clean(photos, tmp_path / "clean", [], 0, str(root))
    assert [(r["photo"], r["view"], r["label"]) for r in manifest["images"]] == [
        ("n01440764/a.JPEG", "imagenet_c", 0), ("n01530575/b.JPEG", "imagenet_c", 10)]
    assert labels(tmp_path / "clean") == {"e00000": 0, "e00001": 10}

    only_brambling = tmp_path / "subset"
    (only_brambling / "n01530575").mkdir(parents=True)
    photo.save(only_brambling / "n01530575" / "b.JPEG")
    assert [p.label for p in image_folder(str(only_brambling))] == [10]

    # A folder that is no ImageNet-1k wnid: the set is unlabelled, said once, never mislabelled.
    (root / "cats").mkdir()
    photo.save(root / "cats" / "c.JPEG")
    with caplog.at_level(logging.WARNING, logger="afd.data.sets"):
        assert [p.label for p in image_folder(str(root))] == [None, None, None]
    assert "folder cats is not an ImageNet-1k wnid" in caplog.text

    flat = tmp_path / "flat"
    flat.mkdir()
    photo.save(flat / "x.jpg")
    assert [p.label for p in image_folder(str(flat))] == [None]


def test_imagenet_c_files_are_copied(tmp_path):
    root = tmp_path / "val"
    (root / "n01440764").mkdir(parents=True)
    _astronaut(64).save(root / "n01440764" / "a.JPEG")
    make_eval_clean(image_folder(str(root)), tmp_path / "clean", [], 0, str(root))
    released = tmp_path / "imagenet-c" / "jpeg_compression" / "4" / "n01440764" / "a.JPEG"
    released.parent.mkdir(parents=True)
    released.write_bytes(encode_jpeg(load_image(tmp_path / "clean" / "e00000.png"), 10, True))

    copy_imagenet_c(tmp_path / "clean", tmp_path / "jpeg", [10], str(tmp_path / "imagenet-c"))
    assert _files(tmp_path / "jpeg" / "jpeg_q10") == {"e00000.jpg": released.read_bytes()}
    missing = r"ImageNet-C file missing: .*/jpeg_compression/5/n01440764/a.JPEG"
    with pytest.raises(AFDError, match=missing):
        copy_imagenet_c(tmp_path / "clean", tmp_path / "again", [10, 7], str(tmp_path / "imagenet-c"))
    assert not (tmp_path / "again").exists()  # all levels, or none
    with pytest.raises(ConfigError, match="no JPEG quality 50"):
        copy_imagenet_c(tmp_path / "clean", tmp_path / "again", [50], str(tmp_path / "imagenet-c"))


# ---- reading back -------------------------------------------------------------------------------


def test_paired_images(tmp_path, eval_clean):
    degraded = _compress(eval_clean, tmp_path / "jpeg", "jpeg", [18]) / "jpeg_q18"
    pairs = PairedImages(eval_clean, degraded)
    assert len(pairs) == 6
    clean, compressed, image_id = pairs[2]
    assert image_id == "e00002" and clean.shape == compressed.shape == (3, 224, 224)
    assert 0.0 <= float(compressed.min()) and float(compressed.max()) <= 1.0

    (degraded / "e00004.jpg").unlink()
    with pytest.raises(AFDError, match=rf"{eval_clean} and {degraded} hold different images: "
                                       rf"1 id.*; the first, e00004, is only in {eval_clean}$"):
        PairedImages(eval_clean, degraded)
    with pytest.raises(AFDError, match="no such folder"):
        load_set(tmp_path / "missing")


# ---- stage scripts ------------------------------------------------------------------------------


def _stage(cwd: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / script), *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def _write_params(cwd: Path, changes: dict | None = None) -> None:
    """The project's params.yaml, small, with `changes` ({"dotted.key": value}) applied."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    small = {"profiles.default.patch_count": 3, "sources.embedded.view_sizes": [256],
             "sources.max_eval_images": 4}
    for key, value in {**small, **(changes or {})}.items():
        *parents, name = key.split(".")
        node = params
        for parent in parents:
            node = node[parent]
        node[name] = value
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))


def _stage_in_process(cwd: Path, script: str, *args: str, monkeypatch) -> None:
    """Run a stage script as `python stages/<script>` would, in this process (no interpreter start)."""
    monkeypatch.chdir(cwd)
    monkeypatch.syspath_prepend(str(REPO / "stages"))
    monkeypatch.setattr(sys, "argv", [str(REPO / "stages" / script), *args])
    sigterm = signal.getsignal(signal.SIGTERM)  # stage_main turns SIGTERM into an exit
    try:
        runpy.run_path(str(REPO / "stages" / script), run_name="__main__")
    finally:
        signal.signal(signal.SIGTERM, sigterm)


def test_stage_scripts_build_the_layout(tmp_path, monkeypatch):
    _write_params(tmp_path, {"patches.qualities": [25, 7]})
    codec_levels = {name: section["levels"] for name, section in load_params(tmp_path / "params.yaml")["eval_sets"].items()}
    assert set(codec_levels) == set(CODECS)  # params.yaml evaluates every codec
    for script, *args in [
        ("patches.py",),
        ("eval_clean.py",),
        ("div2k_c.py",),
        *(("eval_sets.py", "--codec", codec) for codec in CODECS),
    ]:
        _stage_in_process(tmp_path, script, *args, monkeypatch=monkeypatch)
    layout = {
        str(p.relative_to(tmp_path / "data")) for p in (tmp_path / "data").rglob("*") if p.is_file()
    }
    patches = {f"div2k_c/clean/p0000{i}.png" for i in range(3)} | {"div2k_c/clean/manifest.json"}
    patches |= {f"div2k_c/jpeg/jpeg_q{q}/p0000{i}.jpg" for i in range(3) for q in (25, 7)}
    ids = [f"e0000{i}" for i in range(4)]
    evaluation = {f"eval/clean/{i}.png" for i in ids} | {"eval/clean/manifest.json"}
    for codec in CODECS.values():  # every codec's sets, from params.yaml's eval_sets
        sets = {codec.set(level).name for level in codec_levels[codec.name]}
        evaluation |= {f"eval/{codec.name}/{s}/{i}{codec.suffix}" for s in sets for i in ids}
        if codec.name == "multi":
            evaluation |= {f"eval/multi/{s}/encodings.json" for s in sets}
    assert layout == patches | evaluation
    first = load_image(tmp_path / "data/eval/clean/e00000.png")
    assert (tmp_path / "data/eval/jpeg/jpeg_q7/e00000.jpg").read_bytes() == encode_jpeg(first, 7)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"patches.size": 100}, "patches.size: Input should be a multiple of 16 (got 100)"),
        ({"eval_sets.jpeg.levels": [25, 0]}, "eval_sets: jpeg.levels.1: Input should be greater than or equal to 1 (got 0)"),
        ({"eval_sets.avif.levels": [25, "7"]}, "eval_sets: avif.levels.1: Input should be a valid integer (got '7')"),
        ({"eval_sets.multi.levels": [1, 1.5]}, "eval_sets: multi.levels.1: Input should be a valid integer"),
        ({"eval_sets.multi.levels": [1, 100000000]}, "eval_sets: multi.levels.1: Input should be less than or equal to 100"),
        ({"eval_sets.avif.resave_q85": True}, "eval_sets: avif.resave_q85: unknown key"),
        ({"eval_sets.jpeg2000": {"levels": [10]}}, "eval_sets: 'jpeg2000' is not a codec; codecs: jpeg, multi, avif"),
        ({"fuse.verify_set": {"codec": "jpeg", "level": 99}}, "fuse.verify_set: jpeg at 99 is not an evaluation set"),
        ({"fuse.verify_set": "jpeg_q7"}, "fuse.verify_set: Input should be a valid dictionary"),
        ({"profiles.default.patch_count": 0}, "profiles.default.patch_count: Input should be greater than or equal to 1 (got 0)"),
        ({"profiles.default.lr_drop_at": "abc"}, "profiles.default.lr_drop_at: Input should be a valid integer (got 'abc')"),
        ({"profiles.default.lr": "fast"}, "profiles.default.lr: Input should be a valid number"),
        ({"profiles.default.crop": 100}, "profiles.default.crop: Input should be a multiple of 16 (got 100)"),
        ({"profiles.default.iterations": None}, "profiles.default.iterations: Input should be a valid integer (got None)"),
        ({"methods.afd.fdm_sorce": "dct"}, "methods.afd.fdm_sorce: unknown key"),
        ({"methods.afd": None}, "methods.afd: Input should be a valid dictionary"),
        ({"methods.ddp.fdm_source": "dct"}, "methods.ddp: fdm_source applies to kind afd only, not ddp"),
        ({"backbones.resnet50": None}, "backbones.resnet50: Input should be a valid dictionary"),
        ({"efficiency.threads": 0}, "efficiency.threads: Input should be greater than or equal to 1 (got 0)"),
        ({"evaluate.batch_size": 0}, "evaluate.batch_size: Input should be greater than or equal to 1 (got 0)"),
        ({"profile": "fast"}, "profile: 'fast' not among the profiles (default, paper)"),
        ({"train.methods": ["afd", "afd2"]}, "train.methods: 'afd2' not among the methods"),
        ({"fuse.study_methods": ["ddp"]}, "fuse.study_methods: 'ddp' is not of kind afd: nothing to fuse"),
        ({"fuse.methods": ["ddp"]}, "fuse.methods: 'ddp' not among the train.methods (afd)"),
        ({"train.study_methods": ["afd"]}, "train.study_methods: 'afd' already in train.methods"),
        ({"train.study_backbone": "resnet50"}, "train.study_backbone: 'resnet50' not among the train.backbones"),
        ({"sources.kind": "web"}, "sources.kind: Input should be 'embedded' or 'folders' (got 'web')"),
        ({"sources.kind": "folders"}, "sources: kind folders needs train_dir and eval_dir"),
        ({"register.deploy_formats": ["tflite"]}, "register.deploy_formats.0: Input should be 'executorch', 'executorch_int8' or 'onnx'"),
        ({"seed": 0.5}, "seed: Input should be a valid integer (got 0.5)"),
        ({"epochs": 3}, "epochs: unknown key"),
    ],
)
def test_params_are_checked_naming_the_key(tmp_path, changes, message):
    _write_params(tmp_path, changes)
    with pytest.raises(ConfigError, match=re.escape(f"params.yaml: {message}")) as error:
        load_params(str(tmp_path / "params.yaml"))
    assert "\n" not in str(error.value)


def test_params_with_a_missing_key_and_numbers_written_as_yaml_strings(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    del params["profiles"]["default"]["iterations"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"params.yaml: profiles.default.iterations: missing$"):
        load_params(str(tmp_path / "params.yaml"))
    # PyYAML reads 1e-4 (no dot) as a string; the paper's rates are written that way
    text = (REPO / "params.yaml").read_text().replace("lr: 1.0e-4", "lr: 1e-4")
    (tmp_path / "params.yaml").write_text(text)
    assert yaml.safe_load(text)["profiles"]["paper"]["lr"] == "1e-4"
    assert load_params(str(tmp_path / "params.yaml"))["profiles"]["paper"]["lr"] == 1e-4


def test_stage_errors_exit_2_naming_the_key(tmp_path, monkeypatch, capsys):
    _write_params(tmp_path, {"patches.size": 100})
    result = _stage(tmp_path, "patches.py")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: params.yaml: patches.size: Input should be a multiple of 16 (got 100)"
    )
    assert "Traceback" not in result.stderr

    def exit_status(script: str, *args: str) -> int:  # the same, in this process (no interpreter start)
        with pytest.raises(SystemExit) as exit_:
            _stage_in_process(tmp_path, script, *args, monkeypatch=monkeypatch)
        return exit_.value.code

    _write_params(tmp_path, {"sources.kind": "folders", "sources.train_dir": "nowhere",
                             "sources.eval_dir": "x"})
    assert exit_status("patches.py") == 2
    assert "error: image source nowhere: no such folder" in capsys.readouterr().err

    _write_params(tmp_path)
    assert exit_status("eval_sets.py", "--codec", "jpeg") == 2
    assert "error: data set data/eval/clean: no such folder" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a GPU is visible")
@pytest.mark.parametrize("script, args", [("train.py", ("--backbone", "efficientnet_lite0", "--method", "afd")),
                                          ("evaluate.py", ("--backbone", "efficientnet_lite0")),
                                          ("efficiency.py", ())])
def test_a_gpu_named_in_params_but_not_visible_stops_the_stage_in_one_line(script, args, tmp_path, monkeypatch,
                                                                             capsys):
    _write_params(tmp_path, {"numerics.device": "cuda"})
    with pytest.raises(SystemExit) as exit_:
        _stage_in_process(tmp_path, script, *args, monkeypatch=monkeypatch)
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: params.yaml numerics.device is cuda, but no GPU is visible to PyTorch"), line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]  # stopped before any work


def test_device_and_amp_are_checked_when_params_yaml_is_read(tmp_path):
    for key, value, problem in (("numerics.device", "gpu", "numerics.device: String should match pattern"),
                                ("numerics.amp", "fp8", "numerics.amp: Input should be 'off', 'bf16' or 'fp16'")):
        _write_params(tmp_path, {key: value})
        with pytest.raises(ConfigError, match=re.escape(problem)):
            load_params(str(tmp_path / "params.yaml"))
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text().replace('amp: "off"', "amp: off"))
    assert load_params(str(tmp_path / "params.yaml"))["numerics"]["amp"] == "off"  # YAML's bare off is false


def test_no_training_photo_shares_content_with_an_evaluation_photo(tmp_path):
    """By content, not by name: no default training photo is an evaluation photo, or a crop, a
    rescale or a re-encode of one. Two such copies, added to the training side, are what it finds."""
    from afd.data.overlap import shared_content
    from afd.data.sets import Photo

    embedded = load_params(REPO / "params.yaml")["sources"]["embedded"]
    train, evaluation = embedded_split(embedded["train"], embedded["eval"])
    assert len(evaluation) >= 120 and len(train) >= 130
    photo = load_image(evaluation[5].uri)
    w, h = photo.size
    photo.crop((w // 5, h // 6, w // 5 + w * 11 // 20, h // 6 + h * 11 // 20)).resize((300, 300)).save(
        tmp_path / "crop.jpg", quality=40)
    load_image(evaluation[110].uri).resize((700, 700)).save(tmp_path / "rescaled.png")
    copies = [Photo("crop", str(tmp_path / "crop.jpg")), Photo("rescaled", str(tmp_path / "rescaled.png"))]
    found = shared_content(train + copies, evaluation)
    assert {(pair.first, pair.second) for pair in found} == {
        ("crop", evaluation[5].name), ("rescaled", evaluation[110].name)}
