"""Wan 2.2 TI2V-5B in the pack's DiT: detection from the weights (real size on meta tensors, Wan's / ComfyUI's /
LongLive 2.0's key layouts), the 48-channel latent format, per-frame timesteps, and the UniPC solver.

Oracles: the sizes of Wan-Video/Wan2.2 ``wan/configs/wan_ti2v_5B.py`` (written out below), the independent
minimal forward of ``test_wan_model.py``, and diffusers' UniPC scheduler (optional).
"""

import pytest
import torch

from comfyui_clipwan.wan import CausalWanModel, WanConfig, config_from_shapes, normalize, denormalize, preset
from comfyui_clipwan.wan.model import dit
from comfyui_clipwan.wan.model.checkpoint import select_state_dict, strip_to_wan_keys
from comfyui_clipwan.wan.vae.latent import WAN22, check_latent, latent_format

from test_wan_model import ref_forward

# Wan-Video/Wan2.2 wan/configs/wan_ti2v_5B.py
TI2V_5B = dict(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48, freq_dim=256)
TINY_TI2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=48, out_dim=48)


def _meta_ti2v_5b():
    with torch.device("meta"):
        return dit.WanDiT(WanConfig(**{k: v for k, v in TI2V_5B.items()})).state_dict()


@pytest.mark.parametrize("layout", ["wan", "comfy", "longlive2"])
def test_ti2v_5b_real_size_detected_from_meta(layout):
    sd = _meta_ti2v_5b()
    assert 4.9e9 < sum(v.numel() for v in sd.values()) < 5.1e9  # "5B"
    assert not any(k.startswith("img_emb") or "k_img" in k for k in sd)
    raw = {"wan": sd,
           "comfy": {"model.diffusion_model." + k: v for k, v in sd.items()},
           # LongLive 2.0 model_bf16.pt: {"generator": WanDiffusionWrapper state dict ("model." + Wan keys)}
           "longlive2": {"generator": {"model." + k: v for k, v in sd.items()}}}[layout]
    picked, entry = select_state_dict(raw)
    assert entry == ("generator" if layout == "longlive2" else "")
    cfg = config_from_shapes({k: v.shape for k, v in strip_to_wan_keys(picked).items()})
    for k, v in TI2V_5B.items():
        assert getattr(cfg, k) == v, k
    assert cfg.head_dim == 128 and not cfg.has_img_emb and cfg.concat_channels == 0
    assert cfg == preset("TI2V-5B")
    assert cfg.describe() == "Wan 2.2 TI2V-5B ti2v (dim 3072, ffn 14336, 24 heads, 30 layers, in_dim 48)"
    # the Wan 2.1 sizes keep their names
    assert preset("1.3B").describe().startswith("Wan 2.1 1.3B t2v")


def test_tiny_ti2v_in_longlive2_layout_loads_and_matches_reference(tmp_path):
    src = CausalWanModel.random(TINY_TI2V, seed=3)
    path = tmp_path / "model_bf16.pt"
    torch.save({"generator": {"model." + k: v.clone() for k, v in src.state_dict().items()}}, path)
    m = CausalWanModel.from_file(str(path))
    assert m.config == TINY_TI2V
    assert m.source == "model_bf16.pt [generator]"
    assert repr(m).startswith("CausalWanModel(Wan 2.2 custom ti2v (dim 256")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 48, 3, 4, 6, generator=g)
    text = torch.randn(1, 9, 4096, generator=g)
    tf = torch.tensor([[0.0, 937.0, 937.0]])  # the clean first frame at t=0, the rest noisy (TI2V)
    ctx = dit.encode_context(m.tree, m.config, text, None, torch.float32, 1)
    ours = dit.transformer(m.tree, m.config, x, tf, ctx)
    ref = ref_forward(m.state_dict(), TINY_TI2V, x, None, text, t_frames=tf)
    assert ours.shape == (1, 48, 3, 4, 6) and ref.abs().mean() > 0.05
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


