"""Preprocessing (both crop modes, any image shape) and every bad input: clear exact errors, nothing loaded."""

import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from comfyui_clipwan.clip_vision import CONFIGS, default_clip_vision, load_clip_vision, preprocess_images

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
H14 = CONFIGS["ViT-H/14"]


def comfy_clip_preprocess_reference(image, size=224, crop=True):
    """Independent re-statement of ComfyUI's clip_preprocess from its documented steps (not its code)."""
    image = image[:, :, :, :3].movedim(-1, 1)
    if not (image.shape[2] == size and image.shape[3] == size):
        if crop:
            s = size / min(image.shape[2], image.shape[3])
            hw = (round(s * image.shape[2]), round(s * image.shape[3]))
        else:
            hw = (size, size)
        image = F.interpolate(image, size=hw, mode="bicubic", antialias=True)
        h0, w0 = (image.shape[2] - size) // 2, (image.shape[3] - size) // 2
        image = image[:, :, h0:h0 + size, w0:w0 + size]
    image = torch.clip(255.0 * image, 0, 255).round() / 255.0
    return (image - MEAN) / STD


def wan_reference(image, size=224):
    """Wan 2.1's steps: to [-1,1], bicubic squash (align_corners False, no antialias), back to [0,1], normalise."""
    x = image[..., :3].movedim(-1, 1).sub(0.5).div(0.5)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = x.mul(0.5).add(0.5)
    return (x - MEAN) / STD


SHAPES = [(1, 17, 31), (3, 300, 200), (2, 224, 224), (1, 1080, 1920), (1, 225, 224)]


@pytest.mark.parametrize("b,h,w", SHAPES)
def test_center_matches_comfyui_clip_preprocess(b, h, w):
    img = torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(h * w))
    ours = preprocess_images(img, H14, "center")
    assert ours.shape == (b, 3, 224, 224) and ours.dtype == torch.float32
    assert (ours - comfy_clip_preprocess_reference(img)).abs().max() <= 1e-6


@pytest.mark.parametrize("b,h,w", SHAPES)
def test_none_matches_wan_pipeline(b, h, w):
    img = torch.rand(b, h, w, 3, generator=torch.Generator().manual_seed(h + w))
    ours = preprocess_images(img, H14, "none")
    assert ours.shape == (b, 3, 224, 224)
    assert (ours - wan_reference(img)).abs().max() <= 1e-5


def test_modes_differ_and_aliases():
    img = torch.rand(1, 300, 200, 3)
    c, n = preprocess_images(img, H14, "center"), preprocess_images(img, H14, "none")
    assert (c - n).abs().max() > 0.1  # crop vs squash: genuinely different pixels
    assert torch.equal(preprocess_images(img, H14, True), c)
    assert torch.equal(preprocess_images(img, H14, False), n)
    assert torch.equal(preprocess_images(img, H14, "squash"), n)
    with pytest.raises(ValueError, match=r"^crop must be 'center' or 'none' \(or True/False\), got 'middle'$"):
        preprocess_images(img, H14, "middle")


def test_rgba_and_grayscale_and_uint8():
    rgb = torch.rand(2, 40, 50, 3)
    rgba = torch.cat([rgb, torch.rand(2, 40, 50, 1)], dim=-1)
    assert torch.equal(preprocess_images(rgba, H14), preprocess_images(rgb, H14))
    gray = torch.rand(1, 40, 50, 1)
    assert torch.equal(preprocess_images(gray, H14), preprocess_images(gray.expand(1, 40, 50, 3), H14))
    u8 = (rgb * 255).round().to(torch.uint8)
    assert (preprocess_images(u8, H14) - preprocess_images(u8.float() / 255, H14)).abs().max() == 0
    assert preprocess_images(rgb[0], H14).shape == (1, 3, 224, 224)  # a single HWC image is a batch of one


