"""One declaration of every causal setting (wan/sampling/settings_spec.py) and one behaviour for node, CLI and API.

Oracles: ``CausalSettings``' own field defaults, the committed example workflows (the widget names and order
users' saved workflows have), ``sample_causal`` called with the settings spelled out by hand, and the docs.
"""

import dataclasses
import json
import pathlib

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_clipwan.cli import build_parser, main
from comfyui_clipwan.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from comfyui_clipwan.nodes.stream_nodes import CausalWanStreamVideo
from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler
from comfyui_clipwan.wan import CausalWanModel, WanConfig, denormalize, sample_causal
from comfyui_clipwan.wan.model import causal as causal_module
from comfyui_clipwan.wan.sampling import settings_spec as spec
from comfyui_clipwan.wan.sampling.loop import CausalSettings, _step_count
from comfyui_clipwan.wan.sampling.presets import PRESETS, get_preset

import workflow_format as wf

ROOT = pathlib.Path(__file__).resolve().parents[1]
T2V = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=16)
TINY_TI2V = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=48, out_dim=48, text_dim=32,
                      text_len=8)
NODES = {"CausalWanSampler": (CausalWanSampler, spec.SAMPLER), "CausalWanStreamVideo": (CausalWanStreamVideo,
                                                                                        spec.STREAM)}


# --------------------------------------------------------------------------------------------------
# The declaration
# --------------------------------------------------------------------------------------------------
def test_every_causal_settings_field_is_declared_once_with_its_default():
    fields = [f.name for f in dataclasses.fields(CausalSettings)]
    declared = [s.field for s in spec.SETTINGS if s.field]
    assert sorted(declared) == sorted(fields) and len(set(declared)) == len(declared)
    assert len(spec.BY_NAME) == len(spec.SETTINGS)
    # the node's / CLI's defaults are CausalSettings' own: nothing set = CausalSettings()
    defaults = {s.name: s.widget_default for s in spec.SETTINGS if s.field}
    assert spec.causal_settings(defaults) == CausalSettings(steps="1000,750,500,250")
    assert spec.get("cache_dtype").widget_default == "auto" and CausalSettings().cache_dtype is None
    assert all(s.kind in spec.WIDGET_KINDS for s in spec.SETTINGS)


@pytest.mark.parametrize("node_type", sorted(NODES))
def test_node_widgets_keep_the_saved_names_and_order(node_type):
    """The widgets built from the declaration are the ones the committed example workflows save, in their order
    (widgets_values are positional), and the Python defaults of the node function are the declared ones."""
    cls, kind = NODES[node_type]
    defn = wf.definition_from_class(node_type, cls)
    names = [name or spec.SEED_CONTROL for name, _ in wf.widget_slots(defn)]
    assert names == spec.widget_layouts(kind)[-1]
    saved = [n for p in sorted(wf.WORKFLOW_DIR.glob("*.json")) for n in json.loads(p.read_text())["nodes"]
             if n["type"] == node_type]
    assert saved, f"no example workflow has a {node_type}"
    for node in saved:
        assert len(node["widgets_values"]) == len(names)
    inputs = cls.INPUT_TYPES()
    assert [k for k in inputs["required"] if wf.is_widget(inputs["required"][k])] == ["seed"]
    for name, default in spec.widget_defaults(kind).items():
        section = "required" if name == "seed" else "optional"
        assert inputs[section][name][1]["default"] == default, name


def test_few_widgets_show_the_rest_are_advanced():
    """ComfyUI's frontend (1.49: ``widget.advanced`` from the input's options) hides advanced widgets behind
    the node's "show advanced" toggle, as core marks VAEDecodeTiled's tile sizes."""
    for node_type, (cls, kind) in NODES.items():
        inputs = cls.INPUT_TYPES()
        shown = [name for section in ("required", "optional") for name, s in inputs[section].items()
                 if wf.is_widget(s) and not s[1].get("advanced")]
        expected = ["seed", "steps", "family"] if kind == spec.SAMPLER else \
            ["seed", "steps", "filename_prefix", "format", "decoder", "family"]
        assert sorted(shown) == sorted(expected), node_type
        assert inputs["optional"]["shift"][1]["advanced"] is True


