"""What a training profile costs here, before paying for it: seconds per step of `afd.model.train.train`
(measured as the training stage measures it, `StepClock`: after one warm-up step) for each method
kind and backbone, and the whole profile's projected time.

    python benches/train_cost.py [--profile paper] [--steps 6] [--device auto]

Runs on the DIV2K-C patches of `dvc repro` (data/div2k_c; the paper profile's 224-pixel crops fit the
default's 224-pixel patches). The cost of a step depends on the batch, the crop, the module and
the backbone, not on how many patches there are. ResNet-50 and RepVGG-A2 run with random weights
when their weight files are absent: timing does not depend on the weights. The projection is for
the profile's iterations times the stages dvc.yaml would train (train.methods on every backbone,
train.study_methods on the study backbone), each at its kind's measured rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch

from afd.model.backbones import build_backbone
from afd.model.determinism import describe_device, pin_numerics
from afd.model.methods import Method
from afd.model.train import PatchPairs, TrainConfig, format_duration, train
from afd.ops.layout import patch_sets
from afd.ops.params import load_params


def seconds_per_step(params: dict, profile: dict, backbone_name: str, method: Method, steps: int,
                     device: torch.device) -> float:
    weights = params["backbones"][backbone_name].get("weights")
    try:
        backbone = build_backbone(backbone_name, weights)
    except Exception:  # no weight file here: the same architecture with random weights
        backbone = build_backbone(backbone_name, "random")
    tap = method.tap_on(backbone.default_tap)
    config = dataclasses.replace(TrainConfig.from_profile({**profile, "iterations": steps,
                                                           "checkpoint_every": steps}, params["seed"]),
                                 amp=params["numerics"]["amp"])
    data = PatchPairs.from_sets(*patch_sets(params), profile["mix_clean"])
    torch.manual_seed(0)
    module = method.build(backbone, tap, profile["afd_size"])
    classifier = method.classifier(backbone, module, tap)
    with tempfile.TemporaryDirectory() as folder:
        result = train(classifier, module, method.loss, method.identity_loss, data, config,
                       Path(folder) / "state.pt", {"name": f"{backbone_name}/{method.name}"}, progress=False,
                       device=device)
    return result.seconds_per_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--steps", type=int, default=6, help="steps timed per run (the first is a warm-up)")
    parser.add_argument("--device", default=None, help="default: params.yaml numerics.device")
    parser.add_argument("--backbones", nargs="+", default=None, help="default: params.yaml train.backbones")
    args = parser.parse_args()
    params = load_params()
    device, _ = pin_numerics(params["numerics"]["threads"], args.device or params["numerics"]["device"])
    profile = params["profiles"][args.profile]
    train_settings = params["train"]
    backbones = args.backbones or train_settings["backbones"]
    stages = [(backbone, method) for backbone in backbones for method in train_settings["methods"]]
    if train_settings["study_backbone"] in backbones:
        stages += [(train_settings["study_backbone"], method) for method in train_settings["study_methods"]]

    print(f"profile {args.profile}: {profile['iterations']} iterations, batch {profile['batch_size']}, "
          f"crop {profile['crop']}, AFD size {profile['afd_size']}; on {describe_device(device)}, "
          f"amp {params['numerics']['amp']}\n")
    print("| backbone | method | s/step | projected |\n|---|---|---:|---:|")
    measured, total = {}, 0.0
    for backbone, name in stages:
        method = Method.from_params(name, params["methods"])
        key = (backbone, method.kind, method.tap)  # other seeds and FDM sources: timed once, at the first one's rate
        if key not in measured:
            measured[key] = seconds_per_step(params, profile, backbone, method, args.steps, device)
        seconds = measured[key] * profile["iterations"]
        total += seconds
        print(f"| {backbone} | {name} | {measured[key]:.3f} | {format_duration(seconds)} |")
    print(f"\n{len(stages)} training stage(s): {format_duration(total)} one after another on this machine "
          f"({total / 86400:.1f} days)")


if __name__ == "__main__":
    main()
