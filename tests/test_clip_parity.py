"""Parity of our CLIP vision tower against open_clip and transformers on the same random weights,
loaded from every supported key layout (Wan .pth, OpenCLIP, HF, ComfyUI safetensors, wrapped variants)."""

import math

import open_clip
import pytest
import safetensors.torch
import torch
import transformers
from open_clip.transformer import VisionTransformer as OpenClipViT
from torch import nn

from comfyui_clipwan.clip_vision import (CONFIGS, convert_state_dict, default_clip_vision, detect_config,
                                         load_clip_vision)

TOL = 1e-4


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def openclip_vit(width=1280, layers=2, heads=16, patch=14, image=224, out_dim=1024, act=nn.GELU, seed=0):
    """A random-init open_clip visual tower (real module, real key names); small init noise on LN/biases so
    that a swapped or missing tensor cannot hide."""
    torch.manual_seed(seed)
    v = OpenClipViT(image_size=image, patch_size=patch, width=width, layers=layers, heads=heads, mlp_ratio=4.0,
                    output_dim=out_dim, act_layer=act, output_tokens=True).eval()
    with torch.no_grad():
        for name, p in v.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(0.02 * torch.randn_like(p))
    return v


def openclip_reference(v: OpenClipViT, pixels):
    """open_clip's own forward; hidden states captured with hooks on its resblocks."""
    outs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in v.transformer.resblocks]
    with torch.no_grad():
        pooled, _ = v(pixels)
    for h in hooks:
        h.remove()
    return {"penultimate_hidden_states": outs[-2], "last_hidden_state": outs[-1], "image_embeds": pooled}


def to_wan_sd(v: OpenClipViT) -> dict:
    """The visual tower under Wan 2.1's real .pth names (independent mapping, written from the Wan notes),
    plus the XLM-R text tower's and the top-level keys that the real file carries."""
    sd = {}
    o = v.state_dict()
    sd["log_scale"] = torch.tensor(4.6052)
    sd["visual.patch_embedding.weight"] = o["conv1.weight"]
    sd["visual.cls_embedding"] = o["class_embedding"].view(1, 1, -1)
    sd["visual.pos_embedding"] = o["positional_embedding"].unsqueeze(0)
    sd["visual.pre_norm.weight"], sd["visual.pre_norm.bias"] = o["ln_pre.weight"], o["ln_pre.bias"]
    sd["visual.post_norm.weight"], sd["visual.post_norm.bias"] = o["ln_post.weight"], o["ln_post.bias"]
    sd["visual.head"] = o["proj"]
    n = len(v.transformer.resblocks)
    ren = {"ln_1": "norm1", "ln_2": "norm2", "attn.out_proj": "attn.proj", "mlp.c_fc": "mlp.0", "mlp.c_proj": "mlp.2"}
    for i in range(n):
        src, dst = f"transformer.resblocks.{i}.", f"visual.transformer.{i}."
        sd[dst + "attn.to_qkv.weight"] = o[src + "attn.in_proj_weight"]
        sd[dst + "attn.to_qkv.bias"] = o[src + "attn.in_proj_bias"]
        for a, b in ren.items():
            for p in ("weight", "bias"):
                sd[f"{dst}{b}.{p}"] = o[f"{src}{a}.{p}"]
    sd["textual.token_embedding.weight"] = torch.randn(50, 16)
    sd["textual.blocks.0.attn.q.weight"] = torch.randn(16, 16)
    sd["textual.head.0.weight"] = torch.randn(16, 16)
    return {k: t.clone() for k, t in sd.items()}


def pixels_for(config, batch=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, config.image_size, config.image_size, generator=g)


def assert_close_outputs(ours, ref, keys=("penultimate_hidden_states", "last_hidden_state", "image_embeds")):
    for k in keys:
        a, b = getattr(ours, k), ref[k]
        assert a.shape == b.shape, (k, a.shape, b.shape)
        err = (a.float() - b.float()).abs().max().item()
        assert err <= TOL, f"{k}: max abs diff {err}"


@pytest.fixture(scope="module")
def vit_h2():
    return openclip_vit(layers=2)


@pytest.fixture(scope="module")
def ref_h2(vit_h2):
    return openclip_reference(vit_h2, pixels_for(CONFIGS["ViT-H/14"]))


