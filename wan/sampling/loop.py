"""Block-causal, KV-cached Wan 2.1 sampling (the Self-Forcing / CausVid / LongLive inference loop), with
image conditioning for i2v.

Per block of latent frames: start from noise, run the few-step list (x0 = x_t - σ·flow, re-noise to the next
σ with fresh noise), then one pass at t=0 on the clean block that writes its K/V into the cache for the
following blocks. Cross-attention K/V of the text and of the CLIP image tokens are computed once per video
(and again only at a prompt switch).

Three layers, so each caller takes only what it needs:
  * ``CausalLoop(...)`` validates everything and sets the run up (eagerly: bad input fails at the call);
    iterating it runs the block loop and yields one ``BlockResult`` per finished block. It keeps no
    whole-video latent (only the last window's clean frames when a prompt switch needs them), so a stream
    (decode per block) runs in flat memory. ``iter_causal_blocks`` is the same thing as a function.
  * ``SamplerHooks``: observers (forward start/end, each denoising step, each block) — timing, progress bars
    and previews live there, not in the algorithm.
  * ``NoiseSource``: where the initial and the per-step noise come from (default ``SeededNoise``, the pack's
    seeding); another source makes a run draw exactly what another implementation draws.
``sample_causal`` is the whole-video convenience on top: it consumes the loop and returns the latent.

Image conditioning, three routes (all optional, all switchable off):
  (1) ``clip_fea [B,257,1280]`` -> ``img_emb`` -> separate image K/V in every cross-attention (i2v models);
  (2) ``concat [B,20,T,h,w]`` (mask 4 | normalised image latent 16) channel-joined to the noise (in_dim 36);
  (3) ``first_frames [B,16,T0,h,w]`` (normalised clean latents) written into the cache as the first
      frame(s) and copied to the output, so a t2v-distilled causal model continues from the image.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Callable, Iterator, Optional, Sequence

import torch

from ..model import dit
from .cache import POSITION_MODES, KVCache
from ..model.causal import CausalWanModel
from .action_cache import ActionRun, check_actions
from .checks import check_finite_latent
from ..vae.latent import check_latent
from ..conditioning.control import as_controls
from ..conditioning.image import ImageRoutes
from ..model.vace import VaceStep
from .scheduler import DEFAULT_SHIFT, DEFAULT_STEPS, denoising_schedule, explicit_schedule, renoise, x0_from_flow
from .unipc import UniPCSolver, unipc_schedule

SOLVERS = ("renoise", "unipc")
FIRST_FRAME_POLICIES = ("cache", "clamp")


@dataclasses.dataclass
class CausalSettings:
    steps: object = DEFAULT_STEPS  # list of timesteps, "1000,750,500,250", or a count "4" (scheduler.parse_steps)
    shift: float = DEFAULT_SHIFT
    warp: bool = True  # warp the list onto the shifted grid (Self-Forcing, Krea's server...); off: CausVid's list
    frames_per_block: int = 3
    sink_size: int = 0  # frames kept forever (attention sink); only meaningful with a window
    local_window: int = 0  # frames attended in all (sink + recent + the block); 0 = no window
    cache_dtype: Optional[torch.dtype] = None  # None = the model's compute dtype
    independent_first_frame: bool = False  # first block = 1 latent frame, then blocks of frames_per_block
    guidance_scale: float = 1.0  # distilled models: 1.0 (no CFG); > 1 runs a negative branch with its own cache
    # per-block step rule: "renoise" (x0, then fresh noise to the next σ: Self-Forcing / CausVid / LongLive 1)
    # or "unipc" (LongLive 2.0: a UniPC solver per block, no noise after the first; ``steps`` = a step count)
    solver: str = "renoise"
    # start-image frames (``first_frames``): "cache" = blocks of their own, only written into the KV cache;
    # "clamp" = inside the first block at timestep 0, clamped to the clean latent (LongLive 2.0, Wan 2.2 TI2V)
    first_frame: str = "cache"
    # Causal Forcing++ 1/2-step configs (`denoising_step_list_first_chunk`): the first *generated* block (the
    # one after a start image, if any) runs this longer list; None = `steps` for every block
    first_block_steps: object = None
    # cached keys' RoPE positions: "absolute" frames, or "slots" = relative RoPE (Reward Forcing's slots; LongLive
    # main's use_relative_rope is the same rule), which keeps positions bounded for videos of any length
    positions: str = "absolute"
    sink_ema: Optional[float] = None  # Reward Forcing's EMA sink (0.999); None = the sink never changes
    recache: str = "joint"  # prompt switch: "joint" (LongLive), "blockwise" or "none" (see RECACHE_MODES)
    global_sink: bool = True  # joint re-cache: the sink keeps the old prompt's K/V (LongLive's shipped config)
    # loop shape (LOOP_SHAPES): "block" = one block at a time, denoised then cached (every family but those below);
    # "rolling" = Rolling Forcing's window of len(steps) blocks at staggered noise levels (wan/sampling/rolling.py);
    # "memory" = MemFlow's memory bank (wan/sampling/memflow.py); "recompute" = Krea Realtime's cache rebuilt from a few
    # clean context frames before every block (wan/sampling/recompute.py)
    loop: str = "block"
    # a length that is not a whole number of blocks: False = refuse it (block_layout's error); True = the last
    # block is shorter (no author's loop does this: they all assert whole blocks; the node turns it on visibly,
    # see ``fit_block_layout``, for loop shapes in SHORTER_LAST_BLOCK_SHAPES only)
    shorter_last_block: bool = False
    # loop "memory" (MemFlow, wan/sampling/memflow.py): frames in the memory bank, blocks between two recorded ones, and
    # which of the authors' entry points it follows ("auto": inference.py, or interactive_inference.py with
    # prompt switches; "single" / "interactive" force one)
    memory_bank: int = 3
    memory_interval: int = 3
    memory_pipeline: str = "auto"
    # loop "recompute" (Krea Realtime, wan/sampling/recompute.py): keep the first latent frame as the first context frame
    # for the whole run (Krea's keep_first_frame; off = re-encode it from decoded pixels, the authors' default),
    # and Scope's kv_cache_attention_bias on the context frames after the first (1.0 = off, as Krea runs)
    keep_first_frame: bool = False
    context_bias: float = 1.0
    # explicit per-block step sigmas (a ComfyUI SIGMAS list ending in 0, e.g. BasicScheduler / ManualSigmas, as the
    # SAMPLER node gets them from SamplerCustomAdvanced): every block runs exactly these (scheduler.explicit_schedule)
    # and steps / shift / warp are not used; None = the step list above
    sigmas: Optional[Sequence[float]] = None
    # LongLive 2.0's multi-shot mode, read at a timeline's scene cuts (wan/sampling/multishot.py): the cut block's
    # first sink_size frames pinned as the new shot's sink beside the video's first ones, RoPE frame positions moved
    # by (cuts so far)·multi_shot_rope_offset, and scene_cut_prefix put before the cut block's prompt text
    multi_shot_sink: bool = False
    multi_shot_rope_offset: float = 0.0
    scene_cut_prefix: str = ""
    # the released family (``wan/presets.py`` name) whose loop rules these settings carry, "" for none: checked
    # against the model (generation and size) before the run, and named in any error the loop's rules raise
    family: str = ""


@dataclasses.dataclass
class PromptSwitch:
    """From block ``start_block`` on, use ``text`` (LongLive 1: cached frames are re-encoded with it; LongLive 2.0
    with ``recache="none"``: only the blocks from ``start_block`` on see it)."""

    start_block: int
    text: torch.Tensor


@dataclasses.dataclass
class BlockResult:
    """One finished block: ``x0 [B, 16, n, h, w]`` float32 clean latent (model space, on the model's device)
    of latent frames ``start_frame .. start_frame + n - 1``; block ``index`` of ``total``. Treat ``x0`` as
    read-only: the loop writes it into the KV cache after the consumer has seen it."""

    index: int
    total: int
    start_frame: int
    x0: torch.Tensor

    @property
    def num_frames(self) -> int:
        return self.x0.shape[2]


# --------------------------------------------------------------------------------------------------
# Hooks: observers of the loop (timing, progress, previews); every method is a no-op by default
# --------------------------------------------------------------------------------------------------
class SamplerHooks:
    """Subclass and override what you need. ``kind`` of a forward is ``"context"`` (text/CLIP projection),
    ``"denoise"`` (one denoising step of a block), ``"cache"`` (the clean pass that writes a block's K/V),
    ``"recache"`` (re-encoding cached frames at a prompt switch) or ``"recompute"`` (Krea's loop: the context
    frames re-encoded before a block); ``block`` is the block index."""

    def on_forward_start(self, kind: str, block: int) -> None:
        pass

    def on_forward_end(self, kind: str, block: int) -> None:
        pass

    def on_step(self, block: int, step: int, total_steps: int) -> None:
        """After denoising step ``step`` (0-based) of ``total_steps`` of ``block`` (per-step progress)."""

    def on_block(self, result: BlockResult) -> None:
        """A block is final (called before its cache pass, so a stream shows it without waiting)."""


class TimingHooks(SamplerHooks):
    """Wall time spent inside DiT forwards (``forward_s``, and per kind in ``by_kind``). On CUDA each forward
    is synchronised at its end, so the asynchronous kernels are charged to the forward that queued them."""

    def __init__(self, device=None):
        self.sync = device is not None and torch.device(device).type == "cuda"
        self.device = device
        self.forward_s = 0.0
        self.by_kind: dict = {}
        self._t0 = 0.0

    def on_forward_start(self, kind, block):
        self._t0 = time.perf_counter()

    def on_forward_end(self, kind, block):
        if self.sync:
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - self._t0
        self.forward_s += dt
        self.by_kind[kind] = self.by_kind.get(kind, 0.0) + dt


class _HookFanOut(SamplerHooks):
    def __init__(self, hooks: Sequence[SamplerHooks]):
        self.hooks = list(hooks)

    def on_forward_start(self, kind, block):
        for h in self.hooks:
            h.on_forward_start(kind, block)

    def on_forward_end(self, kind, block):
        for h in reversed(self.hooks):
            h.on_forward_end(kind, block)

    def on_step(self, block, step, total_steps):
        for h in self.hooks:
            h.on_step(block, step, total_steps)

    def on_block(self, result):
        for h in self.hooks:
            h.on_block(result)


def combine_hooks(*hooks: Optional[SamplerHooks]) -> SamplerHooks:
    """One hooks object calling each of ``hooks`` (``None`` entries skipped)."""
    real = [h for h in hooks if h is not None]
    if not real:
        return SamplerHooks()
    return real[0] if len(real) == 1 else _HookFanOut(real)


# --------------------------------------------------------------------------------------------------
# Noise: where the randomness comes from
# --------------------------------------------------------------------------------------------------
class NoiseSource:
    """The loop asks for noise in two places; both return float32 tensors of exactly ``shape`` in the
    model's latent layout ``[B, 16, frames, h, w]`` on ``device``:

    * ``initial(shape, device)`` once per run, for the whole latent (the first step of every block takes
      its frames from it);
    * ``step(block, step, shape, device)`` before denoising step ``step`` (>= 1) of block ``block`` (index
      in the block layout), shape ``[B, 16, n, h, w]`` of that block: the fresh noise x0 is re-noised with.

    Implement both to replay another sampler's draws (see ``tests/upstream`` for Self-Forcing's order).

    The rolling loop (``wan/sampling/rolling.py``) re-noises each block of a jointly denoised window and asks
    ``window_step(block, step, shape, window_shape, offset, device)`` instead: ``window_shape`` is the whole
    window's ``[B, 16, frames, h, w]``, ``offset`` the block's first frame inside it. By default that is
    ``step(block, step, shape, device)``, so every source works with every loop; Rolling Forcing's own
    pipeline draws one window-sized tensor per block and keeps the block's slice, which a replaying source
    reproduces by overriding it."""

    def initial(self, shape, device) -> torch.Tensor:
        raise NotImplementedError

    def step(self, block: int, step: int, shape, device) -> torch.Tensor:
        raise NotImplementedError

    def window_step(self, block: int, step: int, shape, window_shape, offset: int, device) -> torch.Tensor:
        return self.step(block, step, shape, device)

    def block_initial(self, block: int, shape, device) -> torch.Tensor:
        """The first step's noise of a block past the first segment of an endless run (``EndlessLoop``: a
        run with no fixed length has no whole-video ``initial``)."""
        raise NotImplementedError(f"{type(self).__name__} has no block_initial(): it cannot drive an endless run.")


SEED_RANGE = (0, 2 ** 64 - 1)  # ComfyUI's seed widget range (its noise_seed is a 64-bit CPU generator seed)


def check_seed(seed) -> int:
    """The seed as an int in ComfyUI's range ``0 .. 2⁶⁴-1``; anything else refused naming the range."""
    try:
        value = int(seed) if not isinstance(seed, float) or seed == int(seed) else None
    except (TypeError, ValueError, OverflowError):
        value = None
    if isinstance(seed, bool) or value is None or not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
        raise ValueError(f"seed {seed!r} is not a whole number from {SEED_RANGE[0]} to 2**64-1 ({SEED_RANGE[1]}), "
                         f"the range of ComfyUI's seeds; give e.g. 0 or 123456.")
    return value


