"""Which engine runs a tower: axengine on the board's NPU, axengine through AXCL (a PCIe/M.2 card), or ONNX Runtime.

``pyaxengine`` is onnxruntime-like: ``axengine.InferenceSession(path, providers=[...])`` with
``AxEngineExecutionProvider`` (the NPU of an AX650N/AX630C board) and ``AXCLRTExecutionProvider`` (an AX650N card
on a host such as a Raspberry Pi 5, through AXCL); ``axengine.get_available_providers()`` lists those whose
runtime library is present, in pyaxengine's order of preference. ``import axengine`` raises ImportError where
neither library exists, so it is imported here, lazily, and only when an ``.axmodel`` could be used.

Backends a user names: ``auto`` (the first provider pyaxengine offers when the tower was compiled, else ONNX
Runtime), ``axengine`` (on-board NPU), ``axcl`` (card), ``onnxruntime`` (the ``.onnx``, CPU).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

BACKENDS = ("auto", "axengine", "axcl", "onnxruntime")
AX_PROVIDERS = {"axengine": "AxEngineExecutionProvider", "axcl": "AXCLRTExecutionProvider"}
ORT_PROVIDER = "CPUExecutionProvider"


@dataclasses.dataclass(frozen=True)
class Choice:
    engine: str  # "axengine" | "onnxruntime"
    provider: str
    reason: str

    @property
    def label(self) -> str:
        """What responses and logs say ran, e.g. ``axengine/AXCLRTExecutionProvider``."""
        return f"{self.engine}/{self.provider}"


def ax_providers() -> tuple[list, Optional[str]]:
    """(providers pyaxengine can use here, the import error when it cannot be imported)."""
    try:
        import axengine
    except ImportError as exc:  # off-device: no libax_engine.so / libaxcl_rt.so
        return [], str(exc) or type(exc).__name__
    lister = getattr(axengine, "get_available_providers", None)
    found = list(lister()) if lister else [AX_PROVIDERS["axengine"]]
    return [p for p in found if p in AX_PROVIDERS.values()], None


def choose(backend: str, has_axmodel: bool, part: str = "model") -> Choice:
    """The engine for one tower. Explicit NPU backends fail loudly (naming what is missing); ``auto`` falls
    back to ONNX Runtime and says why."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "onnxruntime":
        return Choice("onnxruntime", ORT_PROVIDER, "asked for")
    if not has_axmodel:
        if backend == "auto":
            return Choice("onnxruntime", ORT_PROVIDER, f"the {part} tower has no .axmodel (not compiled)")
        raise RuntimeError(f"backend '{backend}': the {part} tower was not compiled to .axmodel (run "
                           f"build_axmodel.sh in the export folder first)")
    available, error = ax_providers()
    if backend == "auto":
        if available:
            return Choice("axengine", available[0], "first provider pyaxengine offers")
        why = f"pyaxengine unavailable ({error})" if error else "pyaxengine offers no NPU provider"
        return Choice("onnxruntime", ORT_PROVIDER, why)
    wanted = AX_PROVIDERS[backend]
    if error is not None:
        raise RuntimeError(f"backend '{backend}' needs the pyaxengine package on an Axera device "
                           f"(board NPU or AXCL card): {error}")
    if wanted not in available:
        raise RuntimeError(f"backend '{backend}' needs {wanted}, but pyaxengine offers {available or 'none'} "
                           f"here; use backend 'auto' or the one that is present")
    return Choice("axengine", wanted, "asked for")
