"""Every example workflow of every earlier version of this repository still loads and runs.

The earlier versions are this checkout's own git history: each commit that changed ``example_workflows/`` and
every workflow file at that commit (``git log --format=%H -- example_workflows/``, ``git show sha:path``),
written into a temporary folder at test time. Without history (a shallow clone, an sdist) the tests skip.

* UI format: ComfyUI's page restores ``widgets_values`` by position. Read with the layout of the version that
  saved them (``settings_spec.migrate_widget_values``, what web/clipwan.js's ``onConfigure`` does through
  ``migrateWidgetValues``), each causal node's values equal the inputs of that commit's own API twin (written
  from the node definitions of the time) and pass today's definitions; read by position (no migration) the
  oldest sampler's values do not (the check can fail).
* API format: each causal node of each earlier prompt runs through today's node classes on tiny models (inputs
  added since are optional, with the old behaviour as default; ComfyUI would refuse a missing *required* one
  with ``required_input_missing``) and gives what ``sample_causal`` gives with that version's settings spelled
  out by hand.
"""

import hashlib
import json
import pathlib
import shutil
import subprocess

import pytest
import torch

import workflow_format as wf
from test_workflows import _check_value, validate_api

from comfyui_clipwan.nodes.settings_nodes import CAUSAL_NODES, widget_layouts_payload
from comfyui_clipwan.nodes.stream_nodes import CausalWanStreamVideo
from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler
from comfyui_clipwan.wan import CausalSettings, CausalWanModel, WanConfig, denormalize, sample_causal
from comfyui_clipwan.wan.sampling import settings_spec as spec
from comfyui_clipwan.wan.sampling.presets import family_preset
from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig
from comfyui_clipwan.wan.video.writer import read_video_frames

ROOT = wf.ROOT
NODE = shutil.which("node")
T2V = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16, text_dim=32, text_len=8)
TI2V = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=48, out_dim=48, text_dim=32, text_len=8)


def _git(*args) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """``[(commit, relative path, file)]`` of every example workflow at every commit of main that changed them (a file
    whose content an earlier entry has is listed once)."""
    try:
        if _git("rev-parse", "--is-shallow-repository").strip() == "true":
            pytest.skip("shallow clone: the earlier versions of example_workflows/ are not in this checkout")
        # main's own states (first parent): what users could save; a merged branch's in-between states were never
        # published (two branches adding widgets to the same layout version have layouts only their merge settles)
        commits = _git("log", "--first-parent", "--format=%H", "--", "example_workflows/").split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no git history (not a git checkout, or git is not installed)")
    if len(commits) < 2:
        pytest.skip("no earlier version of example_workflows/ in this checkout's history")
    root = tmp_path_factory.mktemp("workflow_history")
    seen, out = set(), []
    for sha in commits:
        for rel in _git("ls-tree", "-r", "--name-only", sha, "--", "example_workflows/").split():
            if not rel.endswith(".json"):
                continue
            text = _git("show", f"{sha}:{rel}")
            path = root / sha[:10] / rel  # every file of the commit, so a UI file finds its API twin beside it
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest not in seen:
                seen.add(digest)
                out.append((sha, rel, path))
    return out


def _causal_ui_nodes(history):
    for sha, rel, path in history:
        if "/api/" in rel:
            continue
        workflow = json.loads(path.read_text())
        twin_path = path.parent / "api" / path.name
        twin = json.loads(twin_path.read_text()) if twin_path.exists() else None
        for node in workflow["nodes"]:
            if node["type"] in CAUSAL_NODES:
                yield sha, rel, workflow, twin, node


def test_history_has_the_versions_that_changed_the_sampler(history):
    layouts = {len(n["widgets_values"]) for _, _, _, _, n in _causal_ui_nodes(history)
               if n["type"] == "CausalWanSampler"}
    # before warp_steps (12 values), with it (13), with family (14): every layout the sampler had
    assert layouts == {len(names) for names in spec.widget_layouts(spec.SAMPLER)}


def test_ui_workflows_of_earlier_versions_load_by_name(history):
    defs = wf.all_definitions()
    checked = shifted = 0
    for sha, rel, workflow, twin, node in _causal_ui_nodes(history):
        kind = CAUSAL_NODES[node["type"]]
        where = f"{sha[:10]}:{rel} node {node['id']} ({node['type']})"
        named = spec.migrate_widget_values(kind, node["widgets_values"])
        current = {name: s for name, s, _ in wf.ordered_inputs(defs[node["type"]])}
        for name, value in named.items():
            if name != spec.SEED_CONTROL:
                assert _check_value(f"{where} {name}", current[name], value) == []
        if twin is not None:  # the prompt that version's own definitions made from the same widgets
            inputs = twin[str(node["id"])]["inputs"]
            widgets = {k: v for k, v in inputs.items() if not isinstance(v, list)}
            assert {k: named[k] for k in widgets} == widgets, where
            positional = dict(zip(spec.widget_layouts(kind)[-1], node["widgets_values"]))
            shifted += any(positional.get(k) != v for k, v in widgets.items())
        # the migrated node, saved again with today's layout, makes a valid prompt for today's definitions
        defaults = spec.widget_defaults(kind)
        node["widgets_values"] = [named.get(name, defaults.get(name, "fixed"))
                                  for name in spec.widget_layouts(kind)[-1]]
        prompt = wf.ui_to_api({"nodes": [node], "links": workflow["links"]}, defs)[str(node["id"])]
        assert {k: v for k, v in prompt["inputs"].items() if k in named} == \
            {k: v for k, v in named.items() if k != spec.SEED_CONTROL}, where
        checked += 1
    assert checked >= 10
    assert shifted >= 1  # read by position, the workflows saved before warp_steps put values one widget off


