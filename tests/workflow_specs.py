"""Graph descriptions of the example workflows (``python tests/workflow_format.py`` writes the JSON files).

Each workflow: ``title`` (the template card's title, drawn on its thumbnail and stored as ``extra.info.title``),
``card`` (what the thumbnail draws: tests/workflow_cards.py), ``note``, ``models``, ``description``, ``nodes``.
Each node: ``(key, class_type, {input: value | Link(node_key, output)}, title)``. Widgets not named take the
node's declared default, so the files follow the nodes' defaults when regenerated. File names are the
ones users download (see docs/comfyui.md, "Models").
"""

from workflow_format import Link

from comfyui_clipwan.wan.sampling.presets import get_preset

CLIP_H = "clip_vision_h.safetensors"
UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN_VAE = "wan_2.1_vae.safetensors"
WAN_I2V = "wan2.1_i2v_480p_14B_fp16.safetensors"
POSITIVE = "a red fox trotting through fresh snow, soft morning light, the camera follows it"
NEGATIVE = "blurry, static, distorted, low quality"
# CPU-friendly sizes (21 frames = 6 latent frames = 2 blocks of 3); the notes give the GPU sizes.
VIDEO = {"width": 320, "height": 192, "length": 21}
LONGLIVE = get_preset("LongLive 1.0")
KREA = get_preset("Krea Realtime 14B")
SELF_FORCING = get_preset("Self-Forcing")
MATRIX_GAME = get_preset("Matrix-Game 2.0")
LONGLIVE_HF = "https://huggingface.co/Efficient-Large-Model/LongLive-1.3B/resolve/main/models"
REPACKAGED = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
# Wan 2.1's own CLIP (vision + XLM-RoBERTa text tower), as Wan-AI publishes it: the live CLIP scores' model
WAN_CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
# File -> (download URL, ComfyUI model folder): the loaders' properties.models, as core templates carry them.
MODELS = {
    CLIP_H: (f"{REPACKAGED}/clip_vision/{CLIP_H}", "clip_vision"),
    UMT5: (f"{REPACKAGED}/text_encoders/{UMT5}", "text_encoders"),
    WAN_VAE: (f"{REPACKAGED}/vae/{WAN_VAE}", "vae"),
    WAN_I2V: (f"{REPACKAGED}/diffusion_models/{WAN_I2V}", "diffusion_models"),
}
# the causal families' files: names and URLs from the presets table (identifying names, e.g. longlive_lora.pt
# for LongLive's lora.pt; the loaders also find a file under its authors' name)
MODELS.update({  # LongLive 1.0 as its authors publish it
    LONGLIVE.model_file: (LONGLIVE.download_url(0), "diffusion_models"),
    LONGLIVE.lora_file: (LONGLIVE.download_url(1), "loras"),
})
# a Wan 2.1 T2V 1.3B LoRA with a public download (Kijai's extraction of CausVid for the bidirectional 1.3B), the file
# the live-image template's LoRA strength dial turns; any LoRA trained on Wan 2.1 T2V 1.3B takes its place
CAUSVID_LORA = "Wan21_CausVid_bidirect2_T2V_1_3B_lora_rank32.safetensors"
MODELS[CAUSVID_LORA] = ("https://huggingface.co/Kijai/WanVideo_comfy/resolve/main/" + CAUSVID_LORA, "loras")
MODELS[WAN_CLIP] = ("https://huggingface.co/Wan-AI/Wan2.1-I2V-14B-480P/resolve/main/" + WAN_CLIP, "clip_vision")
MODELS[KREA.model_file] = (KREA.download_url(0), "diffusion_models")
for _preset in (SELF_FORCING, MATRIX_GAME):
    MODELS[_preset.model_file] = (_preset.download_url(0), "diffusion_models")
SIZES_NOTE = ("**Sizes.** Set for a CPU: 320×192, 21 frames (2 blocks). On a GPU use Wan's 480p: "
              "832×480, 81 frames (21 latent frames = 7 blocks of 3), or 1280×720 with the 720p checkpoints. "
              "A length that is not whole blocks runs with a shorter last block; the sampler says so and names "
              "the lengths that fit.")
CAUSAL_NOTE = ("## {title} (experimental)\n\n{what}\n\n**Experimental, and why.** The file named here is Wan 2.1 "
               "I2V 14B (Comfy-Org repackaged; the Missing Models panel downloads it): it takes the CLIP features "
               "and the start image's latent, but it is a bidirectional model trained for 40-50 steps over the "
               "whole clip, neither causal nor few-step distilled. Run block by block with 4 steps it gives "
               "blurry, smeared frames whose motion breaks at block edges, not usable video; it is here to show "
               "the CLIP route into the causal loop. For real video use the templates *Image to video with "
               "Self-Forcing* (start image as first frame) or *Matrix-Game 2.0* (CLIP features, distilled "
               "causal). **Checkpoints.** Any Wan 2.1 DiT; pick a family in the sampler's `family` combo (or "
               "right-click the sampler → ClipWan presets) to fill the authors' settings. **Time.** 14B in bf16 "
               "needs about 28 GB of GPU memory; 81 frames at 832×480 take minutes on an H100 "
               "(not measured here).\n\n" + SIZES_NOTE)
SELF_FORCING_NOTE = (
    "## Image to video with Self-Forcing (few-step, block-causal)\n\nThe start image's Wan VAE latent is the "
    "first latent frame (its own block, written into the KV cache); Self-Forcing generates the rest in blocks of "
    "3 latent frames with 4 warped steps each, following the prompt, and the frames appear on the sampler as "
    "each block finishes. Self-Forcing is distilled from Wan 2.1 T2V 1.3B and has no image embedding, so no "
    "CLIP vision here (the CLIP-feature template is *Matrix-Game 2.0*).\n\n**Checkpoints.** "
    f"`{SELF_FORCING.model_file}` (gdhe17/Self-Forcing, {SELF_FORCING.license}; Load Causal Wan Model reads its "
    "`generator_ema` entry) in models/diffusion_models, `wan_2.1_vae.safetensors` and the umt5 text encoder; the "
    "Missing Models panel downloads all three.\n\n**Result.** A coherent clip that starts exactly on your image "
    "and moves as the prompt says (Self-Forcing's quality at 832×480; long clips drift slowly).\n\n**Time.** The "
    "authors report about 17 FPS on one H100 at 832×480 (81 frames in about 5 s of sampling plus the decode; "
    "published number, not measured here). **Sizes.** Set for a CPU: 320×192, 25 frames (the image + 2 blocks). "
    f"On a GPU use 832×480 and {SELF_FORCING.recommended_length} frames (the preset's length, whole blocks).")