def step_noise(seed: int, block: int, step: int, shape, device) -> torch.Tensor:
    """Fresh noise for re-noising ``block`` to its step ``step`` (>= 1); CPU generator like ComfyUI, so
    results do not depend on the device."""
    g = torch.Generator().manual_seed((int(seed) + 1000 * (block + 1) + step) % (2 ** 63))
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device)


def initial_noise(seed: int, shape, device=None) -> torch.Tensor:
    """Same construction as ComfyUI's ``prepare_noise`` (CPU generator seeded with ``seed``)."""
    g = torch.Generator().manual_seed(check_seed(seed))
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device)


class SeededNoise(NoiseSource):
    """The pack's default: initial noise as ComfyUI's ``prepare_noise(seed)``, each re-noise from its own CPU
    generator seeded by (seed, block, step) — reproducible on any device and independent of block order."""

    def __init__(self, seed: int = 0):
        self.seed = check_seed(seed)

    def initial(self, shape, device):
        return initial_noise(self.seed, shape, device)

    def step(self, block, step, shape, device):
        return step_noise(self.seed, block, step, shape, device)

    def block_initial(self, block, shape, device):
        return step_noise(self.seed, block, 0, shape, device)  # step 0: never a re-noise (those are >= 1)


class CoreARNoise(SeededNoise):
    """ComfyUI core's ``ar_video`` sampler's draws: initial noise as ``prepare_noise(seed)`` and the re-noise
    before step ``step`` of ``block`` from the global generator seeded ``seed + block·1000 + (step - 1)``
    (the same numbers as core on a CPU run; core on CUDA draws from the CUDA generator)."""

    def step(self, block, step, shape, device):
        g = torch.Generator().manual_seed(self.seed + block * 1000 + (step - 1))
        return torch.randn(shape, generator=g, dtype=torch.float32).to(device)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------
