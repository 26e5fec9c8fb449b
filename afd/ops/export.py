"""Deploy formats of an image-in, logits-out classifier, each checked against PyTorch.

- ExecuTorch `.pte` lowered to XNNPACK (phones; runs here with `executorch.runtime`);
- the same, quantized to int8 (`quantize_int8`; checked by its agreement, not to 1e-4);
- ONNX (through `torch.export`, run back with onnxruntime).
All go through `torch.export`: TorchScript is deprecated in this torch.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from afd.errors import AFDError, display_name, first_line
from afd.io import atomic_path

EXPORT_TOLERANCE = 1e-4


MAX_BATCH = 1024  # the largest batch a program with a dynamic batch dimension takes


def export_program(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = False) -> torch.export.ExportedProgram:
    """`torch.export` of `model` in eval mode at `example`'s shape (with `dynamic_batch`, any batch
    up to MAX_BATCH). Every buffer is first cast to `example`'s dtype (the DCT's float64 constants):
    a cast left in the graph would keep a runtime from taking the conv it feeds as one with constant
    weights, and XNNPACK would not run it. Weights go back to the default layout too (a model timed
    channels-last in eager): XNNPACK lays them out itself, and refuses channels-last constants."""
    model = copy.deepcopy(model).to(example.dtype).to(memory_format=torch.contiguous_format).eval()
    if not dynamic_batch:
        return torch.export.export(model, (example,))
    if example.shape[0] == 1:  # torch.export specialises a size-1 dimension, whatever dynamic_shapes say
        example = torch.cat([example, example])
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def save_program(model: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """The exported program as a self-contained `.pt2` file: weights and graph, no Python code,
    so any machine with torch can run or lower it (see `load_program`)."""
    program = export_program(model, example)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: the temp name lacks ".pt2"
        torch.export.save(program, f)
    return Path(path)


def load_program(path: str | os.PathLike, name: str | None = None) -> torch.export.ExportedProgram:
    """The `torch.export` program in a `.pt2` file, after `check_program_archive` has found
    nothing in it that loading would unpickle or execute. `name` (a model URI, say) is what
    errors name; default: the path."""
    name = name or display_name(path)
    check_program_archive(path, name)
    try:
        return torch.export.load(str(path))
    except Exception as error:  # torch raises many types for a damaged archive
        raise AFDError(f"{name}: not a readable torch.export program ({first_line(error)})") from None


# What a plain program archive (torch.export.save of weights, buffers and tensor constants) holds,
# relative to its root folder. Anything else (pickled or TorchScript objects, AOTInductor shared
# libraries, the legacy pickled formats) is code that loading would run.
_PLAIN_ENTRIES = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|extra/[^/]+"
    r"|models/model\.json|data/sample_inputs/model\.pt"
    r"|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
)


def check_program_archive(path: str | os.PathLike, name: str) -> None:
    """Refuse (AFDError naming `name` and the reason) a `.pt2` that `torch.export.load` would not
    load from plain data alone. torch.export.load unpickles with `weights_only=False` any weight or
    constant whose config says `use_pickle`, pickled objects, and sample inputs that fail to load
    as plain tensors; it also loads AOTInductor libraries. So: only the entries of a plain
    archive, no payload marked `use_pickle`, and sample inputs that load with `weights_only=True`."""

    def refuse(reason: str):
        return AFDError(f"{name}: refusing to load this program: {reason}")

    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as error:
        raise AFDError(f"{name}: not a torch.export program archive ({first_line(error)})") from None
    with archive:
        names = [entry for entry in archive.namelist() if not entry.endswith("/")]
        roots = {entry.split("/", 1)[0] for entry in names}
        if len(roots) != 1 or any("/" not in entry for entry in names):
            raise refuse("not a torch.export archive (expected one root folder)")
        entries = {entry.split("/", 1)[1]: entry for entry in names}
        unexpected = sorted(entry for entry in entries if not _PLAIN_ENTRIES.fullmatch(entry))
        if unexpected:
            raise refuse(f"it holds {unexpected[0]!r}, which is not plain program data"
                         f"{f' (and {len(unexpected) - 1} more)' if len(unexpected) > 1 else ''}")
        for required in ("archive_version", "models/model.json"):
            if required not in entries:
                raise refuse(f"{required!r} is missing: not a torch.export archive")
        for config in ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json"):
            if config not in entries:
                continue
            try:
                payloads = json.loads(archive.read(entries[config]))["config"]
                pickled = sorted(key for key, meta in payloads.items() if meta.get("use_pickle") is not False)
            except (ValueError, KeyError, TypeError, AttributeError):
                raise refuse(f"{config!r} is not a valid payload config") from None
            if pickled:
                raise refuse(f"{config!r} asks to unpickle {pickled[0]!r} (use_pickle)")
        sample_inputs = entries.get("data/sample_inputs/model.pt")
        data = archive.read(sample_inputs) if sample_inputs else b""
        if data:
            try:
                torch.load(io.BytesIO(data), weights_only=True)
            except Exception:  # torch.export.load would retry this with weights_only=False
                raise refuse("its sample inputs are not plain tensors (they would be unpickled)") from None


def static_program(program: torch.export.ExportedProgram, example: torch.Tensor) -> torch.export.ExportedProgram:
    """`program` with every dimension fixed at `example`'s shape (a program that has none
    dynamic is returned as it is)."""
    if not program.range_constraints:
        return program
    return torch.export.export(program.module(), (example,))


def _infer_batch_in_reshapes(graph_module: torch.fx.GraphModule):
    """Write the batch of each reshape as -1. torch.export writes it as a symbol, and XNNPACK
    reshapes only one inferred dimension, so without this every reshape of a dynamic-batch program
    (pixel shuffles, the FDM's block view, the classifier's flatten) falls out of the delegate."""
    from executorch.exir.dialects._ops import ops as exir_ops
    from executorch.exir.pass_base import PassResult

    for node in graph_module.graph.nodes:
        if node.op == "call_function" and node.target == exir_ops.edge.aten.view_copy.default:
            shape = list(node.args[1])
            symbolic = [i for i, size in enumerate(shape) if not isinstance(size, int)]
            if len(symbolic) == 1:
                shape[symbolic[0]] = -1
                node.args = (node.args[0], shape)
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return PassResult(graph_module, True)


def lower_to_xnnpack(program: torch.export.ExportedProgram):
    """The program in ExecuTorch's edge dialect with what XNNPACK runs delegated to it."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge, to_edge_transform_and_lower

    if not program.range_constraints:
        return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    return to_edge(program).transform([_infer_batch_in_reshapes]).to_backend(XnnpackPartitioner())


