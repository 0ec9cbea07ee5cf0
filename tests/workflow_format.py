"""ComfyUI workflow formats, read and written from node definitions (no ComfyUI needed).

Two formats exist for the same graph:
- UI format (what the ComfyUI page saves and the template browser opens): ``nodes`` with ``inputs``
  (link slots only), ``outputs``, ``widgets_values`` (widget values in the node's input order, plus the
  front end's extra "control after generate" value after a seed widget and "image" after an upload combo),
  and ``links`` as ``[link_id, from_node, from_slot, to_node, to_slot, type]``.
- API format (what ``POST /prompt`` takes): ``{node_id: {"class_type", "inputs": {name: value |
  [from_node_id, from_slot]}}}``.

Node definitions are the dicts ``GET /object_info`` returns. Ours are built from the pack's
``NODE_CLASS_MAPPINGS`` the way ComfyUI's server builds them for V1 classes; core ones are recorded from a
real ComfyUI in ``tests/data/core_object_info.json`` (see ``record_core_definitions``).

``python tests/workflow_format.py`` regenerates ``example_workflows/`` from the graph descriptions in
``tests/workflow_specs.py``; ``tests/test_workflows.py`` checks the committed files independently.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"
CORE_DEFS_FILE = DATA_DIR / "core_object_info.json"
WORKFLOW_DIR = ROOT / "example_workflows"
API_DIR = WORKFLOW_DIR / "api"

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# The front end adds a "control after generate" widget after these INT inputs (and after any INT whose
# options say control_after_generate). Its value is saved in widgets_values but is not a node input.
SEED_NAMES = {"seed", "noise_seed"}
SEED_CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
MODEL_EXTENSIONS = (".safetensors", ".sft", ".pt", ".pth", ".pt2", ".bin", ".ckpt", ".pkl")
# Front-end-only nodes: shown on the canvas, never sent to the server (the page's graphToPrompt skips them).
VIRTUAL_NODES = {"Note", "MarkdownNote"}
# Room a node's body needs beyond its slots and widgets, as the page draws it: Load Image shows the picture,
# the causal sampler its frame player (web/clipwan.js), the export/zero-shot nodes their report.
EXTRA_HEIGHT = {"LoadImage": 300, "CausalWanSampler": 200, "ExportCLIPToAxmodel": 170, "CLIPZeroShotAxera": 170}
TITLE_HEIGHT = 30  # drawn above a node's pos
GAP = 50
NOTE_WIDTH = 560


# --------------------------------------------------------------------------------------------------
# Node definitions
# --------------------------------------------------------------------------------------------------
def definition_from_class(node_id: str, cls) -> dict:
    """The /object_info entry ComfyUI's server builds for a V1 node class (the fields workflows use)."""
    inputs = cls.INPUT_TYPES()
    output = list(cls.RETURN_TYPES)
    return {
        "input": {k: dict(v) for k, v in inputs.items() if k in ("required", "optional", "hidden")},
        "input_order": {k: list(v) for k, v in inputs.items() if k in ("required", "optional", "hidden")},
        "output": output,
        "output_name": list(getattr(cls, "RETURN_NAMES", None) or output),
        "name": node_id,
        "category": cls.CATEGORY,
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": "custom_nodes.comfyui-clipwan",
    }


def pack_definitions() -> dict[str, dict]:
    import comfyui_clipwan

    defs = {}
    for nid, cls in comfyui_clipwan.NODE_CLASS_MAPPINGS.items():
        defs[nid] = definition_from_class(nid, cls)
        defs[nid]["display_name"] = comfyui_clipwan.NODE_DISPLAY_NAME_MAPPINGS.get(nid, nid)
    return defs


def core_definitions() -> dict[str, dict]:
    return json.loads(CORE_DEFS_FILE.read_text())["nodes"]