def test_wan22_latent_format():
    assert latent_format(48) is WAN22 and WAN22.spatial == 16
    # Wan2.2 wan/modules/vae2_2.py Wan2_2_VAE mean/std (first and last entries)
    assert (WAN22.mean[0], WAN22.mean[-1], WAN22.std[0], WAN22.std[-1]) == (-0.2289, -0.0667, 0.4765, 0.7744)
    z = torch.randn(1, 48, 2, 3, 3)
    n = normalize(z)
    torch.testing.assert_close(n[0, 0], (z[0, 0] + 0.2289) / 0.4765)
    torch.testing.assert_close(n[0, 47], (z[0, 47] + 0.0667) / 0.7744)
    torch.testing.assert_close(denormalize(n), z)
    with pytest.raises(ValueError) as e:
        normalize(torch.zeros(1, 32, 1, 2, 2))
    assert str(e.value) == ("a latent with 32 channels is not a Wan latent: Wan 2.1 latents have 16 channels, "
                            "Wan 2.2 (TI2V-5B VAE) latents 48.")
    with pytest.raises(ValueError) as e:
        check_latent(torch.zeros(1, 16, 2, 4, 4), channels=48)
    assert str(e.value) == (
        "latent has 16 channels; the model takes Wan 2.2 latents with 48 (shape [1, 16, 2, 4, 4]). Use a "
        "Wan 2.2 latent (its VAE), not an SD/Flux image latent or a Wan 2.1 (16-ch) one.")


def test_unipc_schedule_longlive2_numbers():
    from comfyui_clipwan.wan.sampling.unipc import unipc_schedule

    ts, sig = unipc_schedule(4, 5.0)
    # shift 5 over linspace(0.999, 0, 5)[:-1]: t = floor(1000·σ)
    assert ts == [999.0, 937.0, 833.0, 624.0]
    assert len(sig) == 5 and sig[-1] == 0.0
    torch.testing.assert_close(torch.tensor(sig[:4], dtype=torch.float64),
                               torch.tensor([0.9998, 0.937265, 0.833055, 0.624687], dtype=torch.float64),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 6])
def test_unipc_solver_matches_diffusers(steps):
    diffusers = pytest.importorskip("diffusers")
    from comfyui_clipwan.wan.sampling.unipc import UniPCSolver, unipc_schedule

    ts, sig = unipc_schedule(steps, 5.0)
    ref = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                            flow_shift=5.0, solver_order=2, solver_type="bh2",
                                            lower_order_final=True, predict_x0=True)
    ref.set_timesteps(steps)
    ref.sigmas = torch.tensor(sig, dtype=torch.float32)  # the same grid (diffusers' own differs in sigma_max)
    ref.timesteps = torch.tensor(ts, dtype=torch.int64)
    g = torch.Generator().manual_seed(steps)
    target = torch.randn(2, 4, 3, 5, generator=g)
    w = torch.randn(2, 4, 3, 5, generator=g) * 0.2

    def flow(x, i):  # a smooth stand-in for the model: pulls towards `target`, depends on x and the step
        return (x - target) * (1.0 + 0.1 * i) + w * x.tanh()

    x_ours = x_ref = torch.randn(2, 4, 3, 5, generator=g)
    ours = UniPCSolver(sig)
    for i in range(steps):
        x_ours = ours.step(i, x_ours, flow(x_ours, i))
        x_ref = ref.step(flow(x_ref, i), ref.timesteps[i], x_ref, return_dict=False)[0]
        torch.testing.assert_close(x_ours, x_ref, atol=1e-5, rtol=1e-5)
    assert (x_ours - target).abs().mean() < (torch.zeros(1) - target).abs().mean()  # it did solve something


# ------------------------------------------------------------------------------------------------
# the loop on a Wan 2.2 TI2V model: LongLive 2.0's rules (UniPC per block, first latent clamped)