def test_docs_settings_table_is_the_generated_one():
    docs = (ROOT / "docs" / "wan.md").read_text()
    table = spec.markdown_table()
    assert table in docs
    assert "| `sink_size` → `sink_size`" not in table  # a field of the same name is not repeated
    assert "`--sink-size` `--sink`" in table and "`--family` `--preset`" in table


def test_presets_are_checked_against_the_declaration():
    for preset in PRESETS:
        spec.check_preset(preset)  # the table as shipped passes (it is also checked at import)
    ll = get_preset("LongLive 1.0")
    assert not hasattr(ll, "recache")  # the field the sampler never read (its value "window" it would refuse)
    with pytest.raises(ValueError, match=r"preset LongLive 1.0: rule recache 'window' is not one of "
                                         r"\['joint', 'blockwise', 'none'\]"):
        spec.check_preset(dataclasses.replace(ll, rules=(("recache", "window"),)))
    with pytest.raises(ValueError, match=r"rule 'window_rule' is not a CausalSettings field"):
        spec.check_preset(dataclasses.replace(ll, rules=(("window_rule", 1),)))
    with pytest.raises(ValueError, match=r"preset LongLive 1.0: frames_per_block 0 is outside \[1, 64\]"):
        spec.check_preset(dataclasses.replace(ll, frames_per_block=0))
    with pytest.raises(ValueError, match=r"preset LongLive 1.0: steps: steps 'fast' must be"):
        spec.check_preset(dataclasses.replace(ll, steps="fast"))
    with pytest.raises(ValueError, match=r"preset LongLive 1.0: recommended_length 81: the latent has 21 frames"):
        spec.check_preset(dataclasses.replace(ll, recommended_length=81))  # 21 = 1 + 20: not blocks of 3


def test_family_knobs_hide_what_the_loop_does_not_read():
    knobs = {p.name: spec.family_knobs(p) for p in PRESETS}
    assert "sink_size" not in knobs["Self-Forcing"] and "local_window" not in knobs["CausVid"]
    assert {"sink_size", "local_window"} <= set(knobs["LongLive 1.0"])
    assert "warp_steps" not in knobs["LongLive 2.0"] and "warp_steps" in knobs["CausVid"]  # UniPC takes a count


# --------------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("term,nodes", [
    ("krea", {"LoadCausalWanModel", "CausalWanSampler", "CausalWanStreamVideo"}),
    ("memflow", {"LoadCausalWanModel", "CausalWanSampler", "CausalWanStreamVideo", "ApplyCausalWanLoRA"}),
    ("rolling", {"LoadCausalWanModel", "CausalWanSampler", "CausalWanStreamVideo"}),
    ("reward", {"LoadCausalWanModel", "CausalWanSampler", "CausalWanStreamVideo"}),
    ("causal forcing", {"LoadCausalWanModel", "CausalWanSampler", "CausalWanStreamVideo"}),
    ("vace", {"CausalWanSampler", "CausalWanStreamVideo"}),
])
def test_search_aliases_find_the_family_nodes(term, nodes):
    """The frontend's node search matches the name, the display name and ``search_aliases`` (what ComfyUI's
    /object_info sends from ``SEARCH_ALIASES``)."""
    found = {nid for nid, cls in NODE_CLASS_MAPPINGS.items()
             if any(term in text.lower() for text in [nid, NODE_DISPLAY_NAME_MAPPINGS.get(nid, "")]
                    + list(getattr(cls, "SEARCH_ALIASES", [])))}
    assert nodes <= found, (term, found)
    assert "CLIPZeroShotAxera" not in found


# --------------------------------------------------------------------------------------------------
# The node
# --------------------------------------------------------------------------------------------------
def test_node_checks_widgets_before_touching_the_model():
    not_a_model = object()  # would be refused as "not a Wan 2.1 model" if the widgets passed
    latent = {"samples": torch.zeros(1, 16, 4, 2, 2)}
    with pytest.raises(ValueError, match=r"^steps: steps 'fast' must be"):
        CausalWanSampler().sample(not_a_model, [[torch.zeros(1, 4, 32), {}]], latent, seed=0, steps="fast")
    with pytest.raises(ValueError, match=r"^local_window 4 is too small"):
        CausalWanSampler().sample(not_a_model, [[torch.zeros(1, 4, 32), {}]], latent, seed=0, sink_size=2,
                                  local_window=4)
    with pytest.raises(ValueError, match=r"^family 'Nope' is not one of"):
        CausalWanSampler().sample(not_a_model, [[torch.zeros(1, 4, 32), {}]], latent, seed=0, family="Nope")