@pytest.mark.parametrize("image,message", [
    (torch.rand(1, 8, 8, 2), "image has 2 channels; expected 1 (grayscale), 3 (RGB) or 4 (RGBA) in the last "
                             "dimension of [B,H,W,C] — got shape [1, 8, 8, 2]"),
    (torch.rand(1, 8, 8, 5), "image has 5 channels; expected 1 (grayscale), 3 (RGB) or 4 (RGBA) in the last "
                             "dimension of [B,H,W,C] — got shape [1, 8, 8, 5]"),
    (torch.rand(0, 8, 8, 3), "image batch is empty (0 images); connect a node that outputs at least one image"),
    (torch.full((1, 8, 8, 3), float("nan")), "image contains NaN or infinite values; check the node that "
                                             "produced it"),
    (torch.rand(8, 8), "image must be [B,H,W,C] (ComfyUI IMAGE), got shape [8, 8]"),
])
def test_bad_images_are_refused(image, message):
    with pytest.raises(ValueError) as info:
        preprocess_images(image, H14)
    assert str(info.value) == message


def test_encode_batch_of_mixed_content_is_per_image():
    """Batch encoding equals encoding each image alone (no cross-talk in the batch)."""
    m = default_clip_vision(layers=2)
    imgs = torch.rand(3, 64, 96, 4)
    both = m.encode_image(imgs, crop="center")
    assert both.penultimate_hidden_states.shape == (3, 257, 1280)
    assert both.image_sizes == [torch.Size([3, 224, 224])] * 3
    one = m.encode_image(imgs[1:2], crop="center")
    assert (both.penultimate_hidden_states[1] - one.penultimate_hidden_states[0]).abs().max() < 1e-4
    assert both["image_embeds"] is both.image_embeds and both.mm_projected is None


# ---------------------------------------------------------------- bad checkpoint files


@pytest.fixture(scope="module")
def tiny_hf_sd():
    return {k: t.contiguous().clone() for k, t in default_clip_vision(layers=1).state_dict_hf().items()}


def test_missing_file(tmp_path):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        load_clip_vision(path)
    assert str(info.value) == f"CLIP vision file not found: '{path}'"


def test_truncated_safetensors(tmp_path, tiny_hf_sd):
    path = tmp_path / "clip_vision_h.safetensors"
    safetensors.torch.save_file(tiny_hf_sd, str(path))
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ValueError) as info:
        load_clip_vision(path)
    assert str(info.value).startswith(f"'{path}' is truncated: its tensors need {size} bytes but the file has "
                                      f"{size // 2}. Download it again.")


def test_truncated_pth(tmp_path, tiny_hf_sd):
    path = tmp_path / "clip.pth"
    torch.save(tiny_hf_sd, path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ValueError, match=rf"^'{path}' is corrupt or truncated: torch cannot read it \(RuntimeError: "
                                         r"PytorchStreamReader failed reading zip archive: .*\)\. Download it again\.$"):
        load_clip_vision(path)


