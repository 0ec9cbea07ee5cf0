"""Every example workflow against the node definitions it depends on (no ComfyUI needed, < 10 s).

The pack's own definitions come from NODE_CLASS_MAPPINGS (INPUT_TYPES), core ones from
tests/data/core_object_info.json (recorded from a real ComfyUI's /object_info). A renamed or retyped input,
a changed widget, a removed node or a link between mismatched types fails here, naming file, node and input.
The integration suite (tests/integration) additionally opens the workflows in the real ComfyUI page and
checks that its own UI→API conversion gives the committed API twins.
"""

from __future__ import annotations

import copy
import json
import math
import pathlib
import shutil
import subprocess

import pytest

import workflow_format as wf

UI_FILES = sorted(wf.WORKFLOW_DIR.glob("*.json"))
API_FILES = sorted(wf.API_DIR.glob("*.json"))
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov")  # LoadVideo's file list


@pytest.fixture(scope="module")
def defs():
    return wf.all_definitions()


def _check_value(where: str, spec, value) -> list[str]:
    kind, opts = wf.input_type(spec), wf.input_options(spec)
    if kind == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"{where}: expected an integer, got {value!r}"]
    elif kind == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return [f"{where}: expected a number, got {value!r}"]
    elif kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: expected true/false, got {value!r}"]
    elif kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: expected a string, got {value!r}"]
    elif kind == "COMBO":
        choices = wf.combo_choices(spec)
        if wf.is_file_list(spec) or choices in ([], ["none"]):
            # Model/image file lists depend on the machine (and are empty outside ComfyUI for our nodes; an optional
            # file such as lora_name / vace_name lists only "none" there).
            ok = isinstance(value, str) and (value in choices or value.lower().endswith(
                wf.MODEL_EXTENSIONS + IMAGE_EXTENSIONS + VIDEO_EXTENSIONS))
            return [] if ok else [f"{where}: expected a model, image or video file name, got {value!r}"]
        return [] if value in choices else [f"{where}: {value!r} is not one of {choices}"]
    if kind in ("INT", "FLOAT"):
        lo, hi = opts.get("min", -math.inf), opts.get("max", math.inf)
        if not lo <= value <= hi:
            return [f"{where}: {value} outside [{lo}, {hi}]"]
    return []


def _types_match(out_type: str, in_type: str) -> bool:
    return out_type == in_type or "*" in (out_type, in_type) or \
        in_type in out_type.split(",") or out_type in in_type.split(",")


