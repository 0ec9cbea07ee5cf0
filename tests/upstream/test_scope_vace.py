"""Daydream Scope's causal VACE vs the pack's, on shared tiny random weights, same noise, fp32.

Runs when ``UPSTREAM_SCOPE_DIR`` points at a checkout of daydreamlive/scope (tested: main @68b0f95). What is theirs:
the VACE wrapper ``wan2_1/vace/models/causal_vace_model.py`` ``CausalVaceWanModel`` with its hint-injecting and VACE
blocks (``attention_blocks.py``), built around Scope's LongLive ``CausalWanModel``
(``longlive/modules/causal_model.py``), the VACE weights read by their ``load_vace_weights_only`` from a VACE module
file in Kijai's layout (``vace_blocks.*`` / ``vace_patch_embedding.*`` only), their ``WanDiffusionWrapper``
(``wan2_1/components/generator.py``: flow -> x0, their scheduler's re-noise) and their cache set-up helpers
(``wan2_1/utils.py`` ``initialize_kv_cache`` / ``initialize_crossattn_cache``, ``wan2_1/blocks/setup_caches.py``'s
``set_all_modules_*``). Their per-chunk calls are made here in the order of their ``DenoiseBlock``
(``wan2_1/blocks/denoise.py``: each step with ``vace_context`` / ``vace_context_scale``, re-noise from one generator)
and ``CleanKVCacheBlock`` (``clean_kv_cache.py``: the clean pass at t = 0, *without* the VACE context); the VACE
context of a chunk is what their ``VaceEncodingBlock`` hands on, in latent space: ``[reference frames | the chunk's
control frames]`` (96 channels; the VAE is not under test).

Packages that tree needs for these modules: torch (>= 2.5, for ``flex_attention``), diffusers (``ConfigMixin``,
``ModelMixin``, ``modular_pipelines``), einops, omegaconf, safetensors, pluggy, pydantic (their plugin manager). Their
``wan2_1/modules/attention.py`` imports ``flash_attn`` unconditionally: a stand-in module is registered under that
name (never called), their ``attention`` / ``flash_attention`` names are pointed at fp32 SDPA (``fp32_attention``),
and their module-level ``torch.compile(flex_attention)`` at the eager ``flex_attention`` (CPU: no compiler needed).
Their ``longlive/__init__.py`` (which imports the whole pipeline) is not run: the package is registered with its path.

Measured (2 CPU cores, about 70 s for the four tests): control video 6.0e-7, reference + control 6.0e-7, reference
only 4.8e-7 (max |ours - theirs|, output scale ~3; VACE moves the output by 0.56-0.85). At a block of 48 tokens
(not a multiple of 128) their VACE blocks attend, unmasked, to the zero rows ``flex_attention`` is padded with; each
such row takes exp(0 - max score) of the softmax, which stays below fp32 resolution with these peaked scores
(4.8e-7) but is a real difference of their rule where attention is flat (3e-4 on random q/k of scale 3).
"""

import importlib
import importlib.machinery
import os
import sys
import types

import pytest
import torch
from safetensors.torch import save_file

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, WanConfig, sample_causal
from comfyui_clipwan.wan.conditioning.control import VaceControl
from .conftest import fp32_attention
from .harness import ReplayTorchGlobalNoise, Texts

STEPS = [1000, 750, 500, 250]  # Scope feeds its step list unwarped
CFG = WanConfig(dim=256, ffn_dim=256, num_heads=2, num_layers=2, in_dim=16, vace_layers=(0, 1), vace_in_dim=96)
N, CHUNKS, SINK, WINDOW = 3, 3, 3, 12  # LongLive's shipped sink 3 / window 12, blocks of 3
SCOPE_PACKAGES = ("scope",)


def _weights(seed=5):
    sd = CausalWanModel.random(CFG, seed=seed).state_dict()
    for k in sd:  # sharpened self-attention, so which tokens attend shows in the output
        if ".self_attn.norm_q." in k or ".self_attn.norm_k." in k:
            sd[k] = sd[k] * 4.0
    return sd