# Nodes outside the delegate that only take its outputs apart (and read the batch size): plumbing.
_PLUMBING_OPS = {"getitem", "sym_size"}


def undelegated_ops(lowered) -> dict[str, int]:
    """ExecuTorch's delegation report of a lowered program (`lower_to_xnnpack`): how many nodes of
    each op run outside the XNNPACK delegate, on ExecuTorch's portable kernels, plumbing aside."""
    from executorch.devtools.backend_debug import get_delegation_info

    report = get_delegation_info(lowered.exported_program().graph_module)
    return {op: counts.non_delegated for op, counts in sorted(report.delegation_by_operator.items())
            if counts.non_delegated and op not in _PLUMBING_OPS}


def export_executorch(
    model: nn.Module | torch.export.ExportedProgram, example: torch.Tensor, path: str | os.PathLike,
    dynamic_batch: bool = False, require_delegated: bool = False,
) -> Path:
    """Lower `model` (or an exported program) to an ExecuTorch program with the XNNPACK delegate,
    at `example`'s shape, or for any batch with `dynamic_batch`. A program's own dynamic batch is
    fixed first unless `dynamic_batch` (a benchmark compares programs all planned the same way).
    `require_delegated`: refuse (AFDError) a program that XNNPACK would not run whole."""
    if isinstance(model, torch.export.ExportedProgram):
        exported = model if dynamic_batch else static_program(model, example)
    else:
        exported = export_program(model, example, dynamic_batch)
    lowered = lower_to_xnnpack(exported)
    left = undelegated_ops(lowered)
    if require_delegated and left:
        raise AFDError(f"{display_name(path)}: XNNPACK does not run {sum(left.values())} node(s) of this model "
                       f"({', '.join(f'{op} x{n}' for op, n in left.items())}); they would fall back to "
                       "ExecuTorch's slow portable kernels")
    program = lowered.to_executorch()
    with atomic_path(path) as tmp:
        tmp.write_bytes(program.buffer)
    return Path(path)