def validate_ui(workflow: dict, defs: dict) -> list[str]:
    """Problems in a UI-format workflow, each naming node id, type and input."""
    errors = []
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    for node in workflow["nodes"]:
        tag = f"node {node['id']} ({node['type']})"
        if node["type"] in wf.VIRTUAL_NODES:
            continue
        defn = defs.get(node["type"])
        if defn is None:
            errors.append(f"{tag}: unknown node type")
            continue
        declared = {name: (spec, req) for name, spec, req in wf.ordered_inputs(defn)}
        linked = set()
        for slot_index, slot in enumerate(node.get("inputs", [])):
            name = slot["name"]
            if name not in declared:
                errors.append(f"{tag}: input {name!r} does not exist (inputs: {sorted(declared)})")
                continue
            spec, _ = declared[name]
            want = wf.input_type(spec)
            if slot["type"] != want and not (wf.is_widget(spec) and slot.get("widget")):
                errors.append(f"{tag}: input {name!r} has type {slot['type']}, node declares {want}")
            if slot.get("link") is not None:
                link = links.get(slot["link"])
                if link is None or link[3] != node["id"] or link[4] != slot_index:
                    errors.append(f"{tag}: input {name!r} refers to a missing or mismatched link {slot['link']}")
                else:
                    linked.add(name)
        for name, (spec, required) in declared.items():
            if required and not wf.is_widget(spec) and name not in linked:
                errors.append(f"{tag}: required input {name!r} is not connected")
        slots = wf.widget_slots(defn)
        values = node.get("widgets_values", [])
        if len(values) != len(slots):
            errors.append(f"{tag}: {len(values)} widget values for {len(slots)} widgets "
                          f"{[n or s for n, s in slots]}")
        for (name, spec), value in zip(slots, values):
            if name is None:
                ok = value in wf.SEED_CONTROL_VALUES if spec == "control_after_generate" else value == "image"
                if not ok:
                    errors.append(f"{tag}: front-end widget {spec} has value {value!r}")
            else:
                errors += _check_value(f"{tag}: widget {name!r}", spec, value)
        outs = defn["output"]
        if len(node.get("outputs", [])) != len(outs):
            errors.append(f"{tag}: {len(node.get('outputs', []))} outputs, node declares {len(outs)}")
    for link in workflow["links"]:
        link_id, src, src_slot, dst, dst_slot, ltype = link
        if src not in nodes or dst not in nodes:
            errors.append(f"link {link_id}: connects missing node {src if src not in nodes else dst}")
            continue
        sdef = defs.get(nodes[src]["type"])
        if sdef is None:
            continue
        if src_slot >= len(sdef["output"]):
            errors.append(f"link {link_id}: node {src} ({nodes[src]['type']}) has no output {src_slot}")
            continue
        out_type = sdef["output"][src_slot]
        in_slot = nodes[dst]["inputs"][dst_slot] if dst_slot < len(nodes[dst].get("inputs", [])) else None
        if in_slot is None:
            errors.append(f"link {link_id}: node {dst} has no input slot {dst_slot}")
            continue
        if not (_types_match(out_type, ltype) and _types_match(out_type, in_slot["type"])):
            errors.append(f"link {link_id}: {nodes[src]['type']} output {out_type} → {nodes[dst]['type']}."
                          f"{in_slot['name']} ({in_slot['type']}), link says {ltype}")
        if link_id not in (nodes[src]["outputs"][src_slot].get("links") or []):
            errors.append(f"link {link_id}: not listed on node {src}'s output {src_slot}")
    return errors


def validate_api(prompt: dict, defs: dict) -> list[str]:
    """Problems in an API-format prompt, checked the way ComfyUI's /prompt validation would."""
    errors = []
    for node_id, node in prompt.items():
        tag = f"node {node_id} ({node.get('class_type')})"
        defn = defs.get(node.get("class_type"))
        if defn is None:
            errors.append(f"{tag}: unknown node type")
            continue
        declared = {name: (spec, req) for name, spec, req in wf.ordered_inputs(defn)}
        for name, value in node["inputs"].items():
            if name not in declared:
                errors.append(f"{tag}: input {name!r} does not exist (inputs: {sorted(declared)})")
                continue
            spec, _ = declared[name]
            if isinstance(value, list):
                src = prompt.get(str(value[0]))
                if src is None:
                    errors.append(f"{tag}: input {name!r} links to missing node {value[0]}")
                    continue
                out_type = defs[src["class_type"]]["output"][value[1]]
                if not _types_match(out_type, wf.input_type(spec)):
                    errors.append(f"{tag}: input {name!r} ({wf.input_type(spec)}) fed {out_type}")
            elif not wf.is_widget(spec):
                errors.append(f"{tag}: input {name!r} needs a link, got {value!r}")
            else:
                errors += _check_value(f"{tag}: input {name!r}", spec, value)
        for name, (spec, required) in declared.items():
            if required and name not in node["inputs"]:
                errors.append(f"{tag}: required input {name!r} missing")
    return errors


def _load(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())


def test_examples_exist_for_every_pack_node():
    import comfyui_clipwan

    assert UI_FILES, "no example workflows"
    used = {n["type"] for p in UI_FILES for n in _load(p)["nodes"]}
    missing = sorted(set(comfyui_clipwan.NODE_CLASS_MAPPINGS) - used)
    assert missing == [], f"pack nodes no example workflow shows: {missing}"


