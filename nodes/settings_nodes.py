"""Saved workflows of the causal nodes: GET /clipwan/widget_layouts, read by the web extension.

ComfyUI's page restores a node's ``widgets_values`` by position. A workflow saved before a widget was inserted
(Causal Wan Sampler before ``warp_steps``) would put every later value one widget off. The page extension
(web/clipwan.js ``onConfigure`` -> clipwan_logic.js ``migrateWidgetValues``) re-reads such a list by name with
the layout of the version that saved it; the layouts and defaults come from here, built from the settings'
declaration (``wan/sampling/settings_spec.py``: ``widget_layouts``, ``migrate_widget_values``).
"""

from __future__ import annotations

from ..wan.sampling import settings_spec as spec

LAYOUTS_PATH = "/clipwan/widget_layouts"
CAUSAL_NODES = {"CausalWanSampler": spec.SAMPLER, "CausalWanStreamVideo": spec.STREAM}


def widget_layouts_payload() -> dict:
    """``{node type: {"layouts": [[input name, ...], ...] oldest first, "defaults": {name: value}}}``."""
    return {node_type: {"layouts": spec.widget_layouts(kind), "defaults": spec.widget_defaults(kind)}
            for node_type, kind in CAUSAL_NODES.items()}


async def _layouts_handler(request):
    from aiohttp import web

    return web.json_response(widget_layouts_payload())


def register_routes(server) -> None:
    """Called by nodes/__init__.py inside ComfyUI: GET /clipwan/widget_layouts (also under /api)."""
    server.routes.get(LAYOUTS_PATH)(_layouts_handler)


NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
