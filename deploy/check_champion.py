"""What a deployment team runs: pull a registered classifier by one URI and check every format in it.

    python deploy/check_champion.py [models:/afd-efficientnet_lite0@champion]

Needs only mlflow, torch and the two runtimes (executorch, onnxruntime): not this project
(`make deploy-check` builds such a venv). It downloads the model version once, then runs one batch
of 4 seeded random 224x224 images through the PyTorch program (`data/model.pt2`), the ExecuTorch
`.pte` and the ONNX file that come with it, and prints each format's largest difference from
PyTorch; exit status 1 past 1e-4. The int8 `.pte` is run too, and its top-1 agreement with PyTorch
printed (int8 is not meant to match to 1e-4). Tracking server: $MLFLOW_TRACKING_URI (default: the
project's sqlite:///mlflow.db, which must exist). It loads the program with `torch.export.load`, as
MLflow does: use it on a registry only your pipeline writes to (`afd.ops.registry.load_registered`
inspects the archive first).
"""

import os
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch

TOLERANCE = 1e-4


def main(uri: str) -> int:
    tracking = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    if tracking.startswith("sqlite:///") and not Path(tracking[len("sqlite:///"):]).is_file():
        print(f"no tracking store at {tracking}: set MLFLOW_TRACKING_URI", file=sys.stderr)
        return 2
    mlflow.set_tracking_uri(tracking)
    with tempfile.TemporaryDirectory() as folder:
        try:
            local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=folder))
        except Exception as error:  # MlflowException, or an HTTP / OS error from the artifact store
            print(f"{uri}: cannot download it from {tracking} ({str(error).splitlines()[0]})", file=sys.stderr)
            return 2
        if not (local / "data" / "model.pt2").is_file() or not (local / "extra_files").is_dir():
            print(f"{uri}: not a program with deploy files (no data/model.pt2 or extra_files/)", file=sys.stderr)
            return 2
        files = sorted(path.relative_to(local).as_posix() for path in local.rglob("*") if path.is_file())
        print(f"{uri} from {tracking}: {', '.join(files)}")
        images = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        expected = torch.export.load(str(local / "data" / "model.pt2")).module()(images).detach()
        failures = 0
        for path in sorted((local / "extra_files").iterdir()):
            logits = run(path, images)
            if path.name.endswith(".int8.pte"):
                agreement = (logits.argmax(1) == expected.argmax(1)).float().mean().item()
                print(f"{path.name}: batch {len(images)}, top-1 agreement with PyTorch {agreement:.2f} (int8)")
                continue
            difference = (logits - expected).abs().max().item()
            verdict = "ok" if difference <= TOLERANCE else f"FAILED (over {TOLERANCE})"
            failures += difference > TOLERANCE
            print(f"{path.name}: batch {len(images)}, max |format - PyTorch| = {difference:.2e} {verdict}")
    return 1 if failures else 0


def run(path: Path, images: torch.Tensor) -> torch.Tensor:
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: images.numpy().astype(np.float32)})[0])
    from executorch.runtime import Runtime

    return Runtime.get().load_program(path).load_method("forward").execute([images.contiguous()])[0]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "models:/afd-efficientnet_lite0@champion"))
