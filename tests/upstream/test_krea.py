"""Krea Realtime Video's own realtime loop (``release_server.py`` ``GenerationSession``: ``recompute_kv_cache``,
``get_clean_context_frames``, ``generate_block_internal``, set up by its ``init_models`` on its
``CausalInferencePipeline`` caches) vs the pack's loop shape "recompute" on shared tiny random weights, same
noise, fp32. Runs when ``UPSTREAM_KREA_DIR`` points at krea-ai/realtime-video.

The session is built with ``GenerationSession.__new__`` and the attributes its ``__init__`` sets (that body
allocates on CUDA); its config is the tree's own ``configs/default_config.yaml`` merged with
``configs/self_forcing_server_14b.yaml`` (what ``load_merge_config`` does), its params a ``GenerateParams`` with
the server's defaults (5 steps, kv_cache_num_frames 3, 832x480 -> the 60x104 latent their attention hard-codes as
1560 tokens per frame). Everything their code would do on CUDA or in bf16 and that is pointed elsewhere here is
named where it happens, marked "fp32:" or "CPU:". The VAE is not under test: their decoder and the module-level
``encode_video_latent`` call the same deterministic stand-in as our ``stream_video(decoder=..., encode=...)``,
so what is compared is which pixel frame they re-encode and where its latent goes.

The model is tiny (dim 128, 2 heads, 2 layers) at the real frame size; 4 blocks (the first context frame is
re-encoded before blocks 2 and 3). Measured: keep_first_frame=True 7.2e-7, the default 4.4e-6 (the fp16 casts of
their VAE interface, mirrored by the stand-in, turn the 1e-7 differences of the latents into an occasional
fp16 step); about 100 s for both tests on 2 CPU cores. Video-to-video (``input_video``, strength 0.6: their
``get_denoising_schedule`` gives 882.35, 803.57, 681.82, 468.75, 0; the v2v lines of ``__init__`` are made in
their order, its ``encode_v2v`` called) vs the pack's ``Restyle``: 4.8e-7.

Packages this needs beside the pack's own (pip names; the module-level imports on the path the test imports from the
authors' tree, measured by an AST walk of the checkout, plus the test's own): diffusers, easydict, einops, fastapi,
ftfy, msgpack, numpy, omegaconf, opencv-python-headless (cv2, also imported by its ``v2v.py``), Pillow, pydantic,
python-dotenv (dotenv), python-multipart, regex, requests, safetensors, scipy, torch, torchvision, tqdm, transformers
(release_server.py is a FastAPI server: fastapi, msgpack, python-dotenv and OpenCV are imported at its top)."""

import asyncio
import collections
import dataclasses
import importlib
import logging
import os
import queue
import threading

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, WanConfig, sample_causal
from comfyui_clipwan.wan.sampling import recompute
from comfyui_clipwan.wan.sampling.recompute import PixelRing
from comfyui_clipwan.wan.sampling.loop import NoiseSource
from comfyui_clipwan.wan.video.stream import stream_video
from .conftest import fp32_attention
from .harness import Texts, random_state_dict, their_wrapper

H, W = 60, 104  # 832x480 / 8: 30 x 52 = their hard-coded 1560 tokens per frame
CFG = WanConfig(dim=128, ffn_dim=256, num_heads=2, num_layers=2, in_dim=16)  # their caches read heads/dim from it
BLOCKS, N = 4, 3  # blocks of 3 (their num_frame_per_block); blocks 2 and 3 re-encode the first context frame
FRAMES = BLOCKS * N
SEED = 1234
KREA = CausalSettings(loop="recompute", steps="1000,750,500,250,0", shift=5.0, warp=True, frames_per_block=N,
                      sink_size=1, local_window=6)