@pytest.mark.skipif(NODE is None, reason="node (JavaScript) is not installed")
def test_web_migration_reads_the_same_names_as_python(history):
    payload = widget_layouts_payload()
    cases = [(n["type"], n["widgets_values"]) for _, _, _, _, n in _causal_ui_nodes(history)]
    logic = (ROOT / "web" / "clipwan_logic.js").as_uri()
    script = (f"import * as L from {json.dumps(logic)};\nconst p = {json.dumps(payload)};\n"
              f"const cases = {json.dumps(cases)};\n"
              "const out = cases.map(([type, values]) => {\n"
              "  const named = L.migrateWidgetValues(p[type].layouts, values);\n"
              "  const widgets = p[type].layouts.at(-1).map((name) => ({name, value: 'positional'}));\n"
              "  if (named) L.restoreByName(widgets, named, p[type].defaults);\n"
              "  return {named, widgets};\n"
              "});\nprocess.stdout.write(JSON.stringify(out));")
    done = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    for (node_type, values), got in zip(cases, json.loads(done.stdout)):
        kind = CAUSAL_NODES[node_type]
        if len(values) == len(spec.widget_layouts(kind)[-1]):
            assert got["named"] is None  # the current layout: ComfyUI's positional restore is right
            continue
        assert got["named"] == spec.migrate_widget_values(kind, values)
        restored = {w["name"]: w["value"] for w in got["widgets"]}
        assert restored == {**spec.widget_defaults(kind), **got["named"]} | \
            {spec.SEED_CONTROL: got["named"][spec.SEED_CONTROL]}


# --------------------------------------------------------------------------------------------------
# API prompts of earlier versions, run
# --------------------------------------------------------------------------------------------------
def _causal_api_nodes(history):
    """Distinct (class_type, widget inputs, Wan 2.2?) of every earlier API prompt's causal nodes."""
    seen = {}
    for sha, rel, path in history:
        if "/api/" not in rel:
            continue
        prompt = json.loads(path.read_text())
        wan22 = any(n["class_type"] == "Wan22ImageToVideoLatent" for n in prompt.values())
        for nid, node in prompt.items():
            if node["class_type"] in CAUSAL_NODES:
                if str(node["inputs"].get("family", "")).startswith("Matrix-Game"):
                    continue  # needs a Matrix-Game action model (tests/test_matrix_game.py runs that template)
                widgets = {k: v for k, v in node["inputs"].items() if not isinstance(v, list)}
                key = json.dumps([node["class_type"], widgets, wan22], sort_keys=True)
                seen.setdefault(key, (f"{sha[:10]}:{rel} node {nid}", node, wan22))
    return list(seen.values())


def _expected_settings(inputs: dict, wan22: bool) -> CausalSettings:
    """The settings that version ran, spelled out: its widgets (a widget it did not have at the behaviour it had
    then: warp on), its family's loop rules, Wan 2.2's rules for a Wan 2.2 model."""
    settings = CausalSettings(steps=inputs["steps"], shift=inputs["shift"], warp=inputs.get("warp_steps", True),
                              frames_per_block=inputs["frames_per_block"], sink_size=inputs["sink_size"],
                              local_window=inputs["local_window"],
                              independent_first_frame=inputs["independent_first_frame"],
                              guidance_scale=inputs["guidance_scale"])
    preset = family_preset(inputs.get("family", "custom"))
    rules = dict(preset.rules) if preset else {}
    if wan22:
        rules.update(solver="unipc", first_frame="clamp", recache="none")
    return CausalSettings(**{**settings.__dict__, **rules})


def test_api_prompts_of_earlier_versions_run(history, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the stream node writes into ./output outside ComfyUI
    cases = _causal_api_nodes(history)
    assert len(cases) >= 5
    defs = wf.pack_definitions()
    for where, node, wan22 in cases:
        kind, inputs = node["class_type"], node["inputs"]
        widgets = {k: v for k, v in inputs.items() if not isinstance(v, list)}
        if widgets.get("score_every_n_frames"):  # its score_clip socket is not carried here (test_score_nodes)
            widgets["score_every_n_frames"] = 0
        declared = {name: req for name, _, req in wf.ordered_inputs(defs[kind])}
        missing = [name for name, req in declared.items() if req and name not in inputs]
        assert not missing, f"{where}: ComfyUI would refuse it (required_input_missing: {missing})"
        assert set(widgets) <= set(declared), f"{where}: inputs no longer declared {set(widgets) - set(declared)}"
        model = CausalWanModel.random(TI2V if wan22 else T2V, seed=1)
        channels, n = model.config.out_dim, widgets["frames_per_block"]
        frames = (1 if widgets["independent_first_frame"] else 0) + 2 * n  # two whole blocks after the first
        text = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(2))
        latent = {"samples": torch.zeros(1, channels, frames, 2, 2)}
        sockets = dict(model=model, positive=[[text, {}]], latent=latent)
        if kind == "CausalWanSampler":
            want = denormalize(sample_causal(model, torch.zeros(1, channels, frames, 2, 2), text,
                                             seed=widgets["seed"], settings=_expected_settings(widgets, wan22)))
            (out,) = CausalWanSampler().sample(**sockets, **widgets, unique_id="1")
            torch.testing.assert_close(out["samples"], want, atol=1e-5, rtol=0, msg=where)
        else:
            vae = WanVAE.random(WanVAEConfig(dim=8), seed=3)
            result = CausalWanStreamVideo().stream(**sockets, vae=vae, **widgets, unique_id="1")["result"]
            video = read_video_frames(result[2])
            assert video.shape == (4 * (frames - 1) + 1, 16, 16, 3), where
