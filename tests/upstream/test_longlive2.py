"""Parity with LongLive 2.0's own inference loop (NVlabs/LongLive, main branch), fp32, tiny random weights.

Runs only when ``UPSTREAM_LONGLIVE2_DIR`` points at a LongLive checkout (main); skips otherwise. Nothing of
LongLive is in this repository: the test imports the checkout, builds its ``CausalWanModel`` (Wan 2.2
TI2V-shaped: 48 latent channels in and out, no image embedding) at a tiny size, saves the same random
weights in LongLive 2.0's ``model_bf16.pt`` layout for the pack to load, feeds both loops the same noise and
the same text embeddings, and compares the latents: LongLive's ``CausalDiffusionInferencePipeline.inference``
(UniPC 4 steps at shift 5 per block, sink/window/blocks of 8/32/8, first latent clamped to the image's clean
latent at t=0, one prompt per block) against ``sample_causal`` with the ``longlive2`` settings; and its multi-shot
mode (``multi_shot_sink``, ``multi_shot_rope_offset``, prompts with the scene-cut prefix at each later shot's first
block, as its datasets write them) against a timeline of scene cuts read from its saved per-block prompt file.

What this environment lacks is shimmed without touching the maths: ``flash_attention`` (CUDA + fp16 only) and
``attention`` (its SDPA fallback casts to bf16) are replaced by fp32 PyTorch SDPA (no masks are used), the Triton RoPE/adaLN kernels are switched off
with LongLive's own environment switches, and two imports that newer transformers/torchvision removed (used
only in training code) get placeholders.

Packages this needs beside the pack's own (pip names; the module-level imports on the path the test imports from the
authors' tree, measured by an AST walk of the checkout, plus the test's own): diffusers, einops, ftfy, numpy,
omegaconf, Pillow, regex, scipy, torch, torchvision, tqdm, transformers."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest
import torch

from .conftest import _forget_upstream_modules

LL_DIR = os.environ.get("UPSTREAM_LONGLIVE2_DIR")
pytestmark = pytest.mark.skipif(not LL_DIR, reason="set UPSTREAM_LONGLIVE2_DIR to a NVlabs/LongLive (main) checkout")

H = W = 4  # latent 4x4 -> 2x2 tokens per frame
TINY = dict(dim=256, ffn_dim=320, num_heads=2, num_layers=2)


@pytest.fixture(scope="module")
def upstream():
    os.environ["LLV2_TRITON_ROPE"] = "0"
    os.environ["LLV2_TRITON_ADALN"] = "0"
    _forget_upstream_modules()  # another family's tree may have left its utils/ pipeline/ wan/ imported
    sys.path.insert(0, LL_DIR)
    import torchvision.io
    import transformers.models.x_clip.modeling_x_clip as xclip

    if not hasattr(xclip, "x_clip_loss"):
        xclip.x_clip_loss = None  # imported by causal_model.py, never called at inference
    if not hasattr(torchvision.io, "write_video"):
        torchvision.io.write_video = None  # training pipeline import only
    import torch.nn.functional as F
    from omegaconf import OmegaConf

    import utils.config as ll_config
    import wan_5b.modules.causal_model as ll_causal
    from pipeline.causal_diffusion_inference import CausalDiffusionInferencePipeline
    from utils import dataset as ll_dataset
    from utils.scheduler import FlowMatchScheduler
    from utils.wan_5b_wrapper import WanDiffusionWrapper

    def sdpa_attention(q, k, v, k_lens=None, **_):  # [B, L, H, d]; no padding masks at inference
        assert k_lens is None
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2).contiguous()

    # flash_attention (cross-attention) asserts CUDA + fp16; attention()'s SDPA fallback (self-attention)
    # casts to bf16. Both become fp32 SDPA here, so the comparison is at fp32.
    ll_causal.flash_attention = ll_causal.attention = sdpa_attention
    saved = dict(ll_config.wan_default_config["Wan2.2-TI2V-5B"])
    ll_config.wan_default_config["Wan2.2-TI2V-5B"].update(num_heads=TINY["num_heads"],
                                                          num_transformer_blocks=TINY["num_layers"])
    yield dict(Pipeline=CausalDiffusionInferencePipeline, Wrapper=WanDiffusionWrapper, Model=ll_causal.CausalWanModel,
               Scheduler=FlowMatchScheduler, OmegaConf=OmegaConf, dataset=ll_dataset)
    ll_config.wan_default_config["Wan2.2-TI2V-5B"].update(saved)
    # its utils/ is a regular package (an __init__.py), which would shadow the other trees' utils/ folders
    sys.path.remove(LL_DIR)
    _forget_upstream_modules()


def _upstream_pipeline(up, sd, frames, block, sink, window, i2v, texts, relative_rope=False, rope_offset=8):
    model = up["Model"](model_type="ti2v", in_dim=48, out_dim=48, local_attn_size=window, sink_size=sink,
                        num_frame_per_block=block, **TINY)
    model.load_state_dict(sd, strict=True)
    gen = up["Wrapper"].__new__(up["Wrapper"])  # its __init__ loads wan_models/ from disk; set it up by hand
    torch.nn.Module.__init__(gen)
    gen.model = model.eval()
    gen.uniform_timestep = False
    gen.scheduler = up["Scheduler"](shift=5.0, sigma_min=0.0, extra_one_step=True)
    gen.scheduler.set_timesteps(1000, training=True)
    gen.seq_len = frames * H * W // 4
    gen._compiled_model_call = None
    inference = dict(sampling_steps=4, sink_size=sink, guidance_scale=1.0, multi_shot_sink=True,
                     multi_shot_rope_offset=rope_offset, local_attn_size=window, independent_first_frame=i2v)
    args = up["OmegaConf"].create(dict(
        model_kwargs=dict(model_name="Wan2.2-TI2V-5B", timestep_shift=5.0, num_frame_per_block=block,
                          local_attn_size=window),
        image_or_video_shape=[1, frames, 48, H, W], num_frame_per_block=block, inference=inference,
        use_relative_rope=relative_rope))

    class Text:  # LongLive's WanTextEncoder interface over fixed embeddings
        def __call__(self, text_prompts):
            return {"prompt_embeds": torch.stack([texts[p] for p in text_prompts])}

    return up["Pipeline"](args, device=torch.device("cpu"), generator=gen, text_encoder=Text(), vae=object())


class _FixedNoise:
    def __init__(self, noise):
        self.noise = noise

    def initial(self, shape, device):
        assert tuple(shape) == tuple(self.noise.shape)
        return self.noise.to(device)

    def step(self, block, step, shape, device):
        raise AssertionError("LongLive 2.0's UniPC loop draws no noise after the initial one")


@pytest.mark.parametrize("frames,block,sink,window,i2v,switch,relative", [
    (48, 8, 8, 32, True, 3, False),  # the shipped i2v config: 6 blocks, the window rolls from block 4 on
    (48, 8, 8, 32, False, 0, False),  # the shipped t2v config
    (12, 2, 2, 6, True, 2, False),  # small blocks: rolling every block
    # its KV-cache relative RoPE (use_relative_rope: raw keys cached, roped at read in [sink | recent | block]
    # order) = the pack's positions="slots"; the window slides, so absolute positions would differ
    (48, 8, 8, 32, True, 3, True),
    (24, 2, 2, 6, False, 0, True),
])
def test_longlive2_loop_parity(upstream, tmp_path, frames, block, sink, window, i2v, switch, relative):
    from comfyui_clipwan.wan import CausalWanModel, WanConfig
    from comfyui_clipwan.wan.sampling.loop import CausalSettings, PromptSwitch
    from comfyui_clipwan.wan.sampling.run import sample_causal

    cfg = WanConfig(in_dim=48, out_dim=48, **TINY)
    src = CausalWanModel.random(cfg, seed=5)
    path = tmp_path / "model_bf16.pt"
    torch.save({"generator": {"model." + k: v.clone() for k, v in src.state_dict().items()}}, path)
    ours = CausalWanModel.from_file(str(path))
    assert ours.source == "model_bf16.pt [generator]"

    g = torch.Generator().manual_seed(frames + block)
    texts = {}
    for name in ("a", "b"):
        e = torch.zeros(512, 4096)
        e[:9] = torch.randn(9, 4096, generator=g)
        texts[name] = e
    blocks = frames // block
    prompts = ["a"] * blocks if not switch else ["a"] * switch + ["b"] * (blocks - switch)
    noise = torch.randn(1, frames, 48, H, W, generator=g)  # LongLive's layout [B, F, C, H, W]
    image = torch.randn(1, 1, 48, H, W, generator=g) if i2v else None

    pipe = _upstream_pipeline(upstream, src.state_dict(), frames, block, sink, window, i2v, texts, relative)
    with torch.no_grad():
        want = pipe.inference(noise=noise, text_prompts=[prompts], initial_latent=image, return_latents=True)
    want = want.permute(0, 2, 1, 3, 4)  # -> [B, C, F, H, W]

    settings = CausalSettings(steps="4", shift=5.0, frames_per_block=block, sink_size=sink, local_window=window,
                              solver="unipc", first_frame="clamp", recache="none",
                              positions="slots" if relative else "absolute")
    switches = [PromptSwitch(switch, texts["b"][None])] if switch else []
    got = sample_causal(ours, torch.zeros(1, 48, frames, H, W), texts["a"][None], settings=settings,
                        first_frames=None if image is None else image.permute(0, 2, 1, 3, 4),
                        prompt_switches=switches, noise=_FixedNoise(noise.permute(0, 2, 1, 3, 4)))
    assert want.abs().mean() > 0.1
    diff = (got - want).abs().max().item()
    print(f"LongLive 2.0 parity frames={frames} block={block} sink={sink} window={window} i2v={i2v} "
          f"switch={switch} relative_rope={relative}: max abs diff {diff:.2e}")
    assert diff <= 1e-4
    if relative:  # control: the absolute rule is told apart (the window slid, so the positions differ)
        absolute = sample_causal(ours, torch.zeros(1, 48, frames, H, W), texts["a"][None],
                                 settings=dataclasses.replace(settings, positions="absolute"),
                                 first_frames=None if image is None else image.permute(0, 2, 1, 3, 4),
                                 prompt_switches=switches, noise=_FixedNoise(noise.permute(0, 2, 1, 3, 4)))
        wrong = (absolute - want).abs().max().item()
        print(f"  absolute positions instead: {wrong:.2e}")
        assert wrong > 1e-4 and wrong > 100 * diff  # the parity bound would catch the wrong rule
    if i2v:
        torch.testing.assert_close(got[:, :, :1], image.permute(0, 2, 1, 3, 4), atol=0, rtol=0)


SCENE_CUT = "The scene transitions. "  # LongLive 2.0's DEFAULT_SCENE_CUT_PREFIX (utils/dataset.py)


@pytest.mark.parametrize("frames,block,sink,window,i2v,shots,relative,phi", [
    # the shipped config, 10 blocks, cuts at blocks 3 and 6: the first pin floats two blocks, joins the global
    # sink, then the second cut replaces it (the first shot's sink rolls out); RoPE offset 8 per cut
    (80, 8, 8, 32, True, (3, 3, 4), False, 8),
    (80, 8, 8, 32, False, (3, 3, 4), False, 8),
    # small blocks, three cuts (two in a row): rolling every block
    (24, 2, 2, 6, False, (4, 1, 2, 5), False, 8),
    # relative RoPE (positions='slots'): the pinned frames are read at their buffer slots; no RoPE offset there
    (24, 2, 2, 6, True, (4, 3, 5), True, 8),
    # a window of exactly sink + block (the new block overwrites the pin) and a fractional offset
    (16, 2, 2, 4, False, (3, 3, 2), False, 2.5),
])
def test_longlive2_multi_shot_parity(upstream, tmp_path, frames, block, sink, window, i2v, shots, relative, phi):
    """LongLive 2.0's multi-shot mode equals its pipeline: the prompts of a multi-shot video as its datasets write them
    (``longlive_shot_prompts``: shot captions over the blocks, the scene-cut prefix before each later shot's first
    block; the prefixed texts get embeddings of their own) run through its ``inference`` (``multi_shot_sink``,
    ``multi_shot_rope_offset``) and, read back from its saved per-block prompt file, through ``sample_causal`` with a
    timeline of scene cuts and the LongLive 2.0 preset's multi-shot settings."""
    from comfyui_clipwan.wan import CausalWanModel, WanConfig
    from comfyui_clipwan.wan.sampling.loop import CausalSettings
    from comfyui_clipwan.wan.sampling.presets import get_preset
    from comfyui_clipwan.wan.sampling.run import sample_causal
    from comfyui_clipwan.wan.timeline.files import longlive_shot_prompts, parse_block_prompts

    preset = get_preset("LongLive 2.0")
    assert (preset.multi_shot_sink, preset.multi_shot_rope_offset, preset.scene_cut_prefix) == (True, 8.0, SCENE_CUT)
    cfg = WanConfig(in_dim=48, out_dim=48, **TINY)
    src = CausalWanModel.random(cfg, seed=5)
    blocks = frames // block
    captions = [f"shot {i}" for i in range(len(shots))]
    prompts = longlive_shot_prompts(captions, blocks, shots)
    assert sum(p.startswith(SCENE_CUT) for p in prompts) == len(shots) - 1
    g = torch.Generator().manual_seed(frames + block + len(shots))
    texts = {}
    for text in dict.fromkeys(prompts + captions):  # a one-block shot's caption is encoded (not used) too
        e = torch.zeros(512, 4096)
        e[:9] = torch.randn(9, 4096, generator=g)
        texts[text] = e
    noise = torch.randn(1, frames, 48, H, W, generator=g)
    image = torch.randn(1, 1, 48, H, W, generator=g) if i2v else None

    pipe = _upstream_pipeline(upstream, src.state_dict(), frames, block, sink, window, i2v, texts, relative, phi)
    with torch.no_grad():
        want = pipe.inference(noise=noise, text_prompts=[prompts], initial_latent=image, return_latents=True)
    want = want.permute(0, 2, 1, 3, 4)

    # their inference.py's record of the run (save_prompts_to_txt: runs of equal prompts), read as a timeline
    saved, run = [], [0]
    for b in range(1, blocks + 1):
        if b == blocks or prompts[b] != prompts[b - 1]:
            saved.append(f"[{','.join(map(str, run))}] {prompts[b - 1]}")
            run = []
        run.append(b)
    timeline = parse_block_prompts("\n".join(saved) + "\n", "prompts.txt")
    timeline.encode(lambda text: texts[text][None], cut_prefix=SCENE_CUT)
    settings = CausalSettings(steps="4", shift=5.0, frames_per_block=block, sink_size=sink, local_window=window,
                              solver="unipc", first_frame="clamp", recache="none",
                              positions="slots" if relative else "absolute", multi_shot_sink=True,
                              multi_shot_rope_offset=float(phi), scene_cut_prefix=SCENE_CUT)
    first = None if image is None else image.permute(0, 2, 1, 3, 4)
    kwargs = dict(settings=settings, first_frames=first, noise=_FixedNoise(noise.permute(0, 2, 1, 3, 4)))
    got = sample_causal(src, torch.zeros(1, 48, frames, H, W), None, timeline=timeline, **kwargs)
    diff = (got - want).abs().max().item()
    # controls, one rule left out each: the parity bound tells each apart where it changes the video (the sink
    # unless the window is exactly sink + block, the offset unless the RoPE is relative)
    controls = {}
    for name, change in (("sink", dict(multi_shot_sink=False)), ("offset", dict(multi_shot_rope_offset=0.0)),
                         ("prefix", dict(scene_cut_prefix=""))):
        other = sample_causal(src, torch.zeros(1, 48, frames, H, W), None, timeline=timeline,
                              **{**kwargs, "settings": dataclasses.replace(settings, **change)})
        controls[name] = (other - want).abs().max().item()
    print(f"LongLive 2.0 multi-shot parity frames={frames} block={block} sink={sink} window={window} i2v={i2v} "
          f"shots={shots} relative_rope={relative} phi={phi}: max abs diff {diff:.2e}; without "
          + ", ".join(f"the {k} {v:.2e}" for k, v in controls.items()))
    assert want.abs().mean() > 0.1
    assert diff <= 1e-4
    matters = {"sink": window > sink + block, "offset": not relative, "prefix": True}
    for name, value in controls.items():
        if matters[name]:
            assert value > 5 * max(diff, 2e-5), name
        else:  # a rule that cannot act here (LongLive's code agrees: the parity holds either way)
            assert value <= 1e-4, name


