"""Command line: `afd classify`, `afd fuse`, `afd degrade`, `afd efficiency`.

Input errors (a bad image, a missing checkpoint, an unknown backbone) print one line naming the
file or value and the problem, and exit with status 2; no traceback.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Optional

import torch
import typer

from afd.errors import AFDError, ConfigError, display_name

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])


def reports_errors(command):
    """Turn the package's own errors into a one-line message and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AFDError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None

    return wrapper


@app.command()
@reports_errors
def classify(
    images: list[Path] = typer.Argument(..., help="Image files to classify."),
    model: Optional[str] = typer.Option(
        None, help="A registered model's URI, e.g. models:/afd-<backbone>@champion (replaces the options below)."
    ),
    backbone: str = typer.Option("efficientnet_lite0", help="efficientnet_lite0 / 1 / 2, resnet50 or repvgg_a2."),
    weights: Optional[str] = typer.Option(None, help="Backbone weights file (default: see README)."),
    enhancer: Optional[Path] = typer.Option(None, help="AFD / DDP checkpoint plugged in at the tap."),
    tap: Optional[str] = typer.Option(None, help="Tap point (default: the backbone's, or the checkpoint's)."),
    resize: int = typer.Option(256, help="Shorter side before the centre crop; 0 crops a JPEG on its own grid."),
    crop: int = typer.Option(224, help="Centre crop size."),
    top_k: int = typer.Option(5, min=1, max=1000, metavar="K", help="Classes to print per image (1-1000)."),
):
    """Print the top-k ImageNet classes of each image, one image at a time."""
    from timm.data import ImageNetInfo

    from afd.data.images import classifier_input, load_image, to_tensor

    if model:
        from afd.ops.registry import load_registered

        classifier = load_registered(model)
    else:
        classifier = _local_classifier(backbone, weights, enhancer, tap)
    names = ImageNetInfo()
    failures = 0
    for path in images:
        try:
            image = to_tensor(classifier_input(load_image(path), resize, crop, name=str(path)))
        except AFDError as error:
            typer.echo(f"error: {error}", err=True)
            failures += 1
            continue
        with torch.inference_mode():
            probabilities = classifier(image.unsqueeze(0)).softmax(dim=1)[0]
        top = probabilities.topk(top_k)
        guesses = ", ".join(
            f"{i} {names.index_to_description(i)} ({p:.3f})" for p, i in zip(top.values.tolist(), top.indices.tolist())
        )
        typer.echo(f"{display_name(path)}: {guesses}")
    if failures:
        raise typer.Exit(1)


def _local_classifier(backbone: str, weights: str | None, enhancer: Path | None, tap: str | None):
    from afd.model.backbones import build_backbone
    from afd.model.checkpoint import load_enhancer
    from afd.model.classifier import EnhancedClassifier

    module, meta = load_enhancer(enhancer) if enhancer else (None, {})
    if meta.get("backbone", backbone) != backbone:
        raise AFDError(f"{display_name(enhancer)}: trained for backbone {meta['backbone']!r}, not {backbone!r}")
    try:
        classifier = EnhancedClassifier(build_backbone(backbone, weights), module, tap or meta.get("tap")).eval()
    except ConfigError as error:
        raise ConfigError(f"{display_name(enhancer)}: {error}" if enhancer else str(error)) from None
    if not classifier.backbone.pretrained:
        typer.echo(f"warning: {backbone} has random weights; its classes mean nothing", err=True)
    return classifier


@app.command()
@reports_errors
def fuse(
    checkpoint: Path = typer.Argument(..., help="Trained AFD checkpoint (multi-branch form)."),
    output: Path = typer.Argument(..., help="Where to write the fused checkpoint."),
):
    """Re-parameterize a trained AFD-Module into its deploy form and check it is equivalent."""
    from afd.model.checkpoint import load_enhancer, save_enhancer
    from afd.model.fusing import fuse_and_verify

    module, meta = load_enhancer(checkpoint)
    fused, max_abs_diff = fuse_and_verify(module, source=checkpoint)
    save_enhancer(fused, output, meta={**meta, "fused_from": str(checkpoint), "fuse_max_abs_diff": max_abs_diff})
    typer.echo(f"{display_name(output)}: fused; max |fused - trained| on a random input = {max_abs_diff:.2e}")