def all_definitions() -> dict[str, dict]:
    defs = core_definitions()
    ours = pack_definitions()
    clash = set(defs) & set(ours)
    if clash:
        raise ValueError(f"pack node ids shadow core ids (ComfyUI would ignore them): {sorted(clash)}")
    defs.update(ours)
    return defs


def input_type(spec) -> str:
    """'INT', 'COMBO', 'IMAGE', ... for an input spec as /object_info or INPUT_TYPES give it."""
    kind = spec[0]
    if isinstance(kind, (list, tuple)):
        return "COMBO"
    return str(kind)


def input_options(spec) -> dict:
    return dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}


def combo_choices(spec) -> list:
    if isinstance(spec[0], (list, tuple)):
        return list(spec[0])
    return list(input_options(spec).get("options", []))


def is_widget(spec) -> bool:
    return input_type(spec) in WIDGET_TYPES and not input_options(spec).get("forceInput", False)


def ordered_inputs(defn: dict) -> list[tuple[str, Any, bool]]:
    """(name, spec, required) in the node's declared order; hidden inputs excluded."""
    out = []
    for section in ("required", "optional"):
        specs = defn["input"].get(section, {})
        order = defn.get("input_order", {}).get(section, list(specs))
        out += [(name, specs[name], section == "required") for name in order]
    return out


def has_seed_control(name: str, spec) -> bool:
    opts = input_options(spec)
    if "control_after_generate" in opts:
        return bool(opts["control_after_generate"])
    return input_type(spec) == "INT" and name in SEED_NAMES


def has_upload_widget(spec) -> bool:
    options = input_options(spec)
    return bool(options.get("image_upload") or options.get("video_upload"))


def widget_slots(defn: dict) -> list[tuple[str | None, Any]]:
    """The widgets_values layout: (input name or None for a front-end-only value, spec)."""
    slots = []
    for name, spec, _ in ordered_inputs(defn):
        if not is_widget(spec):
            continue
        slots.append((name, spec))
        if has_seed_control(name, spec):
            slots.append((None, "control_after_generate"))
        if has_upload_widget(spec):
            slots.append((None, "image_upload"))
    return slots


def default_value(spec):
    opts = input_options(spec)
    if "default" in opts:
        return opts["default"]
    kind = input_type(spec)
    if kind == "COMBO":
        choices = combo_choices(spec)
        return choices[0] if choices else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


# --------------------------------------------------------------------------------------------------
# UI -> API
# --------------------------------------------------------------------------------------------------
def ui_to_api(workflow: dict, defs: dict[str, dict]) -> dict:
    """Convert a UI-format workflow to the API prompt the ComfyUI page would queue for it."""
    links = {link[0]: link for link in workflow["links"]}
    prompt = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        if node.get("mode", 0) in (2, 4) or node["type"] in VIRTUAL_NODES:  # muted/bypassed/notes: not sent
            continue
        defn = defs[node["type"]]
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values", []))
        for (name, _spec), value in zip(widget_slots(defn), values):
            if name is not None:
                inputs[name] = value
        for slot in node.get("inputs", []):
            if slot.get("link") is None:
                continue
            link = links[slot["link"]]
            inputs[slot["name"]] = [str(link[1]), link[2]]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs,
                                   "_meta": {"title": node.get("title") or defn.get("display_name") or node["type"]}}
    return prompt


# --------------------------------------------------------------------------------------------------
# Building workflows from a compact description
# --------------------------------------------------------------------------------------------------
class Link:
    """A reference to another node's output in a workflow description: Link("loader", "CLIP_VISION")."""

    def __init__(self, node: str, output: str | int = 0):
        self.node, self.output = node, output


def _output_index(defn: dict, output: str | int) -> int:
    if isinstance(output, int):
        return output
    names = defn.get("output_name") or defn["output"]
    if output in names:
        return names.index(output)
    if output in defn["output"]:
        return defn["output"].index(output)
    raise KeyError(f"{defn['name']} has no output {output!r} (outputs: {names})")


