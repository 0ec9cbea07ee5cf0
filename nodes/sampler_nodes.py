"""Causal Wan Loop Sampler (ClipWan): the pack's causal loop as a ComfyUI ``SAMPLER``.

Core's ``SamplerCustomAdvanced`` (or ``SamplerCustom``) then drives it with core's own nodes, as it drives core's
``SamplerARVideo``: the NOISE node gives the initial noise and the seed, the GUIDER node the model, the
conditioning and the CFG scale, the SIGMAS node (BasicScheduler, ManualSigmas, …) the per-block step sigmas.
It is the same loop as Causal Wan Sampler (``wan/sampling``: ``prepare_run`` + ``iter_causal_blocks``), run with
``CausalSettings.sigmas`` set to those sigmas; nothing of the algorithm lives here.

Where each input goes (documented in docs/comfyui.md, "Causal Wan Loop Sampler"):

* **noise**: the tensor SamplerCustomAdvanced hands over (RandomNoise: ComfyUI's ``prepare_noise(seed)``, the
  same numbers as Causal Wan Sampler's initial noise) is every block's starting noise. The fresh noise of the
  re-noise between two steps is the loop's ``NoiseSource`` seeded with the NOISE node's seed: ``renoise``
  "clipwan" = ``SeededNoise`` (what Causal Wan Sampler draws: same seed, same video), "core ar_video" =
  ``CoreARNoise`` (what core's ``ar_video`` sampler draws on a CPU).
* **guider**: BasicGuider (positive only) or CFGGuider (positive, negative, cfg > 1 = the loop's CFG with a
  cache per branch). Its conditioning goes through ``build_sampler_inputs`` like the sampler node's sockets.
* **sigmas**: ``CausalSettings.sigmas``; every block runs them (``scheduler.explicit_schedule``). A Wan model
  shifted by ModelSamplingSD3 at 5 with BasicScheduler "simple", 4 steps gives ``1, 0.9375, 0.8333, 0.625, 0``:
  Self-Forcing's warped 1000,750,500,250 (Causal Wan Sampler's default).
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from . import comfy_bridge as bridge
from ..wan.sampling.loop import CoreARNoise, NoiseSource, SamplerHooks, SeededNoise
from ..wan.sampling.presets import CUSTOM_FAMILY, family_choices, family_preset
from ..wan.sampling.run import iter_causal_blocks
from .causal_run import prepare_run
from ..wan.sampling.settings_spec import FAMILY_TOOLTIP

log = logging.getLogger("comfyui_clipwan")

# the re-noise draws between two steps of a block: the NoiseSource class, seeded with the NOISE node's seed
RENOISE = {"clipwan": SeededNoise, "core ar_video": CoreARNoise}
# converted-conditioning keys that are ComfyUI's bookkeeping, not conditioning (comfy.sampler_helpers.convert_cond)
_BOOKKEEPING = ("cross_attn", "model_conds", "uuid")


class GivenInitialNoise(NoiseSource):
    """The outer sampler's noise tensor as the run's initial noise; the re-noise draws from ``steps``."""

    def __init__(self, noise: torch.Tensor, steps: NoiseSource):
        self.noise, self.steps = noise, steps

    def initial(self, shape, device):
        if tuple(self.noise.shape) != tuple(shape):
            raise ValueError(f"the NOISE node's noise has shape {list(self.noise.shape)}, the latent "
                             f"{list(shape)}: connect the same latent to SamplerCustomAdvanced.")
        return self.noise.float().to(device)

    def step(self, block, step, shape, device):
        return self.steps.step(block, step, shape, device)

    def window_step(self, block, step, shape, window_shape, offset, device):
        return self.steps.window_step(block, step, shape, window_shape, offset, device)

    def block_initial(self, block, shape, device):  # an endless run's later blocks (not reached from a SAMPLER)
        return self.steps.block_initial(block, shape, device)


def guider_conditioning(guider) -> tuple:
    """``(positive, negative or None, cfg)`` of a GUIDER, as CONDITIONING lists (``[[text, {key: value}], ...]``)
    for ``build_sampler_inputs``. The loop runs its own guidance (CFG at the guider's ``cfg``), so guiders with
    another rule (DualCFGGuider, PerpNegGuider, …) are refused rather than run as plain CFG."""
    _check_guider_rule(guider)
    conds = dict(getattr(guider, "original_conds", None) or {})
    other = sorted(set(conds) - {"positive", "negative"})
    if other or "positive" not in conds:
        raise ValueError(f"guider {type(guider).__name__} holds conditionings {sorted(conds)}; the causal loop "
                         f"takes a positive (and a negative for cfg > 1): use BasicGuider or CFGGuider.")

    def back(entries):
        return [[e.get("cross_attn"), {k: v for k, v in e.items() if k not in _BOOKKEEPING}] for e in entries]

    negative = back(conds["negative"]) if conds.get("negative") else None
    return back(conds["positive"]), negative, float(getattr(guider, "cfg", 1.0))


def _check_guider_rule(guider) -> None:
    try:
        import comfy.samplers
    except Exception:  # outside ComfyUI there are no other guiders
        return
    if type(guider).predict_noise is not comfy.samplers.CFGGuider.predict_noise:
        raise ValueError(f"guider {type(guider).__name__} has its own guidance rule, which the causal loop does not "
                         f"run (it applies CFG per block with a KV cache per branch): use BasicGuider or CFGGuider.")


class _Progress(SamplerHooks):
    """The outer sampler's ``callback(step, x0, x, total_steps)`` (core's progress bar and previews) after every
    denoising step, with the video's blocks finished so far; after the last block it holds the whole video
    (SamplerCustomAdvanced's ``denoised_output``)."""

    def __init__(self, callback, out: torch.Tensor, total: int):
        self.callback, self.out, self.total, self.done = callback, out, max(1, total), 0

    def on_step(self, block, step, total_steps):
        self.done += 1
        self._report()

    def on_block(self, result):
        self.out[:, :, result.start_frame:result.start_frame + result.num_frames] = result.x0
        self._report()

    def _report(self):
        if self.callback is not None:
            self.callback(max(0, self.done - 1), self.out, self.out, self.total)


@dataclasses.dataclass
class CausalLoopSampler:
    """The SAMPLER object: ``sample`` has the signature core's guiders call (``comfy.samplers.KSAMPLER.sample``)."""

    frames_per_block: int = 3
    sink_size: int = 0
    local_window: int = 0
    independent_first_frame: bool = False
    cache_dtype: str = "auto"
    image_conditioning: bool = True
    family: str = CUSTOM_FAMILY
    renoise: str = "clipwan"
    unique_id: object = None

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        """Run the causal loop for a guider (``model_wrap``: core's CFGGuider calls its sampler with itself).
        ``latent_image`` is in the model's space (the guider applied ``process_latent_in``); the result is too."""
        if self.renoise not in RENOISE:
            raise ValueError(f"renoise '{self.renoise}' is not one of {list(RENOISE)}.")
        seed = int((extra_args or {}).get("seed") or 0)
        positive, negative, cfg = guider_conditioning(model_wrap)
        latent = latent_image if latent_image is not None else torch.zeros_like(noise)
        raw = latent if not torch.count_nonzero(latent) else _to_raw(model_wrap, latent)
        preset = family_preset(self.family)
        # the step list is the SIGMAS input; the family's own values here only keep its difference log quiet
        schedule = {} if preset is None else dict(steps=preset.steps, shift=preset.shift,
                                                  warp_steps=preset.warp_steps)
        causal, inputs, settings, switches, _ = prepare_run(
            model_wrap.model_patcher, positive, {"samples": raw, "noise_mask": denoise_mask}, seed, **schedule,
            frames_per_block=self.frames_per_block, sink_size=self.sink_size, local_window=self.local_window,
            cache_dtype=self.cache_dtype, independent_first_frame=self.independent_first_frame,
            guidance_scale=max(1.0, cfg), image_conditioning=self.image_conditioning, negative=negative,
            family=self.family, unique_id=self.unique_id)
        if settings.first_block_steps is not None:
            log.warning("Causal Wan Loop Sampler: family %s runs its first block with its own step list; with "
                        "the SIGMAS input every block runs those sigmas.", self.family)
        settings = dataclasses.replace(settings, sigmas=sigmas.detach().cpu().float().tolist()
                                       if torch.is_tensor(sigmas) else list(sigmas), first_block_steps=None)
        source = GivenInitialNoise(noise, RENOISE[self.renoise](seed))
        loop = iter_causal_blocks(causal, inputs.latent, inputs.text, seed=seed, settings=settings,
                                  negative_text=inputs.negative_text, clip_fea=inputs.clip_fea,
                                  concat=inputs.concat, first_frames=inputs.first_frames, prompt_switches=switches,
                                  noise=source, check_interrupt=bridge.check_interrupt)
        note = getattr(loop, "fallback_note", None)  # a family rule this sampler cannot run (no decoded pixels)
        if note:
            log.warning("Causal Wan Loop Sampler: %s", note)
        out = torch.zeros(inputs.latent.shape, dtype=torch.float32, device=causal.device)
        loop.hooks = _Progress(callback, out, loop.total_steps)
        for _ in loop:
            pass
        return out


def _to_raw(guider, latent):
    """A non-empty model-space latent back to the LATENT's raw space (``build_sampler_inputs`` maps it in)."""
    base = getattr(guider, "inner_model", None)
    if base is not None and hasattr(base, "process_latent_out"):
        return base.process_latent_out(latent)
    from ..wan.vae.latent import denormalize

    return denormalize(latent)


class CausalWanLoopSampler:
    DESCRIPTION = ("The block-causal Wan loop (Self-Forcing / CausVid / LongLive …) as a SAMPLER for core's "
                   "SamplerCustomAdvanced: its NOISE node gives the initial noise and the seed, its GUIDER the model "
                   "and conditioning (BasicGuider, or CFGGuider for cfg > 1), its SIGMAS the step sigmas of every "
                   "block (ModelSamplingSD3 shift 5 + BasicScheduler simple 4 steps = Self-Forcing's warped "
                   "1000,750,500,250). Same loop and same result as Causal Wan Sampler for the same seed.")
    CATEGORY = "ClipWan/sampling"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("Connect to SamplerCustomAdvanced's sampler input.",)
    SEARCH_ALIASES = ["causal sampler", "autoregressive video sampler", "self forcing", "causvid", "longlive",
                      "kv cache", "sampler ar video", "clipwan"]
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "frames_per_block": ("INT", {"default": 3, "min": 1, "max": 64,
                                             "tooltip": "Latent frames generated per block."}),
                "sink_size": ("INT", {"default": 0, "min": 0, "max": 1024,
                                      "tooltip": "First latent frames kept in attention forever (with a window)."}),
                "local_window": ("INT", {"default": 0, "min": 0, "max": 4096,
                                         "tooltip": "Latent frames attended (sink + recent + block); 0 = all."}),
                "independent_first_frame": ("BOOLEAN", {
                    "default": False, "tooltip": "First block = 1 latent frame (the start image of a t2v model)."}),
            },
            "optional": {
                "cache_dtype": (["auto", "bf16", "fp16", "fp32"], {
                    "default": "auto", "tooltip": "KV cache dtype; auto = the model's compute dtype."}),
                "image_conditioning": ("BOOLEAN", {"default": True,
                                                   "tooltip": "Use the image conditioning in the guider's positive."}),
                "family": (family_choices(), {"default": CUSTOM_FAMILY, "tooltip": FAMILY_TOOLTIP}),
                "renoise": (list(RENOISE), {
                    "default": "clipwan", "tooltip": "Fresh noise between two steps, seeded with the NOISE node's "
                                                     "seed: clipwan = Causal Wan Sampler's draws (same seed, same "
                                                     "video); core ar_video = core SamplerARVideo's draws."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def get_sampler(self, frames_per_block=3, sink_size=0, local_window=0, independent_first_frame=False,
                    cache_dtype="auto", image_conditioning=True, family=CUSTOM_FAMILY, renoise="clipwan",
                    unique_id=None):
        if renoise not in RENOISE:
            raise ValueError(f"renoise '{renoise}' is not one of {list(RENOISE)}.")
        family_preset(family)  # an unknown family is reported here, before any model is loaded
        return (CausalLoopSampler(int(frames_per_block), int(sink_size), int(local_window),
                                  bool(independent_first_frame), cache_dtype, bool(image_conditioning), family,
                                  renoise, unique_id),)


NODE_CLASS_MAPPINGS = {"CausalWanLoopSampler": CausalWanLoopSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"CausalWanLoopSampler": "Causal Wan Loop Sampler (ClipWan)"}