class ReplayKreaNoise(NoiseSource):
    """The session's draws from its one generator ``self.rnd``: first the whole video's noise ``[1, F, 16, h, w]``
    in bf16, then each re-noise ``[n, 16, h, w]`` in bf16, in block/step order. A bf16 draw cast to float is the
    same number on both sides."""

    def __init__(self, seed):
        self.gen = torch.Generator().manual_seed(seed)

    def initial(self, shape, device):
        b, c, f, h, w = shape
        draw = torch.randn((b, f, c, h, w), generator=self.gen, dtype=torch.bfloat16)
        return draw.float().permute(0, 2, 1, 3, 4).contiguous().to(device)

    def step(self, block, step, shape, device):
        b, c, n, h, w = shape
        draw = torch.randn((b * n, c, h, w), generator=self.gen, dtype=torch.bfloat16)
        return draw.float().view(b, n, c, h, w).permute(0, 2, 1, 3, 4).to(device)


class StandInVAE:
    """Deterministic stand-in for the VAE, in model space at latent resolution: one latent frame -> 4 pixel
    frames (as their block decoder and our streaming decoder give per latent frame after the first), one pixel
    frame -> one latent frame. Inputs are rounded to fp16 (their server hands both its fp16 VAE halves) and the
    encoding comes back through fp16 (their encoder's output dtype), identically for both sides."""

    def __init__(self, seed=5):
        g = torch.Generator().manual_seed(seed)
        self.dec = torch.randn(4, 3, 16, generator=g) / 4.0
        self.enc = torch.randn(16, 3, generator=g)

    def decode(self, z):  # [B, F, 16, h, w] -> [B, 4F, 3, h, w] in [-1, 1]
        z = z.half().float()
        return torch.tanh(torch.einsum("kcd,bfdhw->bfkchw", self.dec, z)).flatten(1, 2)

    def encode(self, x):  # [T, 3, h, w] -> [16, T, h, w]
        x = x.half().float()
        return torch.einsum("dc,tchw->dthw", self.enc, x).half().float()


class _OurDecoder:
    def __init__(self, vae):
        self.vae = vae

    def decode(self, raw):  # [B, 16, F, h, w] -> [B, 3, 4F, h, w]
        return self.vae.decode(raw.permute(0, 2, 1, 3, 4)).permute(0, 2, 1, 3, 4)