def build_ui(spec: dict, defs: dict[str, dict]) -> dict:
    """UI-format workflow from ``{"nodes": [(key, class_type, {input: value | Link}, title?)], "note": str,
    "models": {file: (url, directory)}, "title": str}``: a Markdown note first (column 0), then the graph left to right, each
    node as tall as the page draws it so none overlaps another; loaders carry ``properties.models`` (name,
    url, directory) for the files they name, which the page's Missing Models panel offers to download."""
    keys = [n[0] for n in spec["nodes"]]
    ids = {key: i + 1 for i, key in enumerate(keys)}
    node_specs = {n[0]: n for n in spec["nodes"]}
    downloads = spec.get("models", {})

    # Column = longest path from a source, so the graph reads left to right.
    depth: dict[str, int] = {}

    def node_depth(key: str) -> int:
        if key not in depth:
            parents = [v.node for v in node_specs[key][2].values() if isinstance(v, Link)]
            depth[key] = 1 + max((node_depth(p) for p in parents), default=-1)
        return depth[key]

    for key in keys:
        node_depth(key)
    note_height = 0
    if spec.get("note"):
        note_height = 60 + 20 * (spec["note"].count("\n") + 1 + len(spec["note"]) // 70)
    x0 = 60 + (NOTE_WIDTH + GAP if spec.get("note") else 0)
    rows: dict[int, int] = {}
    links, nodes = [], []
    out_links: dict[tuple[str, int], list[int]] = {}
    for order, key in enumerate(sorted(keys, key=lambda k: (depth[k], keys.index(k)))):
        _, class_type, given, *rest = node_specs[key]
        defn = defs[class_type]
        unknown = set(given) - {name for name, _, _ in ordered_inputs(defn)}
        if unknown:
            raise KeyError(f"{class_type} has no input(s) {sorted(unknown)}")
        inputs, widgets, files = [], [], []
        for name, ispec, required in ordered_inputs(defn):
            value = given.get(name)
            if is_widget(ispec) and not isinstance(value, Link):
                widgets.append(default_value(ispec) if value is None else value)
                if isinstance(value, str) and value in downloads:
                    files.append(value)
                if has_seed_control(name, ispec):
                    widgets.append("fixed")
                if has_upload_widget(ispec):
                    widgets.append("image")
                continue
            slot = {"name": name, "type": input_type(ispec), "link": None}
            if is_widget(ispec):
                # A widget fed by a link (e.g. a STRING from another node): the front end keeps an input
                # slot naming the widget, and the widget's value stays in widgets_values.
                slot["widget"] = {"name": name}
                widgets.append(default_value(ispec))
                if has_seed_control(name, ispec):
                    widgets.append("fixed")
            if isinstance(value, Link):
                src_def = defs[node_specs[value.node][1]]
                src_slot = _output_index(src_def, value.output)
                link_id = len(links) + 1
                links.append([link_id, ids[value.node], src_slot, ids[key], len(inputs), src_def["output"][src_slot]])
                out_links.setdefault((value.node, src_slot), []).append(link_id)
                slot["link"] = link_id
            elif required:
                raise ValueError(f"{key} ({class_type}): required input {name!r} is not connected")
            inputs.append(slot)
        col = depth[key]
        row = rows.get(col, 0)
        height = 40 + 26 * (len(inputs) + len(widgets) + len(defn["output"])) + EXTRA_HEIGHT.get(class_type, 0)
        rows[col] = row + height + TITLE_HEIGHT + GAP
        properties = {"Node name for S&R": class_type}
        if files:
            properties["models"] = [{"name": f, "url": downloads[f][0], "directory": downloads[f][1]} for f in files]
        node = {"id": ids[key], "type": class_type, "pos": [x0 + 400 * col, 60 + TITLE_HEIGHT + row],
                "size": [350, height], "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": [],
                "properties": properties, "widgets_values": widgets}
        if rest and rest[0]:
            node["title"] = rest[0]
        nodes.append(node)
    by_key = {ids[k]: k for k in keys}
    for node in nodes:
        defn = defs[node["type"]]
        names = defn.get("output_name") or defn["output"]
        for i, (otype, oname) in enumerate(zip(defn["output"], names)):
            node["outputs"].append({"name": oname, "type": otype,
                                    "links": out_links.get((by_key[node["id"]], i), []), "slot_index": i})
    nodes.sort(key=lambda n: n["id"])
    if spec.get("note"):
        nodes.append({"id": len(nodes) + 1, "type": "MarkdownNote", "pos": [60, 60 + TITLE_HEIGHT],
                      "size": [NOTE_WIDTH, note_height], "flags": {}, "order": len(nodes), "mode": 0,
                      "inputs": [], "outputs": [], "properties": {}, "widgets_values": [spec["note"]],
                      "title": "Read me"})
    return {"last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {},
            "extra": {"info": {"title": spec.get("title", ""), "description": spec.get("description", "")}},
            "version": 0.4}


def node_boxes(workflow: dict) -> dict[int, tuple[float, float, float, float]]:
    """``{id: (x0, y0, x1, y1)}`` of every node as drawn, title bar included."""
    return {n["id"]: (n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
            for n in workflow["nodes"]}


def overlaps(boxes: dict) -> list[tuple[int, int]]:
    ids = sorted(boxes)
    return [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]
            if boxes[a][0] < boxes[b][2] and boxes[b][0] < boxes[a][2]
            and boxes[a][1] < boxes[b][3] and boxes[b][1] < boxes[a][3]]


def write_examples() -> list[pathlib.Path]:
    from workflow_cards import card_bytes  # noqa: E402  (sibling modules; run from tests/)
    from workflow_specs import WORKFLOWS  # noqa: E402

    defs = all_definitions()
    API_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for name, spec in WORKFLOWS.items():
        ui = build_ui(spec, defs)
        api = ui_to_api(ui, defs)
        for path, data in ((WORKFLOW_DIR / f"{name}.json", ui), (API_DIR / f"{name}.json", api)):
            path.write_text(json.dumps(data, indent=2) + "\n")
            written.append(path)
        thumb = WORKFLOW_DIR / f"{name}.jpg"  # the template browser's card (tests/workflow_cards.py)
        thumb.write_bytes(card_bytes(spec["title"], spec["card"]))
        written.append(thumb)
    return written


# --------------------------------------------------------------------------------------------------
# Recording core definitions from a running ComfyUI
# --------------------------------------------------------------------------------------------------
# Inputs whose choices are the files on the recording machine: recorded as empty lists marked
# "file_list", so the test accepts any name there (the workflows name the files users download).
FILE_LIST_INPUTS = {("CLIPLoader", "clip_name"), ("CLIPVisionLoader", "clip_name"), ("VAELoader", "vae_name"),
                    ("UNETLoader", "unet_name"), ("LoadImage", "image"), ("LoadVideo", "file")}


def is_file_list(spec) -> bool:
    return bool(input_options(spec).get("file_list"))


def record_core_definitions(object_info: dict, node_ids, comfy_commit: str) -> dict:
    """Trim /object_info to the core nodes the workflows use (the fields a workflow depends on)."""
    nodes = {}
    for nid in sorted(node_ids):
        d = json.loads(json.dumps(object_info[nid]))
        for section in ("required", "optional"):
            for name, ispec in d["input"].get(section, {}).items():
                if (nid, name) in FILE_LIST_INPUTS:
                    d["input"][section][name] = [[], {**input_options(ispec), "file_list": True}]
        keep = ("input", "input_order", "output", "output_name", "output_is_list", "name", "display_name",
                "category", "output_node", "python_module")
        nodes[nid] = {k: d[k] for k in keep if k in d}
    return {"recorded_from": f"ComfyUI commit {comfy_commit}, GET /object_info", "nodes": nodes}


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import workflow_format  # the module itself, so workflow_specs' Link is the same class

    for p in workflow_format.write_examples():
        print("wrote", p.relative_to(ROOT))
