"""Markdown report and figures shaped like the paper's tables, from the pipeline's metrics files.

Inputs are the JSON documents the evaluate and efficiency stages write; nothing here computes a
metric, so every number in the report is one that `dvc metrics show` shows too.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from .benchmark import format_table  # noqa: E402
from .evaluate import set_family, set_level  # noqa: E402
from .io import atomic_path  # noqa: E402

DISPLAY_NAMES = {
    "direct": "DirectTest",
    "afd": "AFD",
    "fe_net": "FE-Net",
    "afd_image_blocks": "FE-Net + image blocks",
    "afd_shuffled_dct": "Shuffled DCT",
    "ddp": "DDP",
    "arcnn": "ARCNN",
}
FAMILY_TITLES = {
    "jpeg": ("JPEG quality factor", "Table V: ImageNet-C-style JPEG"),
    "multi": ("compression times (CT)", "Table VI: multiple JPEG compression"),
    "avif": ("AVIF quality", "Table IX: AVIF"),
}
METRIC_TITLES = {
    "top1": "top-1 accuracy (%)",
    "agreement": "top-1 agreement with the clean prediction (%)",
    "kl": "KL(clean ‖ compressed)",
    "feature_mse": "feature MSE at the tap",
}
PERCENT_METRICS = {"top1", "agreement"}


def display(method: str) -> str:
    return DISPLAY_NAMES.get(method, method)


def headline_metric(result: dict) -> str:
    """Accuracy where the evaluation images have labels, else the label-free agreement."""
    return "top1" if result["data"].get("labelled") else "agreement"


def _format(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if metric in PERCENT_METRICS else f"{value:.4f}"


def family_sets(result: dict, family: str) -> list[str]:
    sets = {s for by_set in result["grid"].values() for s in by_set if set_family(s) == family}
    # JPEG/AVIF from light to heavy compression (QF descending), CT ascending, as in the paper.
    return sorted(sets, key=lambda s: set_level(s), reverse=family != "multi")


def family_table(result: dict, family: str, metric: str, methods: list[str] | None = None) -> str:
    """Rows: the family's levels, then Avg; columns: methods (DirectTest first)."""
    methods = methods or result["methods"]
    sets = family_sets(result, family)
    level_name = "CT" if family == "multi" else "QF"
    lines = [
        f"| {level_name} | " + " | ".join(display(m) for m in methods) + " |",
        "|---|" + "---:|" * len(methods),
    ]
    for set_name in sets:
        cells = [_format(metric, result["grid"][m].get(set_name, {}).get(metric)) for m in methods]
        lines.append(f"| {set_level(set_name)} | " + " | ".join(cells) + " |")
    averages = [_format(metric, result["averages"][m].get(family, {}).get(metric)) for m in methods]
    lines.append("| Avg | " + " | ".join(averages) + " |")
    return "\n".join(lines)


def clean_table(result: dict) -> str:
    """Paper Table X: each method on the uncompressed images."""
    lines = ["| method | " + " | ".join(METRIC_TITLES[m] for m in ("agreement", "kl", "feature_mse")) + " |",
             "|---|---:|---:|---:|"]
    for method in result["methods"]:
        cell = result["grid"][method].get("clean", {})
        values = " | ".join(_format(m, cell.get(m)) for m in ("agreement", "kl", "feature_mse"))
        lines.append(f"| {display(method)} | {values} |")
    return "\n".join(lines)


def grid_summary(result: dict) -> str:
    """The evaluation grid of one backbone in Markdown: a table per compression family in the
    headline metric, then the clean images (a Prefect run artifact)."""
    metric = headline_metric(result)
    parts = [f"**{result['backbone']}** at tap `{result['tap']}`: {METRIC_TITLES[metric]} on "
             f"{result['data']['description']}."]
    for family, (_, title) in FAMILY_TITLES.items():
        if family_sets(result, family):
            parts += [f"### {title}", family_table(result, family, metric)]
    parts += ["### Table X: clean images", clean_table(result)]
    return "\n\n".join(parts)


