"""CausVid's own ``InferencePipeline`` (``causvid/models/wan/causal_inference.py``), set up as
``minimal_inference/autoregressive_inference.py`` sets it up (``configs/wan_causal_dmd.yaml``, the checkpoint's
``generator`` entry loaded strictly into the pipeline's generator), vs ``sample_causal`` with our CausVid preset
(steps 1000,757,522 unwarped at shift 8, blocks of 3) on shared tiny random weights and replayed noise.

Runs when ``UPSTREAM_CAUSVID_DIR`` points at tianweiy/CausVid (master): t2v, and the pipeline's image route
``start_latents`` (known latent frames, whole blocks, only written into the cache at t=0; its long-video
script's route) as our ``first_frames``; also master's later warped 4-step config
(``wan_causal_dmd_warp_4step_cfg2.yaml``, no preset of ours), which runs their warp branch. The
single-image i2v pipeline lives on the authors' ``i2v`` branch
(``causal_inference_i2v.py``: one image latent frame, then blocks of 4, ``configs/wan_i2v_causal_dmd.yaml``,
checkpoint entry ``model``); that case runs when ``UPSTREAM_CAUSVID_I2V_DIR`` points at a checkout of it.

Their ``__init__`` runs as it is; only what reads files is answered with the tiny pieces: the two
``from_pretrained`` of their diffusion wrapper give the tiny model, the text encoder and VAE factories give a
fixed text table and a VAE that hands back the latent. Their re-noise builds a ``device="cuda"`` tensor:
``cuda_as_cpu`` makes it a CPU one. The sharp checks: the same run warped, or with t = 1000·σ (the pack's
former "shift 1" stand-in for this schedule), is far from theirs.

Packages this needs beside the pack's own (pip names; the module-level imports on the path the test imports from the
authors' tree, measured by an AST walk of the checkout, plus the test's own): diffusers, easydict, einops, ftfy,
numpy, regex, scipy, torch, torchvision, tqdm, transformers; the test: omegaconf."""

import dataclasses
import importlib
import os

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, sample_causal
from comfyui_clipwan.wan.sampling.presets import get_preset
from .conftest import cuda_as_cpu, fp32_attention
from .harness import H, LAYERS, W, ReplayTorchGlobalNoise, Texts, fit_pipeline, random_state_dict

PRESET = get_preset("CausVid")
PROMPT = ["a prompt"]


class LatentVAE:
    """Their VAE wrapper's place: ``decode_to_pixel`` keeps the latent it is given (the pipeline's output
    before decoding) and returns it; the pipeline's ``* 0.5 + 0.5`` and clamp then only touch the video."""

    latent = None

    def decode_to_pixel(self, latent, use_cache=False):
        self.latent = latent.clone()
        return latent


def _tiny_model(cls):
    return cls(model_type="t2v", dim=1536, ffn_dim=256, num_heads=12, num_layers=LAYERS).eval()


def _their_pipeline(monkeypatch, tree, module, config_file, checkpoint, entry):
    """Their ``InferencePipeline(config, device="cuda")`` from ``module`` and their config file, the checkpoint's
    ``entry`` loaded as their script loads it."""
    from omegaconf import OmegaConf

    fp32_attention(monkeypatch, "causvid.models.wan.causal_model", "causvid.models.wan.wan_base.modules.model")
    wrapper = importlib.import_module("causvid.models.wan.wan_wrapper")
    for cls in (wrapper.WanModel, wrapper.CausalWanModel):  # WanModel.from_pretrained("wan_models/...")
        monkeypatch.setattr(cls, "from_pretrained", classmethod(lambda c, *a, **k: _tiny_model(c)), raising=False)
    pipeline_module = importlib.import_module(module)
    monkeypatch.setattr(pipeline_module, "get_text_encoder_wrapper", lambda model_name: Texts)
    monkeypatch.setattr(pipeline_module, "get_vae_wrapper", lambda model_name: LatentVAE)

    config = OmegaConf.load(os.path.join(tree, config_file))
    with cuda_as_cpu():
        pipe = pipeline_module.InferencePipeline(config, device="cuda")
    state_dict = torch.load(checkpoint, map_location="cpu")[entry]
    pipe.generator.load_state_dict(state_dict, strict=True)
    return fit_pipeline(pipe), config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """``checkpoint(entry)`` -> a file of tiny random weights in CausVid's layout, ``{entry: {"model.<wan key>":
    tensor}}`` (their generator wrapper's state dict: the DiT under ``model``); written on first use, so a
    skipped run writes nothing."""
    files = {}

    def get(entry):
        if entry not in files:
            files[entry] = str(tmp_path_factory.mktemp("causvid") / "model.pt")
            torch.save({entry: {"model." + k: v for k, v in random_state_dict().items()}}, files[entry])
        return files[entry]

    return get


def _settings(config, **extra):
    """The settings of their config file: steps (the trailing 0 dropped), shift, warp, block size."""
    steps = [int(s) for s in config.denoising_step_list]
    assert steps[-1] == 0
    warp = bool(config.get("warp_denoising_step", False))  # the i2v branch predates the option: never warps
    return CausalSettings(steps=steps[:-1], shift=float(config.timestep_shift), warp=warp,
                          frames_per_block=int(config.num_frame_per_block), **extra)


def _preset_settings():
    return CausalSettings(steps=PRESET.steps, shift=PRESET.shift, warp=PRESET.warp_steps,
                          frames_per_block=PRESET.frames_per_block)


