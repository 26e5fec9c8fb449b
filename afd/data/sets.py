"""The data sets on disk: DIV2K-C training patches and ImageNet-C-style evaluation sets.

Layout (ids are zero-padded: p00000 for patches, e00000 for evaluation images):

    <clean>/<id>.png + manifest.json     clean 224x224 images and where each came from
    <codec>/<set>/<id><suffix>           the real file bytes of a codec (afd.data.codecs) at a level:
                                         jpeg/jpeg_q25/e00000.jpg, multi/multi_ct3/ (+ encodings.json)

Photos come from the embedded sample photos or from folders (local paths or s3:// URLs).
Every output directory is built in a hidden sibling and renamed into place as a whole, so a killed
run never leaves a half-written set behind for DVC to cache.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from afd.data.codecs import CODECS, IMAGENET_C_JPEG_QUALITIES, Codec
from afd.data.images import (
    GRID,
    center_crop,
    decode_image,
    load_image,
    open_error_reason,
    random_crop_position,
    resize_center_crop,
    resize_shorter_side,
    to_tensor,
)
from afd.data.samples import SAME_SCENE, embedded_photos
from afd.errors import AFDError, ConfigError, ImageLoadError, display_name, first_line
from afd.io import atomic_dir, write_json

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".avif", ".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")  # what sources may hold
# Other image files (GIF, JPEG 2000, PPM...) are listed too, and skipped with this reason: a silent
# omission would look like a smaller data set.
UNUSED_FORMAT = f"not one of the formats the data sets read ({', '.join(IMAGE_EXTENSIONS)})"
SET_EXTENSIONS = tuple(sorted({".png", *(codec.suffix for codec in CODECS.values())}))  # what sets hold
EVAL_RESIZE, EVAL_SIZE = 256, 224  # ImageNet-C: Resize(256), CenterCrop(224)
IMAGENET_C_VIEW = "imagenet_c"  # the view name of an image made with exactly that preprocessing
MANIFEST = "manifest.json"
ENCODINGS = "encodings.json"  # what each file of a set drew at random (multi: its qualities)


@dataclass(frozen=True)
class Photo:
    """One source photo: `name` is what manifests record (the embedded photo's name, or the path
    relative to the source folder, e.g. "n01440764/x.JPEG"), `uri` is where it is read from."""

    name: str
    uri: str
    label: int | None = None
    origin: str | None = None  # the package and version that ships it (embedded photos)


# ---- sources ------------------------------------------------------------------------------------


def list_images(root: str) -> list[str]:
    """Every image file (by extension) under a local folder or an s3:// prefix, recursively,
    sorted."""
    fs, base, paths = _find_images(root)
    return [_uri(fs, path) for path in paths]


def folder_photos(root: str) -> list[Photo]:
    """The photos of a folder (e.g. DIV2K train), without labels."""
    fs, base, paths = _find_images(root)
    return [Photo(posixpath.relpath(path, base), _uri(fs, path)) for path in paths]


def image_folder(root: str) -> list[Photo]:
    """The photos of an ImageFolder (ImageNet val: <wnid>/<file>), labelled by the ImageNet-1k
    index of their class folder's wnid (timm's synset list), whichever classes are present.

    A class folder that is not an ImageNet-1k wnid, or photos outside class folders, make the
    whole set unlabelled, with a warning naming the folder: wrong labels would be silent, a
    missing label is visible (the report then shows agreement, not top-1)."""
    fs, base, paths = _find_images(root)
    names = [posixpath.relpath(path, base) for path in paths]
    folders = sorted({name.split("/")[0] for name in names if "/" in name})
    loose = [name for name in names if "/" not in name]
    index = imagenet_class_index()
    unknown = [folder for folder in folders if folder not in index]
    if folders and (unknown or loose):
        why = (f"folder {display_name(unknown[0])} is not an ImageNet-1k wnid" if unknown
               else f"{display_name(loose[0])} is not in a class folder")
        log.warning("%s: no labels for any image (%s); the set is evaluated without labels", root, why)
    labelled = bool(folders) and not unknown and not loose
    return [Photo(name, _uri(fs, path), index[name.split("/")[0]] if labelled else None)
            for name, path in zip(names, paths)]


def imagenet_class_index() -> dict[str, int]:
    """wnid -> ImageNet-1k class index (0..999), from the synset list timm ships."""
    from timm.data import ImageNetInfo

    return {wnid: i for i, wnid in enumerate(ImageNetInfo().label_names())}


def embedded_split(train_names: Sequence[str], eval_names: Sequence[str]) -> tuple[list[Photo], list[Photo]]:
    """(train, eval) photos of the embedded sources: each name is a collection or a sample photo
    (afd.data.samples). A name on both sides, or one scene split across them, is refused: no photo may
    be trained on and evaluated."""
    both = sorted(set(train_names) & set(eval_names))
    if both:
        raise ConfigError(f"sources.embedded: {', '.join(both)} on both the train and the eval side")
    for names, side in ((train_names, "train"), (eval_names, "eval")):
        if not names:
            raise ConfigError(f"sources.embedded.{side}: names no photos")
        split_scene = SAME_SCENE & set(names)
        if split_scene and split_scene != SAME_SCENE:
            raise ConfigError(
                f"{' and '.join(sorted(SAME_SCENE))} show one scene: put both on one side, not only "
                f"{', '.join(sorted(split_scene))} on the {side} side"
            )

    def photos(names: Sequence[str]) -> list[Photo]:
        return [Photo(p.name, str(p.path), p.label, p.origin) for p in embedded_photos(list(names))]

    return photos(train_names), photos(eval_names)


def photo_provenance(photo: Photo) -> dict:
    """Where a photo came from, for a manifest: its package and version (embedded photos) and the
    sha256 of its file, so a set records exactly which bytes it was made from."""
    fs, path = url_to_fs(photo.uri)
    return {"origin": photo.origin, "sha256": hashlib.sha256(fs.cat_file(path)).hexdigest()}


def read_image(uri: str) -> Image.Image:
    """load_image for a local path or a URL (s3://...): same checks, same errors."""
    if "://" not in uri:
        return load_image(uri)
    fs, path = url_to_fs(uri)
    try:
        f = fs.open(path, "rb")
    except OSError as e:
        raise ImageLoadError(uri, open_error_reason(e)) from e
    with f:
        return decode_image(f, uri)


def usable_images(
    photos: Sequence[Photo], min_size: int, source: str
) -> tuple[Iterator[tuple[Photo, Image.Image]], list[dict]]:
    """Read the photos one at a time, skipping unusable files (unreadable, or smaller than
    `min_size` on a side) with their reason.

    Returns an iterator of (photo, image) and the list of skipped files ({"file", "reason"}), which
    is complete once the iterator is exhausted. Streaming keeps one photo in memory at a time (an
    ImageNet val folder does not fit). When exhausted it logs "used N, skipped M"; if nothing was
    usable it raises AFDError naming `source` and the reasons.
    """
    skipped: list[dict] = []

    def read() -> Iterator[tuple[Photo, Image.Image]]:
        used = 0
        for photo in tqdm(photos, desc=f"reading {source}", unit="photo"):
            try:
                if not photo.uri.lower().endswith(IMAGE_EXTENSIONS):
                    raise ImageLoadError(photo.uri, UNUSED_FORMAT)
                img = read_image(photo.uri)
                if min(img.size) < min_size:
                    raise ImageLoadError(
                        photo.uri, f"too small ({img.width}x{img.height}, need {min_size} a side)"
                    )
            except ImageLoadError as e:
                skipped.append({"file": photo.name, "reason": e.reason})
                continue
            used += 1
            yield photo, img
        summary = f"used {used}, skipped {len(skipped)}{_reason_counts(skipped)}"
        if not used:
            examples = "; ".join(f"{display_name(s['file'])}: {s['reason']}" for s in skipped[:5])
            raise AFDError(f"no usable images in {display_name(source)}: {summary}. First ones: {examples}")
        log.info("%s: %s", source, summary)

    return read(), skipped


def _find_images(root: str):
    """(file system, root path on it, sorted image paths on it); ConfigError if none. Image paths
    are those with an image extension Pillow knows (see UNUSED_FORMAT); hidden files and folders
    (".cache/") are not part of a source."""
    try:
        fs, base = url_to_fs(root)
        if not fs.isdir(base):
            problem = "not a folder" if fs.exists(base) else "no such folder"
            raise ConfigError(f"image source {display_name(root)}: {problem}")
        paths = sorted(p for p in fs.find(base) if p.lower().endswith(_LISTED_EXTENSIONS)
                       and not any(part.startswith(".") for part in posixpath.relpath(p, base).split("/")))
    except AFDError:
        raise
    except Exception as e:  # remote file systems fail in many ways: credentials, bucket, network
        raise ConfigError(f"image source {display_name(root)}: cannot list it ({_short(e)})") from e
    if not any(p.lower().endswith(IMAGE_EXTENSIONS) for p in paths):
        raise ConfigError(f"image source {display_name(root)}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return fs, base, paths


_LISTED_EXTENSIONS = tuple(sorted(set(IMAGE_EXTENSIONS) | {ext.lower() for ext in Image.registered_extensions()}))


def _uri(fs, path: str) -> str:
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _short(error: Exception) -> str:
    return f"{type(error).__name__}: {first_line(error)}"


def _reason_counts(skipped: list[dict]) -> str:
    # The reason up to its details: "truncated or corrupt image data (...)" counts as one kind.
    kinds = collections.Counter(s["reason"].split(" (")[0].split(":")[0] for s in skipped)
    return f" ({', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))})" if kinds else ""


# ---- clean sets ---------------------------------------------------------------------------------


def make_patches(
    photos: Sequence[Photo],
    count: int,
    size: int,
    seed: int,
    out_dir: str | os.PathLike,
    source: str,
) -> dict:
    """DIV2K-C clean patches: `count` random size x size crops on the 16-pixel grid, as PNG.

    Patch i comes from usable photo i mod N (round-robin, so every photo gives as many patches as
    the count allows); the crop positions are drawn from one numpy Generator seeded by `seed`.
    Same photos + seed -> byte-identical files. Returns the manifest.
    """
    images, skipped = usable_images(photos, size, source)
    images = list(images)  # round-robin needs the number of usable photos up front
    if count < 1:
        raise ConfigError(f"patch count must be >= 1, got {count!r}")
    rng = np.random.default_rng(seed)
    with atomic_dir(out_dir) as tmp:
        patches = []
        for index in tqdm(range(count), desc="patches", unit="patch"):
            photo, img = images[index % len(images)]
            left, top = random_crop_position(img, size, rng, photo.name)
            patch_id = _set_id("p", index, count)
            img.crop((left, top, left + size, top + size)).save(tmp / f"{patch_id}.png")
            patches.append({"id": patch_id, "photo": photo.name, "left": left, "top": top})
        manifest = {"source": source, "photos": _provenance(photo for photo, _ in images),
                    "patches": patches, "skipped": skipped}
        write_json(tmp / MANIFEST, manifest)
    return manifest


def make_eval_clean(
    photos: Sequence[Photo],
    out_dir: str | os.PathLike,
    view_sizes: Sequence[int],
    max_images: int,
    source: str,
) -> dict:
    """Clean 224x224 evaluation images as PNG.

    Without `view_sizes`: one image per photo with the ImageNet-C preprocessing (Resize(256),
    CenterCrop(224)). With them (few photos): per photo and size s, Resize(s) then five crops on
    the 16-pixel grid (centre, corners), view "s320_tl" etc. `max_images` > 0 keeps that many,
    from evenly spaced photos. Returns the manifest.
    """
    views_per_photo = len(_GRID_CROPS) * len(view_sizes) or 1
    if max_images > 0:
        photos = _evenly_spaced(photos, math.ceil(max_images / views_per_photo))
        total = min(max_images, len(photos) * views_per_photo)
    else:
        total = len(photos) * views_per_photo
    images, skipped = usable_images(photos, 1, source)  # Resize scales any size, as ImageNet-C
    records: list[dict] = []
    used: list[Photo] = []
    with atomic_dir(out_dir) as tmp:
        for photo, img in images:
            try:
                views = list(_eval_views(img, view_sizes, photo.uri))
            except ImageLoadError as e:  # e.g. an aspect ratio too extreme to resize
                skipped.append({"file": photo.name, "reason": e.reason})
                continue
            used.append(photo)
            for view, crop in views:
                if len(records) == total:
                    break
                image_id = _set_id("e", len(records), total)
                crop.save(tmp / f"{image_id}.png")
                records.append(
                    {"id": image_id, "photo": photo.name, "view": view, "label": photo.label}
                )
        if not records:
            raise AFDError(f"no usable images in {display_name(source)}: all {len(skipped)} skipped "
                           f"(first: {display_name(skipped[0]['file'])}: {skipped[0]['reason']})")
        manifest = {"source": source, "photos": _provenance(used), "images": records, "skipped": skipped}
        write_json(tmp / MANIFEST, manifest)
    return manifest


def _provenance(photos: Iterable[Photo]) -> dict[str, dict]:
    # Embedded photos only: a folder source is versioned by DVC, and hashing it would read an
    # ImageNet-sized folder twice.
    return {photo.name: photo_provenance(photo) for photo in photos if photo.origin}


_GRID_CROPS = ("c", "tl", "tr", "bl", "br")


def _eval_views(img: Image.Image, view_sizes: Sequence[int], name: str) -> Iterator[tuple[str, Image.Image]]:
    if not view_sizes:
        yield IMAGENET_C_VIEW, resize_center_crop(img, EVAL_RESIZE, EVAL_SIZE, name)
        return
    for view_size in view_sizes:
        resized = resize_shorter_side(img, view_size, name)
        right = GRID * ((resized.width - EVAL_SIZE) // GRID)
        bottom = GRID * ((resized.height - EVAL_SIZE) // GRID)
        corners = {"tl": (0, 0), "tr": (right, 0), "bl": (0, bottom), "br": (right, bottom)}
        for position in _GRID_CROPS:
            if position == "c":
                crop = center_crop(resized, EVAL_SIZE)
            else:
                left, top = corners[position]
                crop = resized.crop((left, top, left + EVAL_SIZE, top + EVAL_SIZE))
            yield f"s{view_size}_{position}", crop


def _evenly_spaced(items: Sequence, count: int) -> list:
    return [items[i * len(items) // count] for i in range(min(count, len(items)))]


# ---- degraded sets ------------------------------------------------------------------------------

def make_compressed_sets(
    clean_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    codec: Codec,
    levels: Sequence[int],
    seed: int = 0,
    **settings,
) -> None:
    """Compress every <id>.png of `clean_dir` with `codec` at each of `levels`, storing the real
    file bytes in `out_dir`/<set name>/<id><suffix> (`settings`: the codec's own, as in its
    params.yaml section). Codecs that draw at random (multi) get a seed made of `seed` and the id,
    so an image's CT=k qualities are the first k of its CT=k+1; what each file drew is listed in
    the set's encodings.json. All sets appear at once, or none."""
    items = load_set(clean_dir)
    with atomic_dir(out_dir) as tmp:
        for level in levels:
            eval_set = codec.set(level)
            (tmp / eval_set.name).mkdir()
            drawn = {}
            for image_id, path in tqdm(items, desc=eval_set.name, unit="image"):
                data, drawn[image_id] = codec.encode(load_image(path), level, _image_seed(seed, image_id), **settings)
                (tmp / eval_set.name / f"{image_id}{codec.suffix}").write_bytes(data)
            if any(value is not None for value in drawn.values()):
                write_json(tmp / eval_set.name / ENCODINGS, drawn)


def copy_imagenet_c(
    clean_dir: str | os.PathLike, out_dir: str | os.PathLike, qualities: Sequence[int], imagenet_c_dir: str
) -> None:
    """The JPEG sets at `qualities` from the released ImageNet-C files instead of encoding
    (<imagenet_c_dir>/jpeg_compression/<severity>/<wnid>/<file> for each eval image's photo), laid
    out as `make_compressed_sets` lays out codec "jpeg"."""
    unknown = [q for q in qualities if q not in IMAGENET_C_JPEG_QUALITIES]
    if unknown:
        raise ConfigError(f"ImageNet-C has no JPEG quality {unknown[0]!r}; its qualities: {IMAGENET_C_JPEG_QUALITIES}")
    records = _eval_records(clean_dir)
    other_views = sorted({r["view"] for r in records} - {IMAGENET_C_VIEW})
    if other_views:
        raise ConfigError(
            f"{clean_dir} holds views {other_views}: ImageNet-C files match only an eval set made "
            "with the ImageNet-C preprocessing (sources.kind: folders)"
        )
    fs, base = url_to_fs(imagenet_c_dir)
    jpeg = CODECS["jpeg"]
    with atomic_dir(out_dir) as tmp:
        for quality in qualities:
            severity = IMAGENET_C_JPEG_QUALITIES.index(quality) + 1
            set_dir = tmp / jpeg.set(quality).name
            set_dir.mkdir()
            for record in tqdm(records, desc=f"ImageNet-C severity {severity}", unit="image"):
                released = posixpath.join(base, "jpeg_compression", str(severity), record["photo"])
                try:
                    data = fs.cat_file(released)
                except FileNotFoundError as e:
                    raise AFDError(
                        f"ImageNet-C file missing: {_uri(fs, released)} (for eval image "
                        f"{record['id']}); is {imagenet_c_dir} the released ImageNet-C of this "
                        "eval_dir?"
                    ) from e
                (set_dir / f"{record['id']}{jpeg.suffix}").write_bytes(data)


def _image_seed(seed: int, image_id: str) -> int:
    # A stable hash (Python's hash() of a str changes between processes).
    return int.from_bytes(hashlib.sha256(f"{seed}/{image_id}".encode()).digest()[:8], "big")


# ---- reading sets back --------------------------------------------------------------------------


def load_set(directory: str | os.PathLike) -> list[tuple[str, Path]]:
    """(id, file) of every image of a set directory, sorted by id."""
    directory = Path(directory)
    if not directory.is_dir():
        raise AFDError(f"data set {directory}: no such folder (run `dvc repro` to build it)")
    items = sorted(
        (path.stem, path) for path in directory.iterdir() if path.suffix in SET_EXTENSIONS
    )
    if not items:
        raise AFDError(f"data set {directory}: holds no images ({', '.join(SET_EXTENSIONS)})")
    return items


def labels(clean_dir: str | os.PathLike) -> dict[str, int | None]:
    """id -> ImageNet class index (None where the source had no labels) of an eval set."""
    return {record["id"]: record["label"] for record in _eval_records(clean_dir)}


class PairedImages(Dataset):
    """(clean, degraded, id) of a clean set and one of its degraded sets; tensors (3, H, W) in
    [0, 1]."""

    def __init__(self, clean_dir: str | os.PathLike, degraded_dir: str | os.PathLike):
        clean, degraded = dict(load_set(clean_dir)), dict(load_set(degraded_dir))
        mismatched = sorted(clean.keys() ^ degraded.keys())
        if mismatched:
            first = mismatched[0]
            holder = clean_dir if first in clean else degraded_dir
            raise AFDError(
                f"{clean_dir} and {degraded_dir} hold different images: {len(mismatched)} id(s) "
                f"in only one of them; the first, {first}, is only in {holder}"
            )
        self.items = [(image_id, clean[image_id], degraded[image_id]) for image_id in sorted(clean)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image_id, clean, degraded = self.items[index]
        return to_tensor(load_image(clean)), to_tensor(load_image(degraded)), image_id


def _eval_records(clean_dir: str | os.PathLike) -> list[dict]:
    """The "images" of a clean eval set's manifest."""
    path = Path(clean_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AFDError(f"{path}: cannot read the set's manifest ({e})") from e
    if "images" not in manifest:
        raise AFDError(f"{path}: not an evaluation set's manifest (it lists no images)")
    return manifest["images"]


# ---- writing ------------------------------------------------------------------------------------


def _set_id(prefix: str, index: int, total: int) -> str:
    # Fixed width per set, so string order is numeric order.
    return f"{prefix}{index:0{max(5, len(str(total - 1)))}d}"