def plot_family(result: dict, family: str, metric: str, path: Path) -> None:
    """One line per method: `metric` against the family's level."""
    sets = family_sets(result, family)
    levels = [set_level(s) for s in sets]
    figure, axes = plt.subplots(figsize=(6, 4))
    for method in result["methods"]:
        values = [result["grid"][method][s].get(metric) for s in sets]
        scale = 100 if metric in PERCENT_METRICS else 1
        axes.plot(levels, [v * scale for v in values], marker="o", label=display(method),
                  linewidth=2.5 if method in ("afd", "direct") else 1.2)
    axes.set_xlabel(FAMILY_TITLES[family][0])
    axes.set_ylabel(METRIC_TITLES[metric])
    axes.set_xticks(levels)
    if family != "multi":
        axes.invert_xaxis()  # heavier compression to the right
    axes.set_title(f"{result['backbone']}: {FAMILY_TITLES[family][1].split(': ')[1]}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def training_table(training: dict[str, dict]) -> str:
    """Each trained method's final loss against doing nothing's on the same batches (from
    metrics/train): a ratio near 1 would mean the method's column is DirectTest's."""
    rows = ["| method | learning rate | final loss | doing nothing's loss | ratio | hidden channels alive |",
            "|---|---:|---:|---:|---:|---:|"]
    rows += [f"| {display(method)} | {s['lr']:.1e} | {s['final_loss']:.4f} | {s['final_identity_loss']:.4f} "
             f"| {s['loss_ratio']:.3f} | {100 * s['alive_fraction']:.0f}% |" for method, s in training.items()]
    return "\n".join(rows)


def backbone_section(result: dict, training: dict[str, dict], figures_dir: Path, figures_link: str) -> str:
    """Training check, Tables V, VI, IX, II/III, X for one backbone, plus its figures (written to
    figures_dir)."""
    name = result["backbone"]
    metric = headline_metric(result)
    weights = "ImageNet weights" if result["pretrained"] else "RANDOM weights (no weights file given): numbers are meaningless"
    parts = [
        f"## {name} (tap `{result['tap']}`, {weights})",
        f"Measured on {result['data']['description']}: {result['data']['images']} images per set. "
        f"Headline metric: {METRIC_TITLES[metric]}.",
        "### Training: each method against doing nothing (last tenth of training, same batches)",
        training_table(training),
    ]
    for family, (_, title) in FAMILY_TITLES.items():
        if not family_sets(result, family):
            continue
        figure = f"{name}_{family}_{metric}.png"
        plot_family(result, family, metric, figures_dir / figure)
        parts += [f"### {title}, {METRIC_TITLES[metric]}", family_table(result, family, metric),
                  f"![{title}]({figures_link}/{figure})"]
    for secondary in ("kl", "feature_mse"):
        parts += [f"### {FAMILY_TITLES['jpeg'][1]}, {METRIC_TITLES[secondary]}",
                  family_table(result, "jpeg", secondary)]
    ablation_ii = [m for m in ("direct", "fe_net", "afd_image_blocks", "afd") if m in result["methods"]]
    ablation_iii = [m for m in ("direct", "afd_shuffled_dct", "afd") if m in result["methods"]]
    if len(ablation_ii) > 2:
        parts += ["### Table II: FDM from the DCT vs from image blocks vs none (JPEG)",
                  family_table(result, "jpeg", metric, ablation_ii)]
    if len(ablation_iii) > 2:
        parts += ["### Table III: rearranged vs shuffled DCT coefficients (JPEG)",
                  family_table(result, "jpeg", metric, ablation_iii)]
    parts += ["### Table X: on uncompressed images", clean_table(result)]
    return "\n\n".join(parts)


def write_report(results: list[dict], training: dict[str, dict[str, dict]], efficiency: dict, path: Path,
                 figures_dir: Path) -> None:
    """The whole report: one section per backbone (its training summaries: `training[backbone]`),
    then the efficiency table (Table VII)."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    link = figures_dir.relative_to(path.parent).as_posix() if figures_dir.is_relative_to(path.parent) else str(figures_dir)
    parts = [
        "# AFD-Module: reproduction report",
        "Generated by `dvc repro` (stage `report`) from `metrics/`; every number below is in those files.",
    ]
    parts += [backbone_section(result, training[result["backbone"]], figures_dir, link) for result in results]
    for backbone, measured in efficiency.items():
        parts += [
            f"## Table VII: efficiency at the {backbone} tap",
            f"{measured['setup']}",
            format_table(measured["rows"]),
            "Ratios from the same run: " + ", ".join(f"{k} = {v:.3f}" for k, v in measured["ratios"].items()) + ".",
        ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n\n".join(parts) + "\n")
