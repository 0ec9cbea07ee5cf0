"""Export one tower to ONNX (static batch 1, fixed shapes) and check it: checker, AX650 op list, parity.

We use PyTorch's TorchScript exporter (``dynamo=False``): it emits opset 14 natively, folds every shape to a
constant for static inputs (no Shape/Range ops left for Pulsar2 to choke on) and keeps graphs of plain ops.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import tempfile
import time
import warnings
from typing import Optional

import numpy as np
import onnx
import torch

from .allowlist import OpIssue, check_ax650_ops, op_histogram

# Protobuf cannot hold more than 2 GiB: above this the weights go to ``<name>.onnx.data`` beside the model.
EXTERNAL_DATA_THRESHOLD = 2 * 1024 ** 3 - 64 * 1024 ** 2
PARITY_TOLERANCE = 1e-4  # max |ORT − torch| on fp32 embeddings

VISION_INPUT, VISION_OUTPUT = "pixel_values", "image_pooled"
TEXT_INPUT, TEXT_OUTPUT = "input_ids", "text_hidden"


@dataclasses.dataclass
class OnnxExport:
    path: str
    input_name: str
    input_shape: list
    input_dtype: str
    output_name: str
    output_shape: list
    opset: int
    external_data: Optional[str]  # file name of the external weights, or None
    size_bytes: int
    seconds: float
    ops: dict = dataclasses.field(default_factory=dict)
    op_issues: list = dataclasses.field(default_factory=list)  # [str(OpIssue)]
    checker: str = "not run"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["path"] = os.path.basename(self.path)
        return d


class ExportGraph(torch.nn.Module):
    """``getattr(tower, method)(x, export=True)`` as a module, what ``export_onnx`` traces: the plain-op graph
    of the pack's CLIP block (``clip_vision.model.Block``). ``method``: the vision tower's ``pooled``
    (pixels → post-LN CLS) or the text tower's ``forward`` (ids → final-LN hidden states)."""

    def __init__(self, tower: torch.nn.Module, method: str = "forward"):
        super().__init__()
        self.tower = tower.eval()
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.tower, self.method)(x, export=True)


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def _consolidate_external(path: str) -> str:
    """Rewrite the model so that all weights sit in ONE ``<name>.onnx.data`` file (easier to copy/mount).

    Streams tensor by tensor (the graph is loaded without its weights, each external file is copied into the
    one data file), so a 2.5 GB ViT-H costs one tensor of memory here, not a third copy of the model.
    """
    from onnx import external_data_helper as edh

    model = onnx.load(path, load_external_data=False)
    folder = os.path.dirname(path)
    data_name = os.path.basename(path) + ".data"
    tensors = edh._get_all_tensors(model) if hasattr(edh, "_get_all_tensors") else model.graph.initializer
    offset = 0
    with open(os.path.join(folder, data_name), "wb") as out:
        for tensor in tensors:
            if edh.uses_external_data(tensor):
                info = edh.ExternalDataInfo(tensor)
                with open(os.path.join(folder, info.location), "rb") as src:
                    src.seek(info.offset or 0)
                    data = src.read(info.length) if info.length else src.read()
            elif tensor.HasField("raw_data") and len(tensor.raw_data) >= 1024:
                data = tensor.raw_data
                tensor.ClearField("raw_data")
            else:
                continue  # small constants stay in the graph
            out.write(data)
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += len(data)
            del data
    onnx.save_model(model, path)  # the graph only: the weights stay where set_external_data points
    return data_name


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: str, input_name: str, output_name: str,
                opset: int = 14, external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> OnnxExport:
    """Trace ``module(example)`` to ``path`` with static shapes; weights external when above the threshold."""
    if opset < 11:
        raise ValueError(f"opset {opset} is too old: Pulsar2 needs opset >= 11 (14 recommended)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    external = _param_bytes(module) > external_data_threshold
    t0 = time.perf_counter()
    # Trace in a scratch folder: a > 2 GiB export writes one file per tensor beside the model.
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as scratch:
        tmp = os.path.join(scratch, os.path.basename(path))
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(module.eval(), (example,), tmp, dynamo=False, opset_version=opset,
                              input_names=[input_name], output_names=[output_name], do_constant_folding=True)
        data_name = None
        if external or len(os.listdir(scratch)) > 1:
            data_name = _consolidate_external(tmp)
        for stale in glob.glob(path) + glob.glob(path + ".data"):
            os.remove(stale)
        shutil.move(tmp, path)
        if data_name:
            shutil.move(os.path.join(scratch, data_name), os.path.join(os.path.dirname(path), data_name))
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        out_shape = list(module(example).shape)
    size = os.path.getsize(path) + (os.path.getsize(os.path.join(os.path.dirname(path), data_name))
                                    if data_name else 0)
    return OnnxExport(path=path, input_name=input_name, input_shape=list(example.shape),
                      input_dtype=str(example.dtype).replace("torch.", ""), output_name=output_name,
                      output_shape=out_shape, opset=opset, external_data=data_name, size_bytes=size,
                      seconds=round(seconds, 3))


def check_export(result: OnnxExport) -> list[OpIssue]:
    """``onnx.checker`` (by path, so external data works) + the AX650 op list; fills ``result``."""
    try:
        onnx.checker.check_model(result.path, full_check=True)
        result.checker = "ok"
    except Exception as exc:  # the checker's own message says which node/field is wrong
        result.checker = f"failed: {exc}"
    model = onnx.load(result.path, load_external_data=False)
    issues = check_ax650_ops(model)
    result.ops = op_histogram(model)
    result.op_issues = [str(i) for i in issues]
    return issues


def ort_session(path: str, threads: Optional[int] = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def parity(ort_embeds: np.ndarray, torch_embeds: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> dict:
    """Max abs difference and cosine between the ORT-side and torch-side embeddings."""
    a = np.asarray(ort_embeds, np.float64).reshape(len(ort_embeds), -1)
    b = np.asarray(torch_embeds, np.float64).reshape(len(torch_embeds), -1)
    diff = float(np.abs(a - b).max())
    cos = float(np.min((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)))
    return {"max_abs_diff": diff, "min_cosine": cos, "tolerance": tolerance, "ok": diff <= tolerance,
            "samples": int(a.shape[0])}
