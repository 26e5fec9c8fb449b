"""Markdown report and figures shaped like the paper's tables, from the pipeline's metrics files.

Inputs are the JSON documents the evaluate and efficiency stages write; nothing here computes a
metric, so every number in the report is one that `dvc metrics show` shows too.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from afd.data.codecs import CODECS, EvalSet, set_family  # noqa: E402
from afd.io import atomic_path  # noqa: E402
from afd.model.evaluate import headline_metric  # noqa: E402
from afd.model.significance import Estimate, PhotoBootstrap, agreement_values, correct_values  # noqa: E402
from afd.ops.benchmark import efficiency_markdown  # noqa: E402

METRIC_TITLES = {
    "top1": "top-1 accuracy (%)",
    "agreement": "top-1 agreement with the clean prediction (%)",
    "kl": "KL(clean ‖ compressed)",
    "feature_mse": "feature MSE at the tap",
}
PERCENT_METRICS = {"top1", "agreement"}


def display(result: dict, method: str) -> str:
    """A method's title in tables, as its evaluation record names it (params.yaml's methods)."""
    return result.get("titles", {}).get(method, method)


def _format(metric: str, value: float | None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if metric in PERCENT_METRICS else f"{value:.4f}"


def set_level(name: str) -> int:
    return EvalSet.parse(name).level


def family_sets(result: dict, family: str) -> list[str]:
    """The sets of codec `family` in the grid, from light to heavy compression, as in the paper."""
    by_level = {set_level(s): s for by_set in result["grid"].values() for s in by_set if set_family(s) == family}
    return [by_level[level] for level in CODECS[family].light_to_heavy(by_level)]


def _evaluated_on(result: dict, methods: list[str], sets: list[str]) -> list[str]:
    """Those of `methods` evaluated on every one of `sets` (the study methods skip some families)."""
    return [m for m in methods if all(s in result["grid"][m] for s in sets)]


def family_table(result: dict, family: str, metric: str, methods: list[str] | None = None) -> str:
    """Rows: the family's levels, then Avg; columns: methods (DirectTest first)."""
    methods = methods or result["methods"]
    sets = family_sets(result, family)
    level_name = CODECS[family].level_label
    lines = [
        f"| {level_name} | " + " | ".join(display(result, m) for m in methods) + " |",
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
        lines.append(f"| {display(result, method)} | {values} |")
    return "\n".join(lines)


def grid_summary(result: dict) -> str:
    """The evaluation grid of one backbone in Markdown: a table per compression family in the
    headline metric, then the clean images (a Prefect run artifact)."""
    metric = headline_metric(result)
    parts = [f"**{result['backbone']}** at tap `{result['tap']}`: {METRIC_TITLES[metric]} on "
             f"{result['data']['description']}."]
    for family, codec in CODECS.items():
        if family_sets(result, family):
            parts += [f"### {codec.table_title}", family_table(result, family, metric)]
    parts += ["### Table X: clean images", clean_table(result)]
    return "\n\n".join(parts)


def plot_family(result: dict, family: str, metric: str, path: Path) -> None:
    """One line per method: `metric` against the family's level."""
    sets = family_sets(result, family)
    levels = [set_level(s) for s in sets]
    figure, axes = plt.subplots(figsize=(6, 4))
    for method in _evaluated_on(result, result["methods"], sets):
        values = [result["grid"][method][s].get(metric) for s in sets]
        scale = 100 if metric in PERCENT_METRICS else 1
        axes.plot(levels, [v * scale for v in values], marker="o", label=display(result, method),
                  linewidth=2.5 if method in ("afd", "direct") else 1.2)
    codec = CODECS[family]
    axes.set_xlabel(codec.level_title)
    axes.set_ylabel(METRIC_TITLES[metric])
    axes.set_xticks(levels)
    if not codec.harder_when_higher:
        axes.invert_xaxis()  # heavier compression to the right
    axes.set_title(f"{result['backbone']}: {codec.table_title.split(': ')[-1]}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def training_table(result: dict, training: dict[str, dict]) -> str:
    """Each trained method's final loss against doing nothing's on the same batches (from
    metrics/train): a ratio near 1 would mean the method's column is DirectTest's."""
    rows = ["| method | learning rate | final loss | doing nothing's loss | ratio | hidden channels alive |",
            "|---|---:|---:|---:|---:|---:|"]
    rows += [f"| {display(result, method)} | {s['lr']:.1e} | {s['final_loss']:.4f} | {s['final_identity_loss']:.4f} "
             f"| {s['loss_ratio']:.3f} | {100 * s['alive_fraction']:.0f}% |" for method, s in training.items()]
    return "\n".join(rows)


# ---- significance (per-image outcomes, metrics/eval/<backbone>.images.json) -------------------


def _pct(estimate: Estimate, signed: bool = False) -> str:
    e = estimate.scaled(100)
    value = f"{e.value:+.1f}" if signed else f"{e.value:.1f}"
    mark = "*" if signed and e.significant else ""
    return f"{value}{mark} [{e.low:.1f}, {e.high:.1f}]"


class Evidence:
    """One backbone's per-image outcomes with the photo bootstrap: agreement (or top-1 on the
    labelled images) of a method, and paired differences between methods, over sets."""

    def __init__(self, images: dict):
        self.outcomes = images["outcomes"]
        self.bootstrap = PhotoBootstrap([image["photo"] for image in images["images"]])
        labelled = [image["photo"] for image in images["images"] if image["label"] is not None]
        self.labelled = PhotoBootstrap(labelled) if labelled else None

    def has(self, *methods: str) -> bool:
        return all(m in self.outcomes for m in methods)

    def level(self, method: str, sets: list[str]) -> Estimate:
        return self.bootstrap.estimate(agreement_values(self.outcomes[method], sets))

    def gain(self, method: str, reference: str, sets: list[str]) -> Estimate:
        """method - reference, paired on the same images."""
        return self.bootstrap.estimate(self._differences(method, reference, sets))

    def gain_change(self, method: str, reference: str, heavier: list[str], lighter: list[str]) -> Estimate:
        """How much larger the gain over `reference` is on `heavier` than on `lighter` sets."""
        return self.bootstrap.estimate(self._differences(method, reference, heavier).mean(0)
                                       - self._differences(method, reference, lighter).mean(0))

    def _differences(self, method: str, reference: str, sets: list[str]) -> np.ndarray:
        """(sets, images) of method - reference agreement, each image against itself."""
        return agreement_values(self.outcomes[method], sets) - agreement_values(self.outcomes[reference], sets)

    def top1(self, method: str, sets: list[str]) -> Estimate:
        return self.labelled.estimate(correct_values(self.outcomes[method], sets))


def interval_table(result: dict, evidence: Evidence, family: str, methods: list[str]) -> str:
    """Agreement (%) with its 95% interval over photos, per level and Avg; then each method's
    paired difference to DirectTest (* where the interval excludes 0)."""
    sets = family_sets(result, family)
    level_name = CODECS[family].level_label
    rows = [(str(set_level(s)), [s]) for s in sets] + [("Avg", sets)]
    lines = [f"| {level_name} | " + " | ".join(display(result, m) for m in methods) + " |", "|---|" + "---:|" * len(methods)]
    for label, chosen in rows:
        lines.append(f"| {label} | " + " | ".join(_pct(evidence.level(m, chosen)) for m in methods) + " |")
    others = [m for m in methods if m != "direct"]
    lines += ["", "Paired difference to DirectTest, points (95% interval over photos; * significant at 5%):", "",
              f"| {level_name} | " + " | ".join(display(result, m) for m in others) + " |", "|---|" + "---:|" * len(others)]
    for label, chosen in rows:
        lines.append(f"| {label} | " + " | ".join(_pct(evidence.gain(m, "direct", chosen), signed=True)
                                                  for m in others) + " |")
    return "\n".join(lines)


def top1_table(result: dict, evidence: Evidence, methods: list[str]) -> str:
    """Real top-1 accuracy on the labelled photos only, JPEG family."""
    sets = ["clean", *family_sets(result, "jpeg")]
    lines = ["| set | " + " | ".join(display(result, m) for m in methods) + " |", "|---|" + "---:|" * len(methods)]
    for name in sets:
        lines.append(f"| {name} | " + " | ".join(_pct(evidence.top1(m, [name])) for m in methods) + " |")
    return "\n".join(lines)


SEEDS = ("afd", "afd_seed1", "afd_seed2")
TAP_STUDY = ("afd_tap_stem_conv", "afd", "afd_tap_stage1", "afd_tap_stage2")  # shallow to deep
TABLE_I_QUALITIES = (25, 15, 7)


def tap_table(result: dict, evidence: Evidence) -> str:
    """Paper Table I: AFD at each tap, agreement and its paired gain over DirectTest."""
    taps = [m for m in TAP_STUDY if evidence.has(m)]
    sets = [s for s in family_sets(result, "jpeg") if set_level(s) in TABLE_I_QUALITIES]
    label = {m: f"{display(result, m)} (`{result['taps'].get(m, '?')}`)" for m in taps}
    lines = ["| QF | DirectTest | " + " | ".join(label[m] for m in taps) + " |", "|---|---:|" + "---:|" * len(taps)]
    for name in sets:
        cells = [f"{_pct(evidence.level(m, [name]))}, gain {_pct(evidence.gain(m, 'direct', [name]), signed=True)}"
                 for m in taps]
        lines.append(f"| {set_level(name)} | {_pct(evidence.level('direct', [name]))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_table(result: dict, evidence: Evidence) -> str:
    """AFD trained from each seed: its JPEG-average gain over DirectTest."""
    seeds = [m for m in SEEDS if evidence.has(m)]
    jpeg = family_sets(result, "jpeg")
    gains = [evidence.gain(m, "direct", jpeg) for m in seeds]
    lines = ["| model | gain over DirectTest, JPEG Avg (points) |", "|---|---:|"]
    lines += [f"| {display(result, m)} | {_pct(g, signed=True)} |" for m, g in zip(seeds, gains)]
    values = [100 * g.value for g in gains]
    lines.append(f"| mean ± sd over {len(seeds)} seeds | {np.mean(values):+.1f} ± {np.std(values, ddof=1):.1f} |")
    return "\n".join(lines)


def _verdict(estimate: Estimate, seeds: list[Estimate] | None = None) -> str:
    """confirmed (significantly > 0), refuted (significantly < 0), else not confirmed; a claim about
    AFD whose sign flips across seeds is not confirmed whatever one seed says."""
    if seeds and len({g.value > 0 for g in seeds}) > 1:
        return "not confirmed (the sign flips across seeds)"
    if estimate.significant:
        return "confirmed" if estimate.value > 0 else "refuted"
    return "not confirmed (not significant)"


def claims(result: dict, evidence: Evidence) -> list[str]:
    """Each claim of the paper this backbone's data can test, with its verdict and the paired
    difference it rests on (agreement points, 95% interval over photos)."""
    out = []
    jpeg, multi = family_sets(result, "jpeg"), family_sets(result, "multi")
    seeds = [m for m in SEEDS if evidence.has(m)]

    def claim(text: str, estimate: Estimate, seed_estimates: list[Estimate] | None = None) -> None:
        out.append(f"- {text}: **{_verdict(estimate, seed_estimates)}** ({_pct(estimate, signed=True)})")

    for family, sets in (("JPEG QF", jpeg), ("CT", multi)):
        for name in sets:
            seeded = [m for m in seeds if name in evidence.outcomes[m]]  # seeds run on study_families only
            claim(f"AFD > DirectTest at {family} {set_level(name)}", evidence.gain("afd", "direct", [name]),
                  [evidence.gain(m, "direct", [name]) for m in seeded] if len(seeded) > 1 else None)
    for baseline in (m for m in result["methods"] if result.get("kinds", {}).get(m, "afd") != "afd"):
        if evidence.has(baseline):
            claim(f"AFD > {display(result, baseline)} (JPEG Avg)", evidence.gain("afd", baseline, jpeg))
    if evidence.has("afd_image_blocks", "fe_net"):
        claim("Table II: DCT FDM > image-block FDM (JPEG Avg)", evidence.gain("afd", "afd_image_blocks", jpeg))
        claim("Table II: image-block FDM > no FDM (JPEG Avg)", evidence.gain("afd_image_blocks", "fe_net", jpeg))
    if evidence.has("afd_shuffled_dct"):
        claim("Table III: rearranged > shuffled DCT (JPEG Avg)", evidence.gain("afd", "afd_shuffled_dct", jpeg))
    table_i = [s for s in jpeg if set_level(s) in TABLE_I_QUALITIES]
    if table_i:
        for tap in (m for m in TAP_STUDY if m != "afd" and evidence.has(m)):  # paper: D2 beats D1, D3, D4
            claim(f"Table I: AFD at the backbone's tap > {display(result, tap)} "
                  f"(QF {'/'.join(map(str, TABLE_I_QUALITIES))} Avg)", evidence.gain("afd", tap, table_i))
    if len(jpeg) > 1:
        claim(f"the gain over DirectTest grows as QF falls (QF {set_level(jpeg[-1])} vs {set_level(jpeg[0])})",
              evidence.gain_change("afd", "direct", [jpeg[-1]], [jpeg[0]]))
    if len(multi) > 1:
        claim(f"the gain over DirectTest grows with CT (CT {set_level(multi[-1])} vs {set_level(multi[0])})",
              evidence.gain_change("afd", "direct", [multi[-1]], [multi[0]]))
    change = evidence.gain("afd", "direct", ["clean"]).scaled(100)
    nearly = "confirmed" if change.low > -2 and change.high < 2 else (
        "refuted" if change.high < -2 else "not confirmed")
    out.append(f"- Table X: clean images nearly unchanged (agreement within 2 points of DirectTest): "
               f"**{nearly}** ({change.value:+.1f} [{change.low:.1f}, {change.high:.1f}])")
    return out


def backbone_section(result: dict, images: dict, training: dict[str, dict], figures_dir: Path,
                     figures_link: str) -> str:
    """Training check, Tables V, VI, IX (with intervals and paired tests), top-1 on the labelled
    photos, II/III, the seeds, X and the paper's claims for one backbone, plus its figures."""
    name = result["backbone"]
    metric = headline_metric(result)
    evidence = Evidence(images)
    weights = "ImageNet weights" if result["pretrained"] else "RANDOM weights (no weights file given): numbers are meaningless"
    others = {*SEEDS, *TAP_STUDY} - {"afd"}  # shown in their own tables
    main = [m for m in result["methods"] if m not in others]
    parts = [
        f"## {name} (tap `{result['tap']}`, {weights}; native resolution {result.get('native_resolution', '?')} px, "
        f"evaluated at 224 like ImageNet-C)",
        f"Measured on {result['data']['description']}: {result['data']['images']} images per set from "
        f"{evidence.bootstrap.photos} photos. Headline metric: {METRIC_TITLES[metric]}. Intervals: 95%, "
        f"bootstrap over photos ({evidence.bootstrap.weights.shape[0]} resamples); differences are paired "
        "(same images).",
        "### Training: each method against doing nothing (last tenth of training, same batches)",
        training_table(result, training),
    ]
    for family, codec in CODECS.items():
        if not family_sets(result, family):
            continue
        title = codec.table_title
        figure = f"{name}_{family}_{metric}.png"
        plot_family(result, family, metric, figures_dir / figure)
        methods = _evaluated_on(result, main, family_sets(result, family))
        table = (interval_table(result, evidence, family, methods) if metric == "agreement"
                 else family_table(result, family, metric, methods))
        parts += [f"### {title}, {METRIC_TITLES[metric]}", table, f"![{title}]({figures_link}/{figure})"]
    if evidence.labelled and metric == "agreement":
        parts += [f"### Top-1 accuracy (%) on the {result['data']['labelled']} labelled images only",
                  top1_table(result, evidence, main)]
    for secondary in ("kl", "feature_mse"):
        parts += [f"### {CODECS['jpeg'].table_title}, {METRIC_TITLES[secondary]} (mean)",
                  family_table(result, "jpeg", secondary, main)]
    ablation_ii = [m for m in ("direct", "fe_net", "afd_image_blocks", "afd") if m in result["methods"]]
    ablation_iii = [m for m in ("direct", "afd_shuffled_dct", "afd") if m in result["methods"]]
    if len(ablation_ii) > 2:
        parts += ["### Table II: FDM from the DCT vs from image blocks vs none (JPEG)",
                  family_table(result, "jpeg", metric, ablation_ii)]
    if len(ablation_iii) > 2:
        parts += ["### Table III: rearranged vs shuffled DCT coefficients (JPEG)",
                  family_table(result, "jpeg", metric, ablation_iii)]
    if sum(evidence.has(m) for m in TAP_STUDY) > 1:
        parts += ["### Table I: where AFD plugs in (JPEG; agreement %, and paired gain over DirectTest)",
                  tap_table(result, evidence)]
    if evidence.has(*SEEDS[:2]):
        parts += ["### AFD over seeds (initialisation and batch order)", seeds_table(result, evidence)]
    parts += ["### Table X: on uncompressed images", clean_table(result)]
    if metric == "agreement":
        parts += ["### The paper's claims on this data (agreement, paired, 95%)", "\n".join(claims(result, evidence))]
    return "\n\n".join(parts)


def write_report(results: list[dict], images: dict[str, dict], training: dict[str, dict[str, dict]],
                 efficiency: dict, path: Path, figures_dir: Path) -> None:
    """The whole report: one section per backbone (its per-image outcomes: `images[backbone]`, its
    training summaries: `training[backbone]`), then the efficiency table (Table VII)."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    link = figures_dir.relative_to(path.parent).as_posix() if figures_dir.is_relative_to(path.parent) else str(figures_dir)
    parts = [
        "# AFD-Module: reproduction report",
        "Generated by `dvc repro` (stage `report`) from `metrics/`; every number below is in those files "
        "or computed from their per-image outcomes (`metrics/eval/*.images.json`). The evaluation photos "
        "ship as JPEG files (about quality 75-85, like ImageNet's own): the shipped file is the clean "
        "reference, as in ImageNet-C.",
    ]
    parts += [backbone_section(result, images[result["backbone"]], training[result["backbone"]], figures_dir, link)
              for result in results]
    for backbone, measured in efficiency.items():
        parts += [f"## Table VII: efficiency at the {backbone} tap", efficiency_markdown(measured)]
    with atomic_path(path) as tmp:
        tmp.write_text("\n\n".join(parts) + "\n")
