"""CLIP → ONNX → Pulsar2 → ``.axmodel`` for the Axera AX650N NPU, and a runtime over the result.

Pure PyTorch/numpy/ONNX (no ComfyUI import). Entry points:

* ``export_clip(source, folder, parts, calib_images, prompts, npu_mode, opset)`` → ``ExportResult``
* sources: ``default_source(seed)`` (seeded random-init ViT-B/32 CLIP), ``load_source(path)``, ``vision_source(model)``
* ``ClipRuntime(folder, backend="auto"|"axengine"|"onnxruntime")``: embeddings, similarity, zero-shot
"""

from .allowlist import AX650_OPS, OpIssue, check_ax650_ops
from .pipeline import DEFAULT_LABELS, DEFAULT_PROMPTS, ExportResult, export_clip, format_report
from .runtime import ClipRuntime, read_manifest
from .sources import ClipSource, default_source, load_source, parse_parts, vision_source
from .text_model import TextConfig, TextWeights, text_weights_from_state_dict
from .tokenizer import tokenize

__all__ = [
    "AX650_OPS", "OpIssue", "check_ax650_ops", "DEFAULT_LABELS", "DEFAULT_PROMPTS", "ExportResult", "export_clip",
    "format_report", "ClipRuntime", "read_manifest", "ClipSource", "default_source", "load_source", "parse_parts",
    "vision_source", "TextConfig", "TextWeights", "text_weights_from_state_dict", "tokenize",
]