MATRIX_GAME_NOTE = (
    "## Matrix-Game 2.0: image to world, with keyboard and mouse actions\n\nThe start image's CLIP ViT-H "
    "features are the model's whole cross-attention context (no text) and its VAE latent is concatenated to "
    "every block; Matrix-Game 2.0 (distilled with Self-Forcing from SkyReels-V2-I2V-1.3B) then generates the "
    "world block by block, 3 warped steps per block of 3 latent frames, attending the last 6, steered by the "
    "keys and mouse of **Matrix-Game Actions** (`0-24: W` = walk forward for pixel frames 0..24; W S A D, camera "
    "I K J L, `mouse(pitch, yaw)`, `block N: ...`; docs/wan.md has the keys of each mode). Each block is decoded "
    "as soon as it is final, shown on the node and appended to an MP4.\n\n**Checkpoints.** "
    f"`{MATRIX_GAME.model_file}` (Skywork/Matrix-Game-2.0, {MATRIX_GAME.license}, universal scenes) in "
    "models/diffusion_models; for driving or Temple Run load `gta_keyboard2dim.safetensors` / "
    "`templerun_7dim_onlykey.safetensors` from the same repo (saved as "
    f"`{get_preset('Matrix-Game 2.0 GTA drive').model_file}` / `{get_preset('Matrix-Game 2.0 Temple Run').model_file}`; "
    "the authors' names work too) and pick *Matrix-Game 2.0 GTA drive* / *Temple Run* "
    "in the family combo (the action mode is read from the weights). `clip_vision_h.safetensors` and "
    "`wan_2.1_vae.safetensors` are the CLIP and VAE Matrix-Game ships (repackaged); the Missing Models panel "
    "downloads the three.\n\n**Result.** A first-person walk through a world that starts as your image and "
    "turns and moves as the actions say (the authors' demo quality at 352×640; looking up may glitch briefly, "
    "as their README warns).\n\n**Time.** The authors report 25 FPS on one H100 with their compiled VAE; with "
    "the Wan VAE decode here expect a few seconds per 12 frames (not measured here). **Sizes.** Set for a CPU: "
    "320×176, 21 frames (2 blocks). On a GPU use the model's 640×352 and any 1 + 12k frames "
    f"({MATRIX_GAME.recommended_length} = the authors' config, 597 = their inference.py default).")

# Wan 2.2 TI2V-5B / LongLive 2.0 (causal i2v on Wan 2.2): its VAE from Comfy-Org's Wan 2.2 repackage, the
# distilled DiT from LongLive 2.0's release (loaded as is: {"generator": {"model.<Wan key>": ...}})
WAN22_VAE = "wan2.2_vae.safetensors"
LONGLIVE2_PRESET = get_preset("LongLive 2.0")
LONGLIVE2 = LONGLIVE2_PRESET.model_file  # longlive2_model_bf16.pt (published as model_bf16.pt)
WAN22_REPACKAGED = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
MODELS.update({
    WAN22_VAE: (f"{WAN22_REPACKAGED}/vae/{WAN22_VAE}", "vae"),
    LONGLIVE2: (LONGLIVE2_PRESET.download_url(0), "diffusion_models"),
})
LONGLIVE2_NOTE = (
    "## Image to video with LongLive 2.0 (Wan 2.2 TI2V-5B), block-causal\n\nCore **Wan22ImageToVideoLatent** "
    "encodes the start image with the Wan 2.2 VAE into the first latent frame; the ClipWan sampler runs "
    "LongLive 2.0's own loop on it (a Wan 2.2 model switches it on): blocks of 8 latent frames from frame 0, "
    "the image clamped as the clean first frame at timestep 0, 4 UniPC steps per block at shift 5, attention "
    "sink 8 + window 32 (flat memory however long). `steps` is a step count here (4).\n\n**Checkpoints.** "
    f"LongLive 2.0's `model_bf16.pt` (Efficient-Large-Model/LongLive-2.0-5B, Apache-2.0), saved as `{LONGLIVE2}` in "
    "models/diffusion_models (the loader also finds it as `model_bf16.pt`), `wan2.2_vae.safetensors` in models/vae, the umt5 text encoder; the Missing Models "
    "panel downloads all three. No CLIP vision: TI2V takes the image as its first latent frame.\n\n**Sizes.** "
    "Set small: 320×192, 61 frames (16 latent frames = 2 blocks). LongLive 2.0 runs 1280×704 (latent 80×44); "
    "lengths 4·(8k−1)+1: 29, 61, 125, 253 … The 5B model needs a GPU (about 11 GB of weights in bf16).")


# Wan2.1-VACE: Comfy-Org's repackaged 1.3B VACE checkpoint (core loads it as its VaceWanModel) and the VACE module file
# Daydream Scope puts beside LongLive / Self-Forcing (daydreamlive/WanVideo_comfy, Kijai's layout)
WAN_VACE = "wan2.1_vace_1.3B_fp16.safetensors"
VACE_MODULE = "Wan2_1-VACE_module_1_3B_bf16.safetensors"
MODELS.update({
    WAN_VACE: (f"{REPACKAGED}/diffusion_models/{WAN_VACE}", "diffusion_models"),
    VACE_MODULE: (f"https://huggingface.co/daydreamlive/WanVideo_comfy/resolve/main/{VACE_MODULE}",
                  "diffusion_models"),
})
VACE_NOTE = ("**Checkpoints.** `{model}` in models/diffusion_models, the Wan 2.1 VAE and the umt5 text encoder; the "
             "Missing Models panel downloads them. VACE runs causally as Daydream Scope runs it: the reference image "
             "stays in the conditioning (never in the denoised latent), each block's hints come from that block's "
             "control frames, the pass that writes the KV cache runs without hints.\n\n" + SIZES_NOTE)


def _text_nodes():
    return [
        ("text_encoder", "CLIPLoader", {"clip_name": UMT5, "type": "wan"}),
        ("positive", "CLIPTextEncode", {"text": POSITIVE, "clip": Link("text_encoder")}, "Positive prompt"),
        ("negative", "CLIPTextEncode", {"text": NEGATIVE, "clip": Link("text_encoder")}, "Negative prompt"),
        ("vae", "VAELoader", {"vae_name": WAN_VAE}),
    ]


def _sample_and_save(model_key: str, cond_key: str, prefix: str, sampler_values=None):
    return [
        ("sampler", "CausalWanSampler", {"model": Link(model_key), "positive": Link(cond_key, 0),
                                         "negative": Link(cond_key, 1), "latent": Link(cond_key, 2),
                                         **(sampler_values or {})}),
        ("decode", "VAEDecode", {"samples": Link("sampler"), "vae": Link("vae")}),
        ("save", "SaveAnimatedWEBP", {"images": Link("decode"), "filename_prefix": prefix, "fps": 16.0,
                                      "lossless": False, "quality": 85}),
    ]


