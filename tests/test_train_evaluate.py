"""Training (resume, determinism, learning) and the evaluation grid's metrics, on tiny real data."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from afd.data.codecs import jpeg
from afd.data.images import load_image, random_crop, to_batch
from afd.data.samples import sample_photos
from afd.errors import ConfigError, TrainingError
from afd.model.backbones import build_backbone
from afd.model.evaluate import Batch, evaluate_grid, evaluate_set, family_averages, grid_metrics
from afd.model.methods import Method
from afd.model.train import PatchPairs, TrainConfig, alive_fraction, check_learned, train

METHODS = {
    "afd": {"kind": "afd", "fdm_source": "dct"},
    "ddp": {"kind": "ddp"},
    "arcnn": {"kind": "arcnn"},
}


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("efficientnet_lite0")


def config(**overrides):
    values = dict(iterations=6, batch_size=2, crop=32, lr=1e-3, lr_drop_at=4, lr_after_drop=1e-4,
                  checkpoint_every=2, seed=0, log_every=1)
    values.update(overrides)
    return TrainConfig(**values)


def run(method_name, backbone, patch_files, state_path, cfg, on_log=None):
    torch.manual_seed(0)
    method = Method.from_params(method_name, METHODS)
    module = method.build(backbone, backbone.default_tap)
    classifier = method.classifier(backbone, module, backbone.default_tap)
    result = train(classifier, module, method.loss, method.identity_loss, PatchPairs(*patch_files), cfg, state_path,
                   identity={"name": method_name}, on_log=on_log, progress=False)
    return module, result


def test_batches_are_a_function_of_seed_and_step(patch_files):
    data = PatchPairs(*patch_files)
    a, b = data.batch(3, seed=0, batch_size=4, crop=32), data.batch(3, seed=0, batch_size=4, crop=32)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(data.batch(4, 0, 4, 32)[0], a[0])
    clean, degraded = a
    assert clean.shape == degraded.shape == (4, 3, 32, 32)
    assert not torch.equal(clean, degraded)  # the degraded side really is compressed


@pytest.mark.parametrize("method_name, amp", [("afd", "off"), ("arcnn", "off"), ("afd", "fp16")])
def test_killed_training_resumes_to_the_same_weights(method_name, amp, backbone, patch_files, tmp_path):
    """Also in mixed precision: fp16's gradient scaler is part of the resumed state."""
    uninterrupted, full = run(method_name, backbone, patch_files, tmp_path / "a.pt", config(amp=amp))

    class Killed(Exception):
        pass

    def kill_at_step_3(step, loss):
        if step == 3:  # after the checkpoint of step 2, before the one of step 4
            raise Killed

    with pytest.raises(Killed):
        run(method_name, backbone, patch_files, tmp_path / "b.pt", config(amp=amp), on_log=kill_at_step_3)
    resumed, result = run(method_name, backbone, patch_files, tmp_path / "b.pt", config(amp=amp))
    assert result.resumed_from == 2
    for (name, p), q in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), name
    assert result.losses == full.losses  # the loss curve survives the restart too
    assert result.identity_losses == full.identity_losses


def test_mixed_precision_trains_in_another_precision(backbone, patch_files, tmp_path):
    full, full_result = run("afd", backbone, patch_files, tmp_path / "a.pt", config())
    for amp in ("bf16", "fp16"):
        mixed, result = run("afd", backbone, patch_files, tmp_path / f"{amp}.pt", config(amp=amp))
        assert all(np.isfinite(loss) for _, loss in result.losses)
        assert result.losses != full_result.losses  # the forward pass really ran in 16 bits
        assert all(p.dtype == torch.float32 for p in mixed.parameters())  # the weights stay float32


def test_the_cost_of_a_step_and_the_whole_run_is_known_after_the_first_steps(backbone, patch_files, tmp_path, caplog):
    announced_at = []

    def note_announcement(step, loss):
        if not announced_at and any("s/step" in record.getMessage() for record in caplog.records):
            announced_at.append(step)

    with caplog.at_level("INFO", logger="afd.model.train"):
        _, result = run("afd", backbone, patch_files, tmp_path / "s.pt", config(iterations=10), on_log=note_announcement)
    assert announced_at == [6]  # one warm-up step, five timed ones: then, not at the end
    (line,) = [record.getMessage() for record in caplog.records if "s/step" in record.getMessage()]
    assert f"{result.seconds_per_step:.3f} s/step over steps 2-6: 10 steps projected at " in line and "on cpu" in line
    assert result.projected_seconds == pytest.approx(10 * result.seconds_per_step)
    assert 0 < result.seconds_per_step < result.seconds  # measured, not made up
    assert set(result.timing()) == {"seconds", "seconds_per_step", "projected_seconds"}


