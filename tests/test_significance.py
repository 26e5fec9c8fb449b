"""Intervals over photos, paired differences, and the claims' verdicts (afd.model.significance, afd.ops.report)."""

from pathlib import Path

import numpy as np
import pytest

from afd.model.significance import PhotoBootstrap
from afd.ops.report import claims

REPO = Path(__file__).resolve().parents[1]


def test_views_of_one_photo_are_resampled_together():
    """Two photos, 50 views each, one always right, one always wrong: as 100 independent images the
    interval would be about +-10 points; resampling photos it is [0, 1]."""
    photos = ["a"] * 50 + ["b"] * 50
    values = np.array([1.0] * 50 + [0.0] * 50)
    estimate = PhotoBootstrap(photos).estimate(values)
    assert estimate.value == 0.5 and (estimate.low, estimate.high) == (0.0, 1.0)
    independent = PhotoBootstrap([str(i) for i in range(100)]).estimate(values)
    assert 0.35 < independent.low < 0.45 and 0.55 < independent.high < 0.65


def test_a_paired_difference_is_significant_only_when_the_photos_support_it():
    photos = [str(i) for i in range(120)]
    better, worse = np.ones(120), np.ones(120)
    worse[:18] = 0  # 18 of 120 photos flip
    bootstrap = PhotoBootstrap(photos)
    gain = bootstrap.estimate(better - worse)
    assert gain.value == pytest.approx(0.15) and gain.significant and gain.p_value < 0.01
    assert 0.08 < gain.low < gain.value < gain.high < 0.23
    none = bootstrap.estimate(better - better)
    assert not none.significant and (none.low, none.high) == (0.0, 0.0)
    mixed = bootstrap.estimate(np.r_[np.ones(3), np.zeros(117)] - np.r_[np.zeros(3), np.ones(2), np.zeros(115)])
    assert not mixed.significant  # 3 photos flip one way, 2 the other
    # the same photos give the same interval
    assert PhotoBootstrap(photos).estimate(better - worse) == gain


def _images(agree: dict[str, dict[str, str]]) -> dict:
    count = len(next(iter(next(iter(agree.values())).values())))
    return {"images": [{"id": f"e{i:05d}", "photo": f"p{i}", "label": None} for i in range(count)],
            "outcomes": {method: {name: {"agree": a, "correct": "-" * count, "kl": [0.0] * count}
                                  for name, a in sets.items()} for method, sets in agree.items()}}


def _result(methods: list[str]) -> dict:
    """The parts of an evaluation record (afd.ops.pipeline.evaluation_record) the claims read."""
    from afd.model.methods import method_titles
    from afd.ops.params import load_params

    sets = ["clean", "jpeg_q25", "jpeg_q7", "multi_ct1", "multi_ct5"]
    return {"methods": methods, "grid": {m: {s: {} for s in sets} for m in methods},
            "titles": method_titles(load_params(str(REPO / "params.yaml")), methods)}


def test_claims_are_confirmed_refuted_or_not_confirmed_from_paired_outcomes():
    n = 100
    same, most, fewer = "1" * n, "1" * 80 + "0" * 20, "1" * 60 + "0" * 40
    direct = {"clean": same, "jpeg_q25": most, "jpeg_q7": fewer, "multi_ct1": most, "multi_ct5": most}
    afd = {**direct, "jpeg_q7": most, "multi_ct5": fewer}  # +20 at QF 7, -20 at CT 5
    lines = claims(_result(["direct", "afd"]), _evidence({"direct": direct, "afd": afd}))
    verdict = {line.split(": **")[0][2:]: line.split("**")[1] for line in lines}
    assert verdict["AFD > DirectTest at JPEG QF 7"] == "confirmed"
    assert verdict["AFD > DirectTest at JPEG QF 25"] == "not confirmed (not significant)"
    assert verdict["AFD > DirectTest at CT 5"] == "refuted"
    assert verdict["the gain over DirectTest grows as QF falls (QF 7 vs 25)"] == "confirmed"
    assert verdict["Table X: clean images nearly unchanged (agreement within 2 points of DirectTest)"] == "confirmed"

    # a second seed that loses at QF 7: the ranking flips, so the claim is not confirmed (the seeds
    # are study methods: evaluated on the JPEG sets only)
    seed1 = {name: a for name, a in {**afd, "jpeg_q7": "0" * 10 + "1" * 50 + "0" * 40}.items()
             if not name.startswith("multi")}
    lines = claims(_result(["direct", "afd", "afd_seed1"]),
                   _evidence({"direct": direct, "afd": afd, "afd_seed1": seed1}))
    assert "- AFD > DirectTest at JPEG QF 7: **not confirmed (the sign flips across seeds)**" in "\n".join(lines)


def _evidence(agree):
    from afd.ops.report import Evidence

    return Evidence(_images(agree))


def test_table_i_claims_compare_the_backbones_tap_with_each_other_tap_on_table_i_qualities():
    """The paper's Table I: AFD at the chosen tap (D2) beats the shallower and deeper ones. Only
    QF 25/15/7 count: a deeper tap that loses at QF 7 is a confirmed claim, one that wins a refuted one."""
    n = 100
    most, fewer = "1" * 80 + "0" * 20, "1" * 60 + "0" * 40
    direct = {"clean": "1" * n, "jpeg_q25": most, "jpeg_q7": fewer, "multi_ct1": most, "multi_ct5": most}
    afd = {**direct, "jpeg_q7": most}
    deeper = {"clean": "1" * n, "jpeg_q25": most, "jpeg_q7": fewer}  # no gain where AFD gains 20
    better = {"clean": "1" * n, "jpeg_q25": "1" * n, "jpeg_q7": "1" * n}
    lines = claims(_result(["direct", "afd", "afd_tap_stage2", "afd_tap_stem_conv"]),
                   _evidence({"direct": direct, "afd": afd, "afd_tap_stage2": deeper, "afd_tap_stem_conv": better}))
    verdict = {line.split(": **")[0][2:]: line.split("**")[1] for line in lines}
    assert verdict["Table I: AFD at the backbone's tap > AFD after stage 2 (QF 25/15/7 Avg)"] == "confirmed"
    assert verdict["Table I: AFD at the backbone's tap > AFD at stem conv (QF 25/15/7 Avg)"] == "refuted"
    assert not any("stage 1" in line for line in lines)  # not trained: no claim
