"""Training on DIV2K-C: feature MSE to the clean image's feature (pixel MSE for ARCNN), no labels.

Every batch is a pure function of (seed, step): which patches, which JPEG quality for each, where
the crop lies. Together with the model and Adam state saved every `checkpoint_every` steps, this
makes a killed run, re-run, end with exactly the weights of an uninterrupted one (on the same device).

Batches are drawn on the CPU and moved to the training device (`numerics.device`); on a GPU the
loss may be computed in mixed precision (`amp`). After its first steps a run says what a step costs
and what the whole run will take (`StepClock`), before most of the time is spent.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from afd.data.images import GRID, load_image
from afd.data.sets import load_set
from afd.errors import ConfigError, TrainingError, display_name, first_line
from afd.io import atomic_torch_save, file_sha256
from afd.model.determinism import AMP_DTYPES, X86_PINS, autocast

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """One profile of params.yaml (`profiles.<name>`), less the data-set size."""

    iterations: int
    batch_size: int
    crop: int
    lr: float
    lr_drop_at: int
    lr_after_drop: float
    checkpoint_every: int
    seed: int = 0
    log_every: int = 10
    amp: str = "off"  # numerics.amp: off, bf16 or fp16 (with a gradient scaler)

    def __post_init__(self):
        positive = ("iterations", "batch_size", "crop", "checkpoint_every", "log_every")
        for key in positive:
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ConfigError(f"training {key} must be a positive integer, got {getattr(self, key)!r}")
        if self.crop % GRID:
            raise ConfigError(f"training crop must be a multiple of {GRID} (the JPEG grid), got {self.crop}")
        if not (self.lr > 0 and self.lr_after_drop > 0):
            raise ConfigError(f"learning rates must be positive, got {self.lr} and {self.lr_after_drop}")
        if self.amp not in AMP_DTYPES:
            raise ConfigError(f"training amp must be one of {', '.join(AMP_DTYPES)}, got {self.amp!r}")

    @classmethod
    def from_profile(cls, profile: dict, seed: int) -> "TrainConfig":
        fields = {k: profile[k] for k in cls.__dataclass_fields__ if k in profile}
        return cls(**fields, seed=seed)

    def with_lr_scale(self, scale: float) -> "TrainConfig":
        """The same schedule with both learning rates times `scale` (a method's `lr_scale`)."""
        return dataclasses.replace(self, lr=self.lr * scale, lr_after_drop=self.lr_after_drop * scale)

    def lr_at(self, step: int) -> float:
        return self.lr if step < self.lr_drop_at else self.lr_after_drop


DECODED_CACHE_BYTES = 2 * 1024**3


class PatchPairs:
    """DIV2K-C: clean patches and their degraded versions at several qualities, read lazily.

    `batch(step, ...)` draws, from a generator seeded by (seed, step) alone, the patches, one
    degraded version each (mixing the qualities, as the paper does) and one grid-aligned crop.
    """

    def __init__(self, clean: Sequence[Path], degraded: dict[str, Sequence[Path]]):
        if not clean:
            raise ConfigError("no training patches")
        for name, paths in degraded.items():
            if len(paths) != len(clean):
                raise ConfigError(f"degraded set {name} has {len(paths)} patches, the clean set {len(clean)}")
        self.clean = list(clean)
        self.degraded = {name: list(paths) for name, paths in degraded.items()}
        self.set_names = sorted(self.degraded)
        self._decoded: dict[Path, torch.Tensor] = {}  # uint8 (3, H, W), up to DECODED_CACHE_BYTES
        self._cached_bytes = 0

    @classmethod
    def from_sets(cls, clean_dir: Path, degraded_dirs: dict[str, Path], mix_clean: bool) -> "PatchPairs":
        """The pairs of DIV2K-C's set folders (`afd.ops.layout.patch_sets`); with `mix_clean` (the
        profile's) the clean patches are drawn as inputs too, their own feature the target."""
        sets = {**degraded_dirs, "clean": clean_dir} if mix_clean else degraded_dirs
        return cls([path for _, path in load_set(clean_dir)],
                   {name: [path for _, path in load_set(directory)] for name, directory in sets.items()})

    def fingerprint(self) -> str:
        """Changes when the training data does: each file's set, name and content. Not its mtime
        or folder, so a checkpoint resumes after a `dvc pull` or in another checkout."""
        digest = hashlib.sha256()
        for name, paths in [("clean", self.clean), *((name, self.degraded[name]) for name in self.set_names)]:
            for path in paths:
                digest.update(f"{name}/{Path(path).name}:{file_sha256(path)}\n".encode())
        return digest.hexdigest()

    def batch(self, step: int, seed: int, batch_size: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        indices = torch.randint(len(self.clean), (batch_size,), generator=generator).tolist()
        versions = torch.randint(len(self.set_names), (batch_size,), generator=generator).tolist()
        clean, degraded = [], []
        for index, version in zip(indices, versions):
            a = self._pixels(self.clean[index])
            b = self._pixels(self.degraded[self.set_names[version]][index])
            top, left = self._crop_origin(a.shape[-2:], crop, generator)
            clean.append(a[:, top : top + crop, left : left + crop])
            degraded.append(b[:, top : top + crop, left : left + crop])
        return torch.stack(clean).float().div_(255.0), torch.stack(degraded).float().div_(255.0)

    def _pixels(self, path: Path) -> torch.Tensor:
        """The decoded patch as uint8 (3, H, W); kept in memory after its first use while the cache
        has room (the default profile's patches fit; the paper's 20,000 x 6 do not), so a step
        decodes each PNG or JPEG at most once."""
        pixels = self._decoded.get(path)
        if pixels is None:
            pixels = torch.from_numpy(np.asarray(load_image(path), dtype=np.uint8).copy()).permute(2, 0, 1)
            if self._cached_bytes + pixels.numel() <= DECODED_CACHE_BYTES:
                self._decoded[path] = pixels
                self._cached_bytes += pixels.numel()
        return pixels

    @staticmethod
    def _crop_origin(size, crop: int, generator: torch.Generator) -> tuple[int, int]:
        height, width = size
        if height < crop or width < crop:
            raise ConfigError(f"training crop {crop} is larger than the patches ({height}x{width})")
        top = GRID * int(torch.randint((height - crop) // GRID + 1, (1,), generator=generator))
        left = GRID * int(torch.randint((width - crop) // GRID + 1, (1,), generator=generator))
        return top, left


class StepClock:
    """What a training step costs, measured on the steps after the first `warmup` (which allocate,
    decode patches into the cache and pick kernels), and what the run will therefore take. Every
    step ends with `loss.item()`, which waits for a GPU, so wall time is the step's time."""

    def __init__(self, total_steps: int, warmup: int = 1, measured: int = 5):
        self.total_steps, self.warmup, self.measured = total_steps, warmup, measured
        self.durations: list[float] = []
        self.started = time.perf_counter()

    def step_done(self) -> bool:
        """Note one step's end; True at the step after which the estimate is first known."""
        now = time.perf_counter()
        self.durations.append(now - self.started)
        self.started = now
        return len(self.durations) == self.warmup + self.measured

    @property
    def seconds_per_step(self) -> float | None:
        timed = self.durations[self.warmup : self.warmup + self.measured] or self.durations
        return sum(timed) / len(timed) if timed else None

    @property
    def projected_seconds(self) -> float | None:
        """The whole run's time (all `total_steps`, resumed ones included) at the measured rate."""
        return None if self.seconds_per_step is None else self.seconds_per_step * self.total_steps

    def describe(self) -> str:
        return (f"{self.seconds_per_step:.3f} s/step over steps {self.warmup + 1}-{len(self.durations)}: "
                f"{self.total_steps} steps projected at {format_duration(self.projected_seconds)}")


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass
class TrainResult:
    losses: list[tuple[int, float]]  # (step, mean loss over the logging window)
    identity_losses: list[tuple[int, float]]  # (step, mean loss of doing nothing on the same batches)
    resumed_from: int
    seconds: float
    seconds_per_step: float | None = None  # measured after the first steps of this process (StepClock)
    projected_seconds: float | None = None  # the whole run at that rate

    def timing(self) -> dict[str, float]:
        """Wall-clock numbers, kept apart from `summary` (whose file dvc.lock pins by md5)."""
        measured = {"seconds": self.seconds, "seconds_per_step": self.seconds_per_step,
                    "projected_seconds": self.projected_seconds}
        return {key: value for key, value in measured.items() if value is not None}

    def summary(self) -> dict[str, float]:
        """Batches mix qualities, so one logging window is noisy: the means of the first and last
        tenths of the log, and `loss_ratio`, the last tenth's loss over doing nothing's on the same
        batches: below 1 when the method learned, exactly 1 when it ended at the identity."""
        tenth = max(1, len(self.losses) // 10)
        final, final_identity = (sum(v for _, v in log[-tenth:]) / tenth for log in (self.losses, self.identity_losses))
        return {"first_loss": sum(v for _, v in self.losses[:tenth]) / tenth, "final_loss": final,
                "final_identity_loss": final_identity, "loss_ratio": final / final_identity}


def train(
    classifier: nn.Module,
    trainable: nn.Module,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    identity_loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    data: PatchPairs,
    config: TrainConfig,
    state_path: str | os.PathLike,
    identity: dict,
    on_log: Callable[[int, float], None] | None = None,
    progress: bool = True,
    device: torch.device = torch.device("cpu"),
) -> TrainResult:
    """Train `trainable` (a part of `classifier`) with Adam on `device`, resuming from `state_path`
    if it holds a run of the same `identity` (method, backbone, ...), config, data and numerics;
    else start afresh. `identity_loss_fn` is logged beside the loss on every batch: the loss of
    doing nothing."""
    state_path = Path(state_path)
    classifier.to(device)
    fingerprint = _fingerprint(identity, config, data, device)
    optimizer = torch.optim.Adam(trainable.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")  # fp16 gradients underflow unscaled
    # `window`: the (loss, identity loss) pairs since the last logged step; checkpointed with the
    # rest, so a run resumed inside a logging window logs the same means as an uninterrupted one.
    start, losses, identity_losses, window = _resume(state_path, fingerprint, trainable, optimizer, scaler)
    classifier.train()
    started = time.perf_counter()
    clock = StepClock(config.iterations)
    bar = tqdm(range(start, config.iterations), initial=start, total=config.iterations,
               desc=identity.get("name", "train"), disable=not progress, unit="it")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.lr_at(step)
        clean, degraded = (t.to(device) for t in data.batch(step, config.seed, config.batch_size, config.crop))
        with autocast(config.amp, device):
            loss = loss_fn(classifier, clean, degraded)
            identity_loss = identity_loss_fn(classifier, clean, degraded)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        window.append((loss.item(), identity_loss.item()))
        if clock.step_done():
            log.info("%s: %s on %s", identity.get("name", "train"), clock.describe(), device)
        done = step + 1
        if done % config.log_every == 0 or done == config.iterations:
            mean = sum(v for v, _ in window) / len(window)
            losses.append((done, mean))
            identity_losses.append((done, sum(v for _, v in window) / len(window)))
            window.clear()
            bar.set_postfix(loss=f"{mean:.4g}")
            if on_log is not None:
                on_log(done, mean)
        if done % config.checkpoint_every == 0 or done == config.iterations:
            _save_state(state_path, fingerprint, done, trainable, optimizer, scaler, losses, identity_losses, window)
    classifier.eval()
    return TrainResult(losses, identity_losses, start, time.perf_counter() - started, clock.seconds_per_step,
                       clock.projected_seconds)


@torch.no_grad()
def alive_fraction(module: nn.Module, run: Callable[[], object]) -> float:
    """The fraction of `module`'s hidden channels (outputs of its ReLUs) that are positive somewhere
    during `run()`. A channel that never is passes no gradient: it is dead for good. (A PReLU
    channel always passes one, so PReLUs are not counted.)"""
    alive = []

    def record(_module, _inputs, output):
        alive.append((output > 0).transpose(0, 1).flatten(1).any(1))

    hooks = [m.register_forward_hook(record) for m in module.modules() if isinstance(m, nn.ReLU)]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return torch.cat(alive).float().mean().item() if alive else 1.0


def check_learned(name: str, loss_ratio: float, alive: float, max_loss_ratio: float, min_alive: float) -> None:
    """Refuse a trained method that ended at the identity or with most of its channels dead: its
    results would silently equal DirectTest's."""
    problems = []
    if loss_ratio > max_loss_ratio:
        problems.append(f"its final loss is {loss_ratio:.4f} of doing nothing's on the same batches "
                        f"(train.max_loss_ratio {max_loss_ratio}): it ended at the identity")
    if alive < min_alive:
        problems.append(f"only {alive:.0%} of its hidden channels are alive (train.min_alive_fraction {min_alive})")
    if problems:
        raise TrainingError(f"method {name!r} did not learn: {'; '.join(problems)}; "
                            f"try a smaller methods.{name}.lr_scale in params.yaml")


def _fingerprint(identity: dict, config: TrainConfig, data: PatchPairs, device: torch.device) -> str:
    """What a resumed run must share with the checkpoint: the method and backbone, the settings,
    the data, the code and the numerics (CPU pins, device). A checkpoint of other code or numerics
    (a changed loss, another thread count, a GPU) would otherwise be resumed, or even taken as
    finished, when DVC re-runs the stage because that code changed."""
    payload = json.dumps({"identity": identity, "config": asdict(config), "data": data.fingerprint(),
                          "code": _code_digest(), "numerics": _numerics(device)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _code_digest() -> str:
    """sha256 over the source of every module of this package loaded now (what DVC's train stage
    lists as its code), by module name."""
    digest = hashlib.sha256()
    for name, module in sorted(sys.modules.items()):
        if (name == "afd" or name.startswith("afd.")) and getattr(module, "__file__", None):
            digest.update(f"{name}:{file_sha256(module.__file__)}\n".encode())
    return digest.hexdigest()


def _numerics(device: torch.device) -> dict:
    numerics = {"threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                **{key: os.environ.get(key) for key in X86_PINS}}
    if device.type == "cuda":  # a CPU run's fingerprint stays what it was
        numerics["gpu"] = torch.cuda.get_device_name(device)
    return numerics


def _resume(state_path: Path, fingerprint: str, trainable: nn.Module, optimizer, scaler) -> tuple[int, list, list, list]:
    """(step, logged losses, logged identity losses, current logging window) from `state_path`, with
    the model and optimizer restored; (0, [], [], []) to start afresh. A damaged state file is set aside
    (`state.pt.damaged`) with one log line: it must not stop every later run."""
    if not state_path.is_file():
        return 0, [], [], []
    fresh_model = {name: value.clone() for name, value in trainable.state_dict().items()}
    fresh_optimizer = copy.deepcopy(optimizer.state_dict())
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        keys = {"fingerprint", "step", "model", "optimizer", "losses", "identity_losses", "window"}
        if not isinstance(state, dict) or not keys <= set(state):
            raise ValueError("not a training state")
        if state["fingerprint"] != fingerprint:
            log.info("%s belongs to another configuration or data; training from scratch", display_name(state_path))
            return 0, [], [], []
        trainable.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler.is_enabled():  # fp16 only: the fingerprint holds amp, so the state has it
            scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        losses, identity_losses = ([(int(s), float(v)) for s, v in state[key]] for key in ("losses", "identity_losses"))
        window = [(float(loss), float(identity)) for loss, identity in state["window"]]
    except Exception as error:  # truncated, foreign or inconsistent: torch raises many types
        damaged = state_path.with_name(state_path.name + ".damaged")
        os.replace(state_path, damaged)
        log.warning("%s: damaged resume state (%s: %s); moved to %s, training from step 0",
                    display_name(state_path), type(error).__name__, first_line(error), damaged.name)
        trainable.load_state_dict(fresh_model)  # the failure may have come half-way through loading
        optimizer.load_state_dict(fresh_optimizer)
        return 0, [], [], []
    log.info("resuming %s at step %d", display_name(state_path), step)
    return step, losses, identity_losses, window


def _save_state(state_path: Path, fingerprint: str, step: int, trainable, optimizer, scaler, losses, identity_losses,
                window) -> None:
    state = {
        "fingerprint": fingerprint,
        "step": step,
        "model": trainable.state_dict(),
        "optimizer": optimizer.state_dict(),
        "losses": [list(item) for item in losses],
        "identity_losses": [list(item) for item in identity_losses],
        "window": [list(item) for item in window],
    }
    if scaler.is_enabled():
        state["scaler"] = scaler.state_dict()
    atomic_torch_save(state, state_path)