def block_layout(num_frames: int, frames_per_block: int, independent_first_frame: bool = False,
                 shorter_last_block: bool = False) -> list:
    """``[(start_frame, num_frames), ...]`` of the blocks; a clear error if the length does not fit, unless
    ``shorter_last_block`` lets the last block take the frames that are left."""
    n = int(frames_per_block)
    if n < 1:
        raise ValueError(f"frames_per_block must be >= 1 (got {n}).")
    first = 1 if independent_first_frame else 0
    rest = num_frames - first
    if num_frames < 1 or rest < 0 or (rest % n and not shorter_last_block):
        near = exact_fits(num_frames, n, independent_first_frame)
        pixel = [4 * (f - 1) + 1 for f in near]
        alt = ("with independent_first_frame off, multiples of %d" % n) if first else \
              ("or enable independent_first_frame for 1 + %d·k frames" % n)
        raise ValueError(
            f"the latent has {num_frames} frames, which does not fit blocks of {n} frame(s)"
            f"{' after an independent first frame' if first else ''}: use {near} latent frames "
            f"(video length {pixel} in WanI2VConditioning), {alt}, or change frames_per_block.")
    layout = [(0, 1)] if first else []
    layout += [(s, min(n, num_frames - s)) for s in range(first, num_frames, n)]
    return layout


