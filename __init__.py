"""comfyui-clipwan: CLIP ViT-H/14 vision for Wan 2.1 i2v, block-causal Wan sampling, CLIP on Axera AX650N.

The repository root is both ComfyUI's custom-node folder (ComfyUI imports this file and reads
NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS / WEB_DIRECTORY) and the installable package
``comfyui_clipwan``. ComfyUI imports the pack under a mangled module name, so every import inside the
pack is relative.

Inside ComfyUI (its ``server``/``folder_paths`` modules are loaded) the nodes load now and the HTTP routes are
added. Elsewhere they load on first use of the names below (PEP 562), so ``comfyui-clipwan serve`` on a board
imports neither the node modules nor torch.
"""

import sys as _sys

__version__ = "0.1.0"

WEB_DIRECTORY = "./web"
_NODE_NAMES = ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "register_server_routes")


def __getattr__(name):
    if name in _NODE_NAMES:
        from . import nodes

        return getattr(nodes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if "server" in _sys.modules or "folder_paths" in _sys.modules:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_server_routes

    # Inside a running ComfyUI this adds the pack's HTTP routes; elsewhere it does nothing.
    register_server_routes()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY", "__version__"]