def test_ui_and_api_files_pair_up():
    assert [p.name for p in UI_FILES] == [p.name for p in API_FILES]
    for path in UI_FILES:
        assert "nodes" in _load(path) and "links" in _load(path), f"{path.name} is not UI format"
    for path in API_FILES:
        assert all("class_type" in n for n in _load(path).values()), f"api/{path.name} is not API format"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_ui_workflow_matches_node_definitions(path, defs):
    assert validate_ui(_load(path), defs) == []


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.stem)
def test_api_twin_is_valid_and_equals_the_ui_workflow(path, defs):
    prompt = _load(path)
    assert validate_api(prompt, defs) == []
    assert wf.ui_to_api(_load(wf.WORKFLOW_DIR / path.name), defs) == prompt


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_workflow_reads_well_on_the_canvas(path):
    """No node covers another (title bars and Load Image's picture included), a note says which checkpoints
    the graph is for, and the template browser finds a thumbnail next to the file."""
    workflow = _load(path)
    assert wf.overlaps(wf.node_boxes(workflow)) == []
    notes = [n for n in workflow["nodes"] if n["type"] == "MarkdownNote"]
    assert len(notes) == 1 and "Checkpoint" in notes[0]["widgets_values"][0]
    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"{thumb.name} missing (python tests/workflow_format.py writes it)"
    from PIL import Image

    with Image.open(thumb) as im:
        assert im.format == "JPEG" and im.size == (400, 240)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.stem)
def test_loaders_carry_download_metadata_for_the_files_they_name(path, defs):
    """Every model file a widget names that has a public download gets properties.models {name, url,
    directory} on its node, as core templates do: the page's Missing Models panel then offers Download."""
    from workflow_specs import MODELS

    from comfyui_clipwan.wan.sampling.presets import alternative_names

    for node in _load(path)["nodes"]:
        named = [v for v in node.get("widgets_values", []) if isinstance(v, str) and v in MODELS]
        listed = node["properties"].get("models", [])
        assert [m["name"] for m in listed] == named, (path.name, node["type"])
        for m in listed:
            url, directory = MODELS[m["name"]]
            assert m == {"name": m["name"], "url": url, "directory": directory}
            # the URL ends with the file's name, or with its authors' name where the presets table gives it an
            # identifying one (longlive_lora.pt <- .../lora.pt)
            published = [m["name"]] + alternative_names(m["name"])
            assert url.startswith("https://huggingface.co/") and any(url.endswith("/" + n) for n in published)


def test_overlap_check_can_fail():
    boxes = wf.node_boxes({"nodes": [{"id": 1, "pos": [0, 30], "size": [100, 100]},
                                     {"id": 2, "pos": [50, 120], "size": [100, 100]},
                                     {"id": 3, "pos": [200, 30], "size": [10, 10]}]})
    assert wf.overlaps(boxes) == [(1, 2)]


def test_validators_catch_a_renamed_input_and_a_retyped_link(defs):
    """The checks above can fail: rename one input of a pack node / change one link type, see it reported."""
    path = next(p for p in UI_FILES if any(n["type"] == "CausalWanSampler" for n in _load(p)["nodes"]))
    workflow = _load(path)
    node = next(n for n in workflow["nodes"] if n["type"] == "CausalWanSampler")
    renamed = copy.deepcopy(defs)
    req = renamed["CausalWanSampler"]["input"]["required"]
    old = node["inputs"][0]["name"]
    section = "required" if old in req else "optional"
    specs = renamed["CausalWanSampler"]["input"][section]
    specs[old + "_renamed"] = specs.pop(old)
    order = renamed["CausalWanSampler"]["input_order"][section]
    order[order.index(old)] = old + "_renamed"
    errors = validate_ui(workflow, renamed)
    assert f"node {node['id']} (CausalWanSampler): input {old!r} does not exist" in "\n".join(errors)
    prompt = _load(wf.API_DIR / path.name)
    assert any(f"input {old!r} does not exist" in e for e in validate_api(prompt, renamed))

    broken = copy.deepcopy(workflow)
    broken["links"][0][5] = "NOT_A_TYPE"
    assert any(e.startswith(f"link {broken['links'][0][0]}:") for e in validate_ui(broken, defs))


def test_core_definitions_are_recorded_for_every_core_node_used():
    core = wf.core_definitions()
    import comfyui_clipwan

    used = {n["type"] for p in UI_FILES for n in _load(p)["nodes"]} - set(comfyui_clipwan.NODE_CLASS_MAPPINGS)
    used -= wf.VIRTUAL_NODES
    assert sorted(used - set(core)) == []
    assert sorted(set(core) - used) == [], "recorded core nodes no workflow uses (trim tests/data)"