@pytest.fixture
def scope(monkeypatch):
    path = os.environ.get("UPSTREAM_SCOPE_DIR")
    if not path:
        pytest.skip("UPSTREAM_SCOPE_DIR is not set (point it at daydreamlive/scope to run this parity test)")
    src = os.path.join(path, "src")
    pipelines = os.path.join(src, "scope", "core", "pipelines")
    if not os.path.isdir(os.path.join(pipelines, "wan2_1", "vace")):
        pytest.fail(f"UPSTREAM_SCOPE_DIR={path} does not look like daydreamlive/scope (no src/scope/core/pipelines/"
                    f"wan2_1/vace)")
    import diffusers.configuration_utils  # noqa: F401  (before the flash_attn stand-in: diffusers probes for it)
    import diffusers.modular_pipelines  # noqa: F401
    import diffusers.models.modeling_utils  # noqa: F401

    for name in [m for m in sys.modules if m.split(".")[0] in SCOPE_PACKAGES]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(src)
    stand_in = types.ModuleType("flash_attn")
    stand_in.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    stand_in.flash_attn_func = None
    monkeypatch.setitem(sys.modules, "flash_attn", stand_in)
    importlib.import_module("scope.core.pipelines")
    package = types.ModuleType("scope.core.pipelines.longlive")  # its __init__ imports the whole pipeline
    package.__path__ = [os.path.join(pipelines, "longlive")]
    package.__spec__ = importlib.machinery.ModuleSpec(package.__name__, None, is_package=True)
    monkeypatch.setitem(sys.modules, package.__name__, package)
    causal = importlib.import_module("scope.core.pipelines.longlive.modules.causal_model")
    fp32_attention(monkeypatch, "scope.core.pipelines.longlive.modules.causal_model",
                   "scope.core.pipelines.longlive.modules.model")
    from torch.nn.attention.flex_attention import flex_attention

    monkeypatch.setattr(causal, "flex_attention", flex_attention)  # CPU: eager, not torch.compile'd
    yield causal
    for name in [m for m in sys.modules if m.split(".")[0] in SCOPE_PACKAGES]:
        sys.modules.pop(name, None)