class _DummyCuda:
    """CPU: torch.cuda.Stream at import and torch.cuda.Event in generate_block_internal."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs):
        pass


def _import_server(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Stream", _DummyCuda)
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    import release_server as rs  # noqa: E402  (their module; logging.basicConfig at import)

    root.setLevel(level)
    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
    return rs


def _their_run(tree, monkeypatch, sd, text, vae, keep_first_frame, input_video=None, strength=1.0):
    from omegaconf import OmegaConf
    from torch.nn.attention.flex_attention import flex_attention as eager_flex

    import wan.modules.causal_model as their_cm
    from pipeline.causal_inference import CausalInferencePipeline
    from wan.modules.causal_model import CausalWanModel as TheirModel

    rs = _import_server(monkeypatch)
    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    # fp32: without flash-attn / sage their text cross-attention casts q/k/v to bf16 for SDPA; its flash-attn
    # branch calls the module's flash_attention, which fp32_attention has pointed at fp32 SDPA
    monkeypatch.setattr(importlib.import_module("wan.modules.model"), "FLASH_ATTN_2_AVAILABLE", True)
    # fp32: FlowMatchScheduler.add_noise returns type_as(noise) and the server's re-noise draws are bf16; it gets
    # the same draw (already taken from self.rnd) as fp32
    from utils.scheduler import FlowMatchScheduler

    add_noise = FlowMatchScheduler.add_noise
    monkeypatch.setattr(FlowMatchScheduler, "add_noise",
                        lambda self, samples, noise, timestep: add_noise(self, samples, noise.float(), timestep))
    # CPU: their module compiles flex_attention (max-autotune) at import; the recompute pass runs torch's own
    # flex_attention eagerly instead, with their BlockMask (create_block_mask(_compile=False)) unchanged
    monkeypatch.setattr(their_cm, "flex_attention", eager_flex)
    # CPU: their device is `gpu = torch.cuda.current_device()` (module global, and init_models asks again)
    monkeypatch.setattr(rs, "gpu", torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "Event", _DummyCuda)

    # the VAE stand-in, in their module namespace: models.vae_decoder(z.half(), *cache) -> (pixels, cache) and
    # encode_video_latent(..., frames=[T, 3, H, W]) -> (latent [16, T, h, w], cache)
    def encode_video_latent(vae_encoder, encode_vae_cache, *args, frames=None, video_path_or_url=None, **kwargs):
        if frames is None:  # their encode_v2v (input_video): the video by name
            frames = input_video[video_path_or_url]
        return vae.encode(frames), encode_vae_cache

    monkeypatch.setattr(rs, "encode_video_latent", encode_video_latent)

    config = OmegaConf.merge(OmegaConf.load(os.path.join(tree, "configs", "default_config.yaml")),
                             OmegaConf.load(os.path.join(tree, "configs", "self_forcing_server_14b.yaml")))
    model = TheirModel(model_type="t2v", dim=CFG.dim, ffn_dim=CFG.ffn_dim, num_heads=CFG.num_heads,
                       num_layers=CFG.num_layers).eval()
    model.load_state_dict(sd, strict=True)
    decoder = lambda z, *cache: (vae.decode(z), list(cache))  # noqa: E731
    # as load_pipeline builds it (their pipeline's vae is the server's decoder)
    pipe = CausalInferencePipeline(config, torch.device("cpu"), generator=their_wrapper(model, shift=5.0),
                                   text_encoder=Texts(), vae=decoder)
    # fp32: init_models and recompute_kv_cache (block 0) allocate the self/cross-attention caches in bf16
    for name in ("_initialize_kv_cache", "_initialize_crossattn_cache"):
        original = getattr(pipe, name)
        monkeypatch.setattr(pipe, name, lambda batch_size, dtype, device, f=original: f(batch_size, torch.float32,
                                                                                     device))
    models = rs.Models(text_encoder=Texts(), transformer=pipe.generator, pipeline=pipe, vae_encoder=None,
                       vae_decoder=decoder)
    params = rs.GenerateParams(prompt="a prompt", seed=SEED, num_blocks=BLOCKS, keep_first_frame=keep_first_frame,
                               input_video=None if input_video is None else next(iter(input_video)),
                               strength=strength)
    assert (params.width, params.height, params.kv_cache_num_frames, params.num_denoising_steps,
            params.timestep_shift, params.webcam_mode) == (832, 480, 3, 5, 5.0, False)

    sent = []
    s = rs.GenerationSession.__new__(rs.GenerationSession)  # what GenerationSession.__init__ sets, on the CPU
    s.current_use_taehv = config.use_taehv
    s.frame_callback = lambda pixels, frame_ids, event: sent.append(pixels.shape[1])
    s.session_id = 0
    s.frame_queue = queue.Queue()
    s.block_idx = 0
    s.params = params
    s.input_video = params.input_video
    s.start_frame = params.start_frame
    s.width, s.height = params.width // 8 * 8, params.height // 8 * 8
    s.latent_width, s.latent_height = s.width // 8, s.height // 8
    s.resume_latents = None
    s.last_frame_latent = None
    s.config = config
    s.debug = False
    s.gpu = torch.device("cpu")
    s.interpolated_prompt_embeds = []
    s.original_prompt_embeds = None
    # fp32: their first block encodes the prompt and casts it to bf16 when current_prompt_embeds is None
    s.conditional_dict = {"prompt_embeds": text}
    s.current_prompt_embeds = text
    s.context_noise = params.context_noise
    s.kv_cache_num_frames = params.kv_cache_num_frames
    s.g_num_blocks = s.num_blocks = params.num_blocks
    s.frame_context_cache = collections.deque(maxlen=1 + (params.kv_cache_num_frames - 1) * 4)
    s.gpu_initialized = False
    s.encode_vae_cache = [None] * 55
    s.decode_vae_cache = [None] * 55
    s.num_frame_per_block = 3
    s.rnd = torch.Generator(s.gpu).manual_seed(params.seed)
    latent_shape = [1, s.num_blocks * s.num_frame_per_block, 16, s.latent_height, s.latent_width]
    assert latent_shape[3:] == [H, W]
    s.all_latents = torch.zeros(latent_shape)  # fp32: theirs is bf16
    # the same bf16 draw from self.rnd, held in fp32 (theirs keeps it in bf16)
    s.noise = torch.randn(latent_shape, dtype=torch.bfloat16, generator=s.rnd).float()
    s.current_start_frame = 0
    s.total_frames_sent = 0
    s.disposed = threading.Event()
    s.generation_lock = asyncio.Lock()
    s.init_models(models, params)
    s.models = models
    s.denoising_step_list = rs.get_denoising_schedule(s.zero_padded_timesteps, params.strength,
                                                      steps=params.num_denoising_steps)
    if s.input_video is not None:  # the v2v lines of GenerationSession.__init__, in its order (its encode_v2v)
        init_denoising_strength_scaled = s.denoising_step_list[0] / 1000
        latents, _ = s.encode_v2v(s.input_video, max_frames=None, resample_to=None)
        latents = latents[None].movedim(1, 2)
        # fp32: theirs is bf16 (the same bf16 draw from self.rnd, held in fp32)
        draw = torch.randn(latents.shape, dtype=torch.bfloat16, generator=s.rnd).float()
        s.noise = latents * (1.0 - init_denoising_strength_scaled) + draw * init_denoising_strength_scaled
        s.num_blocks = min(latents.shape[1] // s.num_frame_per_block - 1, params.num_blocks)
    s.last_pred = None

    for _ in range(BLOCKS):
        assert s.generate_block_internal(models) is not None
    assert s.generate_block_internal(models) is None  # num_blocks reached
    assert sent == [9] + [12] * (BLOCKS - 1)  # 4 pixel frames per latent frame, the first 3 skipped
    print(f"\ntheir denoising steps: {[round(float(t), 2) for t in s.denoising_step_list]}")
    return s.all_latents.permute(0, 2, 1, 3, 4)


def _our_model(sd):
    return CausalWanModel.from_state_dict(sd, num_heads=CFG.num_heads)  # the heads are not in the shapes


def _ours_streamed(sd, text, vae, settings):
    identity = lambda z: z  # noqa: E731  (the stand-in works in model space)
    stream = stream_video(_our_model(sd), torch.zeros(1, 16, FRAMES, H, W), text,
                          decoder=_OurDecoder(vae), encode=lambda px: vae.encode(px[0].transpose(0, 1))[None],
                          to_raw=identity, from_raw=identity, keep_latent=True, settings=settings,
                          noise=ReplayKreaNoise(SEED))
    assert stream.ring is not None
    for _ in stream:
        pass
    return stream.latent


def _ours(sd, text, settings):
    return sample_causal(_our_model(sd), torch.zeros(1, 16, FRAMES, H, W), text,
                         settings=settings, noise=ReplayKreaNoise(SEED))


def _by_block(a, b):
    return [(a[:, :, i:i + N] - b[:, :, i:i + N]).abs().max().item() for i in range(0, FRAMES, N)]


def _report(label, ours, theirs):
    per_block = _by_block(ours, theirs)
    diff = max(per_block)
    print(f"{label}: max |ours - Krea| = {diff:.2e} (per block {', '.join(f'{d:.1e}' for d in per_block)}; "
          f"output scale {theirs.abs().max().item():.2f})")
    assert theirs.abs().mean() > 0.1
    assert diff <= 1e-4


@pytest.fixture
def shared():
    return random_state_dict(config=CFG), Texts()(["a prompt"])["prompt_embeds"], StandInVAE()


def test_krea_keep_first_frame_parity(upstream_tree, monkeypatch, shared):
    tree = upstream_tree("KREA")
    sd, text, vae = shared
    theirs = _their_run(tree, monkeypatch, sd, text, vae, keep_first_frame=True)
    ours = _ours(sd, text, dataclasses.replace(KREA, keep_first_frame=True))
    _report(f"release_server.py keep_first_frame=True, {BLOCKS} blocks", ours, theirs)
    # sharp: the plain block loop (sink 1, window 6) attends the same frames; it equals the recompute while the
    # context is the video's first frames at their own positions (blocks 0, 1), not after
    plain = _ours(sd, text, dataclasses.replace(KREA, loop="block"))
    per_block = _by_block(plain, theirs)
    print(f"loop='block' vs Krea: per block {', '.join(f'{d:.1e}' for d in per_block)}")
    assert max(per_block[:2]) <= 1e-4 and min(per_block[2:]) > 10 * 1e-4


def test_krea_default_reencoded_first_frame_parity(upstream_tree, monkeypatch, shared):
    tree = upstream_tree("KREA")
    sd, text, vae = shared
    theirs = _their_run(tree, monkeypatch, sd, text, vae, keep_first_frame=False)
    ours = _ours_streamed(sd, text, vae, KREA)
    _report(f"release_server.py default (first frame re-encoded from decoded pixels), {BLOCKS} blocks", ours,
            theirs)
    # sharp: keeping the first latent frame is the same run until the re-encode starts (block 2), not after
    kept = _ours(sd, text, dataclasses.replace(KREA, keep_first_frame=True))
    per_block = _by_block(kept, theirs)
    print(f"keep_first_frame=True vs Krea's default: per block {', '.join(f'{d:.1e}' for d in per_block)}")
    assert max(per_block[:2]) <= 1e-4 and min(per_block[2:]) > 10 * 1e-4
    # sharp: which pixel frame is re-encoded matters: a ring 3 frames longer re-encodes the first pixel frame of
    # the previous block's first latent frame instead of its last one (their frame_context_cache[0])
    monkeypatch.setattr(recompute, "PixelRing", lambda size, encode: PixelRing(size + 3, encode))
    other = _ours_streamed(sd, text, vae, KREA)
    per_block = _by_block(other, theirs)
    print(f"re-encoding pixel frame 0 instead of 3 of that latent frame: per block "
          f"{', '.join(f'{d:.1e}' for d in per_block)}")
    assert max(per_block[:2]) <= 1e-4 and min(per_block[2:]) > 10 * 1e-4


class ReplayKreaV2VNoise(ReplayKreaNoise):
    """With ``input_video`` the session draws the whole video's noise (unused), then one draw the size of the input
    video's latent: that one starts the blocks (our loop's initial noise), the re-noise draws follow."""

    def __init__(self, seed, video_frames):
        super().__init__(seed)
        self.video_frames = video_frames

    def initial(self, shape, device):
        b, c, f, h, w = shape
        torch.randn((b, f, c, h, w), generator=self.gen, dtype=torch.bfloat16)
        draw = torch.randn((b, self.video_frames, c, h, w), generator=self.gen, dtype=torch.bfloat16)
        return draw.float()[:, :f].permute(0, 2, 1, 3, 4).contiguous().to(device)


def test_krea_v2v_parity(upstream_tree, monkeypatch, shared):
    """Krea's video-to-video (``input_video``, ``strength`` 0.6): their ``get_denoising_schedule``, the start
    ``latents·(1 - t0/1000) + noise·t0/1000`` and their block loop vs the pack's ``Restyle`` on the recompute loop.
    The input video has 3 latent frames more than the 4 blocks (their session runs one block less than the video
    holds); the VAE stand-in maps one pixel frame to one latent frame."""
    from comfyui_clipwan.wan.conditioning.restyle import Restyle, restyle_steps

    tree = upstream_tree("KREA")
    sd, text, vae = shared
    pixels = torch.rand(FRAMES + N, 3, H, W, generator=torch.Generator().manual_seed(3)) * 2 - 1
    theirs = _their_run(tree, monkeypatch, sd, text, vae, keep_first_frame=True,
                        input_video={"input.mp4": pixels}, strength=0.6)
    latents = vae.encode(pixels)[None]  # [1, 16, frames, h, w]
    settings = dataclasses.replace(KREA, keep_first_frame=True, steps=restyle_steps(0.6))
    ours = sample_causal(_our_model(sd), torch.zeros(1, 16, FRAMES, H, W), text, settings=settings,
                         noise=ReplayKreaV2VNoise(SEED, FRAMES + N), restyle=Restyle(latents[:, :, :FRAMES]))
    _report(f"release_server.py input_video, strength 0.6, {BLOCKS} blocks", ours, theirs)
    # sharp: the same run from pure noise (text-to-video) is far off
    t2v = sample_causal(_our_model(sd), torch.zeros(1, 16, FRAMES, H, W), text,
                        settings=dataclasses.replace(KREA, keep_first_frame=True), noise=ReplayKreaNoise(SEED))
    assert (t2v - theirs).abs().max() > 1e-2