def _ours(model, config):
    return model.encode(pixels_for(config))


@pytest.mark.parametrize("variant", ["wan_pth", "wan_pth_module_prefix", "open_clip_pth", "open_clip_visual_only",
                                     "open_clip_safetensors_model_prefix"])
def test_layouts_match_open_clip_forward(tmp_path, vit_h2, ref_h2, variant):
    o = {k: t.clone() for k, t in vit_h2.state_dict().items()}
    if variant.startswith("wan"):
        sd, layout = to_wan_sd(vit_h2), "wan"
        if variant.endswith("module_prefix"):
            sd = {"module." + k: t for k, t in sd.items()}
    elif variant == "open_clip_visual_only":
        sd, layout = o, "open_clip"
    else:
        sd, layout = {"visual." + k: t for k, t in o.items()}, "open_clip"
        sd["logit_scale"] = torch.tensor(1.0)
        sd["transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(48, 16)  # a text tower's block
        sd["token_embedding.weight"] = torch.randn(10, 16)
        if variant.endswith("model_prefix"):
            sd = {"model." + k: t for k, t in sd.items()}
    if variant.endswith("safetensors_model_prefix"):
        path = tmp_path / "clip.safetensors"
        safetensors.torch.save_file({k: t.contiguous() for k, t in sd.items()}, str(path))
    else:
        path = tmp_path / "clip.pth"
        torch.save(sd, path)
    model = load_clip_vision(path)
    assert model.layout == layout
    c = model.config
    assert (c.name, c.width, c.layers, c.heads, c.act, c.proj_dim, c.num_tokens) == \
        ("ViT-H/14", 1280, 2, 16, "gelu", 1024, 257)
    assert model.source == str(path)
    assert_close_outputs(_ours(model, c), ref_h2)


def test_full_openclip_model_with_text_tower(tmp_path):
    """A whole open_clip.CLIP (text tower at the top level, as OpenCLIP saves it) in a wrapper."""
    torch.manual_seed(3)
    clip = open_clip.CLIP(embed_dim=1024, vision_cfg=dict(image_size=224, layers=2, width=1280, head_width=80,
                                                          patch_size=14),
                          text_cfg=dict(context_length=8, vocab_size=64, width=64, heads=2, layers=1)).eval()
    path = tmp_path / "open_clip_full.pth"
    torch.save({"state_dict": {"module." + k: t for k, t in clip.state_dict().items()}}, path)
    model = load_clip_vision(path)
    assert model.layout == "open_clip" and model.config.layers == 2
    clip.visual.output_tokens = True
    assert_close_outputs(_ours(model, model.config), openclip_reference(clip.visual, pixels_for(model.config)))


def _hf_vision(proj=True, layers=2, act="gelu", width=1280, heads=16, patch=14, image=224, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.CLIPVisionConfig(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                                        num_attention_heads=heads, image_size=image, patch_size=patch,
                                        projection_dim=1024, hidden_act=act, attn_implementation="sdpa")
    cls = transformers.CLIPVisionModelWithProjection if proj else transformers.CLIPVisionModel
    m = cls(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():  # HF inits LN to 1/0 and biases to 0: perturb so every tensor matters
            p.add_(0.02 * torch.randn_like(p))
    return m


def _hf_reference(m, pixels):
    with torch.no_grad():
        out = m(pixel_values=pixels, output_hidden_states=True)
    ref = {"penultimate_hidden_states": out.hidden_states[-2], "last_hidden_state": out.last_hidden_state}
    if hasattr(out, "image_embeds"):
        ref["image_embeds"] = out.image_embeds
    return ref


@pytest.mark.parametrize("variant", ["comfy_safetensors", "hf_state_dict_pth", "hf_no_projection", "prefixed"])
def test_hf_layouts_match_transformers(tmp_path, variant):
    m = _hf_vision(proj=variant != "hf_no_projection")
    sd = {k: t.contiguous() for k, t in m.state_dict().items() if "position_ids" not in k}
    if variant == "prefixed":
        sd = {"clip_vision." + k: t for k, t in sd.items()}
    if variant == "hf_state_dict_pth":
        path = tmp_path / "pytorch_model.bin"
        torch.save(sd, path)
    else:
        path = tmp_path / "clip_vision_h.safetensors"
        safetensors.torch.save_file(sd, str(path))
    model = load_clip_vision(path)
    assert model.layout == "hf"
    assert model.config.proj_dim == (None if variant == "hf_no_projection" else 1024)
    ref = _hf_reference(m, pixels_for(model.config))
    ours = _ours(model, model.config)
    assert_close_outputs(ours, ref, keys=tuple(ref))
    if variant == "hf_no_projection":
        assert ours.image_embeds is None


def test_hf_round_trip_and_full_clipmodel_detection():
    """state_dict_hf() gives ComfyUI's names; a full HF CLIPModel (text_model + vision_model) converts too."""
    m = default_clip_vision(layers=2, seed=5)
    sd = m.state_dict_hf()
    assert len(sd) == 3 + 4 + 16 * 2 + 1  # embeddings 3, pre/post LN 4, 16 per block, projection 1
    assert sd["vision_model.encoder.layers.1.self_attn.k_proj.weight"].shape == (1280, 1280)
    assert sd["visual_projection.weight"].shape == (1024, 1280)
    full = {"text_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(8, 8),
            "text_model.embeddings.token_embedding.weight": torch.zeros(4, 8),
            "logit_scale": torch.tensor(1.0), "text_projection.weight": torch.zeros(4, 8), **sd}
    canonical, layout = convert_state_dict(full)
    assert layout == "hf" and set(canonical) == set(sd)
    for k in sd:
        assert torch.equal(canonical[k], sd[k])


def test_transformers5_bare_clipvisionmodel_state_dict(tmp_path):
    """transformers 5 saves a CLIPVisionModel without the ``vision_model.`` root; built explicitly here so the
    test covers that layout whichever transformers version runs it."""
    m = _hf_vision(proj=False)
    sd = {k.removeprefix("vision_model."): t.contiguous() for k, t in m.state_dict().items()
          if "position_ids" not in k}
    assert "embeddings.patch_embedding.weight" in sd and not any(k.startswith("vision_model.") for k in sd)
    path = tmp_path / "bare.safetensors"
    safetensors.torch.save_file(sd, str(path))
    model = load_clip_vision(path)
    assert (model.layout, model.config.proj_dim) == ("hf", None)
    assert_close_outputs(_ours(model, model.config), _hf_reference(m, pixels_for(model.config)),
                         keys=("penultimate_hidden_states", "last_hidden_state"))


def test_vit_l14_quick_gelu_and_vit_b32_detection(tmp_path):
    """OpenAI-trained ViT-L/14 and ViT-B/32 use QuickGELU: detected from the width, verified by parity."""
    for width, heads, patch, name, proj in ((1024, 16, 14, "ViT-L/14", 768), (768, 12, 32, "ViT-B/32", 512)):
        v = openclip_vit(width=width, layers=2, heads=heads, patch=patch, out_dim=proj, act=QuickGELU)
        path = tmp_path / f"{width}.pth"
        torch.save({"visual." + k: t for k, t in v.state_dict().items()}, path)
        model = load_clip_vision(path)
        c = model.config
        assert (c.name, c.act, c.width, c.heads, c.patch_size, c.proj_dim) == (name, "quick_gelu", width, heads,
                                                                             patch, proj)
        assert_close_outputs(_ours(model, c), openclip_reference(v, pixels_for(c)))


def test_vit_l14_336_and_bigg_detected_from_shapes():
    """No forward needed: shapes alone (meta tensors, no memory) must give the right presets."""
    def hf_meta(width, layers, patch, positions, proj, mlp=None):
        mlp = mlp or 4 * width
        sd = {"vision_model.embeddings.class_embedding": torch.empty(width, device="meta"),
              "vision_model.embeddings.patch_embedding.weight": torch.empty(width, 3, patch, patch, device="meta"),
              "vision_model.embeddings.position_embedding.weight": torch.empty(positions, width, device="meta"),
              "visual_projection.weight": torch.empty(proj, width, device="meta")}
        for n in ("pre_layrnorm", "post_layernorm"):
            for p in ("weight", "bias"):
                sd[f"vision_model.{n}.{p}"] = torch.empty(width, device="meta")
        for i in range(layers):
            for part, shape in (("layer_norm1", (width,)), ("layer_norm2", (width,)),
                                ("self_attn.q_proj", (width, width)), ("self_attn.k_proj", (width, width)),
                                ("self_attn.v_proj", (width, width)), ("self_attn.out_proj", (width, width)),
                                ("mlp.fc1", (mlp, width)), ("mlp.fc2", (width, mlp))):
                sd[f"vision_model.encoder.layers.{i}.{part}.weight"] = torch.empty(shape, device="meta")
                sd[f"vision_model.encoder.layers.{i}.{part}.bias"] = torch.empty(shape[0], device="meta")
        return sd

    g = detect_config(hf_meta(1664, 48, 14, 257, 1280, mlp=8192))
    assert (g.name, g.layers, g.heads, g.act, g.mlp_dim, g.proj_dim) == ("ViT-bigG/14", 48, 16, "gelu", 8192, 1280)
    l336 = detect_config(hf_meta(1024, 24, 14, 577, 768))
    assert (l336.name, l336.image_size, l336.num_tokens, l336.act) == ("ViT-L/14-336", 336, 577, "quick_gelu")
    h = detect_config(hf_meta(1280, 32, 14, 257, 1024))
    assert h == CONFIGS["ViT-H/14"]
    # HF config.json fields override what shapes cannot tell
    assert detect_config(hf_meta(1024, 2, 14, 257, 768), {"hidden_act": "gelu"}).act == "gelu"


def test_safetensors_metadata_overrides_activation(tmp_path):
    m = _hf_vision(proj=True, width=1024, act="gelu")
    sd = {k: t.contiguous() for k, t in m.state_dict().items() if "position_ids" not in k}
    path = tmp_path / "vitl_gelu.safetensors"
    safetensors.torch.save_file(sd, str(path), metadata={"hidden_act": "gelu"})
    model = load_clip_vision(path)
    assert model.config.name == "ViT-L/14" and model.config.act == "gelu"  # preset says quick_gelu
    assert_close_outputs(_ours(model, model.config), _hf_reference(m, pixels_for(model.config)))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_dtypes_load_directly_and_stay_close(tmp_path, vit_h2, ref_h2, dtype):
    path = tmp_path / "wan.pth"
    torch.save(to_wan_sd(vit_h2), path)
    model = load_clip_vision(path, dtype=dtype)
    expected = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    assert all(p.dtype == expected for p in model.model.parameters())
    ours = model.encode(pixels_for(model.config)[:1])
    ref = ref_h2["penultimate_hidden_states"][:1]
    rel = ((ours.penultimate_hidden_states.float() - ref).abs().max() / ref.abs().max()).item()
    assert rel < (2e-3 if dtype == "fp16" else 2e-2), rel


def test_penultimate_only_runs_one_block_less(vit_h2, ref_h2, tmp_path):
    path = tmp_path / "wan.pth"
    torch.save(to_wan_sd(vit_h2), path)
    model = load_clip_vision(path)
    calls = []
    hook = model.model.layers[-1].register_forward_hook(lambda *a: calls.append(1))
    out = model.encode(pixels_for(model.config), penultimate_only=True)
    hook.remove()
    assert calls == [] and out.last_hidden_state is None and out.image_embeds is None
    assert (out.penultimate_hidden_states - ref_h2["penultimate_hidden_states"]).abs().max() <= TOL


@pytest.mark.slow
def test_real_size_vit_h14_wan_pth_matches_open_clip(tmp_path):
    """The real 32-block ViT-H/14 (632 M parameters) from a Wan-named .pth, against open_clip's forward."""
    v = openclip_vit(layers=32, seed=7)
    pixels = pixels_for(CONFIGS["ViT-H/14"], batch=1)
    ref = openclip_reference(v, pixels)
    path = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
    torch.save(to_wan_sd(v), path)
    del v
    try:
        model = load_clip_vision(path)
    finally:
        path.unlink()  # 2.4 GB: not left for pytest's retention (the loaded tensors do not need the file)
    assert model.config == CONFIGS["ViT-H/14"]
    n_params = sum(p.numel() for p in model.model.parameters())
    assert math.isclose(n_params, 632.08e6, rel_tol=1e-3), n_params
    assert_close_outputs(model.encode(pixels), ref)
