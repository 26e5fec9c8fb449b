"""How much training depends on the CPU's code paths and core count, with and without
`afd.model.determinism.pin_cpu_numerics`.

Trains one method (default: AFD on EfficientNet-Lite0, the default profile's settings, on the
DIV2K-C patches that `dvc repro` made) in a fresh process per setting. The settings stand in for
other CPU models on this one: fewer cores (threads), and oneDNN / MKL / ATen restricted to the
kernels of an older CPU (AVX2 instead of AVX-512 / AMX). Prints, per setting and per mode, the
md5 of the trained weights and the final loss.

    python benches/determinism.py [--iterations 300] [--method afd]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SETTINGS = {  # what differs between CPU models, as this machine can show it
    "this CPU, 2 threads": {"OMP_NUM_THREADS": "2"},
    "this CPU, 1 thread": {"OMP_NUM_THREADS": "1"},
    "AVX2-only oneDNN, 2 threads": {"OMP_NUM_THREADS": "2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "AVX2-only oneDNN+MKL+ATen, 2 threads": {"OMP_NUM_THREADS": "2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                                             "MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}

TRAIN = """
import hashlib, json, sys, torch
from afd.model.determinism import pin_cpu_numerics
from afd.ops.layout import backbone_from_params, patch_sets
from afd.model.methods import Method
from afd.ops.params import load_params, training_profile
from afd.model.train import PatchPairs, TrainConfig, train
params = load_params("params.yaml")
method_name, iterations, pinned = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "pinned"
if pinned:
    pin_cpu_numerics(params["numerics"]["threads"])
else:
    torch.set_num_threads(torch.get_num_threads())  # the process default, as a plain script has it
config = TrainConfig.from_profile({**training_profile(params), "iterations": iterations}, params["seed"])
backbone, tap = backbone_from_params(params, "efficientnet_lite0")
data = PatchPairs.from_sets(*patch_sets(params), training_profile(params)["mix_clean"])
method = Method.from_params(method_name, params["methods"])
torch.manual_seed(params["seed"])
module = method.build(backbone, tap)
result = train(method.classifier(backbone, module, tap), module, method.loss, method.identity_loss, data, config,
               sys.argv[4], {"name": method_name}, progress=False)
weights = hashlib.md5(b"".join(v.numpy().tobytes() for v in module.state_dict().values())).hexdigest()
print(json.dumps({"md5": weights, "final_loss": result.losses[-1][1]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--method", default="afd")
    args = parser.parse_args()
    results = {}
    for mode in ("unpinned", "pinned"):
        for name, env in SETTINGS.items():
            state = Path(f".determinism-{abs(hash((mode, name)))}.pt")
            state.unlink(missing_ok=True)
            run = subprocess.run([sys.executable, "-c", TRAIN, args.method, str(args.iterations), mode, str(state)],
                                 env={**os.environ, **env}, capture_output=True, text=True)
            state.unlink(missing_ok=True)
            if run.returncode:
                sys.exit(f"{mode} / {name} failed:\n{run.stderr[-2000:]}")
            results[(mode, name)] = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"{mode:8}  {name:40}  {results[(mode, name)]['md5']}  "
                  f"final loss {results[(mode, name)]['final_loss']:.6f}", flush=True)
    for mode in ("unpinned", "pinned"):
        digests = {results[(mode, name)]["md5"] for name in SETTINGS}
        losses = [results[(mode, name)]["final_loss"] for name in SETTINGS]
        spread = (max(losses) - min(losses)) / min(losses)
        print(f"{mode}: {len(digests)} distinct weights over {len(SETTINGS)} settings; "
              f"final-loss spread {spread:.2%}")


if __name__ == "__main__":
    main()
