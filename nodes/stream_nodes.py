"""Causal Wan Stream Video (ClipWan): the causal sampler with the VAE *inside the loop*.

Each block is decoded as soon as it is final (the Wan 2.1 VAE's streaming decoder, on ComfyUI's loaded VAE
weights, or the tiny taew2_1 decoder), its frames go to the live player on the node and are appended to a
video file on disk. Memory stays flat for any length: neither the latent nor the frames of the whole video
are kept (IMAGE frames only when asked for). Stopping the run (Cancel) closes the file: a valid, shorter
video stays in the output folder and the node says so.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch

from . import comfy_bridge as bridge
from ..wan.sampling.endless import endless_settings
from ..wan.sampling.loop import block_layout
from ..wan.video.stream import stream_video
from ..wan.vae.taehv import FILE_PREFIXES, TAEHV
from ..wan.vae.wan21 import WanVAE
from ..wan.vae.wan22 import adopt_vae
from ..wan.video.writer import VideoWriter, check_fps
from ..wan.sampling import settings_spec as spec
from .score_nodes import SCORER_TYPE, StreamScores
from .timeline_nodes import end_run, record_timeline, run_timeline as live_timeline, schedule_label
from .timeline_control_nodes import attach_image_encoder, control_label
from .causal_run import FAMILY_ALIASES, UI_EVENT, causal_node_inputs, jpeg_base64, prepare_run

log = logging.getLogger("comfyui_clipwan")

FORMATS = spec.STREAM_FORMATS
DECODERS = spec.STREAM_DECODERS
VIDEO_UI_KEY = "clipwan_video"  # the executed message's saved file (web/clipwan_logic.js VIDEO_OUTPUT)


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


# Optional live CLIP scores (default off: nothing connected, every 0 frames), advanced so the node stays compact.
# the live-score sockets (their widgets, score_every_n_frames and score_prompts, are in settings_spec)
STREAM_SCORE_SOCKETS = {
    "score_clip": (SCORER_TYPE, {"tooltip": "Load CLIP for Scores (ClipWan): scores each decoded block (CLIP-T, "
                                            "CLIP-I, consistency), drawn live under the player and saved as "
                                            "CSV/JSON/PNG beside the video."}),
    "score_reference": ("IMAGE", {"tooltip": "Start / reference image for CLIP-I (default: the first frame)."}),
}


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
                      "endless video", "clipwan", *FAMILY_ALIASES, "vace"]
    OUTPUT_NODE = True
    FUNCTION = "stream"

    @classmethod
    def INPUT_TYPES(cls):
        return causal_node_inputs(spec.STREAM, {"vae": ("VAE", {
            "tooltip": "Wan 2.1 VAE (wan_2.1_vae.safetensors); its loaded weights are used as they are, not "
                       "copied."})}, STREAM_SCORE_SOCKETS)

    def stream(self, model, positive, latent, seed, vae, unique_id=None, score_clip=None, score_reference=None,
               actions=None, vace_control=None, restyle=None, timeline=None, **widgets):
        own = {s.name for s in spec.node_widgets(spec.STREAM)} - {s.name for s in spec.node_widgets(spec.SAMPLER)}
        options = {name: widgets.pop(name, spec.get(name).widget_default) for name in sorted(own)}
        spec.check_values(options)
        filename_prefix, format, fps = options["filename_prefix"], options["format"], options["fps"]
        decoder, return_frames = options["decoder"], options["return_frames"]
        until_stopped = options["until_stopped"]
        if until_stopped and return_frames:
            raise ValueError("return_frames holds every decoded frame, so with until_stopped memory would grow "
                             "without bound: turn one of them off (the video file holds every frame).")
        # optional live CLIP scores (off by default); their inputs are checked before any block is sampled
        scores = StreamScores.from_inputs(score_clip, options["score_every_n_frames"], options["score_prompts"],
                                          score_reference, options["score_budget_percent"])
        causal, inputs, settings, switches, _ = prepare_run(model, positive, latent, seed, unique_id=unique_id,
                                                            actions=actions, vace_control=vace_control,
                                                            restyle=restyle, timeline=timeline, **widgets)
        if until_stopped:
            settings, note = endless_settings(settings)  # refuses a run that cannot be endless, before any work
            if note:
                log.info("Causal Wan Stream Video: %s", note)
        if scores is not None and timeline is not None and not options["score_prompts"].strip():
            # CLIP-T follows the prompt timeline: each prompt from the first frame it conditions
            layout = block_layout(inputs.latent.shape[2], settings.frames_per_block, settings.independent_first_frame,
                                  settings.shorter_last_block)
            scores = StreamScores.from_inputs(score_clip, options["score_every_n_frames"],
                                              timeline.frame_prompts(layout), score_reference,
                                              options["score_budget_percent"])
        wan = wan_vae_of(vae)  # ComfyUI's loaded VAE adopted once, for the decoder and the encoder
        dec = stream_decoder(wan, decoder)
        check_fps(fps)
        # its encoder too (whichever decoder): Krea's loop re-encodes a decoded frame as a context frame
        encode = getattr(wan, "encode", None)
        # live prompts: POST /clipwan/live/...
        timeline = live_timeline(timeline, unique_id, fps, encode_priority=options["live_encode_priority"])
        attach_image_encoder(timeline, encode, inputs.from_raw, inputs.latent.shape)  # live images: .../image
        try:
            run = stream_video(causal, inputs.latent, inputs.text, decoder=dec, to_raw=inputs.to_raw,
                               from_raw=inputs.from_raw, encode=encode, seed=seed,
                               settings=settings, negative_text=inputs.negative_text, clip_fea=inputs.clip_fea,
                               concat=inputs.concat, first_frames=inputs.first_frames, prompt_switches=switches,
                               check_interrupt=bridge.check_interrupt, actions=actions, endless=until_stopped,
                               vace=list(inputs.vace), restyle=inputs.restyle, timeline=timeline)
        except BaseException:
            end_run(timeline, unique_id)  # refused inputs: no live route left behind
            raise
        # names reserved only once every input is valid (nothing left behind by a refused run)
        batch, _, _, h, w = inputs.latent.shape
        files = [bridge.video_save_path(filename_prefix if batch == 1 else f"{filename_prefix}_b{i}",
                                        FORMATS[format], 8 * w, 8 * h) for i in range(batch)]
        writers = [VideoWriter(path, fps=fps, fmt=FORMATS[format], reserved=True, fragmented=until_stopped)
                   for path, _, _ in files]
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
                extra = dict(scores.update(block) or {}) if scores is not None else {}
                prompt = "; ".join(filter(None, (schedule_label(run.loop.schedule), control_label(run.loop))))
                if prompt:
                    extra["prompt"] = prompt
                self._show(unique_id, block, progress, player, extra)
                if timeline is not None and timeline.live is not None and block.block_done:
                    timeline.live.mark_block_done(block.index)
        except BaseException:
            record_timeline(timeline, run.loop.layout[:run.blocks_done], writers)  # the blocks made (endless: no end)
            end_run(timeline, unique_id)
            saved = [w.close() for w in writers]
            if scores is not None and saved[0] and scores.scorer.rows:
                try:  # the scores of the frames in the shorter file; never hide the reason the run stopped
                    scores.save(saved[0])
                except Exception as exc:  # noqa: BLE001
                    log.warning("Causal Wan Stream Video: the CLIP scores were not saved: %s", exc)
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
        record_timeline(timeline, run.loop.layout[:run.blocks_done], writers)
        end_run(timeline, unique_id)
        paths = [w.close() for w in writers]
        saved_scores = scores.save(paths[0]) if scores is not None else None
        bridge.progress_text(f"Saved {writers[0].frames_written} frames to {files[0][1]}"
                             + (f"; CLIP scores to {os.path.basename(saved_scores['csv'])}." if saved_scores else "."),
                             unique_id)
        images = torch.cat(kept, dim=1).flatten(0, 1) if return_frames else last  # IMAGE [B*F, H, W, 3]
        # one player: the saved file goes to the node's frame player (web/clipwan.js plays it where the live frames
        # were) under a key of the pack's own; ComfyUI's "images" + "animated" would add its video player under it
        ui = {VIDEO_UI_KEY: [{"filename": f, "subfolder": sub, "type": "output"} for _, f, sub in files]}
        return {"ui": ui, "result": (bridge.video_output(paths[0]), images.to(bridge.intermediate_device()),
                                     paths[0])}

    @staticmethod
    def _show(unique_id, piece, progress, player: bool, extra: Optional[dict] = None) -> None:
        """The piece's decoded frames (with its CLIP scores and the prompt playing, when there are) to the live
        player; the progress bar counts finished blocks (with the last frame as its picture only where no live
        player shows the frames)."""
        from PIL import Image

        frames = (piece.frames[0] * 255).round().to(torch.uint8).numpy()
        images = [Image.fromarray(f) for f in frames]
        if player:
            payload = {"node": unique_id, "block": piece.index, "total_blocks": piece.total,
                       "frame_start": int(piece.frame_start), "decoded": True,
                       "frames": [jpeg_base64(im) for im in images]}
            payload.update(extra or {})
            bridge.send_ui_event(UI_EVENT, payload)
        if piece.block_done:  # an endless run (total 0) keeps its bar full: there is no last block
            progress.update_absolute(piece.index + 1 if piece.total else progress.total, None if player else images[-1])


NODE_CLASS_MAPPINGS = {"CausalWanStreamVideo": CausalWanStreamVideo}
NODE_DISPLAY_NAME_MAPPINGS = {"CausalWanStreamVideo": "Causal Wan Stream Video (ClipWan)"}