def their_run(causal, sd, module_path, noise, text, contexts, scale, h, w):
    """Scope's calls for ``CHUNKS`` chunks; ``contexts[c]`` the chunk's VACE context ``[96, R+N, h, w]`` or None."""
    from scope.core.pipelines.wan2_1.blocks.setup_caches import (set_all_modules_frame_seq_length,
                                                                 set_all_modules_max_attention_size)
    from scope.core.pipelines.wan2_1.components.generator import WanDiffusionWrapper
    from scope.core.pipelines.wan2_1.components.scheduler import FlowMatchScheduler
    from scope.core.pipelines.wan2_1.utils import initialize_crossattn_cache, initialize_kv_cache
    from scope.core.pipelines.wan2_1.vace import CausalVaceWanModel, load_vace_weights_only

    base = causal.CausalWanModel(model_type="t2v", dim=CFG.dim, ffn_dim=CFG.ffn_dim, num_heads=CFG.num_heads,
                                 num_layers=CFG.num_layers, local_attn_size=WINDOW, sink_size=SINK).eval()
    base.load_state_dict({k: v for k, v in sd.items() if not k.startswith("vace_")}, strict=True)
    model = CausalVaceWanModel(base, vace_in_dim=96, vace_layers=list(CFG.vace_layers)).eval()
    load_vace_weights_only(model, module_path)
    gen = WanDiffusionWrapper.__new__(WanDiffusionWrapper)
    torch.nn.Module.__init__(gen)
    gen.model, gen.uniform_timestep, gen.seq_len = model, False, 32760
    gen.scheduler = FlowMatchScheduler(shift=5.0, sigma_min=0.0, extra_one_step=True)
    gen.scheduler.set_timesteps(1000, training=True)
    gen.post_init()
    fsl = (h // 2) * (w // 2)
    set_all_modules_frame_seq_length(gen, fsl)
    set_all_modules_max_attention_size(gen, WINDOW * fsl)
    kv = initialize_kv_cache(generator=gen, batch_size=1, dtype=torch.float32, device=torch.device("cpu"),
                             local_attn_size=WINDOW, frame_seq_length=fsl)
    cross = initialize_crossattn_cache(generator=gen, batch_size=1, dtype=torch.float32, device=torch.device("cpu"))
    cond = {"prompt_embeds": text}
    rnd = torch.Generator().manual_seed(42)
    out = []
    with torch.no_grad():
        for c in range(CHUNKS):
            start = c * N
            x = noise[:, start:start + N]
            where = dict(kv_cache=kv, crossattn_cache=cross, current_start=start * fsl, current_end=(start + N) * fsl)
            vace = dict(vace_context=None if contexts[c] is None else [contexts[c]], vace_context_scale=scale)
            for i, t in enumerate(STEPS):  # DenoiseBlock
                timestep = torch.ones([1, N], dtype=torch.int64) * t
                _, x0 = gen(noisy_image_or_video=x, conditional_dict=cond, timestep=timestep, kv_bank=None,
                            update_bank=False, q_bank=i == 0, kv_cache_attention_bias=1.0, **where, **vace)
                if i + 1 < len(STEPS):
                    flat = x0.flatten(0, 1)
                    draw = torch.randn(flat.shape, generator=rnd, dtype=flat.dtype)
                    x = gen.scheduler.add_noise(flat, draw, STEPS[i + 1] * torch.ones([N], dtype=torch.long)
                                                ).unflatten(0, x0.shape[:2])
            out.append(x0)
            gen(noisy_image_or_video=x0, conditional_dict=cond, timestep=torch.zeros([1, N]), kv_bank=None,
                update_bank=False, q_bank=False, update_cache=True, **where)  # CleanKVCacheBlock: no VACE
    return torch.cat(out, 1).permute(0, 2, 1, 3, 4)


CASES = {"control": (0, 1.0, True), "reference_and_control": (1, 0.7, True), "reference_only": (1, 1.3, False)}


def _case(name, h, w, tmp_path, causal):
    refs, scale, control_on = CASES[name]
    sd = _weights()
    module = tmp_path / "Wan2_1-VACE_module_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items() if k.startswith("vace_")}, str(module))
    g = torch.Generator().manual_seed(11)
    frames = N * CHUNKS
    control = torch.randn(1, 96, frames, h, w, generator=g) if control_on else None
    reference = None
    if refs:
        reference = torch.zeros(1, 96, refs, h, w)
        reference[:, :16] = torch.randn(1, 16, refs, h, w, generator=g)  # latent | zeros | zero mask, as Scope's
    noise = torch.randn(1, frames, 16, h, w, generator=g)
    text = Texts()(["a prompt"])["prompt_embeds"]
    contexts = []
    for c in range(CHUNKS):
        parts = ([] if reference is None else [reference[0]]) + \
                ([] if control is None else [control[0, :, c * N:(c + 1) * N]])
        contexts.append(torch.cat(parts, 1))
    theirs = their_run(causal, sd, str(module), noise, text, contexts, scale, h, w)
    settings = CausalSettings(steps=STEPS, shift=5.0, warp=False, frames_per_block=N, sink_size=SINK,
                              local_window=WINDOW)
    ours = sample_causal(CausalWanModel.from_state_dict(sd), torch.zeros(1, 16, frames, h, w), text,
                         settings=settings, noise=ReplayTorchGlobalNoise(noise, 42),
                         vace=VaceControl(control=control, reference=reference, strength=scale))
    plain = sample_causal(CausalWanModel.from_state_dict(sd), torch.zeros(1, 16, frames, h, w), text,
                          settings=settings, noise=ReplayTorchGlobalNoise(noise, 42))
    return ours, theirs, plain


@pytest.mark.parametrize("name", sorted(CASES))
def test_scope_causal_vace_parity(name, scope, tmp_path):
    ours, theirs, plain = _case(name, 16, 32, tmp_path, scope)  # 128 tokens per frame: no flex padding
    diff = (ours - theirs).abs().max().item()
    print(f"\n{name}: max |ours - Scope| = {diff:.2e} (output scale {theirs.abs().max().item():.2f}; "
          f"VACE changes the output by {(plain - theirs).abs().max().item():.2e})")
    assert theirs.abs().mean() > 0.1
    assert (plain - theirs).abs().max() > 1e-2  # the hints matter: the comparison tests them
    assert diff <= 1e-4


def test_scope_flex_padding(scope, tmp_path):
    """16 tokens per frame: a chunk of 48 tokens, which their VACE blocks pad to 128 rows for ``flex_attention``
    and attend without a mask. The zero rows take exp(0 - max score) of the softmax each: with these peaked scores
    that weight is below fp32 resolution, so the pack (no padding) stays within the bar."""
    ours, theirs, _ = _case("control", 8, 8, tmp_path, scope)
    diff = (ours - theirs).abs().max().item()
    print(f"\npadded block: max |ours - Scope| = {diff:.2e}")
    assert diff <= 1e-4
