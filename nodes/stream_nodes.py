"""Causal Wan Stream Video (ClipWan): the causal sampler with the VAE *inside the loop*.

Each block is decoded as soon as it is final (the Wan 2.1 VAE's streaming decoder, on ComfyUI's loaded VAE
weights, or the tiny taew2_1 decoder), its frames go to the live player on the node and are appended to a
video file on disk. Memory stays flat for any length: neither the latent nor the frames of the whole video
are kept (IMAGE frames only when asked for). Stopping the run (Cancel) closes the file: a valid, shorter
video stays in the output folder and the node says so.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from . import comfy_bridge as bridge
from ..wan.video.stream import stream_video
from ..wan.vae.taehv import FILE_PREFIXES, TAEHV
from ..wan.vae.wan21 import WanVAE
from ..wan.vae.wan22 import adopt_vae
from ..wan.video.writer import VideoWriter
from .timeline_nodes import end_run, record_timeline, run_timeline as live_timeline, schedule_label
from .wan_nodes import UI_EVENT, CausalWanSampler, _jpeg_base64, prepare_run

log = logging.getLogger("comfyui_clipwan")

FORMATS = {"mp4 (H.264)": "mp4", "webm (VP9)": "webm"}
DECODERS = ("wan vae", "tiny (taew2_1)")


def stream_decoder(vae, decoder: str = DECODERS[0]):
    """A streaming decoder: the Wan VAE (2.1 or 2.2: ComfyUI's loaded weights adopted, or our ``WanVAE``) or
    the tiny TAEHV decoder for Wan 2.1 from ``models/vae_approx``."""
    if decoder == DECODERS[1]:
        path = bridge.tiny_decoder_file(FILE_PREFIXES)
        if path is None:
            raise FileNotFoundError("decoder 'tiny (taew2_1)' needs taew2_1.safetensors (or .pth) from "
                                    "madebyollin/taehv in models/vae_approx; put it there, or choose 'wan vae'.")
        return TAEHV.from_file(path, device=bridge.torch_device()).stream_decoder()
    return wan_vae_of(vae).stream_decoder()


def wan_vae_of(vae):
    """The ``VAE`` socket as our ``WanVAE`` (ComfyUI's loaded weights adopted, not copied)."""
    if isinstance(vae, (WanVAE, TAEHV)):
        return vae
    if vae is None or not hasattr(vae, "first_stage_model"):
        raise ValueError(f"vae ({type(vae).__name__}) is not a VAE: connect Load VAE with wan_2.1_vae.safetensors.")
    module, device, dtype = bridge.vae_module(vae)
    return adopt_vae(module, device=device, dtype=dtype)


class CausalWanStreamVideo:
    DESCRIPTION = ("Causal Wan sampling that decodes each block as soon as it is final and appends its frames "
                   "to a video file (MP4 H.264 or WebM VP9) while the next block is sampled: decoded frames in the "
                   "live player during the run, flat memory for any length, and a valid shorter file if you "
                   "cancel. Same inputs as Causal Wan Sampler, plus the Wan 2.1 VAE.")
    CATEGORY = "ClipWan/sampling"
    RETURN_TYPES = ("VIDEO", "IMAGE", "STRING")
    RETURN_NAMES = ("video", "frames", "path")
    OUTPUT_TOOLTIPS = ("The saved video file (for Save Video / Preview Video).",
                       "All decoded frames when return_frames is on; otherwise only the last frame "
                       "(the whole video is not held in memory).",
                       "Full path of the saved video file.")
    SEARCH_ALIASES = ["stream video", "streaming decode", "causal video", "self forcing video", "longlive video",
                      "endless video", "clipwan"]
    OUTPUT_NODE = True
    FUNCTION = "stream"

    @classmethod
    def INPUT_TYPES(cls):
        base = CausalWanSampler.INPUT_TYPES()
        required = dict(base["required"])
        required["vae"] = ("VAE", {"tooltip": "Wan 2.1 VAE (wan_2.1_vae.safetensors); its loaded weights are "
                                              "used as they are, not copied."})
        required["filename_prefix"] = ("STRING", {"default": "ClipWan/causal",
                                                  "tooltip": "Output file name prefix (subfolders allowed)."})
        required["format"] = (list(FORMATS), {"default": "mp4 (H.264)", "tooltip": "Video file format."})
        required["fps"] = ("INT", {"default": 16, "min": 1, "max": 120, "tooltip": "Frames per second (Wan: 16)."})
        required["decoder"] = (list(DECODERS), {
            "default": DECODERS[0], "tooltip": "wan vae: the exact decode. tiny (taew2_1): the TAEHV approximation "
                                               "from models/vae_approx, much faster."})
        required["return_frames"] = ("BOOLEAN", {
            "default": False, "tooltip": "Also output every decoded frame as IMAGE (memory grows with length)."})
        return {"required": required, "optional": dict(base.get("optional", {})), "hidden": dict(base["hidden"])}

    def stream(self, model, positive, latent, seed, vae, filename_prefix="ClipWan/causal", format="mp4 (H.264)",
               fps=16, decoder=DECODERS[0], return_frames=False, unique_id=None, **sampler):
        if format not in FORMATS:
            raise ValueError(f"format '{format}' is not one of {list(FORMATS)}.")
        causal, inputs, settings, switches, _ = prepare_run(model, positive, latent, seed, unique_id=unique_id,
                                                            **sampler)
        wan = wan_vae_of(vae)  # ComfyUI's loaded VAE adopted once, for the decoder and the encoder
        dec = stream_decoder(wan, decoder)
        batch, _, _, h, w = inputs.latent.shape
        files = [bridge.video_save_path(filename_prefix if batch == 1 else f"{filename_prefix}_b{i}",
                                        FORMATS[format], 8 * w, 8 * h) for i in range(batch)]
        writers = [VideoWriter(path, fps=fps, fmt=FORMATS[format]) for path, _, _ in files]
        # its encoder too (whichever decoder): Krea's loop re-encodes a decoded frame as a context frame
        encode = getattr(wan, "encode", None)
        timeline = live_timeline(sampler.get("timeline"), unique_id, fps)  # live prompts: POST /clipwan/live/...
        try:
            run = stream_video(causal, inputs.latent, inputs.text, decoder=dec, to_raw=inputs.to_raw,
                               from_raw=inputs.from_raw, encode=encode, seed=seed,
                               settings=settings, negative_text=inputs.negative_text, clip_fea=inputs.clip_fea,
                               concat=inputs.concat, first_frames=inputs.first_frames, prompt_switches=switches,
                               check_interrupt=bridge.check_interrupt, timeline=timeline)
        except BaseException:
            end_run(timeline, unique_id)  # refused inputs: no live route left behind
            raise
        progress = bridge.Progress(len(run), node_id=unique_id)
        player = bridge.prompt_server() is not None
        kept, last = [], None
        try:
            for block in run:
                for writer, frames in zip(writers, block.frames):
                    writer.write(frames)
                last = block.frames[:, -1]
                if return_frames:
                    kept.append(block.frames)
                self._show(unique_id, block, progress, player, schedule_label(run.loop.schedule))
                if timeline is not None and timeline.live is not None and block.block_done:
                    timeline.live.mark_block_done(block.index)
        except BaseException:
            record_timeline(timeline, run.loop.layout, writers)
            end_run(timeline, unique_id)
            saved = [w.close() for w in writers]
            done = writers[0].frames_written
            if saved[0]:
                message = (f"Stopped after {done} frames: the shorter video was saved to {files[0][1]} "
                           f"(valid, playable).")
            else:
                message = "Stopped before the first block: no video was written."
            log.warning("Causal Wan Stream Video: %s", message)
            bridge.progress_text(message, unique_id)
            bridge.send_ui_event(UI_EVENT, {"node": unique_id, "status": message, "frames": []})
            raise
        record_timeline(timeline, run.loop.layout, writers)
        end_run(timeline, unique_id)
        paths = [w.close() for w in writers]
        bridge.progress_text(f"Saved {writers[0].frames_written} frames to {files[0][1]}.", unique_id)
        images = torch.cat(kept, dim=1).flatten(0, 1) if return_frames else last  # IMAGE [B*F, H, W, 3]
        ui = {"images": [{"filename": f, "subfolder": sub, "type": "output"} for _, f, sub in files],
              "animated": (True,)}
        return {"ui": ui, "result": (bridge.video_output(paths[0]), images.to(bridge.intermediate_device()),
                                     paths[0])}

    @staticmethod
    def _show(unique_id, piece, progress, player: bool, prompt: Optional[str] = None) -> None:
        """The piece's decoded frames to the live player; the progress bar counts finished blocks (with the
        last frame as its picture only where no live player shows the frames)."""
        from PIL import Image

        frames = (piece.frames[0] * 255).round().to(torch.uint8).numpy()
        images = [Image.fromarray(f) for f in frames]
        if player:
            payload = {"node": unique_id, "block": piece.index, "total_blocks": piece.total,
                       "frame_start": int(piece.frame_start), "decoded": True,
                       "frames": [_jpeg_base64(im) for im in images]}
            if prompt:
                payload["prompt"] = prompt
            bridge.send_ui_event(UI_EVENT, payload)
        if piece.block_done:
            progress.update_absolute(piece.index + 1, None if player else images[-1])


NODE_CLASS_MAPPINGS = {"CausalWanStreamVideo": CausalWanStreamVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"CausalWanStreamVideo": "Causal Wan Stream Video (ClipWan)"}
