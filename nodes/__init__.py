"""ComfyUI node classes: thin wrappers over the core packages (clip_vision, wan, axera_export).

Each area keeps its nodes in its own module with its own ``NODE_CLASS_MAPPINGS``; this file merges them.
A module may also define ``register_routes(prompt_server)`` for HTTP routes on ComfyUI's server.
"""

from __future__ import annotations

from . import (action_nodes, axera_nodes, clip_nodes, control_nodes, family_nodes, sampler_nodes, score_nodes,
               settings_nodes, stream_nodes, timeline_control_nodes, timeline_nodes, wan_nodes)
from .comfy_bridge import prompt_server

_AREAS = (clip_nodes, wan_nodes, family_nodes, sampler_nodes, settings_nodes, stream_nodes, timeline_nodes,
          timeline_control_nodes, control_nodes, score_nodes, axera_nodes, action_nodes)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _area in _AREAS:
    NODE_CLASS_MAPPINGS.update(_area.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_area.NODE_DISPLAY_NAME_MAPPINGS)

_routes_registered = False


def register_server_routes(server=None) -> bool:
    """Add the pack's HTTP routes to ComfyUI's PromptServer (once). Returns False outside ComfyUI."""
    global _routes_registered
    server = server if server is not None else prompt_server()
    if server is None or _routes_registered:
        return False
    for area in _AREAS:
        register = getattr(area, "register_routes", None)
        if register is not None:
            register(server)
    _routes_registered = True
    return True
