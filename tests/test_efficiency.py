import pytest
import torch
from torch import nn

from afd.model.efficiency import count_macs, count_parameters, measure_latency
from afd.ops.benchmark import compare_efficiency, efficiency_ratios, format_table


def test_macs_of_a_conv_are_counted_exactly():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.rand(1, 3, 10, 12)
    assert count_macs(conv, (x,)) == 3 * 8 * 9 * 10 * 12
    assert count_parameters(conv) == 3 * 8 * 9


def test_macs_of_resnet50_match_the_paper():
    from afd.model.backbones import build_backbone

    macs = count_macs(build_backbone("resnet50", "random"), (torch.rand(1, 3, 224, 224),))
    assert macs / 1e9 == pytest.approx(4.1, abs=0.05)  # the paper's Table VII: 4.12 G "FLOPs"


def test_the_paper_size_module_costs_what_the_paper_gives_at_resnet50s_tap():
    """Table VII: 0.11 M parameters and 0.36 GMACs, fused, on ResNet-50's D2 feature (64 x 112 x 112)."""
    from afd.model.afd_module import AFD_SIZES, AFDConfig, AFDModule
    from afd.model.repconv import reparameterize

    inputs = (torch.rand(1, 64, 112, 112), torch.rand(1, 3, 224, 224))
    paper = reparameterize(AFDModule(AFDConfig(feature_channels=64, widths=AFD_SIZES["paper"]))).eval()
    # the deploy form stores each upsampling's 1x1 weights four times (once per pixel a pixel
    # shuffle spreads them over); the paper counts distinct weights
    copies = sum(p.numel() * 3 // 4 for up in (paper.fe.up1, paper.fe.up2) for p in up.project.parameters())
    assert (count_parameters(paper) - copies) / 1e6 == pytest.approx(0.11, rel=0.10)
    assert count_macs(paper, inputs) / 1e9 == pytest.approx(0.36, rel=0.10)
    small = reparameterize(AFDModule(AFDConfig(feature_channels=64))).eval()
    assert count_macs(small, inputs) < 0.6 * count_macs(paper, inputs)


def test_latency_statistics_are_ordered_and_restore_threads():
    threads = torch.get_num_threads()
    latency = measure_latency(nn.Conv2d(3, 3, 3), (torch.rand(1, 3, 32, 32),), threads=1, warmup=1, repeats=5)
    assert 0 < latency.median_ms <= latency.p90_ms
    assert latency.repeats == 5 and latency.threads == 1
    assert torch.get_num_threads() == threads


def test_efficiency_comparison_has_every_method_and_consistent_ratios():
    rows = compare_efficiency("efficientnet_lite0", image_size=64, warmup=1, repeats=2)
    roles = [row.role for row in rows]
    assert roles == ["backbone", "afd_unfused", "afd_fused", "backbone_with_afd", "backbone_with_afd_unfused",
                     "afd_paper_unfused", "afd_paper_fused", "ddp", "arcnn"]
    by_role = {row.role: row.efficiency for row in rows}
    assert by_role["afd_fused"].params < by_role["afd_unfused"].params
    assert by_role["afd_fused"].macs < by_role["afd_unfused"].macs
    # the plugged classifier does the backbone's work plus the fused AFD's
    assert by_role["backbone_with_afd"].macs == by_role["backbone"].macs + by_role["afd_fused"].macs
    assert by_role["arcnn"].macs > 10 * by_role["afd_fused"].macs
    assert by_role["afd_paper_fused"].macs > 1.5 * by_role["afd_fused"].macs
    ratios = efficiency_ratios(rows)
    expected = by_role["afd_unfused"].latency.median_ms / by_role["afd_fused"].latency.median_ms
    assert ratios["fusing_speedup"] == pytest.approx(expected)
    table = format_table([row.to_dict() for row in rows])
    assert table.count("\n") == len(rows) + 1 and "AFD (fused)" in table


def test_the_whole_classifiers_are_timed_on_executorch_in_the_same_run(tmp_path):
    """Backbone alone, with the fused, the multi-branch and the int8 AFD, lowered and timed on
    ExecuTorch interleaved with the eager rows; the ratios and the targets' verdicts follow."""
    from afd.ops.benchmark import EXECUTORCH, efficiency_markdown, efficiency_record, target_verdicts

    rows = compare_efficiency("efficientnet_lite0", image_size=64, warmup=1, repeats=2, executorch_dir=tmp_path)
    device = {row.role: row for row in rows if row.runtime == EXECUTORCH}
    assert list(device) == ["direct", "afd", "afd_unfused", "afd_int8"]
    assert all(row.efficiency.latency.median_ms > 0 for row in device.values())
    eager = {row.role: row for row in rows if row.runtime != EXECUTORCH}
    assert device["afd"].efficiency.macs == eager["backbone_with_afd"].efficiency.macs  # the same classifier
    ratios = efficiency_ratios(rows)
    expected = device["afd"].efficiency.latency.median_ms / device["direct"].efficiency.latency.median_ms - 1
    assert ratios["executorch.afd_overhead"] == pytest.approx(expected)
    assert {"executorch.fusing_speedup", "executorch.int8_speedup"} <= set(ratios)
    verdicts = target_verdicts(ratios)
    assert any(v.startswith("the fused AFD adds at most 15% to the backbone on ExecuTorch: ") for v in verdicts)
    record = efficiency_record(rows, "test", threads=1)
    assert record["ratios"] == ratios and record["targets"] == verdicts
    assert set(record["devices"]) == {"eager", "executorch"}  # where each runtime's column ran
    markdown = efficiency_markdown(record)
    assert "| backbone + AFD (fused, int8) |" in markdown and "| AFD (fused) |" in markdown
    assert "Measured on: eager: " in markdown and "; executorch: " in markdown and "XNNPACK" in markdown
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".pte"] * 4


def test_a_target_says_met_or_by_how_much_it_was_missed():
    from afd.ops.benchmark import Target

    overhead = Target("executorch.afd_overhead", True, 0.15, "overhead")
    assert overhead.verdict({"executorch.afd_overhead": 0.1}).startswith("overhead: met")
    assert overhead.verdict({"executorch.afd_overhead": 0.4}).startswith("overhead: missed by 0.250")
    assert Target("x", False, 1.5, "speedup").verdict({"x": 1.2}).startswith("speedup: missed by 0.300")
    assert overhead.verdict({}) is None


def test_device_benchmark_lowers_a_dynamic_batch_program_at_the_example_shape_and_times_it(tmp_path):
    """Registered programs keep a dynamic batch dimension; the device benchmark fixes it at batch 1
    and times each program with methods loaded under its own thread pool, repeatedly."""
    from afd.ops.benchmark import benchmark_executorch
    from afd.ops.export import static_program

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    batch = torch.export.Dim("batch", min=2)
    dynamic = torch.export.export(model, (torch.rand(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    example = torch.rand(1, 3, 32, 32)
    assert dynamic.range_constraints and not static_program(dynamic, example).range_constraints
    assert torch.allclose(static_program(dynamic, example).module()(example), model(example), atol=1e-6)
    for _ in range(2):  # a second round re-creates the pool the first round's methods were loaded with
        rows = benchmark_executorch({"afd": dynamic}, example, tmp_path, threads=1, warmup=1, repeats=3)
        assert [row["role"] for row in rows] == ["afd"] and 0 < rows[0]["median_ms"] <= rows[0]["p90_ms"]
