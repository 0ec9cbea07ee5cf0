"""Model file names in the pack's loaders: the identifying names of the presets table (``longlive_lora.pt``,
``longlive2_model_bf16.pt``: wan/sampling/presets.py ``save_as``) and the authors' bare names (``lora.pt``,
``model_bf16.pt``) that users who downloaded the files earlier have on disk, found either way.

A workflow naming one finds the file under the other, in the same folder: the loaders' ``VALIDATE_INPUTS``
accept both (ComfyUI then skips its own "value not in list" check for that input) and loading resolves the
name that exists. A bare name two families publish (``lora.pt``: LongLive and MemFlow) is only taken when
exactly one of their identifying names is on disk.
"""

from __future__ import annotations

import logging
import os

from . import comfy_bridge as bridge
from ..wan.sampling.presets import alternative_names

log = logging.getLogger("comfyui_clipwan")
NONE = (None, "", "none")


def resolve_model_file(name: str, *folders: str) -> str:
    """Full path of ``name`` in ``folders`` (``comfy_bridge.resolve_model_path``), or of the one other name the
    same file goes by; the not-found error lists the names tried."""
    try:
        return bridge.resolve_model_path(name, *folders)
    except FileNotFoundError as missing:
        others = alternative_names(name)
        found = [path for path in (_find(os.path.join(os.path.dirname(name), other), folders) for other in others)
                 if path]
        if len(found) == 1:  # said once per load: a bare name (lora.pt) may hold another family's file
            log.info("model file '%s' not found; loading %s, the same file under its other name", name, found[0])
            return found[0]
        if found:
            raise FileNotFoundError(f"'{name}' is not in {', '.join('models/' + f for f in folders)} and several "
                                    f"files may be it: {', '.join(os.path.basename(p) for p in found)}; choose "
                                    f"the one you mean in the loader.") from None
        if others:
            raise FileNotFoundError(f"{missing} (also looked for it as {', '.join(others)}).") from None
        raise


def _find(name: str, folders) -> str | None:
    try:
        return bridge.resolve_model_path(name, *folders)
    except FileNotFoundError:
        return None


def validate_model_name(name, *folders):
    """For a loader's ``VALIDATE_INPUTS``: True when ``name`` (or the other name of the same file) is there,
    else the message saying where it was looked for."""
    if name in NONE:
        return True
    try:
        resolve_model_file(name, *folders)
    except FileNotFoundError as exc:
        return str(exc)
    return True
