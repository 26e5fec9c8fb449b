"""The embedded default data: real colour photographs that ship inside installed PyPI packages.

Only colour photographs (camera, microscope, telescope) are listed: scikit-image's grayscale images
(camera, coins, moon, ...), synthetic ones (colour wheel, chessboards, phantom, logo, horse
silhouette) and tiny icons are left out, as are its images that are only downloaded on demand.
Half of them are JPEG files already, so even the "clean" photo carries mild JPEG artefacts.
They are few (12): results on them are a smoke test, not a benchmark.
`motorcycle_left` and `motorcycle_right` are a stereo pair of one scene: keep them on the same side
of a train/eval split.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from afd.errors import AFDError

# name -> (package, file inside the package)
_PHOTOS = {
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


def _package_dir(package: str) -> Path | None:
    # find_spec locates the package without importing it (matplotlib and sklearn import slowly).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sample_photos() -> dict[str, Path]:
    """Name -> path of each embedded photo found on disk, sorted by name."""
    found = {}
    for name, (package, relative) in sorted(_PHOTOS.items()):
        root = _package_dir(package)
        if root is not None and (root / relative).is_file():
            found[name] = root / relative
    if not found:
        raise AFDError(
            "no sample photos found: none of scikit-image, scikit-learn, matplotlib is installed "
            "with its data files"
        )
    return found
