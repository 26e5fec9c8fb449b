"""Peak memory of `afd classify` as the batch of photos grows: it must stay flat (one image at a
time), not grow with the number of files.

Makes N photos of mixed sizes (crops and resizes of the embedded sample photos, 64 to 1600 pixels
a side, JPEG and PNG) and runs the CLI on all of them in a fresh process for each N, reading that
process's peak RSS. Prints one row per N and the ratio of the largest N's peak to the smallest's.

    .venv/bin/python benches/classify_memory.py            # N = 10, 100, 1000
    .venv/bin/python benches/classify_memory.py --counts 10 100 --model models:/afd-efficientnet_lite0@champion
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from afd.data.images import load_image
from afd.data.samples import sample_photos

PEAK_RSS = """
import resource, sys
from afd.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def make_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    sources = [load_image(path) for path in sample_photos().values()]
    paths = []
    for index in tqdm(range(count), desc=f"{count} photos", leave=False):
        photo = sources[index % len(sources)]
        side = int(rng.integers(64, 1601))
        resized = photo.resize((side, max(32, int(side * rng.uniform(0.5, 1.5)))))
        path = folder / f"p{index:05d}.{'jpg' if index % 2 else 'png'}"
        resized.save(path, quality=90) if path.suffix == ".jpg" else resized.save(path)
        paths.append(path)
    return paths


def peak_rss_mb(paths: list[Path], model: str | None) -> tuple[float, float]:
    command = [sys.executable, "-c", PEAK_RSS, "classify", "--top-k", "1", *map(str, paths)]
    if model:
        command[4:4] = ["--model", model]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"classify failed:\n{result.stderr[-2000:]}")
    classified = sum(1 for line in result.stdout.splitlines() if line.startswith(str(paths[0].parent)))
    if classified != len(paths):
        sys.exit(f"classified {classified} of {len(paths)} photos")
    kilobytes = int(result.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    return kilobytes / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--model", help="a registered model URI instead of the local EfficientNet-Lite0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(Path(tmp), max(args.counts))
        rows = [(count, *peak_rss_mb(photos[:count], args.model)) for count in args.counts]
    print(f"`afd classify{' --model ' + args.model if args.model else ''}`, photos 64-1600 px, JPEG and PNG")
    print("| photos | peak RSS (MB) | seconds |")
    print("|---:|---:|---:|")
    for count, megabytes, seconds in rows:
        print(f"| {count} | {megabytes:.0f} | {seconds:.1f} |")
    print(f"peak RSS ratio, {rows[-1][0]} vs {rows[0][0]} photos: {rows[-1][1] / rows[0][1]:.3f}")


if __name__ == "__main__":
    main()