def quantize_int8(model: nn.Module, calibration: torch.Tensor, batch_size: int = 8) -> torch.export.ExportedProgram:
    """`model` quantized to int8 for XNNPACK (PT2E with ExecuTorch's XNNPACK quantizer: symmetric
    per-channel weights, activations per tensor), its activation ranges calibrated on the images
    `calibration`; returned as a program with a dynamic batch, ready for `export_executorch`."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = calibration[:2]
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(export_program(model, example, dynamic_batch=True).module(), quantizer)
    with torch.no_grad():
        for batch in calibration.split(batch_size):
            prepared(batch)
    return export_program(convert_pt2e(prepared), example, dynamic_batch=True)


def export_deploy_format(name: str, model: nn.Module, images: torch.Tensor, path: str | os.PathLike,
                         calibration: torch.Tensor | None = None,
                         program_path: str | os.PathLike | None = None) -> tuple[Path, float | None]:
    """The deploy format `name` of `model` (see DEPLOY_SUFFIXES) at `path`, for any batch, and its
    largest difference from PyTorch on `images` (AFDError past EXPORT_TOLERANCE). "executorch" and
    "executorch_int8" refuse a program that XNNPACK would not run whole. int8 is calibrated on
    `calibration`, its quantized program also saved at `program_path`, and it is not compared to
    1e-4 (None): it is judged by its agreement on the evaluation sets."""
    if name == "executorch":
        path = export_executorch(model, images, path, dynamic_batch=True, require_delegated=True)
        return path, check_export(model, run_executorch, path, images)
    if name == "executorch_int8":
        program = quantize_int8(model, calibration)
        with atomic_path(program_path) as tmp, open(tmp, "wb") as f:
            torch.export.save(program, f)
        return export_executorch(program, images, path, dynamic_batch=True, require_delegated=True), None
    if name == "onnx":
        path = export_onnx(model, images, path)
        return path, check_export(model, run_onnx, path, images)
    raise AFDError(f"unknown deploy format {name!r}; choose one of {sorted(DEPLOY_SUFFIXES)}")


DEPLOY_SUFFIXES = {"executorch": ".pte", "executorch_int8": ".int8.pte", "onnx": ".onnx"}


def in_processes(calls: list, initializer=None, initargs: tuple = (), workers: int = 2) -> list:
    """The results of `calls` (picklable callables: top-level functions with `functools.partial`),
    each run in a spawned process, `workers` at a time, in order. Lowering to ExecuTorch is
    single-threaded Python (graph passes), so two lowerings at once use two cores. `initializer`
    runs first in each process (to pin numerics, say)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=initializer, initargs=initargs) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.result() for future in futures]


def load_executorch(path: str | os.PathLike):
    """The `forward` method of a `.pte` file, ready to `execute([images])`."""
    from executorch.runtime import Runtime

    return Runtime.get().load_program(Path(path)).load_method("forward")


def executorch_predictor(path: str | os.PathLike):
    """`predict(images) -> logits` with the `.pte` at `path`, loaded once. A batch larger than the
    program takes (its input's memory-planned size: lowering a dynamic batch caps it at 15 in this
    torch, as the fake convolution's backend choice adds the guard `batch < 16`) runs in parts."""
    method = load_executorch(path)
    max_batch = method.metadata.input_tensor_meta(0).sizes()[0]
    return lambda images: torch.cat([method.execute([part.contiguous()])[0] for part in images.split(max_batch)])


def run_executorch(path: str | os.PathLike, images: torch.Tensor) -> torch.Tensor:
    return executorch_predictor(path)(images)


@contextlib.contextmanager
def executorch_threads(threads: int) -> Iterator[None]:
    """XNNPACK's thread pool in ExecuTorch at `threads` (torch.set_num_threads does not reach it).
    Load methods inside the block and drop them before it ends: an XNNPACK method keeps the pool
    that was current when it was loaded, and replacing that pool leaves it a dangling pointer."""
    from executorch.extension.pybindings import portable_lib

    previous = portable_lib._threadpool_get_thread_count()
    portable_lib._unsafe_reset_threadpool(threads)
    try:
        yield
    finally:
        portable_lib._unsafe_reset_threadpool(previous)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """ONNX with a dynamic batch dimension."""
    program = torch.onnx.export(export_program(model, example, dynamic_batch=True), dynamo=True,
                                input_names=["images"], output_names=["logits"], verbose=False)
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