def test_wan22_model_runs_on_the_node_defaults_with_family_custom():
    """Family custom, every widget at its default (steps 1000,750,500,250): a Wan 2.2 model runs LongLive 2.0's
    loop with that list as its 4 UniPC steps (it was refused: "the UniPC solver takes a number of steps")."""
    model = CausalWanModel.random(TINY_TI2V, seed=1)
    text = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(2))
    (out,) = CausalWanSampler().sample(model, [[text, {}]], {"samples": torch.zeros(1, 48, 4, 2, 2)}, seed=3)
    want = sample_causal(model, torch.zeros(1, 48, 4, 2, 2), text, seed=3, settings=CausalSettings(
        steps="4", solver="unipc", first_frame="clamp", recache="none", shorter_last_block=True))
    torch.testing.assert_close(out["samples"], denormalize(want), atol=1e-6, rtol=0)
    assert _step_count("1000,750,500,250") == 4 and _step_count((1000, 800, 600, 400, 200)) == 5
    with pytest.raises(ValueError, match="UniPC solver .* takes a number of steps, not the timesteps '1000,500,250'"):
        _step_count("1000,500,250")  # not an evenly spaced count: which UniPC schedule is meant is unclear


# --------------------------------------------------------------------------------------------------
# The CLI
# --------------------------------------------------------------------------------------------------
def _sample_args(argv):
    return build_parser().parse_args(["sample", *argv])


def test_cli_old_flags_are_aliases_of_the_one_name():
    old = _sample_args(["--sink", "3", "--window", "9", "--guidance", "2", "--no-warp", "--no-image", "--preset",
                        "CausVid"])
    new = _sample_args(["--sink-size", "3", "--local-window", "9", "--guidance-scale", "2", "--no-warp-steps",
                        "--no-image-conditioning", "--family", "CausVid"])
    for name in ("sink_size", "local_window", "guidance_scale", "warp_steps", "image_conditioning", "family"):
        assert getattr(old, name) == getattr(new, name), name
    assert (new.sink_size, new.local_window, new.guidance_scale, new.warp_steps, new.image_conditioning,
            new.family) == (3, 9, 2.0, False, False, "CausVid")
    assert spec.explicit_cli_values(_sample_args([])) == {}  # nothing typed: nothing explicit