def test_clamp_unipc_single_block_equals_reference_ti2v_solve():
    """One block covering the video has no cache: the loop must equal a plain TI2V solve written here from
    the reference forward and diffusers' UniPC: frame 0 clamped to the image and fed at t=0 every step."""
    diffusers = pytest.importorskip("diffusers")
    from comfyui_clipwan.wan.sampling.loop import CausalSettings
    from comfyui_clipwan.wan.sampling.run import sample_causal
    from comfyui_clipwan.wan.sampling.unipc import unipc_schedule

    m = CausalWanModel.random(TINY_TI2V, seed=4)
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(1, 48, 3, 4, 4, generator=g)
    image = torch.randn(1, 48, 1, 4, 4, generator=g)
    text = torch.randn(1, 6, 4096, generator=g)

    class Fixed:
        def initial(self, shape, device):
            return noise.clone()

    settings = CausalSettings(steps="4", shift=5.0, frames_per_block=3, solver="unipc", first_frame="clamp")
    ours = sample_causal(m, torch.zeros(1, 48, 3, 4, 4), text, settings=settings, first_frames=image,
                         noise=Fixed())

    ts, sig = unipc_schedule(4, 5.0)
    sched = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                              flow_shift=5.0)
    sched.set_timesteps(4)
    sched.sigmas, sched.timesteps = torch.tensor(sig), torch.tensor(ts, dtype=torch.int64)
    x = noise.clone()
    for i, t in enumerate(ts):
        x[:, :, :1] = image
        flow = ref_forward(m.state_dict(), TINY_TI2V, x, None, text, t_frames=torch.tensor([[0.0, t, t]]))
        x = sched.step(flow, sched.timesteps[i], x, return_dict=False)[0]
    x[:, :, :1] = image
    assert ours[:, :, :1].eq(image).all()
    torch.testing.assert_close(ours, x, atol=1e-4, rtol=1e-4)


def _tiny_ti2v_file(tmp_path):
    path = tmp_path / "model_bf16.pt"
    sd = CausalWanModel.random(TINY_TI2V, seed=7).state_dict()
    torch.save({"generator": {"model." + k: v.clone() for k, v in sd.items()}}, path)
    return str(path)


class FakeWan22VAE:
    """Stands in for ComfyUI's Wan 2.2 VAE: [F,H,W,3] -> [1,48,(F-1)//4+1,H/16,W/16] (deterministic)."""

    def encode(self, pixels):
        x = pixels.movedim(-1, 0)[:, ::4]
        x = torch.nn.functional.avg_pool3d(x.unsqueeze(0), (1, 16, 16))[0]  # [3, T, h, w]
        return torch.cat([x * (i + 1) - 0.1 * i for i in range(16)], 0).unsqueeze(0)


def test_node_samples_ti2v_from_wan22_image_latent(tmp_path, monkeypatch):
    """CausalWanSampler on a LongLive 2.0-layout file with a Wan22ImageToVideoLatent-style LATENT
    (image latent in the leading frames + noise_mask): LongLive 2.0's loop, frame 0 = the image."""
    from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler, LoadCausalWanModel
    from comfyui_clipwan.nodes import comfy_bridge as bridge
    from comfyui_clipwan.wan.conditioning.image import ti2v_latents
    from comfyui_clipwan.wan.sampling.loop import CausalSettings
    from comfyui_clipwan.wan.sampling.run import sample_causal

    path = _tiny_ti2v_file(tmp_path)
    monkeypatch.setattr(bridge, "resolve_model_path", lambda name, *folders: path)
    monkeypatch.setattr(bridge, "in_comfyui", lambda: False)  # the pack's own model (ComfyUI may be imported)
    (model,) = LoadCausalWanModel().load("model_bf16.pt", checkpoint_entry="generator")
    assert model.config.generation == "Wan 2.2"
    image = torch.rand(1, 80, 96, 3, generator=torch.Generator().manual_seed(1))
    samples, mask = ti2v_latents(64, 64, 25, 1, image, FakeWan22VAE().encode)
    assert samples.shape == (1, 48, 7, 4, 4) and mask[0, 0, :, 0, 0].tolist() == [0, 1, 1, 1, 1, 1, 1]
    text = torch.randn(1, 512, 4096, generator=torch.Generator().manual_seed(2))
    pos = [[text, {}]]
    (out,) = CausalWanSampler().sample(model, pos, {"samples": samples, "noise_mask": mask}, seed=3, steps="4",
                                       frames_per_block=2, sink_size=2, local_window=4,
                                       independent_first_frame=True)
    assert out["samples"].shape == (1, 48, 7, 4, 4)
    torch.testing.assert_close(out["samples"][:, :, :1], samples[:, :, :1], atol=1e-6, rtol=0)
    # the same run through the Python API with LongLive 2.0's rules spelled out
    want = sample_causal(model, torch.zeros(1, 48, 7, 4, 4), text, seed=3, first_frames=normalize(samples[:, :, :1]),
                         settings=CausalSettings(steps="4", frames_per_block=2, sink_size=2, local_window=4,
                                                 independent_first_frame=True, solver="unipc", first_frame="clamp",
                                                 recache="none"))
    torch.testing.assert_close(out["samples"], denormalize(want), atol=1e-6, rtol=0)
    # a Wan 2.1 latent into the Wan 2.2 model is refused with what to do
    with pytest.raises(ValueError, match=r"^latent has 16 channels; the model takes Wan 2.2 latents with 48"):
        CausalWanSampler().sample(model, pos, {"samples": torch.zeros(1, 16, 7, 8, 8)}, seed=0, steps="4")


