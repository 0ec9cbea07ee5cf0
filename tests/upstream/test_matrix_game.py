"""Matrix-Game 2.0's own ``CausalInferencePipeline`` (``Matrix-Game-2/pipeline/causal_inference.py``) with its
``CausalWanModel`` and ``ActionModule`` vs ``sample_causal`` with the "Matrix-Game 2.0" preset's loop, on shared
tiny random weights (the released key names), their inference configs (checked equal to our presets), the same noise replayed, the same CLIP features, concat latent
and keyboard / mouse actions: universal (4 keys + mouse, 3 steps, window 6), GTA drive (2 keys + mouse,
window 4) and Temple Run (7 keys, no mouse, 4 steps). Asserts ≤ 1e-4 fp32, and that other actions move the
output far more than that (the actions are exercised).

Runs when ``UPSTREAM_MATRIX_GAME_DIR`` points at the ``Matrix-Game-2/`` folder of SkyworkAI/Matrix-Game. Its
tree needs: torch, diffusers, omegaconf, einops, transformers, ftfy, regex, opencv-python(-headless) (its
``utils/visualize`` imports cv2), numpy; not flash-attn: its action module imports ``flash_attn_func``, which
is answered here with plain fp32 SDPA (the same attention without the CUDA kernel), as ``fp32_attention`` does
for its other attention names. Its RoPE tables ask ``torch.cuda.current_device()`` for a device: answered "cpu".

Adjusted on their pipeline object, nothing else: it hard-codes 30 blocks and cache shapes for 12x128 video heads
and 16x64 action heads; the tiny model has 2 blocks, 2x64 video heads and 1x64 action heads, so after their
own cache set-up the zero K/V tensors are re-allocated at the tiny shapes (same dict, same indices). Their
model asserts 880 tokens per frame (352x640 video): the latent is their 44x80."""

import importlib.machinery
import json
import os
import sys
import types

import pytest
import torch

from comfyui_clipwan.wan import CausalWanModel, sample_causal
from comfyui_clipwan.wan.conditioning.actions import ActionTimeline
from comfyui_clipwan.wan.model.actions import ActionConfig, MODES
from comfyui_clipwan.wan.model.config import WanConfig
from comfyui_clipwan.wan.sampling.presets import MATRIX_GAME_FAMILIES, get_preset
from .conftest import fp32_attention
from .harness import ReplayTorchGlobalNoise, their_wrapper

H, W = 44, 80  # their fixed latent size (880 tokens per frame)
DIM, HEADS, LAYERS = 128, 2, 2
ACTION = dict(hidden_size=16, keyboard_hidden=64, mouse_hidden=64)  # one 64-d action head
BLOCKS = {"universal": 3, "gta_drive": 3, "templerun": 3}  # blocks of 3 generated: the window of 4 / 6 slides


def _flash_attn_stub():
    def flash_attn_func(q, k, v, *args, **kwargs):  # [B, L, H, d], fp32 SDPA
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                               v.transpose(1, 2))
        return out.transpose(1, 2)

    mod = types.ModuleType("flash_attn")
    mod.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    mod.flash_attn_func = flash_attn_func
    return mod


def _state_dict(mode):
    keys, mouse = MODES[mode]
    acfg = ActionConfig(blocks=(0,), dim=DIM, keyboard_dim=keys, mouse_dim=2 if mouse else 0, **ACTION)
    cfg = WanConfig(dim=DIM, ffn_dim=256, num_heads=HEADS, num_layers=LAYERS, in_dim=36, has_img_emb=True,
                    image_context_only=True, actions=acfg)
    sd = CausalWanModel.random(cfg, seed=3).state_dict()
    for k in sd:
        if ".self_attn.norm_q." in k or ".self_attn.norm_k." in k:
            sd[k] = sd[k] * 4.0  # sharper self-attention: window rules show in the output
        if ".action_model." in k and sd[k].dim() == 2:
            sd[k] = sd[k] * 10.0  # the tiny init's actions would be a whisper next to the video path
    return cfg, acfg, sd


def _actions(mode, pixel, seed):
    g = torch.Generator().manual_seed(seed)
    keys, mouse = MODES[mode]
    kb = torch.nn.functional.one_hot(torch.randint(0, keys, (pixel,), generator=g), keys).float()
    ms = (torch.randn(pixel, 2, generator=g) * 0.1) if mouse else None
    return kb, ms


class ReplayChannelsFirstNoise(ReplayTorchGlobalNoise):
    """Their re-noise is ``randn_like`` of ``rearrange(x0, 'b c f h w -> (b f) c h w')``: a strided view of their
    channels-first latent, so ``randn_like`` gives a tensor with those strides and fills it with torch's
    element-wise (non-vectorised) normal draws in memory order. Replayed the same way: an empty tensor with
    their strides, ``normal_`` from the seeded generator (batch 1, as their pipeline runs)."""

    def step(self, block, step, shape, device):
        b, c, n, h, w = shape
        assert b == 1, "their strided draw is replayed for batch 1"
        draw = torch.empty_strided((n, c, h, w), (h * w, n * h * w, w, 1)).normal_(generator=self.gen)
        return draw.unsqueeze(0).permute(0, 2, 1, 3, 4).to(device)


class _Latents:
    def __call__(self, x, *cache):
        return x, list(cache)


def _their_configs(tree, mode):
    """Their inference yaml (steps, warp, block size, context noise) and the model's local_attn_size."""
    from omegaconf import OmegaConf

    args = OmegaConf.load(os.path.join(tree, "configs", "inference_yaml", f"inference_{mode}.yaml"))
    with open(os.path.join(tree, "configs", "distilled_model", mode, "config.json")) as f:
        window = json.load(f)["local_attn_size"]
    return args, window