def test_a_run_resumed_inside_a_logging_window_logs_the_same_curve(backbone, patch_files, tmp_path):
    """Logged every 3 steps, checkpointed every 2: the checkpoint of step 2 holds two of the
    window's three losses, which the resumed run must average with step 3's."""
    cfg = config(log_every=3)
    _, full = run("afd", backbone, patch_files, tmp_path / "a.pt", cfg)

    def kill_at_step_3(step, loss):
        raise KeyboardInterrupt  # the first log is at step 3, after the checkpoint of step 2

    with pytest.raises(KeyboardInterrupt):
        run("afd", backbone, patch_files, tmp_path / "b.pt", cfg, on_log=kill_at_step_3)
    _, resumed = run("afd", backbone, patch_files, tmp_path / "b.pt", cfg)
    assert resumed.resumed_from == 2 and [step for step, _ in full.losses] == [3, 6]
    assert resumed.losses == full.losses and resumed.identity_losses == full.identity_losses


def test_a_damaged_resume_state_is_set_aside_and_training_starts_afresh(backbone, patch_files, tmp_path, caplog):
    fresh, expected = run("afd", backbone, patch_files, tmp_path / "fresh.pt", config())
    for damage in (b"PK\x03\x04 truncated", b""):
        state = tmp_path / "state.pt"
        state.write_bytes(damage)
        with caplog.at_level("WARNING", logger="afd.model.train"):
            module, result = run("afd", backbone, patch_files, state, config())
        assert result.resumed_from == 0 and result.losses == expected.losses
        assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), module.state_dict().values()))
        assert (tmp_path / "state.pt.damaged").read_bytes() == damage
        warning = [r.getMessage() for r in caplog.records if "damaged resume state" in r.getMessage()][-1]
        assert warning.startswith(f"{state}: damaged resume state (") and "\n" not in warning


def test_a_checkpoint_of_another_configuration_is_not_resumed(backbone, patch_files, tmp_path):
    run("afd", backbone, patch_files, tmp_path / "s.pt", config(iterations=2))
    _, result = run("afd", backbone, patch_files, tmp_path / "s.pt", config(iterations=4, lr=5e-4))
    assert result.resumed_from == 0


def test_a_checkpoint_of_other_code_or_other_numerics_is_not_resumed(backbone, patch_files, tmp_path, monkeypatch):
    """DVC re-runs training when its code changes; the finished checkpoint of the old code must not
    then be taken as the result (nor one computed with another thread count)."""
    import afd.model.train

    run("afd", backbone, patch_files, tmp_path / "s.pt", config(iterations=2))
    assert run("afd", backbone, patch_files, tmp_path / "s.pt", config(iterations=2))[1].resumed_from == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads != 1 else 2)
    try:
        assert run("afd", backbone, patch_files, tmp_path / "s.pt", config(iterations=2))[1].resumed_from == 0
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(afd.model.train, "_code_digest", lambda: "the code changed")
    assert run("afd", backbone, patch_files, tmp_path / "s.pt", config(iterations=2))[1].resumed_from == 0


