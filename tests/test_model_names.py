"""Model file names: every file of the presets table is saved under a name that says whose it is (no bare
``lora.pt`` / ``model_bf16.pt`` colliding with other families' or packs' files), the example workflows name
those, and the loaders still find a file users saved earlier under its authors' name (and the other way)."""

import re

import pytest
import torch

from comfyui_clipwan.nodes.family_nodes import ApplyCausalWanLoRA
from comfyui_clipwan.nodes.model_files import resolve_model_file, validate_model_name
from comfyui_clipwan.nodes.wan_nodes import LoadCausalWanModel
from comfyui_clipwan.wan import CausalWanModel, WanConfig
from comfyui_clipwan.wan.sampling.presets import PRESETS, alternative_names, get_preset, source_name

T2V = WanConfig(dim=64, ffn_dim=96, num_heads=1, num_layers=1, in_dim=16)


def _family_word(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower().split()[0].split("-")[0])  # "LongLive 2.0" -> "longlive"


def test_every_preset_file_has_a_unique_name_that_names_its_family():
    names = [(p, p.local_name(i)) for p in PRESETS for i in range(len(p.files))]
    locals_ = [n for _, n in names]
    assert len(set(locals_)) == len(locals_), sorted(n for n in locals_ if locals_.count(n) > 1)
    for preset, name in names:
        assert _family_word(preset.name) in re.sub(r"[^a-z]", "", name.lower()), (preset.name, name)
    # the authors' own names do collide: that is why
    published = [source_name(f) for p in PRESETS for f in p.files]
    assert published.count("lora.pt") == 2 and published.count("causal_forcing.pt") == 2
    longlive, longlive2 = get_preset("LongLive 1.0"), get_preset("LongLive 2.0")
    assert (longlive.model_file, longlive.lora_file, longlive2.model_file) == (
        "longlive_base.pt", "longlive_lora.pt", "longlive2_model_bf16.pt")
    # the download still comes from the authors' file
    assert longlive.download_url(1) == \
        "https://huggingface.co/Efficient-Large-Model/LongLive-1.3B/resolve/main/models/lora.pt"
    assert longlive2.download_url(0).endswith("/LongLive-2.0-5B/resolve/main/model_bf16.pt")


def test_alternative_names_go_both_ways():
    assert alternative_names("longlive_lora.pt") == ["lora.pt"]
    assert alternative_names("LongLive/longlive2_model_bf16.pt") == ["model_bf16.pt"]
    assert alternative_names("lora.pt") == ["longlive_lora.pt", "memflow_lora.pt"]
    assert alternative_names("model_bf16.pt") == ["longlive2_model_bf16.pt"]
    assert alternative_names("self_forcing_dmd.pt") == [] and alternative_names("my_model.pt") == []


def test_example_workflows_name_the_identifying_files():
    import json

    import workflow_format as wf

    bare = {source_name(f) for p in PRESETS for i, f in enumerate(p.files) if p.local_name(i) != source_name(f)}
    named = set()
    for path in sorted(wf.WORKFLOW_DIR.glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            named |= {m["name"] for m in node["properties"].get("models", [])}
            named |= {v for v in node.get("widgets_values", []) if isinstance(v, str) and v.endswith(".pt")}
    assert {"longlive_lora.pt", "longlive2_model_bf16.pt"} <= named
    assert named & bare == set()


def test_resolve_finds_a_file_under_its_other_name(tmp_path):
    (tmp_path / "lora.pt").write_bytes(b"x")
    assert resolve_model_file(str(tmp_path / "longlive_lora.pt"), "loras") == str(tmp_path / "lora.pt")
    assert validate_model_name(str(tmp_path / "longlive_lora.pt"), "loras") is True
    (tmp_path / "model_bf16.pt").unlink(missing_ok=True)
    message = validate_model_name(str(tmp_path / "longlive2_model_bf16.pt"), "diffusion_models")
    assert "was not found" in message and "also looked for it as model_bf16.pt" in message
    assert validate_model_name("none", "loras") is True
    # the identifying name on disk, an old workflow's bare name: found when only one family's file is there
    (tmp_path / "lora.pt").unlink()
    (tmp_path / "memflow_lora.pt").write_bytes(b"m")
    assert resolve_model_file(str(tmp_path / "lora.pt"), "loras") == str(tmp_path / "memflow_lora.pt")
    (tmp_path / "longlive_lora.pt").write_bytes(b"l")
    with pytest.raises(FileNotFoundError, match="several files may be it: longlive_lora.pt, memflow_lora.pt"):
        resolve_model_file(str(tmp_path / "lora.pt"), "loras")
    # a name with no other name keeps the plain error
    with pytest.raises(FileNotFoundError, match="'.*other.pt' was not found") as e:
        resolve_model_file(str(tmp_path / "other.pt"), "loras")
    assert "also looked" not in str(e.value)


def test_loaders_load_the_authors_file_under_the_identifying_name(tmp_path):
    sd = CausalWanModel.random(T2V, seed=3).state_dict()
    torch.save({"generator": {"model." + k: v for k, v in sd.items()}}, tmp_path / "model_bf16.pt")
    assert LoadCausalWanModel.VALIDATE_INPUTS(str(tmp_path / "longlive2_model_bf16.pt")) is True
    assert LoadCausalWanModel.VALIDATE_INPUTS(str(tmp_path / "nothing.pt")).startswith("Model file")
    (model,) = LoadCausalWanModel().load(str(tmp_path / "longlive2_model_bf16.pt"), "fp32", "generator")
    assert model.source.startswith("model_bf16.pt") and model.config == T2V
    assert torch.equal(model.tree.blocks[0].self_attn.q.weight, sd["blocks.0.self_attn.q.weight"])
    assert ApplyCausalWanLoRA.VALIDATE_INPUTS(str(tmp_path / "longlive_lora.pt")).startswith("Model file")