@pytest.mark.parametrize("blocks,durations", [(8, None), (7, None), (8, "3, 2, 9"), (10, "2 2"), (4, "1,1,1")])
def test_longlive2_shot_folders_read_as_its_datasets_do(upstream, tmp_path, blocks, durations):
    """A multi-shot caption folder (one JSON per shot, shot_durations.txt or not) gives per block exactly the text
    its MultiTextConcatDataset gives (the scene-cut prefix at each later shot's first block); a multi-line i2v prompt
    file's shots spread as its ImagePromptDataset spreads them."""
    from comfyui_clipwan.wan.timeline.files import load_longlive_shots, longlive_shot_prompts

    folder = tmp_path / "caption" / "video1"
    folder.mkdir(parents=True)
    captions = ["a red fox in the snow", "a lighthouse at dusk", "a train crossing a bridge"]
    for i, caption in enumerate(captions, 1):
        (folder / f"{i:06d}.json").write_text(json.dumps({"caption": caption}))
    if durations:
        (folder / "shot_durations.txt").write_text(durations)
    theirs = upstream["dataset"].MultiTextConcatDataset(str(tmp_path), num_blocks=blocks, deterministic=True)[0]
    timeline = load_longlive_shots(str(folder), blocks)
    layout = [(b, 1) for b in range(blocks)]
    starts = dict(timeline.resolved(layout))
    ours, segment = [], None
    for b in range(blocks):  # the text each block is conditioned on (a cut block: prefix + prompt)
        segment = timeline.segments[starts[b]] if b in starts else segment
        ours.append((SCENE_CUT if b in starts and segment.transition == "cut" else "") + segment.prompts[0].text)
    assert ours == theirs["prompts"]
    image_prompts = upstream["dataset"].ImagePromptDataset.__new__(upstream["dataset"].ImagePromptDataset)
    image_prompts.num_blocks, image_prompts.scene_cut_prefix, image_prompts.prompt_dir = blocks, SCENE_CUT, tmp_path
    (tmp_path / "fox.txt").write_text("\n".join(captions) + "\n")
    assert longlive_shot_prompts(captions, blocks) == image_prompts._load_prompts(tmp_path / "fox.png")