def test_a_checkpoint_resumes_on_the_same_data_elsewhere_but_not_on_changed_data(backbone, patch_files, tmp_path):
    """Like a `dvc pull` into another checkout: the same files in a new folder, with new mtimes,
    resume the interrupted run; one patch's content changed starts it over."""
    clean, degraded = patch_files

    def stop_at_step_3(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run("afd", backbone, patch_files, tmp_path / "s.pt", config(), on_log=stop_at_step_3)

    def copy(paths):
        (tmp_path / "pulled").mkdir(exist_ok=True)
        return [Path(shutil.copy(path, tmp_path / "pulled" / path.name)) for path in paths]

    pulled = (copy(clean), {name: copy(paths) for name, paths in degraded.items()})
    _, result = run("afd", backbone, pulled, tmp_path / "s.pt", config())
    assert result.resumed_from == 2

    Image.open(pulled[0][0]).rotate(90).save(pulled[0][0])
    _, result = run("afd", backbone, pulled, tmp_path / "s.pt", config())
    assert result.resumed_from == 0


def test_training_reduces_the_feature_error(backbone, patch_files, tmp_path):
    method = Method.from_params("afd", METHODS)
    held_out = PatchPairs(*patch_files).batch(10**6, seed=1, batch_size=6, crop=64)

    def feature_error(module):
        classifier = method.classifier(backbone, module.eval(), backbone.default_tap)
        with torch.no_grad():
            return method.loss(classifier, *held_out).item()

    torch.manual_seed(0)
    untrained = feature_error(method.build(backbone, backbone.default_tap))
    trained, _ = run("afd", backbone, patch_files, tmp_path / "s.pt",
                     config(iterations=40, batch_size=4, crop=64, lr=3e-3, lr_drop_at=40, checkpoint_every=40))
    assert feature_error(trained) < 0.95 * untrained


@pytest.mark.parametrize("method_name", ["afd", "ddp", "arcnn"])
def test_the_identity_loss_is_the_untrained_methods_loss_on_the_same_batches(method_name, backbone, patch_files, tmp_path):
    """An untrained method is the identity (zero-initialised output; ARCNN's starts near
    it): its loss is doing nothing's, so a method that never moves from there has ratio 1 and is refused."""
    _, result = run(method_name, backbone, patch_files, tmp_path / "s.pt", config(lr=1e-30, lr_after_drop=1e-30))
    summary = result.summary()
    if method_name == "arcnn":
        assert summary["loss_ratio"] == pytest.approx(1.0, abs=1e-2)
    else:
        assert result.losses == result.identity_losses and summary["loss_ratio"] == 1.0
    assert summary["final_identity_loss"] > 0
    ratio = r"1\.00\d\d" if method_name == "arcnn" else r"1\.0000"
    with pytest.raises(TrainingError, match=f"method '{method_name}' did not learn: its final loss is {ratio} "):
        check_learned(method_name, summary["loss_ratio"], 1.0, max_loss_ratio=0.99, min_alive=0.5)


def test_a_method_that_learned_passes_and_dead_channels_are_refused(backbone, patch_files, tmp_path):
    method = Method.from_params("ddp", METHODS)
    module, result = run("ddp", backbone, patch_files, tmp_path / "s.pt",
                         config(iterations=40, batch_size=4, crop=64, lr=1e-3, lr_drop_at=40, log_every=5))
    classifier = method.classifier(backbone, module.eval(), backbone.default_tap)
    batch = PatchPairs(*patch_files).batch(10**6, seed=1, batch_size=4, crop=64)
    alive = alive_fraction(module, lambda: method.loss(classifier, *batch))
    assert result.summary()["loss_ratio"] < 0.99 and alive > 0.5
    check_learned("ddp", result.summary()["loss_ratio"], alive, max_loss_ratio=0.99, min_alive=0.5)

    with torch.no_grad():  # every first-layer channel negative everywhere: the ReLUs pass nothing
        module.body[0].bias.fill_(-1e6)
    dead = alive_fraction(module, lambda: method.loss(classifier, *batch))
    assert dead <= 0.5  # the first ReLU's 64 of 128 hidden channels are dead, and the second's follow
    with pytest.raises(TrainingError, match=r"method 'ddp' did not learn: only \d+% of its hidden channels are alive"):
        check_learned("ddp", 0.5, dead, max_loss_ratio=0.99, min_alive=0.6)


@pytest.mark.parametrize("bad", [dict(iterations=0), dict(crop=30), dict(lr=-1.0), dict(batch_size=1.5)])
def test_bad_training_parameters_are_named(bad):
    with pytest.raises(ConfigError, match=next(iter(bad)) if "lr" not in bad else "learning rate"):
        config(**bad)


def test_unknown_method_and_kind_are_named():
    with pytest.raises(ConfigError, match="unknown method 'vit'"):
        Method.from_params("vit", METHODS)
    with pytest.raises(ConfigError, match="methods.x.kind"):
        Method.from_params("x", {"x": {"kind": "gan"}})


def evaluation_batches(backbone, quality):
    photo = load_image(sample_photos()["coffee"])
    rng = np.random.default_rng(1)
    crops = [random_crop(photo, 224, rng) for _ in range(4)]
    clean = to_batch(crops)
    degraded = clean if quality is None else to_batch([jpeg(c, quality) for c in crops])
    with torch.no_grad():
        labels = backbone(clean).argmax(dim=1).tolist()
    return [Batch(clean[:2], degraded[:2], labels[:2]), Batch(clean[2:], degraded[2:], labels[2:])]


def test_direct_test_on_clean_images_is_perfect_and_an_untrained_afd_changes_nothing(backbone):
    direct = Method.from_params("afd", METHODS).classifier(backbone, None, "stem")
    untrained = Method.from_params("afd", METHODS).classifier(
        backbone, Method.from_params("afd", METHODS).build(backbone, "stem").eval(), "stem")
    clean = evaluate_set(direct, {"direct": direct, "afd": untrained}, evaluation_batches(backbone, None))
    assert clean["direct"].metrics() == {"agreement": 1.0, "kl": 0.0, "feature_mse": 0.0, "top1": 1.0}
    compressed = evaluate_set(direct, {"direct": direct, "afd": untrained}, evaluation_batches(backbone, 5))
    assert compressed["direct"].metrics()["feature_mse"] > 0 and compressed["direct"].metrics()["kl"] > 0
    assert compressed["afd"] == compressed["direct"]  # image by image
    assert len(compressed["afd"].agree) == len(compressed["afd"].kl) == sum(len(b.clean) for b in
                                                                           evaluation_batches(backbone, 5))


def test_metrics_without_labels_and_family_averages(backbone):
    direct = Method.from_params("afd", METHODS).classifier(backbone, None, "stem")
    unlabelled = [Batch(b.clean, b.degraded, [None] * len(b.clean)) for b in evaluation_batches(backbone, 10)]
    grid = grid_metrics(evaluate_grid(direct, {"direct": direct},
                                      {"clean": evaluation_batches(backbone, None), "jpeg_q10": unlabelled,
                                       "jpeg_q50": evaluation_batches(backbone, 50)}, progress=False))
    assert "top1" not in grid["direct"]["jpeg_q10"] and "top1" in grid["direct"]["jpeg_q50"]
    averages = family_averages(grid)["direct"]
    assert set(averages) == {"jpeg"}
    expected = (grid["direct"]["jpeg_q10"]["kl"] + grid["direct"]["jpeg_q50"]["kl"]) / 2
    assert averages["jpeg"]["kl"] == pytest.approx(expected)
    assert grid["direct"]["jpeg_q10"]["kl"] > grid["direct"]["jpeg_q50"]["kl"]  # heavier JPEG drifts more


def test_the_clean_reference_is_computed_once_per_image_and_only_reused_for_the_same_images(backbone):
    from afd.model.evaluate import CleanReference

    direct = Method.from_params("afd", METHODS).classifier(backbone, None, "stem")
    batches = evaluation_batches(backbone, 10)
    calls = []
    original = backbone.forward_to_tap
    backbone.forward_to_tap = lambda images, tap: calls.append(tap) or original(images, tap)
    try:
        reference = CleanReference(direct)
        first = evaluate_set(direct, {"direct": direct}, batches, reference)
        clean_calls = len(calls)
        again = evaluate_set(direct, {"direct": direct}, batches, reference)
        assert again == first and len(calls) == clean_calls + len(batches)  # only the degraded images ran
        other = [Batch(b.clean.flip(-1), b.degraded, b.labels) for b in batches]  # other clean images
        flipped = evaluate_set(direct, {"direct": direct}, other, reference)
        assert len(calls) == clean_calls + len(batches) + 2 * len(batches)  # nothing reused, clean once
        before = len(calls)
        assert flipped == evaluate_set(direct, {"direct": direct}, other)  # as without any reference
        assert len(calls) == before + 2 * len(batches)  # no reference kept: still clean once per batch
    finally:
        backbone.forward_to_tap = original
