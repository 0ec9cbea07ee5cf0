"""Wan 2.1 DiT and block-causal (Self-Forcing / CausVid / LongLive style) image-to-video sampling.

Pure PyTorch; no ComfyUI imports (the nodes in ``nodes/wan_nodes.py`` bridge to ComfyUI).
"""

# The rooms: model/ (the DiT and its weights), sampling/ (the causal loop, its shapes, cache, schedules, presets),
# conditioning/ (image routes, conditioning -> sampler inputs), vae/ (latent space, VAEs, tiny decoder),
# video/ (streaming decode, file writers), text/ (umT5).
from .model.causal import CausalWanModel
from .model.checkpoint import load_wan_state_dict, strip_to_wan_keys
from .model.config import WanConfig, config_from_shapes, detect_config, preset
from .sampling.cache import KVCache, attended_frames
from .sampling.loop import (BlockResult, CausalLoop, CausalSettings, NoiseSource, PromptSwitch, SamplerHooks, SeededNoise,
                            block_layout)
from .sampling.run import iter_causal_blocks, sample_causal
from .sampling.scheduler import denoising_sigmas, parse_steps, shift_sigma
from .vae.latent import LatentPreviewer, check_latent, denormalize, normalize, pixel_length_to_latent_frames
from .vae.wan21 import StreamingDecoder, WanVAE
from .video.stream import VideoBlock, stream_video

__all__ = [
    "BlockResult", "CausalLoop", "CausalSettings", "CausalWanModel", "NoiseSource", "SamplerHooks", "SeededNoise",
    "iter_causal_blocks", "KVCache", "LatentPreviewer", "PromptSwitch", "WanConfig",
    "attended_frames", "block_layout", "check_latent", "config_from_shapes", "denoising_sigmas", "denormalize",
    "detect_config", "load_wan_state_dict", "normalize", "parse_steps", "pixel_length_to_latent_frames", "preset",
    "sample_causal", "shift_sigma", "strip_to_wan_keys", "StreamingDecoder", "VideoBlock", "WanVAE", "stream_video",
]