def test_text_only_checkpoint_lists_keys(tmp_path):
    path = tmp_path / "umt5.safetensors"
    safetensors.torch.save_file({"textual.token_embedding.weight": torch.zeros(4, 2),
                                 "textual.blocks.0.attn.q.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ValueError) as info:
        load_clip_vision(path)
    assert str(info.value) == (
        f"'{path}': no CLIP vision tower found. Expected Wan .pth keys ('visual.transformer.0.attn.to_qkv.weight'), "
        "OpenCLIP keys ('visual.transformer.resblocks.0.attn.in_proj_weight') or HF/ComfyUI keys "
        "('vision_model.encoder.layers.0.self_attn.q_proj.weight'); 2 keys seen: 'textual.blocks.0.attn.q.weight', "
        "'textual.token_embedding.weight'. Use a CLIP vision file (e.g. clip_vision_h.safetensors or Wan's "
        "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth), not a text encoder or a diffusion model.")


def test_unrelated_checkpoint_lists_first_keys(tmp_path):
    path = tmp_path / "wan_dit.pth"
    torch.save({f"blocks.{i}.self_attn.q.weight": torch.zeros(1) for i in range(20)}, path)
    with pytest.raises(ValueError, match=r"no CLIP vision tower found.*20 keys seen: 'blocks\.0\.self_attn\.q\.weight'"
                                         r".*… \(8 more\)"):
        load_clip_vision(path)


def test_incomplete_tower_names_missing_keys(tmp_path, tiny_hf_sd):
    sd = dict(tiny_hf_sd)
    del sd["vision_model.encoder.layers.0.mlp.fc2.bias"]
    path = tmp_path / "partial.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(ValueError) as info:
        load_clip_vision(path)
    assert str(info.value) == (
        f"'{path}': the 'hf' CLIP vision tower (prefix 'vision_model.', 1 blocks) is incomplete; missing 1 keys: "
        "['vision_model.encoder.layers.0.mlp.fc2.bias']. The file is damaged or was saved partially; "
        "download it again.")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch_zip", "plain_pickle"])
def test_pickle_with_code_is_refused_and_never_runs(tmp_path, tiny_hf_sd, container):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    obj = dict(tiny_hf_sd, evil=_Payload(marker))
    if container == "torch_zip":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    with pytest.raises(ValueError, match=rf"^refused to load '{path}': it contains pickled Python objects besides "
                                         r"tensors \(.+\), which could run code when loaded, so it is not loaded\. "
                                         r"Convert it to \.safetensors \(in a trusted Python: "
                                         r"safetensors\.torch\.save_file\(state_dict, path\)\)\.$"):
        load_clip_vision(path)
    assert not marker.exists()


def test_failed_load_sd_leaves_weights_untouched():
    m = default_clip_vision(layers=1)
    before = {k: v.clone() for k, v in m.state_dict_hf().items()}
    other = default_clip_vision("ViT-L/14", layers=1).state_dict_hf()
    with pytest.raises(ValueError, match=r"^load_sd: the weights are ViT-L/14 \(width 1024, 1 layers, projection "
                                         r"768\) but this model is ViT-H/14 \(width 1280, 1 layers, projection 1024\)$"):
        m.load_sd(other)
    after = m.state_dict_hf()
    assert all(torch.equal(before[k], after[k]) for k in before)
    missing, unexpected = m.load_sd({**default_clip_vision(layers=1, seed=3).state_dict_hf(), "junk": torch.zeros(1)})
    assert missing == [] and unexpected == ["junk"]
    assert not torch.equal(before["visual_projection.weight"], m.state_dict_hf()["visual_projection.weight"])


PEAK_SCRIPT = textwrap.dedent("""
    import sys, torch
    from comfyui_clipwan.clip_vision import load_clip_vision
    def status(field):  # VmHWM is per address space; ru_maxrss would carry the forking parent's peak over exec
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field)) * 1024
    base = status("VmRSS")
    m = load_clip_vision(sys.argv[1], dtype=sys.argv[2])
    size = sum(p.numel() * p.element_size() for p in m.model.parameters())
    print((status("VmHWM") - base) / size)
""")


@pytest.fixture(scope="module")
def fp32_files(tmp_path_factory):
    """A 4-block ViT-H/14 saved in fp32 as .pth and .safetensors, plus an 80 MB text tensor to skip."""
    sd = {k: t.contiguous().clone() for k, t in default_clip_vision(layers=4).state_dict_hf().items()}
    sd["text_model.embeddings.token_embedding.weight"] = torch.randn(20000, 1024)
    folder = tmp_path_factory.mktemp("peak")
    torch.save(sd, folder / "clip.pth")
    safetensors.torch.save_file(sd, str(folder / "clip.safetensors"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # 0.8 GB


@pytest.mark.parametrize("ext,dtype", [("safetensors", "fp32"), ("safetensors", "fp16"), ("pth", "fp16"),
                                       ("pth", "fp32")])
def test_load_peak_memory_is_about_one_model(fp32_files, ext, dtype):
    """Peak RSS growth while loading ≤ 1.3× the loaded model (fp32 file; text tower never read)."""
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(fp32_files / f"clip.{ext}"), dtype],
                         capture_output=True, text=True, check=True)
    ratio = float(out.stdout.strip().splitlines()[-1])
    assert ratio <= 1.3, ratio
