"""The embedded default data: real photographs that ship inside installed PyPI packages.

Two kinds of entry, each named in params.yaml's `sources.embedded`:
- single sample photos, by name (`coffee`, `chelsea`, ...): the colour photographs of scikit-image,
  scikit-learn and matplotlib (camera, microscope, telescope). Their grayscale, synthetic and tiny
  images are left out, as are those only downloaded on demand;
- collections, by name: every photo of a folder of a package, e.g. ai-benchmark's 100
  single-object classification photos or foolbox's 20 ImageNet validation photos, whose file names
  carry their ImageNet-1k class index (`imagenet_04_949.jpg`: 949, strawberry).

Most of them are JPEG files already (about quality 75-85, like ImageNet's own files): the shipped
file is the clean reference, as ImageNet-C's is. `motorcycle_left` and `motorcycle_right` are a
stereo pair of one scene: keep them on the same side of a train/eval split.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from afd.errors import AFDError, ConfigError

# name -> (import name, file inside the package)
_SAMPLE_PHOTOS = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "coffee": ("skimage", "data/coffee.png"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "ihc": ("skimage", "data/ihc.png"),  # immunohistochemistry micrograph
    "motorcycle_left": ("skimage", "data/motorcycle_left.png"),
    "motorcycle_right": ("skimage", "data/motorcycle_right.png"),
    "retina": ("skimage", "data/retina.jpg"),  # fundus photograph
    "rocket": ("skimage", "data/rocket.jpg"),
}

# Photos of one scene: a split must keep them on one side.
SAME_SCENE = frozenset({"motorcycle_left", "motorcycle_right"})


@dataclass(frozen=True)
class Collection:
    """Every file of `folder` in package `module` whose name matches `pattern`; the pattern's
    group `label`, if any, is the photo's ImageNet-1k class index."""

    module: str
    folder: str
    pattern: str
    description: str

    def files(self) -> list[tuple[Path, int | None]]:
        root = _package_dir(self.module)
        folder = root / self.folder if root else None
        if folder is None or not folder.is_dir():
            return []
        found = []
        for path in folder.iterdir():
            match = re.fullmatch(self.pattern, path.name)
            if match:
                label = match.groupdict().get("label")
                found.append((path, None if label is None else int(label)))
        return sorted(found, key=lambda item: _natural_key(item[0].name))


COLLECTIONS = {
    "ai_benchmark_classification": Collection(
        "ai_benchmark", "data/classification", r"\d+\.jpg",
        "100 single-object 512x512 photos, one ImageNet class each, no labels"),
    "ai_benchmark_enhancement": Collection(
        "ai_benchmark", "data/enhancement", r"\d+\.jpg", "100 street photos, 1024x682"),
    "ai_benchmark_segmentation": Collection(
        "ai_benchmark", "data/segmentation", r"\d+\.jpg",  # not the *_segmented overlays
        "30 photos, 800x531"),
    "foolbox_imagenet": Collection(
        "foolbox", "data", r"imagenet_\d+_(?P<label>\d+)\.jpg",
        "20 ImageNet validation photos, labelled by the class index in the file name"),
}


@dataclass(frozen=True)
class EmbeddedPhoto:
    name: str  # what manifests record: "coffee", "ai_benchmark_classification/17.jpg"
    path: Path
    origin: str  # the distribution that ships it and its version: "ai-benchmark 0.1.2"
    label: int | None = None


def _package_dir(module: str) -> Path | None:
    # find_spec locates the package without importing it (matplotlib and sklearn import slowly,
    # ai_benchmark and foolbox would pull in TensorFlow / eagerpy).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _origin(module: str) -> str:
    distribution = importlib.metadata.packages_distributions().get(module, [module])[0]
    return f"{distribution} {importlib.metadata.version(distribution)}"


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def sample_photos() -> dict[str, Path]:
    """Name -> path of each single sample photo found on disk, sorted by name."""
    found = {}
    for name, (module, relative) in sorted(_SAMPLE_PHOTOS.items()):
        root = _package_dir(module)
        if root is not None and (root / relative).is_file():
            found[name] = root / relative
    if not found:
        raise AFDError(
            "no sample photos found: none of scikit-image, scikit-learn, matplotlib is installed "
            "with its data files"
        )
    return found


def embedded_names() -> list[str]:
    """Every name `embedded_photos` accepts: the collections, then the sample photos."""
    return [*COLLECTIONS, *_SAMPLE_PHOTOS]


def embedded_photos(names: list[str]) -> list[EmbeddedPhoto]:
    """The photos of each named collection or sample photo, in the order given."""
    photos: list[EmbeddedPhoto] = []
    found = sample_photos() if any(name in _SAMPLE_PHOTOS for name in names) else {}
    for name in names:
        if name in COLLECTIONS:
            collection = COLLECTIONS[name]
            files = collection.files()
            if not files:
                raise ConfigError(f"embedded collection {name!r}: no photos found; is the package "
                                  f"that ships it ({collection.module}) installed?")
            origin = _origin(collection.module)
            photos += [EmbeddedPhoto(f"{name}/{path.name}", path, origin, label) for path, label in files]
        elif name in _SAMPLE_PHOTOS:
            path = found.get(name)
            if path is None:
                raise ConfigError(f"embedded photo {name!r}: not found; is {_SAMPLE_PHOTOS[name][0]} installed?")
            photos.append(EmbeddedPhoto(name, path, _origin(_SAMPLE_PHOTOS[name][0])))
        else:
            raise ConfigError(f"unknown embedded photo or collection {name!r}; known: {', '.join(embedded_names())}")
    return photos
