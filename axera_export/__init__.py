"""CLIP → ONNX → Pulsar2 → ``.axmodel`` for the Axera AX650N NPU, and a runtime over the result.

Pure PyTorch/numpy/ONNX (no ComfyUI import). Entry points:

* ``export_clip(source, folder, parts, calib_images, prompts, npu_mode, opset)`` → ``ExportResult``
* sources: ``default_source(seed)`` (seeded random-init ViT-B/32 CLIP), ``load_source(path)``, ``vision_source(model)``
* ``ClipRuntime(folder, backend="auto"|"axengine"|"axcl"|"onnxruntime")``: embeddings, similarity, zero-shot
* ``serve``/``service``/``vocabulary``: the board-side interrogation service (no torch on that path)

Names load on first use (PEP 562): the serving path (runtime, tokenizer, vocabulary, service) is numpy +
onnxruntime/axengine only, and importing this package must not pull torch in through the export side.
"""

import importlib

_EXPORTS = {
    "allowlist": ("AX650_OPS", "OpIssue", "check_ax650_ops"),
    "pipeline": ("DEFAULT_LABELS", "DEFAULT_PROMPTS", "ExportResult", "export_clip", "format_report"),
    "runtime": ("ClipRuntime", "read_manifest"),
    "sources": ("ClipSource", "default_source", "load_source", "parse_parts", "vision_source"),
    "text_model": ("TextConfig", "TextWeights", "text_weights_from_state_dict"),
    "tokenizer": ("tokenize",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function (tests may still monkeypatch the name)
    return value