# What `afd degrade` writes, by suffix: lossless formats only, so the file holds the degradation alone.
LOSSLESS_FORMATS = {".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


@app.command()
@reports_errors
def degrade(
    image: Path = typer.Argument(..., help="Input image."),
    output: Path = typer.Argument(..., help="Output image: .png (or another lossless format: .bmp, .tif), so only the degradation shows."),
    kind: str = typer.Option("jpeg", help="A codec of afd/data/codecs.py (jpeg, multi, avif, ...), or imagenet_c_jpeg[_q85] (level: severity 1-5)."),
    level: int = typer.Option(10, help="The codec's level: a quality, or the rounds of multi."),
    seed: int = typer.Option(0, help="Seed of the qualities drawn by multi."),
):
    """Apply one of the data sets' degradations to an image."""
    from afd.data.codecs import degrade as apply_degradation
    from afd.data.images import load_image
    from afd.io import atomic_path

    image_format = LOSSLESS_FORMATS.get(output.suffix.lower())
    if image_format is None:
        raise ConfigError(f"{display_name(output)}: {output.suffix or 'no suffix'} is not a lossless image format: saving "
                          f"would compress the degraded image again; use one of {', '.join(LOSSLESS_FORMATS)}")
    degraded = apply_degradation(load_image(image), kind, level, seed)
    with atomic_path(output) as tmp:
        degraded.save(tmp, format=image_format)
    typer.echo(f"{display_name(output)}: {kind} level {level}")


@app.command()
@reports_errors
def efficiency(
    backbone: str = typer.Option("efficientnet_lite0", help="Backbone whose tap the AFD-Module sits at."),
    weights: Optional[str] = typer.Option(
        None, help="Backbone weights (default: see README; 'random' for none: timing does not depend on them)."),
    tap: Optional[str] = typer.Option(None, help="Tap point (default: the backbone's)."),
    enhancer: Optional[Path] = typer.Option(None, help="A trained AFD checkpoint to time instead of a fresh one."),
    image_size: int = typer.Option(224, min=32),
    threads: int = typer.Option(1, min=1),
    repeats: int = typer.Option(10, min=1),
    executorch: bool = typer.Option(False, help="Also lower the whole classifiers to ExecuTorch (XNNPACK), "
                                                "int8 included, and time them in the same run (about a minute)."),
    device: str = typer.Option("auto", help="Also time on this GPU: auto (one if PyTorch sees it), cpu, cuda, cuda:N."),
):
    """Params, MACs and latency of the backbone, AFD (unfused and fused), DDP and ARCNN: on the CPU,
    and on the GPU too when --device names one (or auto finds one)."""
    import tempfile

    from afd.model.checkpoint import load_enhancer
    from afd.model.determinism import resolve_device
    from afd.ops.benchmark import compare_efficiency, efficiency_markdown, efficiency_record

    chosen = resolve_device(device)
    gpu = chosen if chosen.type == "cuda" else None
    afd = load_enhancer(enhancer)[0] if enhancer else None
    with tempfile.TemporaryDirectory(prefix="afd-efficiency-") as programs:
        try:
            rows = compare_efficiency(
                backbone, tap, weights, afd, image_size, threads, repeats=repeats,
                progress=lambda names: typer.echo(f"timing {names} ...", err=True),
                executorch_dir=programs if executorch else None, gpu=gpu,
            )
        except ConfigError as error:
            raise ConfigError(f"{display_name(enhancer)}: {error}" if enhancer else str(error)) from None
    setup = f"{backbone} at tap {tap or 'default'}, one random {image_size}x{image_size} image, {repeats} repeats."
    typer.echo(efficiency_markdown(efficiency_record(rows, setup, threads, gpu)))


def main() -> None:  # `python -m afd.cli`
    app(prog_name="afd")


if __name__ == "__main__":
    sys.exit(main())