WORKFLOWS = {
    "clipwan_i2v_causal": {
        "title": 'Image to video, block-causal (Self-Forcing)',
        "card": {'kind': 'video', 'caption': 'start image to video with Self-Forcing, block by block'},
        "note": SELF_FORCING_NOTE,
        "models": MODELS,
        "description": "Image-to-video with Self-Forcing, few-step and block-causal: the start image is the "
                       "first latent frame, blocks of 3 latent frames follow with 4 steps each and stream onto "
                       "the sampler node as they finish.",
        "nodes": [
            ("image", "LoadImage", {"image": "example.png"}, "Start image"),
            *_text_nodes(),
            ("conditioning", "WanI2VConditioning", {"positive": Link("positive"), "negative": Link("negative"),
                                                    "vae": Link("vae"), "start_image": Link("image"),
                                                    **VIDEO, "length": 25}),
            ("model", "LoadCausalWanModel", {"model_name": SELF_FORCING.model_file}),
            *_sample_and_save("model", "conditioning", "clipwan/i2v_self_forcing", SELF_FORCING.sampler_values()),
        ],
    },
    "clipwan_matrix_game_stream": {
        "title": 'Matrix-Game 2.0: image to world, driven by keys',
        "card": {'kind': 'stream', 'caption': 'CLIP features + keyboard/mouse actions, streamed block by block'},
        "note": MATRIX_GAME_NOTE,
        "models": MODELS,
        "description": "Matrix-Game 2.0 image-to-world: the start image's CLIP features and VAE latent, keyboard "
                       "and mouse actions typed as a timeline, the world generated block by block (3 steps, "
                       "window 6), decoded per block and appended to an MP4.",
        "nodes": [
            ("image", "LoadImage", {"image": "example.png"}, "Start image"),
            ("clip_vision", "LoadCLIPVisionH14", {"clip_name": CLIP_H}),
            ("clip_encode", "CLIPVisionEncodeWan", {"clip_vision": Link("clip_vision"), "image": Link("image"),
                                                    "crop": "none"}),
            ("vae", "VAELoader", {"vae_name": WAN_VAE}),
            ("conditioning", "MatrixGameConditioning", {"vae": Link("vae"), "clip_vision_output": Link("clip_encode"),
                                                        "start_image": Link("image"), "width": 320, "height": 176,
                                                        "length": 21}),
            ("actions", "MatrixGameActions", {}),
            ("model", "LoadCausalWanModel", {"model_name": MATRIX_GAME.model_file}),
            ("stream", "CausalWanStreamVideo", {"model": Link("model"), "positive": Link("conditioning", 0),
                                                "latent": Link("conditioning", 1), "vae": Link("vae"),
                                                "actions": Link("actions"),
                                                "filename_prefix": "clipwan/matrix_game", "fps": 25,
                                                **MATRIX_GAME.sampler_values()}),
        ],
    },
    "clipwan_i2v_causal_stream": {
        "title": 'Image to video, streamed to an MP4',
        "card": {'kind': 'stream', 'caption': 'each block decoded, played and appended to the file as it ends'},
        "note": CAUSAL_NOTE.format(title="Image to video, block-causal, streamed to a video file",
                                   what="Causal Wan Stream Video decodes each block with the Wan VAE as soon as "
                                        "it is final: the decoded frames play on the node while the next block "
                                        "is sampled and are appended to an MP4 in the output folder (Cancel "
                                        "leaves a valid, shorter file). Memory stays flat for any length."),
        "models": MODELS,
        "description": "Image-to-video, block-causal, with the VAE inside the loop: every block is decoded when "
                       "it is final, shown on the node and appended to an H.264 MP4 (or VP9 WebM); the VIDEO "
                       "output goes to core Save Video / Preview Video.",
        "nodes": [
            ("image", "LoadImage", {"image": "example.png"}, "Start image"),
            ("clip_vision", "LoadCLIPVisionH14", {"clip_name": CLIP_H}),
            ("clip_encode", "CLIPVisionEncodeWan", {"clip_vision": Link("clip_vision"), "image": Link("image")}),
            *_text_nodes(),
            ("conditioning", "WanI2VConditioning", {"positive": Link("positive"), "negative": Link("negative"),
                                                    "vae": Link("vae"), "start_image": Link("image"),
                                                    "clip_vision_output": Link("clip_encode"), **VIDEO}),
            ("model", "LoadCausalWanModel", {"model_name": WAN_I2V}),
            ("stream", "CausalWanStreamVideo", {"model": Link("model"), "positive": Link("conditioning", 0),
                                                "negative": Link("conditioning", 1),
                                                "latent": Link("conditioning", 2), "vae": Link("vae"),
                                                "filename_prefix": "clipwan/i2v_causal_stream"}),
        ],
    },
    "clipwan_stream_clip_scores": {
        "title": 'Streamed video with live CLIP scores',
        "card": {'kind': 'stream', 'caption': 'CLIP-T / CLIP-I / consistency charted as blocks are decoded'},
        "note": CAUSAL_NOTE.format(
            title="Streamed image to video with live CLIP scores",
            what="Causal Wan Stream Video scores every 4th decoded frame or fewer (score_budget_percent 10: the "
                 "stride widens so scoring takes at most 10 % of the stream's time) with Wan's own CLIP (both towers of "
                 "`" + WAN_CLIP + "`): CLIP-T against the prompt timeline in `score_prompts`, CLIP-I against "
                 "the start image, frame-to-frame consistency. The chart grows under the frame player while the "
                 "video is made (prompt switches marked) and the CSV/JSON/PNG are saved beside the video. Score "
                 "Video with CLIP scores the finished video again (every frame) and shows its chart. The XLM-R "
                 "text tower needs xlm-roberta-large's tokenizer: put Wan's `xlm-roberta-large/` folder (from "
                 "the same Wan 2.1 repository) beside the .pth in models/clip_vision."),
        "models": MODELS,
        "description": "Image-to-video streamed to a file with live CLIP-T / CLIP-I / consistency scores per "
                       "block (Wan's XLM-RoBERTa CLIP), and a scored chart of the finished video.",
        "nodes": [
            ("image", "LoadImage", {"image": "example.png"}, "Start image"),
            ("clip_vision", "LoadCLIPVisionH14", {"clip_name": CLIP_H}),
            ("clip_encode", "CLIPVisionEncodeWan", {"clip_vision": Link("clip_vision"), "image": Link("image")}),
            *_text_nodes(),
            ("conditioning", "WanI2VConditioning", {"positive": Link("positive"), "negative": Link("negative"),
                                                    "vae": Link("vae"), "start_image": Link("image"),
                                                    "clip_vision_output": Link("clip_encode"), **VIDEO}),
            ("model", "LoadCausalWanModel", {"model_name": WAN_I2V}),
            ("scorer", "LoadCLIPScorer", {"clip_name": WAN_CLIP}),
            ("stream", "CausalWanStreamVideo", {"model": Link("model"), "positive": Link("conditioning", 0),
                                                "negative": Link("conditioning", 1),
                                                "latent": Link("conditioning", 2), "vae": Link("vae"),
                                                "filename_prefix": "clipwan/stream_scored",
                                                "score_clip": Link("scorer"), "score_every_n_frames": 4,
                                                "score_budget_percent": 10.0,
                                                "score_prompts": "0: " + POSITIVE,
                                                "score_reference": Link("image")}),
            ("score", "ScoreVideoCLIP", {"clip_scorer": Link("scorer"), "video": Link("stream", 0),
                                         "prompts": "0: " + POSITIVE, "reference": Link("image"),
                                         "filename_prefix": "clipwan/stream_scored"}),
        ],
    },
    "clipwan_i2v_causal_core_nodes": {
        "title": 'Image to video, block-causal, from core nodes',
        "card": {'kind': 'video', 'caption': 'core CLIP vision, WanImageToVideo, UNETLoader feed it'},
        "note": CAUSAL_NOTE.format(title="Image to video, block-causal, from core nodes",
                                   what="ComfyUI's own Load CLIP Vision, CLIP Vision Encode, WanImageToVideo "
                                        "and Load Diffusion Model feed the ClipWan causal sampler."),
        "models": MODELS,
        "description": "The same job with ComfyUI core nodes feeding the pack's sampler: CLIPVisionLoader + "
                       "CLIPVisionEncode, WanImageToVideo and UNETLoader's MODEL go straight into "
                       "CausalWanSampler.",
        "nodes": [
            ("image", "LoadImage", {"image": "example.png"}, "Start image"),
            ("clip_vision", "CLIPVisionLoader", {"clip_name": CLIP_H}),
            ("clip_encode", "CLIPVisionEncode", {"clip_vision": Link("clip_vision"), "image": Link("image"),
                                                 "crop": "none"}),
            *_text_nodes(),
            ("conditioning", "WanImageToVideo", {"positive": Link("positive"), "negative": Link("negative"),
                                                 "vae": Link("vae"), "start_image": Link("image"),
                                                 "clip_vision_output": Link("clip_encode"), **VIDEO}),
            ("model", "UNETLoader", {"unet_name": WAN_I2V}),
            *_sample_and_save("model", "conditioning", "clipwan/i2v_causal_core"),
        ],
    },
    "clipwan_i2v_causal_custom_sampler": {
        "title": 'Causal Wan loop in SamplerCustomAdvanced',
        "card": {'kind': 'custom', 'caption': 'core noise, guider and sigmas nodes drive the causal loop'},
        "note": CAUSAL_NOTE.format(title="Image to video, block-causal, through core's SamplerCustomAdvanced",
                                   what="The causal loop as a SAMPLER: core's RandomNoise gives the initial noise "
                                        "and the seed, BasicGuider the model and conditioning (CFGGuider for "
                                        "cfg > 1), and the SIGMAS of ModelSamplingSD3 (shift 5) + BasicScheduler "
                                        "(simple, 4 steps) are every block's steps: 1, 0.9375, 0.8333, 0.625 — "
                                        "Self-Forcing's warped 1000,750,500,250, so the video is the one Causal "
                                        "Wan Sampler makes with the same seed. Any SIGMAS node (ManualSigmas, "
                                        "another scheduler or step count) drives the loop the same way."),
        "models": MODELS,
        "description": "Image-to-video, block-causal, composed from core's custom-sampling nodes: RandomNoise, "
                       "BasicGuider and BasicScheduler's sigmas drive the pack's causal loop (Causal Wan Loop "
                       "Sampler) inside SamplerCustomAdvanced, as core's SamplerARVideo is driven.",
        "nodes": [
            ("image", "LoadImage", {"image": "example.png"}, "Start image"),
            ("clip_vision", "CLIPVisionLoader", {"clip_name": CLIP_H}),
            ("clip_encode", "CLIPVisionEncode", {"clip_vision": Link("clip_vision"), "image": Link("image"),
                                                 "crop": "none"}),
            *_text_nodes(),
            ("conditioning", "WanImageToVideo", {"positive": Link("positive"), "negative": Link("negative"),
                                                 "vae": Link("vae"), "start_image": Link("image"),
                                                 "clip_vision_output": Link("clip_encode"), **VIDEO}),
            ("model", "UNETLoader", {"unet_name": WAN_I2V}),
            ("shift", "ModelSamplingSD3", {"model": Link("model"), "shift": 5.0}),
            ("noise", "RandomNoise", {"noise_seed": 0}),
            ("guider", "BasicGuider", {"model": Link("shift"), "conditioning": Link("conditioning", 0)}),
            ("sigmas", "BasicScheduler", {"model": Link("shift"), "scheduler": "simple", "steps": 4,
                                          "denoise": 1.0}),
            ("loop", "CausalWanLoopSampler", {}),
            ("sample", "SamplerCustomAdvanced", {"noise": Link("noise"), "guider": Link("guider"),
                                                 "sampler": Link("loop"), "sigmas": Link("sigmas"),
                                                 "latent_image": Link("conditioning", 2)}),
            ("decode", "VAEDecode", {"samples": Link("sample", 0), "vae": Link("vae")}),
            ("save", "SaveAnimatedWEBP", {"images": Link("decode"), "filename_prefix": "clipwan/i2v_custom_sampler",
                                          "fps": 16.0, "lossless": False, "quality": 85}),
        ],
    },
    "clipwan_i2v_causal_mixed": {
        "title": 'Image to video, block-causal, pack + core nodes',
        "card": {'kind': 'video', 'caption': "the pack's CLIP loader with core encode and WanImageToVideo"},
        "note": CAUSAL_NOTE.format(title="Image to video, block-causal, mixed",
                                   what="The ClipWan CLIP loader (also reads Wan's original .pth and OpenCLIP "
                                        "files) feeds core CLIP Vision Encode; core WanImageToVideo feeds the "
                                        "ClipWan sampler with Load Causal Wan Model."),
        "models": MODELS,
        "description": "Mixing both ways: the pack's loader (which also reads Wan's original .pth and OpenCLIP "
                       "files) feeding core CLIPVisionEncode, core WanImageToVideo's output feeding the pack's "
                       "sampler with the pack's causal-model loader.",
        "nodes": [
            ("image", "LoadImage", {"image": "example.png"}, "Start image"),
            ("clip_vision", "LoadCLIPVisionH14", {"clip_name": CLIP_H}),
            ("clip_encode", "CLIPVisionEncode", {"clip_vision": Link("clip_vision"), "image": Link("image"),
                                                 "crop": "center"}),
            *_text_nodes(),
            ("conditioning", "WanImageToVideo", {"positive": Link("positive"), "negative": Link("negative"),
                                                 "vae": Link("vae"), "start_image": Link("image"),
                                                 "clip_vision_output": Link("clip_encode"), **VIDEO}),
            ("model", "LoadCausalWanModel", {"model_name": WAN_I2V}),
            *_sample_and_save("model", "conditioning", "clipwan/i2v_causal_mixed"),
        ],
    },
    "clipwan_longlive_lora": {
        "title": 'LongLive 1.0 with its LoRA, from a start image',
        "card": {'kind': 'video', 'caption': 'long video in flat memory: attention sink 3 + window 12'},
        "note": ("## LongLive 1.0 as shipped, from a start image\n\n**Checkpoints.** `longlive_base.pt` "
                 "(models/diffusion_models) and its LoRA `lora.pt`, saved as "
                 f"`{LONGLIVE.lora_file}` (models/loras; the loader also finds it as `lora.pt`), from "
                 "Efficient-Large-Model/LongLive-1.3B; Apply Causal Wan LoRA merges the LoRA like LongLive's "
                 "PEFT setup (rank 256, alpha 256). The sampler carries the LongLive preset (sink 3 + window 12, "
                 "the start image as its own first latent frame; LongLive is text-to-video, so no CLIP vision). "
                 f"**Sizes.** Set for a CPU: 320×192, 25 frames (the image + 2 blocks of 3). LongLive's own "
                 f"length is {LONGLIVE.recommended_length} frames at 832×480 (the preset menu sets it)."),
        "models": {k: MODELS[k] for k in (UMT5, WAN_VAE, LONGLIVE.model_file, LONGLIVE.lora_file)},
        "description": "LongLive 1.0 as shipped, from a start image: longlive_base.pt through core Load "
                       "Diffusion Model, its LoRA (longlive_lora.pt) applied by Apply Causal Wan LoRA, the sampler set to the "
                       "LongLive preset (sink 3 + window 12, independent first frame = the image; a t2v model "
                       "has no img_emb, so no CLIP vision) and a length that fits its blocks.",
        "nodes": [
            ("image", "LoadImage", {"image": "example.png"}, "Start image"),
            *_text_nodes(),
            ("conditioning", "WanImageToVideo", {"positive": Link("positive"), "negative": Link("negative"),
                                                 "vae": Link("vae"), "start_image": Link("image"),
                                                 **VIDEO, "length": 25}),
            ("base", "UNETLoader", {"unet_name": LONGLIVE.model_file}),
            ("model", "ApplyCausalWanLoRA", {"model": Link("base"), "lora_name": LONGLIVE.lora_file}),
            *_sample_and_save("model", "conditioning", "clipwan/longlive", LONGLIVE.sampler_values()),
        ],
    },
    "clipwan_krea_realtime_stream": {
        "title": 'Krea Realtime 14B, streamed to an MP4',
        "card": {'kind': 'stream', 'blocks': (1, 3, 3, 3), 'caption': 'cache rebuilt from 3 clean frames before each block'},
        "note": ("## Krea Realtime 14B, streamed, from a start image\n\n**Checkpoints.** "
                 f"`{KREA.model_file}` (krea/krea-realtime-video, {KREA.license}; flat `model.*` keys, loaded "
                 "by Load Causal Wan Model) in models/diffusion_models, the Wan 2.1 VAE and the umt5 text "
                 "encoder; the Missing Models panel downloads them. The stream node carries the Krea preset: "
                 "5 warped steps (the last at t=0), blocks of 3, and before every block the KV cache is "
                 "recomputed from 3 clean context frames, the first one re-encoded by the VAE from the decoded "
                 "video once it is two blocks old — as Krea's realtime server runs it (that needs the VAE in the "
                 "loop: use this node, not Causal Wan Sampler). Krea is text-to-video: the start image enters as "
                 "the first latent frame, no CLIP vision.\n\n**Sizes.** Set for a CPU: 320×192, 37 frames (the "
                 f"image + 3 blocks of 3). Krea runs 832×480; the preset's length is {KREA.recommended_length} "
                 "frames (9 blocks). The 14B model needs a GPU (about 28 GB of weights in bf16)."),
        "models": {k: MODELS[k] for k in (UMT5, WAN_VAE, KREA.model_file)},
        "description": "Krea Realtime 14B as its authors run it: the VAE inside the loop re-encodes a decoded "
                       "frame as the first of the 3 context frames whose K/V are recomputed before every block; "
                       "each block is decoded, shown on the node and appended to an MP4 as soon as it is final.",
        "nodes": [
            ("image", "LoadImage", {"image": "example.png"}, "Start image"),
            *_text_nodes(),
            ("conditioning", "WanImageToVideo", {"positive": Link("positive"), "negative": Link("negative"),
                                                 "vae": Link("vae"), "start_image": Link("image"),
                                                 **VIDEO, "length": 37}),
            ("model", "LoadCausalWanModel", {"model_name": KREA.model_file}),
            ("stream", "CausalWanStreamVideo", {"model": Link("model"), "positive": Link("conditioning", 0),
                                                "negative": Link("conditioning", 1),
                                                "latent": Link("conditioning", 2), "vae": Link("vae"),
                                                "filename_prefix": "clipwan/krea_realtime",
                                                **KREA.sampler_values()}),
        ],
    },
    "clipwan_vace_causal_core": {
        "title": 'VACE, block-causal, from core WanVaceToVideo',
        "card": {'kind': 'video', 'caption': 'core VACE graph with the causal sampler'},
        "note": ("## VACE, block-causal, from core WanVaceToVideo\n\nAn ordinary VACE graph — core **WanVaceToVideo** "
                 "with a control video and a reference image — with **Causal Wan Sampler** in place of KSampler: the "
                 "sampler reads WanVaceToVideo's conditioning as it is, samples the video block by block and puts "
                 "the reference frame back in front of its output, so **TrimVideoLatent** (trim_latent) removes it "
                 "as after KSampler.\n\n" + VACE_NOTE.format(model=WAN_VACE)),
        "models": {k: MODELS[k] for k in (UMT5, WAN_VAE, WAN_VACE)},
        "description": "Core's WanVaceToVideo (control video + reference image) into the pack's causal sampler, "
                       "TrimVideoLatent and VAE Decode as in core's VACE template: existing VACE graphs switch to "
                       "block-causal sampling by swapping the sampler.",
        "nodes": [
            ("video", "LoadVideo", {"file": "control.mp4"}, "Control video (depth, pose, ...)"),
            ("frames", "GetVideoComponents", {"video": Link("video")}),
            ("image", "LoadImage", {"image": "example.png"}, "Reference image"),
            *_text_nodes(),
            ("conditioning", "WanVaceToVideo", {"positive": Link("positive"), "negative": Link("negative"),
                                                "vae": Link("vae"), "control_video": Link("frames", 0),
                                                "reference_image": Link("image"), **VIDEO}),
            ("model", "UNETLoader", {"unet_name": WAN_VACE}),
            ("sampler", "CausalWanSampler", {"model": Link("model"), "positive": Link("conditioning", 0),
                                             "negative": Link("conditioning", 1), "latent": Link("conditioning", 2)}),
            ("trim", "TrimVideoLatent", {"samples": Link("sampler"), "trim_amount": Link("conditioning", 3)}),
            ("decode", "VAEDecode", {"samples": Link("trim"), "vae": Link("vae")}),
            ("save", "SaveAnimatedWEBP", {"images": Link("decode"), "filename_prefix": "clipwan/vace_causal",
                                          "fps": 16.0, "lossless": False, "quality": 85}),
        ],
    },
    "clipwan_vace_longlive_stream": {
        "title": 'VACE on LongLive, streamed control video',
        "card": {'kind': 'stream', 'caption': 'control video encoded block by block as it streams'},
        "note": ("## VACE on LongLive, streamed control video\n\n**Causal VACE Control** reads the control video "
                 "frame by frame and encodes it block by block while **Causal Wan Stream Video** generates (bounded "
                 "memory for any length); the reference image is encoded once. Load Causal Wan Model puts the VACE "
                 "module beside LongLive's blocks (`vace_name`), as Scope does, then merges LongLive's LoRA.\n\n"
                 + VACE_NOTE.format(model=f"{LONGLIVE.model_file}` + `{VACE_MODULE}` (+ `{LONGLIVE.lora_file}` in "
                                          f"models/loras")),
        "models": {k: MODELS[k] for k in (UMT5, WAN_VAE, LONGLIVE.model_file, LONGLIVE.lora_file, VACE_MODULE)},
        "description": "LongLive 1.0 with Scope's VACE module, a control video streamed block by block through Causal "
                       "VACE Control into Causal Wan Stream Video (reference image encoded once, in the "
                       "conditioning only).",
        "nodes": [
            ("video", "LoadVideo", {"file": "control.mp4"}, "Control video (depth, pose, ...)"),
            ("image", "LoadImage", {"image": "example.png"}, "Reference image"),
            *_text_nodes(),
            ("control", "CausalVaceControl", {"vae": Link("vae"), "control_video": Link("video"),
                                              "reference_image": Link("image")}),
            ("latent", "EmptyHunyuanLatentVideo", {**VIDEO, "batch_size": 1}),
            ("model", "LoadCausalWanModel", {"model_name": LONGLIVE.model_file, "checkpoint_entry": "generator",
                                             "lora_name": LONGLIVE.lora_file, "vace_name": VACE_MODULE}),
            ("stream", "CausalWanStreamVideo", {"model": Link("model"), "positive": Link("positive"),
                                                "negative": Link("negative"), "latent": Link("latent"),
                                                "vae": Link("vae"), "vace_control": Link("control"),
                                                "filename_prefix": "clipwan/vace_longlive",
                                                **{k: v for k, v in LONGLIVE.sampler_values().items()
                                                   if k != "independent_first_frame"}}),
        ],
    },
    "clipwan_video_restyle_stream": {
        "title": 'Restyle a video, block by block (Krea v2v)',
        "card": {'kind': 'stream', 'caption': "each block starts from the input's frames, noised"},
        "note": ("## Restyle a video, block by block (Krea's video-to-video)\n\n**Causal Video Restyle** reads the "
                 "input video frame by frame, encodes it block by block, and each block starts from its frames "
                 "noised to `strength` (Krea's rule: steps linspace(1000·strength, 0, n), warped); the output is "
                 "aligned frame for frame with the input. Any causal family works; this graph uses Krea Realtime "
                 "14B as its server runs v2v.\n\n**Checkpoints.** "
                 f"`{KREA.model_file}` ({KREA.license}), the Wan 2.1 VAE and the umt5 text encoder.\n\n"
                 + SIZES_NOTE),
        "models": {k: MODELS[k] for k in (UMT5, WAN_VAE, KREA.model_file)},
        "description": "Video-to-video restyle streamed in and out: the input video encoded block by block, noised "
                       "to the strength and denoised with Krea's loop, each block decoded and appended to an MP4 "
                       "as soon as it is final.",
        "nodes": [
            ("video", "LoadVideo", {"file": "input.mp4"}, "Video to restyle"),
            *_text_nodes(),
            ("restyle", "CausalVideoRestyle", {"vae": Link("vae"), "input_video": Link("video")}),
            ("latent", "EmptyHunyuanLatentVideo", {**VIDEO, "length": 37, "batch_size": 1}),
            ("model", "LoadCausalWanModel", {"model_name": KREA.model_file}),
            ("stream", "CausalWanStreamVideo", {"model": Link("model"), "positive": Link("positive"),
                                                "negative": Link("negative"), "latent": Link("latent"),
                                                "vae": Link("vae"), "restyle": Link("restyle"),
                                                "filename_prefix": "clipwan/restyle",
                                                **KREA.sampler_values()}),
        ],
    },
    "clipwan_longlive_live_timeline": {
        "title": 'LongLive with a prompt timeline, steered live',
        "card": {'kind': 'stream', 'caption': 'prompts switch on a timeline; type new ones as it plays'},
        "note": ("## LongLive 1.0 streamed with a prompt timeline, steered live\n\n**Checkpoints.** `longlive_base.pt` "
                 "(models/diffusion_models) + its `lora.pt` (models/loras) from Efficient-Large-Model/LongLive-1.3B, "
                 "the Wan 2.1 VAE and the umt5 text encoder; the Missing Models panel downloads them. **Prompt "
                 "Timeline from Text** encodes each line's prompt once (`START: prompt`, START a block, `2.5s` or "
                 "`f40`; `START blend N: prompt` for a smooth change); the stream switches with LongLive's re-cache "
                 "at each start. While it runs, type a prompt in the box under the frame player and press Send (or "
                 "POST /clipwan/live/<node id>/prompt {\"text\": ...}): it takes over at the next block. The "
                 "video's folder gets `<video>.timeline.json` (+ `.safetensors`) that replays the run exactly.\n\n"
                 f"**Sizes.** Set for a CPU: 320×192, 37 frames (a first block of 1 latent frame, then 3 blocks of 3). LongLive's own "
                 f"length is {LONGLIVE.recommended_length} frames at 832×480."),
        "models": {k: MODELS[k] for k in (UMT5, WAN_VAE, LONGLIVE.model_file, LONGLIVE.lora_file)},
        "description": "LongLive 1.0 streamed block by block with a typed prompt timeline (each prompt encoded "
                       "once, switched with LongLive's KV re-cache or blended), and live prompts sent from the "
                       "frame player while it plays; the run's timeline is saved beside the video for an exact "
                       "replay.",
        "nodes": [
            *_text_nodes(),
            ("timeline", "CausalWanTimelineFromText", {"clip": Link("text_encoder"), "text": (
                "0: a red fox trots through fresh snow, soft morning light\n"
                "2: the fox stops and looks up at a snowy owl on a branch\n"
                "3 blend 2: the owl takes off over the white forest")}, "Prompt timeline"),
            ("conditioning", "WanImageToVideo", {"positive": Link("positive"), "negative": Link("negative"),
                                                 "vae": Link("vae"), **VIDEO, "length": 37}),
            ("base", "UNETLoader", {"unet_name": LONGLIVE.model_file}),
            ("model", "ApplyCausalWanLoRA", {"model": Link("base"), "lora_name": LONGLIVE.lora_file}),
            ("stream", "CausalWanStreamVideo", {"model": Link("model"), "positive": Link("conditioning", 0),
                                                "negative": Link("conditioning", 1), "latent": Link("conditioning", 2),
                                                "vae": Link("vae"), "timeline": Link("timeline"),
                                                "filename_prefix": "clipwan/longlive_timeline",
                                                **LONGLIVE.sampler_values()}),
        ],
    },
    "clipwan_self_forcing_image_change": {
        "title": 'A new image and a LoRA strength mid-video',
        "card": {'kind': 'stream', 'caption': 'the start image changes at block 2, a LoRA dial turns at block 1'},
        "note": ("## Self-Forcing streamed with a new image and a LoRA strength change mid-video\n\n"
                 "**Timeline Image Change** adds a new start image to the prompt timeline: from `start_block` on the "
                 "video continues from it (Self-Forcing is text-to-video, so the block's first latent frame is clamped "
                 "to the image's latent, LongLive 2.0's i2v rule at that block; an i2v model would take it through its "
                 "concat channels and, with clip_vision connected, its CLIP features). **Timeline LoRA Strength** sets "
                 "the strength of the LoRA that Load Causal Wan Model merged (`lora_name`) from its block on; the "
                 "loaded weights come back when the run ends. While the stream runs, drop an image on the frame "
                 "player (or POST /clipwan/live/<node id>/image {\"image\": base64 PNG}) and move the LoRA strength "
                 "the same way (POST .../lora {\"strength\": 0.5}): each takes over at the next block and is saved in "
                 "the `<video>.timeline.json` that replays the run.\n\n**Checkpoints.** "
                 f"`{SELF_FORCING.model_file}` (models/diffusion_models), the Wan 2.1 VAE, the umt5 text encoder, and "
                 f"a LoRA trained on Wan 2.1 T2V 1.3B in models/loras; `{CAUSVID_LORA}` (Kijai's extraction of "
                 "CausVid for the bidirectional 1.3B) is named so the Missing Models panel has one to download — put "
                 "a style LoRA there for a meaningful dial. Not for LongLive 1.0 / MemFlow: their LoRA is the "
                 "distilled model and its strength is refused.\n\n**Sizes.** Set for a CPU: 320×192, 37 frames (the "
                 f"image + 3 blocks). On a GPU use 832×480 and {SELF_FORCING.recommended_length} frames."),
        "models": {k: MODELS[k] for k in (UMT5, WAN_VAE, SELF_FORCING.model_file, CAUSVID_LORA)},
        "description": "Self-Forcing streamed block by block while a second image takes over as the start frame at "
                       "block 2 and a merged LoRA's strength changes at block 1 (both on the prompt timeline, both "
                       "also sendable live from the frame player); the sidecar replays the run exactly.",
        "nodes": [
            ("image", "LoadImage", {"image": "example.png"}, "Start image"),
            ("image_2", "LoadImage", {"image": "example.png"}, "New image (from block 2)"),
            *_text_nodes(),
            ("conditioning", "WanI2VConditioning", {"positive": Link("positive"), "negative": Link("negative"),
                                                    "vae": Link("vae"), "start_image": Link("image"),
                                                    **VIDEO, "length": 37}),
            ("timeline", "CausalWanTimelineFromText", {"clip": Link("text_encoder"), "text": (
                "0: a red fox trots through fresh snow, soft morning light\n"
                "2: the fox runs along a frozen river at dusk")}, "Prompt timeline"),
            ("image_change", "CausalWanTimelineImage", {"timeline": Link("timeline"), "image": Link("image_2"),
                                                        "start_block": 2, "route": "start", "vae": Link("vae"),
                                                        "latent": Link("conditioning", 2)}),
            ("lora_change", "CausalWanTimelineLoraStrength", {"timeline": Link("image_change"), "start_block": 1,
                                                              "strength": 0.0}),
            ("model", "LoadCausalWanModel", {"model_name": SELF_FORCING.model_file, "lora_name": CAUSVID_LORA,
                                             "lora_strength": 0.3}),
            ("stream", "CausalWanStreamVideo", {"model": Link("model"), "positive": Link("conditioning", 0),
                                                "negative": Link("conditioning", 1), "latent": Link("conditioning", 2),
                                                "vae": Link("vae"), "timeline": Link("lora_change"),
                                                "filename_prefix": "clipwan/image_change",
                                                **SELF_FORCING.sampler_values()}),
        ],
    },
    "clipwan_prompt_timeline_conditionings": {
        "title": 'Prompt timeline from several prompts',
        "card": {'kind': 'video', 'caption': 'several prompts, each from its own block'},
        "note": ("## Three prompts from three CLIP Text Encode nodes\n\n**Checkpoints.** `longlive_base.pt` + "
                 "`lora.pt` (LongLive 1.0), the Wan 2.1 VAE and the umt5 text encoder. **Prompt Timeline from "
                 "Conditionings** takes conditioning_1 from block 0 and each further one from its start block, "
                 "all with one transition (switch: LongLive's re-cache; blend: over blend_blocks blocks).\n\n"
                 "**Sizes.** Set for a CPU: 320×192, 37 frames (4 blocks)."),
        "models": {k: MODELS[k] for k in (UMT5, WAN_VAE, LONGLIVE.model_file, LONGLIVE.lora_file)},
        "description": "A prompt timeline built from CONDITIONING outputs (any text encoder node), fed to Causal "
                       "Wan Sampler's timeline input: three prompts, switched at blocks 2 and 3 with the family's "
                       "rule.",
        "nodes": [
            ("text_encoder", "CLIPLoader", {"clip_name": UMT5, "type": "wan"}),
            ("prompt_1", "CLIPTextEncode", {"text": POSITIVE, "clip": Link("text_encoder")}, "Prompt 1"),
            ("prompt_2", "CLIPTextEncode", {"text": "the fox stops and looks up at a snowy owl",
                                            "clip": Link("text_encoder")}, "Prompt 2"),
            ("prompt_3", "CLIPTextEncode", {"text": "the owl flies over the white forest",
                                            "clip": Link("text_encoder")}, "Prompt 3"),
            ("vae", "VAELoader", {"vae_name": WAN_VAE}),
            ("timeline", "CausalWanTimelineFromConditionings", {
                "conditioning_1": Link("prompt_1"), "conditioning_2": Link("prompt_2"), "start_block_2": 2,
                "conditioning_3": Link("prompt_3"), "start_block_3": 3}, "Prompt timeline"),
            ("conditioning", "WanImageToVideo", {"positive": Link("prompt_1"), "negative": Link("prompt_1"),
                                                 "vae": Link("vae"), **VIDEO, "length": 37}),
            ("base", "UNETLoader", {"unet_name": LONGLIVE.model_file}),
            ("model", "ApplyCausalWanLoRA", {"model": Link("base"), "lora_name": LONGLIVE.lora_file}),
            ("sampler", "CausalWanSampler", {"model": Link("model"), "positive": Link("conditioning", 0),
                                             "latent": Link("conditioning", 2), "timeline": Link("timeline"),
                                             **LONGLIVE.sampler_values()}),
            ("decode", "VAEDecode", {"samples": Link("sampler"), "vae": Link("vae")}),
            ("save", "SaveAnimatedWEBP", {"images": Link("decode"), "filename_prefix": "clipwan/prompt_timeline",
                                          "fps": 16.0, "lossless": False, "quality": 85}),
        ],
    },
    "clipwan_export_axera": {
        "title": "Export Wan's CLIP to the Axera AX650N NPU",
        "card": {'kind': 'export', 'caption': 'ONNX + Pulsar2 build inputs, calibrated on your images'},
        "note": ("## Export Wan's CLIP to the Axera AX650N NPU\n\n**Checkpoint.** `clip_vision_h.safetensors` "
                 "(ViT-H/14, the CLIP Wan 2.1 i2v uses; the Missing Models panel downloads it), or any CLIP vision "
                 "file the ClipWan loader reads. The export (ONNX + Pulsar2 configs + calibration set) runs on a "
                 "CPU in about a minute for ViT-H; the `.axmodel` build needs Axera's `pulsar2` (the report says "
                 "when it is not installed)."),
        "models": {CLIP_H: MODELS[CLIP_H]},
        "description": "Export Wan's CLIP ViT-H/14 vision tower to ONNX plus the Pulsar2 build inputs for the "
                       "Axera AX650N NPU, calibrated on your images; runs pulsar2 when it is installed and says "
                       "so plainly when not. The report (ops, parity, sizes, build status) shows on the node.",
        "nodes": [
            ("image", "LoadImage", {"image": "example.png"}, "Calibration image(s)"),
            ("clip_vision", "LoadCLIPVisionH14", {"clip_name": CLIP_H, "dtype": "fp32"}),
            ("export", "ExportCLIPToAxmodel", {"clip_vision": Link("clip_vision"), "parts": "vision",
                                               "calibration_images": Link("image"),
                                               "output_subfolder": "clipwan_axera/wan_clip_vit_h"}),
        ],
    },
    "clipwan_zero_shot": {
        "title": 'CLIP zero-shot labels on an exported model',
        "card": {'kind': 'zero_shot', 'caption': 'ranks your labels for an image (ONNX Runtime or the NPU)'},
        "note": ("## CLIP zero-shot on an exported model\n\n**Checkpoint.** None by default: the export node's "
                 "embedded default is a seeded random-init ViT-B/32, so the scores are meaningless until you pick "
                 "a real CLIP (OpenCLIP or Hugging Face CLIPModel file in models/clip) as its `source`. Runs on a "
                 "CPU in seconds (ONNX Runtime), on the NPU through axengine when run on an Axera board."),
        "description": "CLIP zero-shot labels on an exported model, inside ComfyUI: export a full CLIP (vision + "
                       "text; the embedded default is a seeded random-init ViT-B/32, so the scores are not "
                       "meaningful until you pick a real checkpoint), then classify an image with it.",
        "nodes": [
            ("image", "LoadImage", {"image": "example.png"}),
            ("export", "ExportCLIPToAxmodel", {"parts": "both", "output_subfolder": "clipwan_axera/clip_b32",
                                               "calibration_images": Link("image"),
                                               "calibration_prompts": "a photo of a cat\na photo of a dog"}),
            ("zero_shot", "CLIPZeroShotAxera", {"image": Link("image"), "export_folder": Link("export", 0),
                                                "labels": "cat\ndog\ncar\nlandscape"}),
        ],
    },
    "clipwan_wan22_longlive2_i2v": {
        "title": 'LongLive 2.0 (Wan 2.2 TI2V-5B), image to video',
        "card": {'kind': 'video', 'blocks': (8,), 'image_first': False, 'caption': 'image clamped into the first block of 8, 4 UniPC steps'},
        "note": LONGLIVE2_NOTE,
        "models": MODELS,
        "description": "Wan 2.2 TI2V-5B causal image-to-video with LongLive 2.0: core Wan22ImageToVideoLatent puts "
                       "the start image's Wan 2.2 VAE latent in frame 0, the ClipWan sampler runs LongLive 2.0's "
                       "loop (blocks of 8, UniPC 4 steps, the image clamped at t=0, sink 8 + window 32).",
        "nodes": [
            ("image", "LoadImage", {"image": "example.png"}, "Start image"),
            ("text_encoder", "CLIPLoader", {"clip_name": UMT5, "type": "wan"}),
            ("positive", "CLIPTextEncode", {"text": POSITIVE, "clip": Link("text_encoder")}, "Positive prompt"),
            ("vae", "VAELoader", {"vae_name": WAN22_VAE}),
            ("latent", "Wan22ImageToVideoLatent", {"vae": Link("vae"), "start_image": Link("image"), "width": 320,
                                                   "height": 192, "length": 61, "batch_size": 1}),
            ("model", "LoadCausalWanModel", {"model_name": LONGLIVE2, "checkpoint_entry": "generator"}),
            ("sampler", "CausalWanSampler", {"model": Link("model"), "positive": Link("positive"),
                                             "latent": Link("latent"),
                                             **get_preset("LongLive 2.0").sampler_values()}),
            ("decode", "VAEDecode", {"samples": Link("sampler"), "vae": Link("vae")}),
            ("save", "SaveAnimatedWEBP", {"images": Link("decode"), "filename_prefix": "clipwan/longlive2_i2v",
                                          "fps": 24.0, "lossless": False, "quality": 85}),
        ],
    },
}