# --------------------------------------------------------------------------------------------------
# web/clipwan_logic.js under Node (skipped when node is not installed)
# --------------------------------------------------------------------------------------------------
NODE = shutil.which("node")


def _run_js(body: str):
    logic = (wf.ROOT / "web" / "clipwan_logic.js").as_uri()
    script = f"import * as L from {json.dumps(logic)};\nconst out = await (async () => {{ {body} }})();\n" \
             "process.stdout.write(JSON.stringify(out));"
    done = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_presets_table_sets_real_sampler_widgets(defs):
    """The web menu's presets (GET /clipwan/presets = wan.sampling.presets.web_payload) name real widgets with valid
    values, and they are the authors' numbers."""
    from comfyui_clipwan.wan.sampling.presets import web_payload

    presets = web_payload()
    sampler = {name: spec for name, spec, _ in wf.ordered_inputs(defs["CausalWanSampler"]) if wf.is_widget(spec)}
    assert {"Self-Forcing", "CausVid", "LongLive 1.0", "Causal Forcing chunk-wise", "Causal Forcing frame-wise",
            "Rolling Forcing", "Reward Forcing", "Krea Realtime 14B"} <= set(presets)
    for name, preset in presets.items():
        for widget, value in preset["values"].items():
            assert widget in sampler, f"preset {name}: CausalWanSampler has no widget {widget!r}"
            assert _check_value(f"preset {name} {widget}", sampler[widget], value) == []
    longlive = presets["LongLive 1.0"]
    assert (longlive["values"]["sink_size"], longlive["values"]["local_window"]) == (3, 12)
    assert (longlive["model_file"], longlive["lora_file"], longlive["checkpoint_entry"]) == (
        "longlive_base.pt", "longlive_lora.pt", "generator")
    # CausVid's steps are fed unwarped, σ from its shift-8 grid
    assert (presets["CausVid"]["values"]["shift"], presets["CausVid"]["values"]["warp_steps"]) == (8.0, False)


@pytest.mark.skipif(NODE is None, reason="node (JavaScript) is not installed")
def test_web_menu_labels_and_applies_python_presets():
    from comfyui_clipwan.wan.sampling.presets import web_payload

    payload = json.dumps(web_payload(["LongLive 1.0", "CausVid"]))
    out = _run_js(f"""
      const presets = {payload};
      const fired = [];
      const widgets = [{{name: "steps", value: "4", callback: (v) => fired.push(["steps", v])}},
                       {{name: "shift", value: 1}}, {{name: "warp_steps", value: true}},
                       {{name: "family", value: "custom", callback: (v) => fired.push(["family", v])}}];
      const missing = L.applyPreset(widgets, presets["CausVid"]);
      for (const w of widgets) delete w.callback;
      const cond = [{{name: "width", value: 832}}, {{name: "length", value: 81}}];
      const lengths = [L.applyLength(cond, presets["CausVid"]), L.applyLength([{{name: "x", value: 1}}], presets["CausVid"])];
      const chosen = [L.familyChosen(presets, "CausVid") === presets["CausVid"], L.familyChosen(presets, "custom"),
                      L.familyChosen(presets, "toString"), L.familyChosen(null, "CausVid")];
      return {{cond, lengths, labels: Object.entries(presets).map(([n, p]) => L.presetLabel(n, p)), widgets, missing,
               details: Object.entries(presets).map(([n, p]) => L.presetDetails(n, p)),
               hidden: [L.hiddenKnobs(presets["CausVid"]), L.hiddenKnobs(presets["LongLive 1.0"]), L.hiddenKnobs(null)],
               fired, chosen, path: L.PRESETS_PATH, family: L.FAMILY_WIDGET}};""")
    assert out["labels"] == ["LongLive 1.0 · 481 frames", "CausVid · 85 frames"]
    assert out["details"] == [
        "LongLive 1.0 — sink 3 + window 12 (flat memory), LoRA merged at load (length 481, longlive_base.pt, "
        "+ LoRA longlive_lora.pt, entry generator)",
        "CausVid — 3 unwarped steps at shift 8, blocks of 3 (length 85, causvid_model.pt, entry generator)"]
    # the family's knobs: CausVid attends everything, so its sink and window stay hidden; custom shows all; the
    # multi-shot settings show for LongLive 2.0 only (its scene cuts)
    multi_shot = ["multi_shot_sink", "multi_shot_rope_offset", "scene_cut_prefix"]
    assert out["hidden"] == [["sink_size", "local_window"] + multi_shot, multi_shot, []]
    assert out["widgets"] == [{"name": "steps", "value": "1000,757,522"}, {"name": "shift", "value": 8.0},
                              {"name": "warp_steps", "value": False}, {"name": "family", "value": "CausVid"}]
    assert sorted(out["missing"]) == sorted(["frames_per_block", "guidance_scale", "independent_first_frame",
                                             "local_window", "sink_size"] + multi_shot)
    # the family combo is set with the other widgets, but its own callback (which applies a preset) is not fired
    assert out["fired"] == [["steps", "1000,757,522"]]
    # picking a family in the combo applies its entry; "custom" (or an unknown name) leaves the widgets alone
    assert out["chosen"] == [True, None, None, None]
    assert (out["path"], out["family"]) == ("/clipwan/presets", "family")
    # the template's 81 frames (21 latent) do not fit 1 + 3k: the conditioning node's length becomes 85
    assert out["cond"] == [{"name": "width", "value": 832}, {"name": "length", "value": 85}]
    assert out["lengths"] == [{"before": 81, "after": 85}, None]