def _ours(checkpoint, entry, frames, settings, noise_bfchw, first_frames=None):
    model = CausalWanModel.from_file(checkpoint, entry=entry)
    return sample_causal(model, torch.zeros(1, 16, frames, H, W), Texts()(PROMPT)["prompt_embeds"],
                         settings=settings, first_frames=first_frames,
                         noise=ReplayTorchGlobalNoise(noise_bfchw, 42))


def _compare(label, ours, theirs):
    diff = (ours - theirs).abs().max().item()
    print(f"\n{label}: max |ours - CausVid| = {diff:.2e} (output scale {theirs.abs().max().item():.2f})")
    assert theirs.abs().mean() > 0.1
    assert diff <= 1e-4
    return diff


SHIPPED = "configs/wan_causal_dmd.yaml"  # the README's config for the released autoregressive_checkpoint
CASES = {  # config, frames in all, known frames (start_latents)
    "t2v": (SHIPPED, 9, 0),
    "start_latents_one_block": (SHIPPED, 9, 3),
    # master's later 4-step checkpoint config trained with the warp (no preset of ours; no README checkpoint)
    "warp_4step_cfg2_t2v": ("configs/wan_causal_dmd_warp_4step_cfg2.yaml", 9, 0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_causvid_pipeline_parity(case, checkpoint, upstream_tree, monkeypatch):
    tree = upstream_tree("CAUSVID", package="causvid")
    config_file, frames, known = CASES[case]
    if not os.path.isfile(os.path.join(tree, config_file)):
        pytest.skip(f"{config_file} is not in this CausVid checkout (added on master in 2025)")
    entry = PRESET.checkpoint_entry  # their script: torch.load(.../model.pt)['generator']
    pipe, config = _their_pipeline(monkeypatch, tree, "causvid.models.wan.causal_inference", config_file,
                                   checkpoint(entry), entry)
    noise = torch.randn(1, frames, 16, H, W, generator=torch.Generator().manual_seed(7))
    start = torch.randn(1, known, 16, H, W, generator=torch.Generator().manual_seed(8)) if known else None
    torch.manual_seed(42)
    with torch.no_grad(), cuda_as_cpu():
        pipe.inference(noise=noise, text_prompts=PROMPT, start_latents=start)
    theirs = pipe.vae.latent.permute(0, 2, 1, 3, 4)

    settings = _settings(config)
    if config_file == SHIPPED:  # our CausVid preset is their shipped config; run the preset's own values
        assert PRESET.widget_differences({"steps": settings.steps, "shift": settings.shift,
                                          "warp_steps": settings.warp,
                                          "frames_per_block": settings.frames_per_block}) == []
        settings = _preset_settings()
    first = None if start is None else start.permute(0, 2, 1, 3, 4)
    ours = _ours(checkpoint(entry), entry, frames, settings, noise, first)
    _compare(f"{case} (CausVid)", ours, theirs)
    if known:
        assert torch.equal(ours[:, :, :known], theirs[:, :, :known])
    if case != "t2v":
        return
    # sharp: the schedule rule matters. Warped, and t = 1000·σ (unwarped at shift 1), are far off
    for name, wrong in (("warped", dataclasses.replace(settings, warp=True)),
                        ("t = 1000·σ (shift 1)", dataclasses.replace(settings, shift=1.0))):
        off = _ours(checkpoint(entry), entry, frames, wrong, noise)
        far = (off - theirs).abs().max().item()
        print(f"{case}: {name} vs CausVid: {far:.2e}")
        assert far > 1e-3


def test_causvid_i2v_branch_parity(checkpoint, upstream_tree, monkeypatch):
    """The ``i2v`` branch's ``causal_inference_i2v.py``: the image latent cached alone at t=0, then blocks of
    4 (its config) = our ``first_frames`` with ``independent_first_frame``."""
    tree = upstream_tree("CAUSVID_I2V", package="causvid")
    if not os.path.isfile(os.path.join(tree, "causvid", "models", "wan", "causal_inference_i2v.py")):
        pytest.fail(f"UPSTREAM_CAUSVID_I2V_DIR={tree} has no causvid/models/wan/causal_inference_i2v.py "
                    f"(check out the authors' i2v branch)")
    pipe, config = _their_pipeline(monkeypatch, tree, "causvid.models.wan.causal_inference_i2v",
                                   "configs/wan_i2v_causal_dmd.yaml", checkpoint("model"), "model")
    generated = 2 * int(config.num_frame_per_block)
    noise = torch.randn(1, generated, 16, H, W, generator=torch.Generator().manual_seed(7))
    image = torch.randn(1, 1, 16, H, W, generator=torch.Generator().manual_seed(8))
    torch.manual_seed(42)
    with torch.no_grad(), cuda_as_cpu():
        pipe.inference(noise=noise, text_prompts=PROMPT, initial_latent=image)
    theirs = pipe.vae.latent.permute(0, 2, 1, 3, 4)

    settings = _settings(config, independent_first_frame=True)
    full_noise = torch.cat([torch.zeros(1, 1, 16, H, W), noise], 1)  # frame 0 is the image
    ours = _ours(checkpoint("model"), "model", 1 + generated, settings, full_noise, image.permute(0, 2, 1, 3, 4))
    _compare("i2v branch, blocks of 4 (CausVid)", ours, theirs)