def exact_fits(num_frames: int, frames_per_block: int, independent_first_frame: bool = False) -> list:
    """The (up to) three latent lengths nearest ``num_frames`` that are whole blocks, ascending."""
    first = 1 if independent_first_frame else 0
    fit = [first + frames_per_block * k for k in range(1, 64 + num_frames // frames_per_block)]
    return sorted(sorted(fit, key=lambda f: abs(f - num_frames))[:3])


# loop shapes whose last block may be shorter (their rule is per block; the rolling window is blocks of any
# sizes, each at its own step, so a short last block only narrows the last windows)
SHORTER_LAST_BLOCK_SHAPES = ("block", "memory", "rolling", "recompute")


def fit_block_layout(settings: "CausalSettings", num_frames: int):
    """The node's rule for a length that is not a whole number of blocks: ``(settings, note)``.

    Where the loop shape allows it, the last block gets the frames that are left (``shorter_last_block``) and
    ``note`` says so in one line, naming the lengths that fit exactly (for the log and the node's progress
    text); ``note`` is None when the length fits. Other loop shapes keep ``block_layout``'s error, with the
    reason appended. No author runs a partial block (Self-Forcing, CausVid, LongLive, Causal Forcing, Rolling
    Forcing and MemFlow assert whole blocks; CausVid drops the frames left over), so an exact length is the
    authors' run and a shorter last block is the pack's extension for lengths they would refuse."""
    n, iff = int(settings.frames_per_block), bool(settings.independent_first_frame)
    try:
        block_layout(num_frames, n, iff)
        return settings, None
    except ValueError as exc:
        if settings.loop not in SHORTER_LAST_BLOCK_SHAPES or num_frames < 1 or n < 1:
            raise ValueError(f"{str(exc).rstrip('.')}; the '{settings.loop}' loop runs whole blocks only."
                             if n >= 1 and num_frames >= 1 else str(exc)) from None
    layout = block_layout(num_frames, n, iff, shorter_last_block=True)
    near = [f for f in exact_fits(num_frames, n, iff) if f != num_frames]
    lower = max([f for f in near if f < num_frames], default=None)
    upper = min(f for f in near if f > num_frames)
    fits = " or ".join(f"{4 * (f - 1) + 1} ({f} latent frames)" for f in (lower, upper) if f)
    note = (f"video length {4 * (num_frames - 1) + 1} = {num_frames} latent frames is not a whole number of "
            f"blocks of {n}"
            f"{' after the independent first frame' if iff else ''}, so the last block has {layout[-1][1]} "
            f"frame(s) instead of {n} (the authors' loop runs whole blocks only); lengths that fit exactly: {fits}.")
    return dataclasses.replace(settings, shorter_last_block=True), note


def check_window(settings: CausalSettings, layout: Sequence) -> None:
    sink, window = int(settings.sink_size), int(settings.local_window)
    if sink < 0 or window < 0:
        raise ValueError(f"sink_size ({sink}) and local_window ({window}) must be >= 0.")
    biggest = max(n for _, n in layout)
    if window and window < sink + biggest:
        raise ValueError(f"local_window {window} is too small: it must hold the {sink} sink frame(s) plus one "
                         f"block of {biggest} frame(s); set local_window >= {sink + biggest}, or 0 for no window.")


_warned_no_img_emb = set()


def _image_inputs(model: CausalWanModel, clip_fea, concat, first_frames):
    cfg = model.config
    reads = ImageRoutes(cfg)
    if clip_fea is not None and not reads.clip:
        key = id(model.tree)
        if key not in _warned_no_img_emb:
            _warned_no_img_emb.add(key)
            warnings.warn(f"CLIP vision features were given but the model has no image embedding "
                          f"({cfg.describe()}): they are skipped. Use an i2v Wan model to condition on CLIP "
                          f"features, or switch image conditioning off to silence this.", stacklevel=4)
        clip_fea = None
    if clip_fea is not None:
        dit.check_clip_features(clip_fea)
    if concat is not None and not reads.concat:
        raise ValueError(
            f"the model is text-to-video (in_dim {cfg.in_dim}) and cannot take channel-concat image "
            f"conditioning; pass the start image as first-frame latents (route 3) instead — CausalWanSampler "
            f"does this from WanI2VConditioning's output.")
    if first_frames is not None and not reads.first_frames:
        first_frames = None  # an i2v model sees the image through the concat channels (route 2)
    return clip_fea, concat, first_frames


def _vace_controls(vace, cfg, latent_shape, settings) -> list:
    controls = as_controls(vace)
    if not controls:
        return []
    if not cfg.has_vace:
        raise ValueError(f"VACE conditioning was given but the model has no VACE weights ({cfg.describe()}): load a "
                         f"Wan2.1-VACE checkpoint, or a causal base with a VACE module file (vace_name).")
    if settings.loop == "rolling":
        raise ValueError("VACE on the 'rolling' loop (Rolling Forcing) has no rule: Daydream Scope defines causal "
                         "VACE for the block loop (LongLive, Reward Forcing), MemFlow's memory loop and Krea's "
                         "recompute loop only. Use one of those families, or drop the VACE conditioning.")
    for c in controls:
        c.check(latent_shape, cfg.vace_in_dim)
    return controls


def _restyle_input(restyle, latent_shape, settings, sigmas):
    if restyle is None:
        return None
    if settings.loop == "rolling" or settings.solver != "renoise":
        raise ValueError("video-to-video has a rule for loops that start each block from one noise level (Krea's server, "
                         "Self-Forcing-style blocks); the 'rolling' loop and the UniPC solver have none.")
    if not sigmas or sigmas[0] >= 1.0:
        raise ValueError("video-to-video needs a first step below 1000 (these steps start from pure noise, which "
                         "ignores the input video): use steps=restyle_steps(strength) with a strength below 1.")
    restyle.check(latent_shape)
    return restyle


def clamp_first_frames(x: torch.Tensor, t: torch.Tensor, clean: Optional[torch.Tensor], start: int, offset: int = 0):
    """The ``first_frame="clamp"`` policy (LongLive 2.0's i2v, Wan 2.2 TI2V's image conditioning).

    ``clean [B, C, K, h, w]`` is the start image's clean latent, latent frames ``0 .. K-1`` of the video. For
    the block ``x [B, C, n, h, w]`` starting at ``start`` with per-frame timesteps ``t [B, n]``, the frames
    that are known are overwritten by their clean latent and get timestep 0; the other frames are untouched.
    The loop applies it before every model call and after every solver step, so the model denoises the rest of
    the block next to a clean first frame it attends to both ways (as TI2V was trained), and that frame comes
    out exactly as the image. Returns ``(x, t)``; no-op outside the known frames. ``offset``: the latent frame of
    ``clean``'s first frame (an image change at a later block, wan/timeline/controls.py).
    """
    if clean is None or not offset <= start < offset + clean.shape[2]:
        return x, t
    k = min(clean.shape[2] - (start - offset), x.shape[2])
    x, t = x.clone(), t.clone()
    x[:, :, :k] = clean[:, :, start - offset:start - offset + k].to(device=x.device, dtype=x.dtype)
    t[:, :k] = 0
    return x, t


class _RenoiseSteps:
    """The Self-Forcing / CausVid / LongLive 1 rule: ``x0 = x - σ·flow``, then fresh noise to the next σ."""

    def __init__(self, sigmas, timesteps, noise: "NoiseSource", block: int, device):
        self.sigmas, self.timesteps = sigmas, timesteps  # σ for the update, t fed to the model (scheduler.py)
        self.noise, self.block, self.device = noise, block, device

    def step(self, j: int, x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        x0 = x0_from_flow(x, flow, self.sigmas[j])
        if j + 1 == len(self.sigmas):
            return x0
        fresh = self.noise.step(self.block, j + 1, tuple(x0.shape), self.device).float()
        return renoise(x0, fresh, self.sigmas[j + 1])


class _UniPCSteps(UniPCSolver):
    """LongLive 2.0's rule: a fresh UniPC solver per block over the integer-timestep schedule."""

    def __init__(self, schedule):
        super().__init__(schedule[1])
        self.timesteps = schedule[0]


# Wan 2.2 TI2V-5B's causal distillation is LongLive 2.0; its loop rules (not its sizes: sink, window and block
# stay settings) apply whenever a Wan 2.2 TI2V model is sampled causally.
WAN22_LOOP_RULES = dict(solver="unipc", first_frame="clamp", recache="none")


def loop_rules_for(settings: CausalSettings, config) -> CausalSettings:
    """``settings`` with the loop rules the model's generation was distilled with (Wan 2.2: LongLive 2.0)."""
    if config.generation == "Wan 2.2":
        return dataclasses.replace(settings, **WAN22_LOOP_RULES)
    return settings


def _step_count(steps) -> int:
    """The UniPC step count of ``steps``: a count ("4"), or the evenly spaced list that count expands to
    ("1000,750,500,250", the sampler's default, is 4 steps), so the default runs on a Wan 2.2 model too."""
    from .scheduler import expand_step_count, parse_steps

    text = str(steps).strip() if not isinstance(steps, (list, tuple)) else ""
    if text.isdigit() and int(text) >= 1:
        return int(text)
    try:
        values = parse_steps(steps, True)
    except ValueError:
        values = None
    if values and values == expand_step_count(len(values)):
        return len(values)
    raise ValueError(f"the UniPC solver (Wan 2.2 / LongLive 2.0) takes a number of steps, not the timesteps "
                     f"'{steps}'; give e.g. steps='4' (or its evenly spaced list '1000,750,500,250').")


def _check_known_frames(first_frames, latent, layout, clamp: bool = False) -> int:
    if first_frames is None:
        return 0
    check_latent(first_frames, "start image latent", channels=latent.shape[1])
    frames, height, width = latent.shape[2:]
    known = first_frames.shape[2]
    if tuple(first_frames.shape[3:]) != (height, width) or known > frames:
        raise ValueError(f"start image latent {list(first_frames.shape)} does not fit the latent "
                         f"{list(latent.shape)} (same height/width, at most as many frames).")
    starts = [st for st, _ in layout] + [frames]
    if not clamp and known not in starts:
        raise ValueError(f"the start image covers {known} latent frame(s) but block boundaries are at "
                         f"{starts[:6]}: enable independent_first_frame (first block = 1 frame) or set "
                         f"frames_per_block so a block ends after frame {known}.")
    return known


def _check_text_width(cfg, texts) -> None:
    """Every text context (positive, negative, each prompt switch) is ``[B, L, text_dim]`` for this model,
    checked before the first block (a switch prompt is otherwise read only blocks later)."""
    for name, t in texts:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or t.dim() not in (2, 3) or t.shape[-1] != cfg.text_dim:
            shape = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} text embedding has shape {shape}; the model ({cfg.describe()}) takes "
                             f"[batch, tokens, {cfg.text_dim}] (Wan's umt5-xxl encoder output). Encode it with "
                             f"the Wan text encoder (umt5_xxl), not another CLIP/T5.")


def check_loop_fits(loop: "CausalLoop") -> None:
    """The KV caches and one block's activations of a set-up loop must fit the model's device (refused with
    the size they would need); nothing has been allocated yet."""
    from .budget import check_fits

    cfg, s = loop.cfg, loop.settings
    itemsize = torch.empty(0, dtype=s.cache_dtype or loop.dtype).element_size()
    branches = 2 if loop.guidance > 1.0 else 1
    tokens = loop.tokens_per_frame
    cache = branches * 2 * cfg.num_layers * loop.cache_capacity() * tokens * cfg.dim * itemsize * loop.batch
    widest = max(n for _, n in loop.layout[:len(loop)])  # (an endless run: its first segment's blocks)
    block = loop.batch * widest * tokens * (cfg.ffn_dim + 6 * cfg.dim) * max(itemsize, 4)
    frames, h, w = loop.latent.shape[2:]
    check_fits(f"this run ({frames} latent frames of {h}x{w}: a KV cache of {loop.cache_capacity()} frames x "
               f"{tokens} tokens x {cfg.num_layers} layers, and one block's activations)", cache + block,
               loop.device, "Use a smaller width/height or fewer frames, or a local_window (flat memory for any "
                            "length).")


class _Branch:
    """One conditioning (positive, or negative for CFG) with its own cross context and self-attn cache."""

    def __init__(self, ctx, cache):
        self.ctx, self.cache = ctx, cache
        self.actions: Optional[ActionRun] = None  # Matrix-Game 2.0's action caches (positive branch only)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------
class CausalLoop:
    """Validated, set-up block-causal run; iterate it for one ``BlockResult`` per block.

    ``latent [B,16,T,h,w]`` is in the model's (normalised) space; zeros mean "from pure noise" (a first step
    below 1000 starts from ``(1-σ)·latent + σ·noise``). ``noise`` defaults to ``SeededNoise(seed)``.
    ``check_interrupt()`` is called between steps and may raise to stop. After the loop, ``cache_nbytes``
    and ``cache_frames`` describe the positive branch's KV cache."""

    def __init__(self, model: CausalWanModel, latent: torch.Tensor, text: torch.Tensor, *, seed: int = 0,
                 settings: Optional[CausalSettings] = None, negative_text: Optional[torch.Tensor] = None,
                 clip_fea: Optional[torch.Tensor] = None, concat: Optional[torch.Tensor] = None,
                 first_frames: Optional[torch.Tensor] = None, prompt_switches: Sequence[PromptSwitch] = (),
                 noise: Optional[NoiseSource] = None, hooks: Optional[SamplerHooks] = None,
                 check_interrupt: Optional[Callable[[], None]] = None, actions=None, vace=None, restyle=None,
                 timeline=None):
        s = settings or CausalSettings()
        cfg = model.config
        check_latent(latent, channels=cfg.out_dim)
        b, _, frames, height, width = latent.shape
        if s.shorter_last_block and s.loop not in SHORTER_LAST_BLOCK_SHAPES:
            raise ValueError(f"shorter_last_block: the '{s.loop}' loop runs whole blocks only; use a length from "
                             f"block_layout's message.")
        self.layout = block_layout(frames, s.frames_per_block, s.independent_first_frame, s.shorter_last_block)
        check_window(s, self.layout)
        if s.solver not in SOLVERS or s.first_frame not in FIRST_FRAME_POLICIES:
            raise ValueError(f"solver '{s.solver}' / first_frame '{s.first_frame}': use a solver of {SOLVERS} "
                             f"and a first_frame policy of {FIRST_FRAME_POLICIES}.")
        if s.sigmas is not None and (s.solver != "renoise" or s.first_block_steps is not None):
            why = ("solver 'unipc' takes a step count (a Wan 2.2 model runs LongLive 2.0's UniPC loop: sample it with "
                   "Causal Wan Sampler, steps 4)" if s.solver != "renoise" else
                   f"first_block_steps {s.first_block_steps!r} is a step list of its own")
            raise ValueError(f"explicit sigmas run the re-noise rule with the same sigmas in every block, but {why}; "
                             f"drop the explicit sigmas or that setting.")
        if s.sigmas is not None:
            schedule = explicit_schedule(s.sigmas)
            self.sigmas, self.timesteps = list(schedule.sigmas), list(schedule.timesteps)
            self.first_schedule = (self.sigmas, self.timesteps)
        elif s.solver == "unipc":
            self.unipc = unipc_schedule(_step_count(s.steps), s.shift)
            self.sigmas, self.timesteps = self.unipc[1][:-1], None
            self.first_schedule = (self.sigmas, None)
        else:
            schedule = denoising_schedule(s.steps, s.shift, s.warp)
            self.sigmas, self.timesteps = list(schedule.sigmas), list(schedule.timesteps)
            first = schedule if s.first_block_steps is None else \
                denoising_schedule(s.first_block_steps, s.shift, s.warp)
            self.first_schedule = (list(first.sigmas), list(first.timesteps))
        clip_fea, concat, first_frames = _image_inputs(model, clip_fea, concat, first_frames)
        if concat is not None and (concat.shape[0] not in (1, b) or concat.shape[1] != cfg.concat_channels
                                   or tuple(concat.shape[2:]) != (frames, height, width)):
            raise ValueError(f"concat conditioning has shape {list(concat.shape)}; expected "
                             f"[{b}, {cfg.concat_channels}, {frames}, {height}, {width}] to match the latent.")
        self.clamp = s.first_frame == "clamp"
        self.known = _check_known_frames(first_frames, latent, self.layout, self.clamp)
        self.guidance = float(s.guidance_scale)
        if self.guidance > 1.0 and negative_text is None:
            raise ValueError(f"guidance_scale {self.guidance} > 1 needs a negative conditioning; connect one, or "
                             f"use guidance_scale 1.0 (distilled causal models are run without CFG).")
        if s.positions not in POSITION_MODES:
            raise ValueError(f"positions '{s.positions}' is not one of {list(POSITION_MODES)}.")
        if s.sink_ema is not None and (s.positions != "slots" or not 0.0 <= float(s.sink_ema) <= 1.0):
            raise ValueError(f"sink_ema {s.sink_ema} needs positions='slots' (Reward Forcing stores keys without "
                             f"RoPE) and a value in [0, 1] (Reward Forcing uses 0.999).")
        if s.recache not in RECACHE_MODES:
            raise ValueError(f"recache '{s.recache}' is not a re-cache mode; use one of {sorted(RECACHE_MODES)}.")
        for sw in prompt_switches:
            if not 0 < sw.start_block < len(self.layout):
                raise ValueError(f"prompt switch at block {sw.start_block}: must be between 1 and "
                                 f"{len(self.layout) - 1}.")

        check_actions(cfg, actions)
        if cfg.actions is not None and (s.loop != "block" or self.guidance > 1.0 or s.positions != "absolute"):
            raise ValueError(f"Matrix-Game 2.0 runs the plain block loop without CFG and with absolute positions "
                             f"(its authors' loop); got loop '{s.loop}', guidance {self.guidance}, positions "
                             f"'{s.positions}'. Use the 'Matrix-Game 2.0' family preset.")
        self.actions = actions  # Matrix-Game 2.0's keyboard/mouse timeline (None: idle)
        self.model, self.cfg, self.settings = model, cfg, s
        self.latent, self.text, self.negative_text = latent, text, negative_text
        self.clip_fea, self.concat, self.first_frames = clip_fea, concat, first_frames
        self.switches = {sw.start_block: sw.text for sw in prompt_switches}
        # a prompt timeline (wan/timeline): block 0's text and a change per later block, live changes included
        self.schedule = None
        if timeline is not None:
            if prompt_switches:
                raise ValueError("give prompt_switches or a timeline, not both: put the switch into the timeline "
                                 "as a segment (node: disconnect switch_positive when a timeline is connected).")
            self.schedule = timeline.compile(self._timeline_layout(), text, s.scene_cut_prefix) \
                if hasattr(timeline, "compile") else timeline
            if self.schedule.initial is not None:
                self.text = text = self.schedule.initial
            if text is None:
                raise ValueError("the timeline starts after block 0 and no text was given for the blocks before it; "
                                 "start the timeline at block 0 or pass the positive text.")
            self.switches = {b: ch.text for b, ch in self.schedule.changes.items()}
        # the texts this run reads (with a timeline: its own, not the positive it replaces), before the first block
        _check_text_width(cfg, [("positive" if self.schedule is None else "the timeline's first prompt", text),
                                ("negative", negative_text)] +
                          [(f"switch_positive (the prompt switch at block {sw.start_block})", sw.text)
                           for sw in prompt_switches] +
                          [(f"the timeline's prompt at block {b}", t) for b, t in self.switches.items()
                           if self.schedule is not None])
        self.noise = noise if noise is not None else SeededNoise(seed)
        self.hooks = hooks if hooks is not None else SamplerHooks()
        self.check_interrupt = check_interrupt or (lambda: None)
        self.batch = b
        self.device = model.device
        self.dtype = model.compute_dtype
        self.tokens_per_frame = (height // 2) * (width // 2)
        generated = [bi for bi, (st, n) in enumerate(self.layout) if self.clamp or st + n > self.known]
        self.first_generated = generated[0] if generated else None
        self.total_steps = sum(len(self._schedule(bi)[0]) for bi in generated)
        self.branches: list = []
        self._started = False
        self.vace = _vace_controls(vace, cfg, latent.shape, s)
        self.restyle = _restyle_input(restyle, latent.shape, s, self.sigmas)
        self._vace_block: tuple = (None, None)
        self.controls = _loop_controls(self, timeline)  # the timeline's image / LoRA changes, live ones included

    def __len__(self) -> int:
        return len(self.layout)

    def _timeline_layout(self):
        """The block layout a timeline is compiled against (endless.py: the first segment, then blocks without end)."""
        return self.layout

    @property
    def prompt_changes(self) -> bool:
        """Can the prompt change during the run (switches, a timeline, or live changes to come)?"""
        return bool(self.switches) or (self.schedule is not None and self.schedule.live is not None)

    @property
    def cache_nbytes(self) -> int:
        return sum(br.cache.nbytes for br in self.branches)

    @property
    def cache_frames(self) -> list:
        return list(self.branches[0].cache.frames) if self.branches else []

    def _schedule(self, bi: int):
        """(sigmas, model timesteps) of block ``bi``: ``first_block_steps`` for the first generated block."""
        return self.first_schedule if bi == self.first_generated else (self.sigmas, self.timesteps)

    # --- setup --------------------------------------------------------------------------------------
    def cache_capacity(self) -> int:
        """Frames the KV cache holds: the window, or the whole video without one — never more frames than the
        video has (a window larger than the video sees everything: the same attention as no window)."""
        s = self.settings
        return min(int(s.local_window), self.latent.shape[2]) if s.local_window else self.latent.shape[2]

    cache_class = KVCache  # a loop shape may keep its cache by other rules (multishot.py's ShotCache)

    def _new_cache(self) -> KVCache:
        s, cfg = self.settings, self.cfg
        capacity = self.cache_capacity()
        return self.cache_class(cfg.num_layers, self.batch, cfg.num_heads, cfg.head_dim, self.tokens_per_frame,
                                capacity, int(s.sink_size), int(s.local_window), s.cache_dtype or self.dtype,
                                self.device, positions=s.positions, sink_ema=s.sink_ema)

    def _encode(self, text, block: int):
        self.hooks.on_forward_start("context", block)
        ctx = dit.encode_context(self.model.tree, self.cfg, text, self.clip_fea, self.dtype, self.batch,
                                 self.device)
        self.hooks.on_forward_end("context", block)
        return ctx

    @torch.no_grad()
    def _setup(self) -> None:
        self.branches = [_Branch(self._encode(self.text, 0), self._new_cache())]
        if self.cfg.actions is not None:
            self.branches[0].actions = ActionRun(self.cfg, self.actions, self.latent.shape[2], self.batch,
                                                 self.tokens_per_frame, self.settings, self.device,
                                                 self.settings.cache_dtype or self.dtype)
        if self.guidance > 1.0:
            self.branches.append(_Branch(self._encode(self.negative_text, 0), self._new_cache()))
        self.initial = self.noise.initial(tuple(self.latent.shape), self.device).float()
        self.y = None if self.concat is None else \
            self.concat.float().to(self.device).expand(self.batch, *self.concat.shape[1:])
        # clean frames kept for a prompt switch's re-cache: at most what the cache can hold
        self.recent: dict = {}

    # --- one DiT evaluation -------------------------------------------------------------------------
    def _forward(self, kind: str, block: int, x, t_value, branch: _Branch, start: int, head: bool = True):
        self.hooks.on_forward_start(kind, block)
        y = self._block_concat(start, x.shape[2])
        if self.controls is not None:  # an image change's known frame (concat route)
            y = self.controls.concat(y, start)
        x_in = dit.join_concat(self.cfg, x.to(self.device), y)
        t = t_value.to(self.device) if torch.is_tensor(t_value) else \
            torch.full((self.batch,), float(t_value), dtype=torch.float64, device=self.device)
        out = dit.transformer(self.model.tree, self.cfg, x_in, t, branch.ctx,
                              start_frame=self._rope_start(kind, start),
                              kv_hook=self._kv_hook(kind, block, branch, start),
                              attn_mask=self._attn_mask(kind, x.shape[2]), dtype=self.dtype, run_head=head,
                              action_hook=None if branch.actions is None else branch.actions.hook(start, x.shape[2]),
                              vace=self._vace_step(kind, start, x.shape[2]))
        self.hooks.on_forward_end(kind, block)
        return out

    def _vace_step(self, kind: str, start: int, n: int):
        """The VACE input of a forward: the block's context on its denoising steps only. Scope's rule: the pass
        that writes the cache (and Krea's recompute, a prompt switch's re-cache) runs without hints."""
        if not self.vace or kind != "denoise":
            return None
        if self._vace_block[0] != (start, n):  # read once per block (a streamed control video advances here)
            contexts = [(c.block(start, n).to(self.device), c.strength) for c in self.vace if c.strength != 0]
            self._vace_block = ((start, n), VaceStep(contexts) if contexts else None)
        return self._vace_block[1]

    def _kv_hook(self, kind: str, block: int, branch: _Branch, start: int):
        """The self-attention K/V a forward sees: the branch's cache (a loop shape may add to it)."""
        return branch.cache.hook(start)

    def _rope_start(self, kind: str, start: int) -> int:
        """The RoPE frame position of a forward's first frame: its absolute frame (a loop shape may renumber)."""
        return start

    def _attn_mask(self, kind: str, frames: int) -> Optional[torch.Tensor]:
        """A self-attention mask for a forward over ``frames`` frames: none (a loop shape may add one)."""
        return None

    # --- a block's slice of the run's tensors (an endless run, wan/sampling/endless.py, makes them per block)
    def _block_noise(self, bi: int, start: int, n: int) -> torch.Tensor:
        return self.initial[:, :, start:start + n]

    def _block_latent(self, start: int, n: int) -> torch.Tensor:
        return self.latent[:, :, start:start + n]

    def _block_concat(self, start: int, n: int) -> Optional[torch.Tensor]:
        return None if self.y is None else self.y[:, :, start:start + n]

    # --- the parts of one block ---------------------------------------------------------------------
    @torch.no_grad()
    def _denoise(self, bi: int, start: int, n: int) -> torch.Tensor:
        for br in self.branches:
            br.cache.begin_block(start, n)
        if not self.clamp and start + n <= self.known:  # route (3): known clean frames, only written into the cache
            return self.first_frames[:, :, start:start + n].float().to(self.device).expand(
                self.batch, -1, -1, -1, -1)
        sigmas, timesteps = self._schedule(bi)
        x = self._block_noise(bi, start, n)
        if self.settings.solver == "unipc":
            steps = _UniPCSteps(self.unipc)  # starts from the noise itself (its first σ is 0.9998)
        else:
            steps = _RenoiseSteps(sigmas, timesteps, self.noise, bi, self.device)
            if sigmas[0] < 1.0:  # Krea's v2v: the input video's frames (or the given latent) noised to the first σ
                source = self.restyle.block(start, n) if self.restyle else self._block_latent(start, n)
                x = renoise(source.float().to(self.device), x, sigmas[0])
        clean, at = (self.first_frames if self.clamp else None), 0
        if self.controls is not None and self.controls.clamp(start) is not None:  # an image change at this block
            clean, at = self.controls.clamp(start)
        for j, t_step in enumerate(steps.timesteps):
            self.check_interrupt()
            t = torch.full((self.batch, n), float(t_step), dtype=torch.float64, device=self.device)
            x, t = clamp_first_frames(x, t, clean, start, at)
            flows = [self._forward("denoise", bi, x, t, br, start) for br in self.branches]
            flow = flows[0] if len(flows) == 1 else flows[1] + self.guidance * (flows[0] - flows[1])
            x = steps.step(j, x, flow)
            self.hooks.on_step(bi, j, len(steps.timesteps))
        return clamp_first_frames(x, t, clean, start, at)[0]

    @torch.no_grad()
    def _cache_pass(self, bi: int, start: int, x0: torch.Tensor) -> None:
        """Context pass at t=0: the clean block's K/V become the cache."""
        for br in self.branches:
            self._forward("cache", bi, x0, 0.0, br, start, head=False)
            br.cache.commit()
            if br.actions is not None:
                br.actions.commit()

    def _finish(self, bi: int, total: int, start: int, x0: torch.Tensor) -> BlockResult:
        """The one sequence that ends a block in every loop shape: the clean latent checked finite, kept for what
        later reads it (``_remember``; a loop shape keeps what its own rules re-read), and handed to the hooks as
        the ``BlockResult`` the loop yields next (before the block's cache pass)."""
        check_finite_latent(x0, bi, start, self.dtype)
        self._remember(start, x0)
        result = BlockResult(bi, total, start, x0)
        self.hooks.on_block(result)
        return result

    def _remember(self, start: int, x0: torch.Tensor) -> None:
        if not self.prompt_changes or self.settings.recache == "none":
            return
        for i in range(x0.shape[2]):
            self.recent[start + i] = x0[:, :, i:i + 1]
        window = int(self.settings.local_window)
        if window:  # a re-cache needs at most the last `window` frames and the frames still cached (the sink)
            newest = start + x0.shape[2]
            cached = set(self.branches[0].cache.frames)
            for f in [f for f in self.recent if f < newest - window and f not in cached]:
                del self.recent[f]

    def _clean(self, frames) -> torch.Tensor:
        return torch.cat([self.recent[f] for f in frames], dim=2)

    @torch.no_grad()
    def _switch_prompt(self, bi: int, text) -> None:
        self.branches[0].ctx = self._encode(text, bi)
        RECACHE_MODES[self.settings.recache](self, bi, self.branches[0])

    @torch.no_grad()
    def _set_context(self, bi: int, text) -> None:
        """A blend step (Scope's transition): only the cross-attention text changes, the cache stays."""
        self.branches[0].ctx = self._encode(text, bi)

    @torch.no_grad()
    def _prompt_at(self, bi: int) -> None:
        """Before block ``bi``: the timeline's image / LoRA changes, then the prompt's (live ones included)."""
        new_image = self.controls is not None and self.controls.before_block(bi)
        text_done = self._text_at(bi)
        if new_image:  # new CLIP features: each branch's image cross-attention K/V computed once (not per block)
            for i, br in enumerate(self.branches):
                if i == 0 and text_done:
                    continue  # the prompt's change already encoded them
                if self.cfg.image_context_only:  # Matrix-Game: the image is the whole context
                    br.ctx = self._encode(self.negative_text if i else self.text, bi)
                    continue
                self.hooks.on_forward_start("context", bi)
                img_k, img_v = dit.image_kv(self.model.tree, self.cfg, self.clip_fea, self.dtype, self.batch,
                                            self.device)
                br.ctx = dataclasses.replace(br.ctx, img_k=img_k, img_v=img_v)
                self.hooks.on_forward_end("context", bi)

    def _text_at(self, bi: int) -> bool:
        """The prompt switch or the timeline's change before block ``bi``, if any (True: the context was rebuilt)."""
        if self.schedule is None:
            if bi in self.switches:
                self._switch_prompt(bi, self.switches[bi])
                return True
            return False
        change = self.schedule.take(bi)
        if change is None:
            return False
        self.switches[bi] = change.text
        if change.rule == "switch" and bi > 0:
            self._switch_prompt(bi, change.text)
        else:
            self._set_context(bi, change.text)
        return True

    def _end_run(self) -> None:
        """The run ended or stopped (every loop shape's ``__iter__`` calls it last): LoRA strengths restored."""
        if self.controls is not None:
            self.controls.end()

    # --- iteration ----------------------------------------------------------------------------------
    def _start_run(self) -> None:
        """Once per loop object (every loop shape): the run's caches, context and initial noise."""
        if self._started:
            raise RuntimeError("a CausalLoop runs once; build a new one (same arguments) to sample again.")
        self._started = True
        self._setup()

    def __iter__(self) -> Iterator[BlockResult]:
        self._start_run()
        total = len(self.layout)
        try:
            for bi, (start, n) in enumerate(self.layout):
                self._prompt_at(bi)
                x0 = self._denoise(bi, start, n)
                yield self._finish(bi, total, start, x0)  # the block is final: stream it before the cache pass
                self.check_interrupt()
                self._cache_pass(bi, start, x0)
        finally:
            self._end_run()


LOOP_SHAPES = ("block", "memory", "rolling", "recompute")


def _loop_controls(loop: CausalLoop, timeline):
    """The timeline's image and LoRA changes as the loop applies them (None: it has none and takes no live ones)."""
    if timeline is None or getattr(timeline, "controls", None) is None:
        return None
    if not timeline.controls and timeline.live is None:
        return None
    from ..timeline.controls import LoopControls

    return LoopControls(loop, timeline)


# --------------------------------------------------------------------------------------------------
# Prompt switch: what happens to the cached frames (one function per rule)
# --------------------------------------------------------------------------------------------------
def recache_joint(loop: CausalLoop, bi: int, branch: _Branch) -> None:
    """LongLive's KV re-cache (``InteractiveCausalInferencePipeline._recache_after_switch``, v1.0): the last
    ``min(window, c)`` frames before the switch frame ``c`` (all ``c`` without a window) are re-encoded at
    t=0 with the new prompt in ONE forward, attending to each other both ways (no causal mask inside).

    With ``global_sink`` and a window that has already slid (``c > window``), LongLive protects the sink
    slots: they keep the old prompt's K/V, the re-encoded frames attend to them, and only the cached frames
    after the sink are rewritten. The ``sink`` oldest re-encoded frames are not in the cache there and their
    K/V are discarded, so nothing attends to them: we skip them, which leaves every cached value identical.
    Otherwise (no global sink, or the switch comes before the window slid) every re-encoded frame is written
    and the first ``sink`` of them become the sink — LongLive's buffer after the switch, sink included."""
    s = loop.settings
    c = loop.layout[bi][0]
    window, sink = int(s.local_window), int(s.sink_size)
    count = min(window, c) if window else c
    first = c - count
    cache = branch.cache
    if s.global_sink and sink and first > 0:
        cache.keep_first(sink)
        frames = list(range(max(first, c - (window - sink)), c))
    else:
        cache.reset()
        frames = list(range(first, c))
    if not frames:
        return
    cache.begin_block(frames[0], len(frames))
    loop._forward("recache", bi, loop._clean(frames), 0.0, branch, frames[0], head=False)
    cache.commit()


def recache_blockwise(loop: CausalLoop, bi: int, branch: _Branch) -> None:
    """The pack's earlier rule (no author uses it): every frame still cached, sink included, re-encoded
    block by block and causally (same block boundaries and positions as when it was generated). Kept to
    compare against; it costs the same forwards as the joint pass, split per block."""
    kept = set(branch.cache.frames)
    branch.cache.reset()
    for start, n in loop.layout[:bi]:
        frames = [f for f in range(start, start + n) if f in kept]
        # a block may be partly evicted; re-encode each contiguous run of kept frames
        runs = []
        for f in frames:
            if runs and f == runs[-1][-1] + 1:
                runs[-1].append(f)
            else:
                runs.append([f])
        for r in runs:
            branch.cache.begin_block(r[0], len(r))
            loop._forward("recache", bi, loop._clean(r), 0.0, branch, r[0], head=False)
            branch.cache.commit()


def recache_none(loop: CausalLoop, bi: int, branch: _Branch) -> None:
    """Only the cross-attention follows the new prompt; cached frames keep the old prompt's K/V (LongLive's
    "without KV re-cache" ablation: the transition lags behind the prompt)."""


RECACHE_MODES = {"joint": recache_joint, "blockwise": recache_blockwise, "none": recache_none}
