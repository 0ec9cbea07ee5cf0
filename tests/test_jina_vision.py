"""Jina-CLIP v2's EVA02 vision tower vs timm's EVA02 (oracle, loaded through timm's own EVA checkpoint converter
from our Jina-named state dict), layout errors, and the ONNX export (ORT vs torch ≤ 1e-4, AX650 op list)."""

from functools import partial

import numpy as np
import pytest
import torch

from comfyui_clipwan.axera_export.onnx_export import ExportGraph, check_export, export_onnx, ort_session, parity
from comfyui_clipwan.axera_export.towers.eva import (EvaConfig, eva_weights_from_state_dict, random_state_dict,
                                                     vision_config_from_json)

# 60 px with patch 14: a 4×4 grid and 4 px the conv drops, as 512 px / 14 does in Jina-CLIP v2 (36×36, 8 px)
TINY = EvaConfig(image_size=60, patch_size=14, width=64, layers=2, heads=2, mlp_dim=170, proj_dim=48)
JSON = {"vision_config": {"image_size": 60, "head_width": 32, "rope_embeddings": True, "pt_hw_seq_len": 16,
                          "intp_freq": True, "naive_swiglu": True, "subln": True}}


def _timm_eva(sd, config):
    import timm.models.eva as eva

    model = eva.Eva(img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.width,
                    depth=config.layers, num_heads=config.heads, mlp_ratio=config.mlp_dim / config.width,
                    qkv_fused=False, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True, use_rot_pos_emb=True,
                    ref_feat_shape=(config.pt_hw_seq_len, config.pt_hw_seq_len), num_classes=config.proj_dim,
                    global_pool="token", norm_layer=partial(torch.nn.LayerNorm, eps=1e-6)).eval()
    plain = {k[len("vision_model."):]: v for k, v in sd.items()}
    model.load_state_dict(eva.checkpoint_filter_fn(plain, model), strict=True)
    return model


def test_matches_timm_eva02():
    sd = random_state_dict(TINY, seed=0)
    weights = eva_weights_from_state_dict(sd, vision_config_from_json(JSON))
    c = weights.config
    assert (c.image_size, c.grid, c.heads, c.mlp_dim) == (60, 4, 2, 170) and c.swiglu and c.subln and c.qkv_bias
    assert weights.head_weight.shape == (48, 64) and weights.layout == "jina"
    pixels = torch.randn(2, 3, 60, 60, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = _timm_eva(sd, c)(pixels)
    ours = weights.encode(pixels)
    assert ours.shape == (2, 48)
    assert (ours - ref).abs().max().item() < 1e-5


def test_rope_changes_the_output():
    """The oracle check above would also pass if both sides ignored RoPE on a degenerate grid: make sure the
    tables matter (a tower built without RoPE gives a different embedding)."""
    sd = random_state_dict(TINY, seed=3)
    with_rope = eva_weights_from_state_dict(sd, vision_config_from_json(JSON))
    without = eva_weights_from_state_dict(sd, dict(vision_config_from_json(JSON), rope=False))
    pixels = torch.randn(1, 3, 60, 60, generator=torch.Generator().manual_seed(4))
    assert (with_rope.encode(pixels) - without.encode(pixels)).abs().max().item() > 1e-3


def test_layout_errors_name_the_problem():
    sd = random_state_dict(TINY, seed=0)
    with pytest.raises(ValueError, match="no EVA02 vision tower"):
        eva_weights_from_state_dict({"text_model.x": torch.zeros(1)})
    broken = {k: v for k, v in sd.items() if "blocks.1.mlp.w3" not in k}
    with pytest.raises(ValueError, match="incomplete.*blocks.1.mlp.w3"):
        eva_weights_from_state_dict(broken, vision_config_from_json(JSON))
    with pytest.raises(ValueError, match="grid"):
        eva_weights_from_state_dict(sd, {"image_size": 80, "head_width": 32})


def test_onnx_export_parity_and_op_list(tmp_path):
    weights = eva_weights_from_state_dict(random_state_dict(TINY, seed=5), vision_config_from_json(JSON))
    tower = weights.build()
    result = export_onnx(ExportGraph(tower), torch.zeros(1, 3, 60, 60), str(tmp_path / "vision.onnx"),
                         "pixel_values", "image_pooled")
    assert check_export(result) == [] and result.checker == "ok"
    assert result.output_shape == [1, 64]
    assert not {"Shape", "Range", "Neg", "Einsum"} & set(result.ops)
    pixels = torch.randn(2, 3, 60, 60, generator=torch.Generator().manual_seed(6))
    sess = ort_session(result.path)
    pooled = np.concatenate([sess.run(None, {"pixel_values": pixels[i:i + 1].numpy()})[0] for i in range(2)])
    with torch.no_grad():
        ref = tower(pixels).numpy()
    assert parity(pooled, ref)["ok"]
