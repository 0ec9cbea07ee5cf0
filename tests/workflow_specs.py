"""Graph descriptions of the example workflows (``python tests/workflow_format.py`` writes the JSON files).

Each node: ``(key, class_type, {input: value | Link(node_key, output)}, title)``. Widgets not named take the
node's declared default, so the files follow the nodes' defaults when regenerated. File names are the
ones users download (see docs/comfyui.md, "Models").
"""

from workflow_format import Link

CLIP_H = "clip_vision_h.safetensors"
UMT5 = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN_VAE = "wan_2.1_vae.safetensors"
WAN_I2V = "wan2.1_i2v_480p_14B_fp16.safetensors"
POSITIVE = "a red fox trotting through fresh snow, soft morning light, the camera follows it"
NEGATIVE = "blurry, static, distorted, low quality"
VIDEO = {"width": 832, "height": 480, "length": 81}


def _text_nodes():
    return [
        ("text_encoder", "CLIPLoader", {"clip_name": UMT5, "type": "wan"}),
        ("positive", "CLIPTextEncode", {"text": POSITIVE, "clip": Link("text_encoder")}, "Positive prompt"),
        ("negative", "CLIPTextEncode", {"text": NEGATIVE, "clip": Link("text_encoder")}, "Negative prompt"),
        ("vae", "VAELoader", {"vae_name": WAN_VAE}),
    ]


def _sample_and_save(model_key: str, cond_key: str, prefix: str):
    return [
        ("sampler", "CausalWanSampler", {"model": Link(model_key), "positive": Link(cond_key, 0),
                                         "negative": Link(cond_key, 1), "latent": Link(cond_key, 2)}),
        ("decode", "VAEDecode", {"samples": Link("sampler"), "vae": Link("vae")}),
        ("save", "SaveAnimatedWEBP", {"images": Link("decode"), "filename_prefix": prefix, "fps": 16.0,
                                      "lossless": False, "quality": 85}),
    ]


WORKFLOWS = {
    "clipwan_i2v_causal": {
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
    "clipwan_i2v_causal_core_nodes": {
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
    "clipwan_export_axera": {
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
}