@pytest.mark.skipif(NODE is None, reason="node (JavaScript) is not installed")
def test_web_logic_decodes_frames_reports_and_applies_presets():
    out = _run_js("""
      const widgets = [{name: "shift", value: 1}, {name: "frames_per_block", value: 1}];
      const missing = L.applyPreset(widgets, {values: {shift: 5.0, frames_per_block: 3, nope: 1}});
      return {
        decoded: L.decodeFramePayload({node: "7", block: 1, total_blocks: 4,
                                       frames: ["iVBORw0KGgo=", "/9j/4AAQ", "data:image/webp;base64,UklGR", 3]}),
        empty: L.decodeFramePayload(null),
        report: [L.reportText({report: ["a", "b"]}), L.reportText({text: "t"}), L.reportText({})],
        widgets, missing,
      };""")
    assert out["decoded"] == {"urls": ["data:image/png;base64,iVBORw0KGgo=", "data:image/jpeg;base64,/9j/4AAQ",
                                       "data:image/webp;base64,UklGR"], "block": 1, "totalBlocks": 4}
    assert out["empty"] == {"urls": [], "block": 0, "totalBlocks": 0}
    assert out["report"] == ["a\nb", "t", ""]
    assert out["widgets"] == [{"name": "shift", "value": 5.0}, {"name": "frames_per_block", "value": 3}]
    assert out["missing"] == ["nope"]


# The presets submenu was 1,430 px wide with the notes in its labels and covered its parent menu; a label is the
# family and the length it sets (the rest is logged when a preset is applied). 48 characters at the menu's 13 px
# font is about 330 px.
MAX_MENU_LABEL = 48


@pytest.mark.skipif(NODE is None, reason="node (JavaScript) is not installed")
def test_presets_menu_labels_are_short():
    from comfyui_clipwan.wan.sampling.presets import web_payload

    payload = web_payload()
    labels = _run_js(f"const p = {json.dumps(payload)}; return Object.entries(p).map(([n, x]) => L.presetLabel(n, x));")
    assert len(labels) == len(payload) and all(name in label for name, label in zip(payload, labels))
    assert max(len(label) for label in labels) <= MAX_MENU_LABEL, labels
    # the check can fail: the old label (note and files) of the longest family is far longer
    old = _run_js(f"const p = {json.dumps(payload)}; return Object.entries(p).map(([n, x]) => L.presetDetails(n, x));")
    assert max(len(label) for label in old) > 2 * MAX_MENU_LABEL
