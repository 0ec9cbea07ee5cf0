"""Graph descriptions of the example workflows (``python tests/workflow_format.py`` writes the JSON files).

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
LONGLIVE_HF = "https://huggingface.co/Efficient-Large-Model/LongLive-1.3B/resolve/main/models"
REPACKAGED = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
# File -> (download URL, ComfyUI model folder): the loaders' properties.models, as core templates carry them.
MODELS = {
    CLIP_H: (f"{REPACKAGED}/clip_vision/{CLIP_H}", "clip_vision"),
    UMT5: (f"{REPACKAGED}/text_encoders/{UMT5}", "text_encoders"),
    WAN_VAE: (f"{REPACKAGED}/vae/{WAN_VAE}", "vae"),
    WAN_I2V: (f"{REPACKAGED}/diffusion_models/{WAN_I2V}", "diffusion_models"),
}
MODELS.update({  # LongLive 1.0 as its authors publish it
    LONGLIVE.model_file: (f"{LONGLIVE_HF}/{LONGLIVE.model_file}", "diffusion_models"),
    LONGLIVE.lora_file: (f"{LONGLIVE_HF}/{LONGLIVE.lora_file}", "loras"),
})
MODELS[KREA.model_file] = ("https://huggingface.co/krea/krea-realtime-video/resolve/main/" + KREA.model_file,
                           "diffusion_models")
SIZES_NOTE = ("**Sizes.** Set for a CPU: 320×192, 21 frames (2 blocks). On a GPU use Wan's 480p: "
              "832×480, 81 frames (21 latent frames = 7 blocks of 3), or 1280×720 with the 720p checkpoints. "
              "A length that is not whole blocks runs with a shorter last block; the sampler says so and names "
              "the lengths that fit.")
CAUSAL_NOTE = ("## {title}\n\n{what}\n\n**Checkpoints.** Any Wan 2.1 DiT. The file named here is Wan 2.1 "
               "I2V 14B (Comfy-Org repackaged; the Missing Models panel downloads it): it uses the CLIP features "
               "and the start image's latent, but it is not distilled for few steps, so expect rough motion with "
               "4 steps. For real few-step causal video pick a Self-Forcing (`self_forcing_dmd.pt`), CausVid or "
               "LongLive checkpoint (Wan 2.1 T2V 1.3B) in models/diffusion_models: the start image then enters "
               "as the first latent frame, and the sampler's log says that the CLIP features are not used "
               "(those models have no image embedding). Pick the family in the sampler's `family` combo (or "
               "right-click the sampler → ClipWan presets): it fills the authors' settings, sets the length and "
               "runs their loop rules.\n\n" + SIZES_NOTE)

# Wan 2.2 TI2V-5B / LongLive 2.0 (causal i2v on Wan 2.2): its VAE from Comfy-Org's Wan 2.2 repackage, the
# distilled DiT from LongLive 2.0's release (loaded as is: {"generator": {"model.<Wan key>": ...}})
WAN22_VAE = "wan2.2_vae.safetensors"
LONGLIVE2 = "model_bf16.pt"
WAN22_REPACKAGED = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
MODELS.update({
    WAN22_VAE: (f"{WAN22_REPACKAGED}/vae/{WAN22_VAE}", "vae"),
    LONGLIVE2: ("https://huggingface.co/Efficient-Large-Model/LongLive-2.0-5B/resolve/main/model_bf16.pt",
                "diffusion_models"),
})
LONGLIVE2_NOTE = (
    "## Image to video with LongLive 2.0 (Wan 2.2 TI2V-5B), block-causal\n\nCore **Wan22ImageToVideoLatent** "
    "encodes the start image with the Wan 2.2 VAE into the first latent frame; the ClipWan sampler runs "
    "LongLive 2.0's own loop on it (a Wan 2.2 model switches it on): blocks of 8 latent frames from frame 0, "
    "the image clamped as the clean first frame at timestep 0, 4 UniPC steps per block at shift 5, attention "
    "sink 8 + window 32 (flat memory however long). `steps` is a step count here (4).\n\n**Checkpoints.** "
    "LongLive 2.0's `model_bf16.pt` (Efficient-Large-Model/LongLive-2.0-5B, Apache-2.0) in "
    "models/diffusion_models, `wan2.2_vae.safetensors` in models/vae, the umt5 text encoder; the Missing Models "
    "panel downloads all three. No CLIP vision: TI2V takes the image as its first latent frame.\n\n**Sizes.** "
    "Set small: 320×192, 61 frames (16 latent frames = 2 blocks). LongLive 2.0 runs 1280×704 (latent 80×44); "
    "lengths 4·(8k−1)+1: 29, 61, 125, 253 … The 5B model needs a GPU (about 11 GB of weights in bf16).")



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
        "note": CAUSAL_NOTE.format(title="Image to video, block-causal (all ClipWan nodes)",
                                   what="The start image's CLIP ViT-H features and VAE latent condition a Wan "
                                        "2.1 DiT sampled block by block with a KV cache; the frames appear on "
                                        "the sampler as each block finishes."),
        "models": MODELS,
        "description": "Image-to-video with block-causal sampling, all pack nodes: the start image's CLIP ViT-H "
                       "features go through Wan's img_emb and separate image K/V, blocks of latent frames are "
                       "sampled with a KV cache and streamed onto the sampler node as they finish.",
        "nodes": [
            ("image", "LoadImage", {"image": "example.png"}, "Start image"),
            ("clip_vision", "LoadCLIPVisionH14", {"clip_name": CLIP_H}),
            ("clip_encode", "CLIPVisionEncodeWan", {"clip_vision": Link("clip_vision"), "image": Link("image")}),
            *_text_nodes(),
            ("conditioning", "WanI2VConditioning", {"positive": Link("positive"), "negative": Link("negative"),
                                                    "vae": Link("vae"), "start_image": Link("image"),
                                                    "clip_vision_output": Link("clip_encode"), **VIDEO}),
            ("model", "LoadCausalWanModel", {"model_name": WAN_I2V}),
            *_sample_and_save("model", "conditioning", "clipwan/i2v_causal"),
        ],
    },
    "clipwan_i2v_causal_stream": {
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
    "clipwan_i2v_causal_core_nodes": {
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
    "clipwan_i2v_causal_mixed": {
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
        "note": ("## LongLive 1.0 as shipped, from a start image\n\n**Checkpoints.** `longlive_base.pt` "
                 "(models/diffusion_models) and its LoRA `lora.pt` (models/loras) from "
                 "Efficient-Large-Model/LongLive-1.3B; Apply Causal Wan LoRA merges the LoRA like LongLive's "
                 "PEFT setup (rank 256, alpha 256). The sampler carries the LongLive preset (sink 3 + window 12, "
                 "the start image as its own first latent frame; LongLive is text-to-video, so no CLIP vision). "
                 f"**Sizes.** Set for a CPU: 320×192, 25 frames (the image + 2 blocks of 3). LongLive's own "
                 f"length is {LONGLIVE.recommended_length} frames at 832×480 (the preset menu sets it)."),
        "models": {k: MODELS[k] for k in (UMT5, WAN_VAE, LONGLIVE.model_file, LONGLIVE.lora_file)},
        "description": "LongLive 1.0 as shipped, from a start image: longlive_base.pt through core Load "
                       "Diffusion Model, its lora.pt applied by Apply Causal Wan LoRA, the sampler set to the "
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
    "clipwan_longlive_live_timeline": {
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
    "clipwan_prompt_timeline_conditionings": {
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