def test_longlive2_preset_runs_through_the_node_on_defaults(tmp_path, monkeypatch):
    """The LongLive 2.0 preset's widget values and recommended length, as the web menu sets them, sample a
    start image through the node: 16 latent frames = 2 blocks of 8, frame 0 = the image's latent."""
    from comfyui_clipwan.nodes.wan_nodes import CausalWanSampler, LoadCausalWanModel
    from comfyui_clipwan.nodes import comfy_bridge as bridge
    from comfyui_clipwan.wan.conditioning.image import ti2v_latents
    from comfyui_clipwan.wan.sampling.presets import get_preset

    preset = get_preset("LongLive 2.0")
    path = _tiny_ti2v_file(tmp_path)
    monkeypatch.setattr(bridge, "resolve_model_path", lambda name, *folders: path)
    monkeypatch.setattr(bridge, "in_comfyui", lambda: False)
    (model,) = LoadCausalWanModel().load("model_bf16.pt", checkpoint_entry=preset.checkpoint_entry)
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(4))
    samples, mask = ti2v_latents(32, 32, preset.recommended_length, 1, image, FakeWan22VAE().encode)
    assert samples.shape == (1, 48, 16, 2, 2)
    text = torch.randn(1, 16, 4096, generator=torch.Generator().manual_seed(5))
    (out,) = CausalWanSampler().sample(model, [[text, {}]], {"samples": samples, "noise_mask": mask}, seed=6,
                                       **preset.sampler_values())
    z = out["samples"]
    assert z.shape == (1, 48, 16, 2, 2) and torch.isfinite(z).all()
    torch.testing.assert_close(z[:, :, :1], samples[:, :, :1], atol=1e-6, rtol=0)
    assert (z[:, :, 1:] - samples[:, :, 1:]).abs().mean() > 0.05


def test_cli_samples_ti2v_checkpoint_from_image_latent(tmp_path, capsys):
    import json

    from safetensors.torch import load_file, save_file

    from comfyui_clipwan.cli import main

    path = _tiny_ti2v_file(tmp_path)
    image_latent = torch.randn(1, 48, 1, 4, 4)
    save_file({"latent": image_latent}, str(tmp_path / "start_latent.safetensors"))
    out = tmp_path / "out"
    rc = main(["sample", "--model", path, "--width", "64", "--height", "64", "--length", "29",
               "--frames-per-block", "4", "--sink", "4", "--window", "8",
               "--image-latent", str(tmp_path / "start_latent.safetensors"), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "wan: model Wan 2.2 custom ti2v (dim 256" in printed
    assert "route 3 — image latent (1 frame(s)) clamped as the clean first frame(s) of the first block" in printed
    latent = load_file(str(out / "wan_latent.safetensors"))["latent_tensor"]
    assert latent.shape == (1, 48, 8, 4, 4)
    torch.testing.assert_close(latent[:, :, :1], image_latent, atol=1e-5, rtol=0)
    summary = json.loads((out / "wan_summary.json").read_text())
    assert summary["blocks"] == 2 and summary["image_routes"] == ["first_frames"]
