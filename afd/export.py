"""Deploy formats of an image-in, logits-out classifier, each checked against PyTorch.

- ExecuTorch `.pte` lowered to XNNPACK (phones; runs here with `executorch.runtime`);
- ONNX (through `torch.export`, run back with onnxruntime).
Both go through `torch.export`: TorchScript is deprecated in this torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import AFDError
from .io import atomic_path

EXPORT_TOLERANCE = 1e-4


def export_executorch(model: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Lower `model` (eval mode) to an ExecuTorch program with the XNNPACK delegate."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(model.eval(), (example,))
    program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).to_executorch()
    with atomic_path(path) as tmp:
        tmp.write_bytes(program.buffer)
    return Path(path)


def run_executorch(path: str | os.PathLike, images: torch.Tensor) -> torch.Tensor:
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(Path(path)).load_method("forward")
    return method.execute([images.contiguous()])[0]


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """ONNX with a dynamic batch dimension."""
    if example.shape[0] == 1:  # torch.export specialises a size-1 dimension, whatever dynamic_shapes say
        example = torch.cat([example, example])
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(model.eval(), (example,), dynamo=True, input_names=["images"],
                                output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)
    with atomic_path(path) as tmp:
        program.save(str(tmp))
    return Path(path)


def run_onnx(path: str | os.PathLike, images: torch.Tensor) -> torch.Tensor:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy().astype(np.float32)})
    return torch.from_numpy(logits)


@torch.no_grad()
def check_export(model: nn.Module, run, path, images: torch.Tensor) -> float:
    """Max |exported - PyTorch| on `images`; AFDError past EXPORT_TOLERANCE."""
    expected = model.eval()(images)
    difference = (run(path, images) - expected).abs().max().item()
    if difference > EXPORT_TOLERANCE:
        raise AFDError(f"{path}: exported model differs from PyTorch by {difference:.2e}")
    return difference