def test_cli_runs_on_its_own_defaults(tmp_path, capsys):
    """``sample`` with its defaults: 25 frames = 7 latent frames in blocks of 3, fitted as the node fits them
    (it failed after loading every model)."""
    assert main(["sample", "--no-image", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "so the last block has 1 frame(s) instead of 3" in printed
    got = load_file(str(tmp_path / "wan_latent.safetensors"))["latent_tensor"]
    model = causal_module.default_causal_wan(seed=0)
    want = sample_causal(model, torch.zeros(1, 16, 7, 16, 16), torch.zeros(1, 512, 4096), seed=0,
                         settings=CausalSettings(shorter_last_block=True))
    torch.testing.assert_close(got, denormalize(want), atol=1e-5, rtol=0)


@pytest.mark.parametrize("argv,message", [
    (["--steps", "fast"], "error: --steps: steps 'fast' must be a step count"),
    (["--length", "0"], "error: --length 0 must be a whole number >= 1."),
    (["--frames-per-block", "0"], "error: --frames-per-block 0 is outside [1, 64]."),
    (["--sink-size", "2", "--local-window", "3"], "error: --local-window 3 is too small: it must hold the 2 sink"),
    (["--guidance-scale", "nan"], "error: --guidance-scale must be a finite number, not nan."),
    (["--no-warp", "--steps", "4"], "error: --steps: steps '4' is a step count; with warp off"),
    (["--width", "100"], "error: --width 100 must be a multiple of 16"),
    (["--seed", "-1"], "error: --seed -1 is outside [0, "),
    (["--model", "missing.pt", "--steps", "0"], "error: --steps: steps '0': give a step count"),
])
def test_cli_flags_are_checked_before_any_model_is_loaded(argv, message, tmp_path, capsys, monkeypatch):
    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(causal_module, "default_causal_wan", loaded)
    monkeypatch.setattr(causal_module.CausalWanModel, "from_file", classmethod(loaded))
    assert main(["sample", "--out", str(tmp_path / "out"), *argv]) == 2
    assert capsys.readouterr().err.startswith(message)
    assert not (tmp_path / "out").exists()


@pytest.fixture
def t2v_file(tmp_path):
    path = tmp_path / "causal_t2v.safetensors"
    save_file({k: v.contiguous() for k, v in CausalWanModel.random(T2V, seed=1).state_dict().items()}, str(path))
    return str(path)


def _cli_latent(argv, out):
    assert main(["sample", *argv, "--no-image", "--width", "16", "--height", "16", "--out", str(out)]) == 0
    return load_file(str(out / "wan_latent.safetensors"))["latent_tensor"]


def test_cli_explicit_flag_wins_over_the_family(t2v_file, tmp_path, capsys):
    got = _cli_latent(["--model", t2v_file, "--preset", "CausVid", "--steps", "1000,500", "--length", "13",
                       "--seed", "2"], tmp_path / "a")
    printed = capsys.readouterr().out
    assert ("wan: family CausVid with the flags as given, which win over the family's values: --steps 1000,500 "
            "(family: 1000,757,522)") in printed
    model = CausalWanModel.from_file(t2v_file)
    causvid = get_preset("CausVid")  # its values, but the typed steps
    want = sample_causal(model, torch.zeros(1, 16, 4, 2, 2), torch.zeros(1, 512, 4096), seed=2, settings=CausalSettings(
        steps="1000,500", shift=causvid.shift, warp=causvid.warp_steps, frames_per_block=causvid.frames_per_block,
        independent_first_frame=causvid.independent_first_frame))
    torch.testing.assert_close(got, denormalize(want), atol=1e-5, rtol=0)
    # the family's own steps give another latent (the flag did change the run), and --family is --preset
    other = _cli_latent(["--model", t2v_file, "--family", "CausVid", "--length", "13", "--seed", "2"], tmp_path / "b")
    assert "win over the family's values" not in capsys.readouterr().out
    assert (other - got).abs().max() > 1e-3


def test_cli_family_entry_is_preferred_never_forced(t2v_file, tmp_path, capsys):
    """LongLive 1.0's entry is `generator`: taken where the file has it (over auto's generator_ema), and a flat
    .safetensors of the same weights still loads; an explicit --entry the file lacks is an error."""
    common = ["--family", "LongLive 1.0", "--length", "13"]
    _cli_latent(["--model", t2v_file, *common], tmp_path / "flat")
    assert "causal_t2v.safetensors [" not in capsys.readouterr().out  # flat: no entry, loaded as it is
    sd = load_file(t2v_file)
    ema = {k: v + 0.01 for k, v in sd.items()}
    pt = tmp_path / "longlive_base.pt"
    torch.save({"generator": sd, "generator_ema": ema}, str(pt))
    via_pt = _cli_latent(["--model", str(pt), *common], tmp_path / "pt")
    assert "longlive_base.pt [generator]" in capsys.readouterr().out
    flat = load_file(str(tmp_path / "flat" / "wan_latent.safetensors"))["latent_tensor"]
    torch.testing.assert_close(via_pt, flat, atol=1e-6, rtol=0)  # the same weights, picked from their entry
    auto = _cli_latent(["--model", str(pt), "--length", "13", "--frames-per-block", "3", "--sink-size", "3",
                        "--local-window", "12", "--independent-first-frame"], tmp_path / "auto")
    assert "longlive_base.pt [generator_ema]" in capsys.readouterr().out  # no family: auto = generator_ema
    assert (auto - flat).abs().max() > 1e-3  # the other entry's weights: the check above can fail
    # an explicit --entry a training checkpoint lacks is an error; a flat file has only its one state dict, so an
    # entry never refuses it (tests/test_catalogue.py has the loader's cases)
    torch.save({"generator_ema": ema}, str(tmp_path / "ema_only.pt"))
    assert main(["sample", "--model", str(tmp_path / "ema_only.pt"), "--entry", "generator", "--no-image",
                 "--out", str(tmp_path)]) == 2
    assert "has no tensor entry 'generator'" in capsys.readouterr().err
