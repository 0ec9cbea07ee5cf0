"""Importing ComfyUI's modules into the test process (for parity checks and for building files with
ComfyUI's own classes). ComfyUI reads its command-line flags at import; here they are set in code:
CPU only, and text encoders (which include CLIP vision) held in fp32 so parity can be checked tightly."""

from __future__ import annotations

import os
import pathlib
import sys

_READY = False


def import_comfy(comfy_dir=None):
    """Put COMFYUI_DIR on sys.path with CPU-only, fp32-text-encoder flags; returns the ``comfy`` package."""
    global _READY
    comfy_dir = pathlib.Path(comfy_dir or os.environ["COMFYUI_DIR"]).resolve()
    if not _READY:
        if str(comfy_dir) not in sys.path:
            sys.path.insert(0, str(comfy_dir))
        import comfy.options  # noqa: F401  (must precede cli_args)
        from comfy.cli_args import args

        args.cpu = True
        args.fp32_text_enc = True
        _READY = True
    import comfy

    return comfy
