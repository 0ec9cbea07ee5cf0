"""comfyui-clipwan: CLIP ViT-H/14 vision for Wan 2.1 i2v, block-causal Wan sampling, CLIP on Axera AX650N.

The repository root is both ComfyUI's custom-node folder (ComfyUI imports this file and reads
NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS / WEB_DIRECTORY) and the installable package
``comfyui_clipwan``. ComfyUI imports the pack under a mangled module name, so every import inside the
pack is relative.
"""

__version__ = "0.1.0"

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_server_routes

WEB_DIRECTORY = "./web"

# Inside a running ComfyUI this adds the pack's HTTP routes; elsewhere it does nothing.
register_server_routes()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY", "__version__"]