def _theirs(mode, args, window, acfg, sd, noise, cond, kb, ms, monkeypatch):
    from pipeline.causal_inference import CausalInferencePipeline
    from wan.modules.causal_model import CausalWanModel as TheirModel

    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")
    action_config = {"blocks": list(acfg.blocks), "enable_keyboard": True, "enable_mouse": bool(acfg.mouse_dim),
                     "heads_num": acfg.heads, "hidden_size": acfg.hidden_size, "img_hidden_size": DIM,
                     "keyboard_dim_in": acfg.keyboard_dim, "keyboard_hidden_dim": acfg.keyboard_hidden,
                     "mouse_dim_in": 2, "mouse_hidden_dim": acfg.mouse_hidden, "mouse_qk_dim_list": [8, 28, 28],
                     "patch_size": [1, 2, 2], "qk_norm": True, "qkv_bias": False, "rope_dim_list": [8, 28, 28],
                     "rope_theta": 256, "vae_time_compression_ratio": 4, "windows_size": 3}
    model = TheirModel(model_type="i2v", dim=DIM, ffn_dim=256, num_heads=HEADS, num_layers=LAYERS, in_dim=36,
                       local_attn_size=window, sink_size=0, action_config=action_config).eval()
    model.load_state_dict(sd, strict=True)
    pipe = CausalInferencePipeline(args, device="cpu", generator=their_wrapper(model), vae_decoder=_Latents())
    pipe.num_transformer_blocks = LAYERS
    _fit_caches(pipe, acfg)
    cond_dict = {"cond_concat": cond["concat"], "visual_context": cond["clip"], "keyboard_cond": kb[None]}
    if ms is not None:
        cond_dict["mouse_cond"] = ms[None]
    torch.manual_seed(42)
    with torch.no_grad():
        return pipe.inference(noise, cond_dict, return_latents=True, mode=mode)


def _fit_caches(pipe, acfg):
    """Their cache set-up, then the zero K/V re-allocated at the tiny heads (12x128 -> 2x64, 16x64 -> 1x64)."""
    video, actions = pipe._initialize_kv_cache, pipe._initialize_kv_cache_mouse_and_keyboard

    def resize(entries, heads, head_dim):
        for e in entries:
            for name in ("k", "v"):
                e[name] = e[name].new_zeros(*e[name].shape[:2], heads, head_dim)

    def fit_video(**kw):
        video(**kw)
        resize(pipe.kv_cache1, HEADS, DIM // HEADS)

    def fit_actions(**kw):
        actions(**kw)
        resize(pipe.kv_cache_keyboard, acfg.heads, acfg.head_dim)
        resize(pipe.kv_cache_mouse, acfg.heads, acfg.head_dim)

    pipe._initialize_kv_cache, pipe._initialize_kv_cache_mouse_and_keyboard = fit_video, fit_actions


@pytest.mark.parametrize("mode", sorted(BLOCKS))
def test_matrix_game_pipeline_parity(mode, upstream_tree, monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", _flash_attn_stub())
    tree = upstream_tree("MATRIX_GAME")
    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    args, window = _their_configs(tree, mode)
    preset = get_preset(MATRIX_GAME_FAMILIES[mode])
    assert (preset.steps, preset.shift, preset.warp_steps, preset.frames_per_block, preset.local_window) == \
        (",".join(map(str, args.denoising_step_list)), args.model_kwargs.timestep_shift, args.warp_denoising_step,
         args.num_frame_per_block, window) and args.context_noise == 0 and args.mode == mode
    cfg, acfg, sd = _state_dict(mode)
    frames = 3 * BLOCKS[mode]
    pixel = 1 + 4 * (frames - 1)
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(1, 16, frames, H, W, generator=g)
    mask = torch.zeros(1, 4, frames, H, W)
    mask[:, :, 0] = 1.0
    image = torch.zeros(1, 16, frames, H, W)
    image[:, :, 0] = torch.randn(1, 16, H, W, generator=g)
    cond = {"concat": torch.cat([mask, image], 1), "clip": torch.randn(1, 257, 1280, generator=g)}
    kb, ms = _actions(mode, pixel, seed=11)

    theirs = _theirs(mode, args, window, acfg, sd, noise, cond, kb, ms, monkeypatch)

    model = CausalWanModel.from_state_dict(sd, num_heads=HEADS)
    assert model.config.actions == acfg and model.config.image_context_only

    def ours(keyboard, mouse):
        return sample_causal(model, torch.zeros(1, 16, frames, H, W), None,
                             settings=preset.causal_settings(),
                             clip_fea=cond["clip"], concat=cond["concat"],
                             actions=ActionTimeline(keyboard=keyboard, mouse=mouse, source="test"),
                             noise=ReplayChannelsFirstNoise(noise.permute(0, 2, 1, 3, 4), 42))

    mine = ours(kb, ms)
    diff = (mine - theirs).abs().max().item()
    other = ours(*_actions(mode, pixel, seed=12))
    moved = (other - theirs).abs().max().item()
    print(f"\nMatrix-Game 2.0 {mode}: max |ours - theirs| = {diff:.2e} (output scale "
          f"{theirs.abs().max().item():.2f}; other actions move it by {moved:.2e})")
    assert theirs.abs().mean() > 0.1
    assert diff <= 1e-4
    assert moved > 1e-2
