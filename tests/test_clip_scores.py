"""CLIP scores (CLIP-T, CLIP-I, frame consistency) against independent computations with open_clip and
transformers on the same random weights, loaded from the real key layouts: Wan's .pth (XLM-RoBERTa text tower
``textual.*`` beside the ViT-H-style ``visual.*``), OpenCLIP (``CLIP`` and ``HFTextEncoder`` XLM-R) and
Hugging Face ``CLIPModel``."""

import math

import open_clip
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
import transformers
from open_clip.hf_model import HFTextEncoder
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from comfyui_clipwan.clip_vision import load_clip_vision
from comfyui_clipwan.clip_vision.scores import (StreamingScorer, parse_segments, read_csv, score_frames,
                                                segment_at)
from comfyui_clipwan.clip_vision.text_tower import load_text_tower

TOL = 1e-4
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
SIZE = 56  # the tiny towers' image size: frames at this size need no resize (the crop is tested elsewhere)
PROMPTS = ["a red fox in the snow", "a blue whale under water", "ein Hund im Park"]


def oracle_pixels(frames):
    """ComfyUI's CLIP preprocessing at the tower's size, written from its definition: 8-bit levels, mean/std."""
    x = frames.permute(0, 3, 1, 2)
    return ((torch.clip(255.0 * x, 0, 255).round() / 255.0) - MEAN) / STD


def frames_for(n, seed=3):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, SIZE, SIZE, 3, generator=g)
    drift = torch.rand(n, SIZE, SIZE, 3, generator=g)
    w = torch.linspace(0, 1, n).view(n, 1, 1, 1)
    return (1 - w) * base + w * drift  # a video drifting away from its first frame


def noisy(module, seed=0):
    """Small noise on LayerNorms and biases so a swapped or missing tensor cannot hide."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "ln" in name.lower() or "norm" in name.lower():
                p.add_(0.05 * torch.randn_like(p))
    return module.eval()


def expected_scores(img, txt_per_frame, ref):
    """The definitions (docs/clip_vision.md) from normalised oracle embeddings."""
    img = F.normalize(img, dim=-1)
    clip_t = None if txt_per_frame is None else 100 * (img * F.normalize(txt_per_frame, dim=-1)).sum(-1)
    clip_i = 100 * (img * F.normalize(ref, dim=-1)).sum(-1)
    consistency = 100 * (img[1:] * img[:-1]).sum(-1)
    return clip_t, clip_i, consistency


def assert_rows(rows, clip_t, clip_i, consistency):
    assert len(rows) == clip_i.shape[0]
    for i, r in enumerate(rows):
        if clip_t is not None:
            assert abs(r.clip_t - float(clip_t[i])) <= TOL, (i, r.clip_t, float(clip_t[i]))
        assert abs(r.clip_i - float(clip_i[i])) <= TOL
        if i == 0:
            assert r.consistency is None
        else:
            assert abs(r.consistency - float(consistency[i - 1])) <= TOL


# ------------------------------------------------------------------------------------------------------------
# OpenCLIP CLIP (BPE text tower)
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def openclip_model():
    torch.manual_seed(0)
    model = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=14,
                                                        image_size=SIZE),
                 text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2),
                 quick_gelu=False)
    return noisy(model)


def test_openclip_layout_scores_equal_open_clip(tmp_path, openclip_model):
    path = tmp_path / "open_clip_tiny.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in openclip_model.state_dict().items()}, str(path))
    # what shapes cannot tell (exact GELU on a 64-wide text tower) from an HF config.json beside the file
    (tmp_path / "config.json").write_text('{"text_config": {"hidden_act": "gelu", "num_attention_heads": 1}}')
    vision, text = load_clip_vision(path), load_text_tower(path)
    frames = frames_for(7)
    segments = [(0, PROMPTS[0]), (4, PROMPTS[1])]
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        img = openclip_model.encode_image(oracle_pixels(frames))
        txt = openclip_model.encode_text(tokenizer(PROMPTS[:2]))
        ref = openclip_model.encode_image(oracle_pixels(frames[:1]))
    per_frame = txt[[0, 0, 0, 0, 1, 1, 1]]
    scorer = score_frames(vision, frames, text, segments, batch=3)
    assert_rows(scorer.rows, *expected_scores(img, per_frame, ref))
    assert [r.segment for r in scorer.rows] == [0, 0, 0, 0, 1, 1, 1]
    # CLIP-I against a separate reference image
    reference = torch.rand(1, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        ref2 = openclip_model.encode_image(oracle_pixels(reference))
    scorer = score_frames(vision, frames, text, segments, reference=reference)
    assert_rows(scorer.rows, *expected_scores(img, per_frame, ref2))


def test_hf_clipmodel_scores_equal_transformers(tmp_path):
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu",
                         eos_token_id=49407, bos_token_id=49406, pad_token_id=0),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=1,
                           image_size=SIZE, patch_size=14, hidden_act="gelu"),
        projection_dim=24)
    torch.manual_seed(1)
    model = noisy(transformers.CLIPModel(config), seed=1)
    path = tmp_path / "hf_clip.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    vision, text = load_clip_vision(path), load_text_tower(path)
    frames = frames_for(5, seed=4)
    ids = open_clip.get_tokenizer("ViT-B-32")([PROMPTS[1]])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=oracle_pixels(frames))
    img, txt = out.image_embeds, out.text_embeds.expand(5, -1)
    scorer = score_frames(vision, frames, text, PROMPTS[1])
    assert_rows(scorer.rows, *expected_scores(img, txt, img[:1]))


# ------------------------------------------------------------------------------------------------------------
# XLM-RoBERTa text tower: Wan's .pth layout and OpenCLIP's HFTextEncoder layout
# ------------------------------------------------------------------------------------------------------------
def tiny_xlmr_tokenizer(folder):
    """A word-level tokenizer with xlm-roberta's special ids (<s>=0, <pad>=1, </s>=2, <unk>=3)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = sorted({w for p in PROMPTS + ["a dog", "the park"] for w in p.lower().split()})
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    vocab.update({w: i + 5 for i, w in enumerate(words)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = __import__("tokenizers").normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    path = folder / "tokenizer.json"
    tok.save(str(path))
    return tok, path


@pytest.fixture(scope="module")
def xlmr_clip():
    """open_clip's tiny XLM-R CLIP: its ViT (visual.*) + its HFTextEncoder over transformers' XLMRobertaModel."""
    torch.manual_seed(2)
    cfg = transformers.XLMRobertaConfig(vocab_size=40, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=128, max_position_embeddings=40, type_vocab_size=1,
                                        pad_token_id=1, layer_norm_eps=1e-5, hidden_act="gelu")
    text = noisy(HFTextEncoder("xlm-roberta-large", output_dim=24, config=cfg, pooler_type="mean_pooler",
                               proj_type="mlp", pretrained=False), seed=2)
    model = CLIP(embed_dim=24, vision_cfg=CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=14,
                                                        image_size=SIZE),
                 text_cfg=CLIPTextCfg(context_length=8, vocab_size=40, width=32, heads=1, layers=1))
    visual = noisy(model.visual, seed=3)
    return visual, text


def openclip_xlmr_sd(visual, text):
    sd = {"visual." + k: v for k, v in visual.state_dict().items()}
    sd.update({"text." + k: v for k, v in text.state_dict().items()})
    sd["logit_scale"] = torch.tensor(math.log(100.0))
    return sd


def wan_sd(visual, text):
    """The same weights under Wan 2.1's .pth names (XLMRobertaCLIP: visual.* and textual.*), mapped here from
    Wan's module definitions (wan/modules/clip.py, xlm_roberta.py)."""
    o, t = visual.state_dict(), text.state_dict()
    sd = {"log_scale": torch.tensor(math.log(100.0)),
          "visual.patch_embedding.weight": o["conv1.weight"], "visual.cls_embedding": o["class_embedding"].view(1, 1, -1),
          "visual.pos_embedding": o["positional_embedding"].unsqueeze(0), "visual.head": o["proj"],
          "visual.pre_norm.weight": o["ln_pre.weight"], "visual.pre_norm.bias": o["ln_pre.bias"],
          "visual.post_norm.weight": o["ln_post.weight"], "visual.post_norm.bias": o["ln_post.bias"]}
    ren = {"ln_1": "norm1", "ln_2": "norm2", "attn.out_proj": "attn.proj", "mlp.c_fc": "mlp.0", "mlp.c_proj": "mlp.2"}
    for i in range(len(visual.transformer.resblocks)):
        src, dst = f"transformer.resblocks.{i}.", f"visual.transformer.{i}."
        sd[dst + "attn.to_qkv.weight"] = o[src + "attn.in_proj_weight"]
        sd[dst + "attn.to_qkv.bias"] = o[src + "attn.in_proj_bias"]
        for a, b in ren.items():
            for p in ("weight", "bias"):
                sd[f"{dst}{b}.{p}"] = o[f"{src}{a}.{p}"]
    hf = "transformer."
    sd["textual.token_embedding.weight"] = t[hf + "embeddings.word_embeddings.weight"]
    sd["textual.type_embedding.weight"] = t[hf + "embeddings.token_type_embeddings.weight"]
    sd["textual.pos_embedding.weight"] = t[hf + "embeddings.position_embeddings.weight"]
    sd["textual.norm.weight"] = t[hf + "embeddings.LayerNorm.weight"]
    sd["textual.norm.bias"] = t[hf + "embeddings.LayerNorm.bias"]
    block = {"attention.self.query": "attn.q", "attention.self.key": "attn.k", "attention.self.value": "attn.v",
             "attention.output.dense": "attn.o", "attention.output.LayerNorm": "norm1", "intermediate.dense": "ffn.0",
             "output.dense": "ffn.2", "output.LayerNorm": "norm2"}
    for i in range(2):
        for a, b in block.items():
            for p in ("weight", "bias"):
                sd[f"textual.blocks.{i}.{b}.{p}"] = t[f"{hf}encoder.layer.{i}.{a}.{p}"]
    sd["textual.head.0.weight"] = t["proj.0.weight"]
    sd["textual.head.2.weight"] = t["proj.2.weight"]
    return {k: v.clone().contiguous() for k, v in sd.items()}


@pytest.mark.parametrize("layout", ["wan_pth", "open_clip"])
def test_xlm_roberta_tower_scores_equal_open_clip(tmp_path, xlmr_clip, layout):
    visual, text = xlmr_clip
    tok, tok_path = tiny_xlmr_tokenizer(tmp_path)
    if layout == "wan_pth":
        path = tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"
        torch.save(wan_sd(visual, text), path)
        tokenizer = None  # found beside the weights
    else:
        path = tmp_path / "open_clip_xlmr.safetensors"
        safetensors.torch.save_file({k: v.contiguous() for k, v in openclip_xlmr_sd(visual, text).items()}, str(path))
        tokenizer = str(tok_path)
    vision, tower = load_clip_vision(path), load_text_tower(path, tokenizer=tokenizer)
    assert tower.kind == "xlm-roberta"
    frames = frames_for(6, seed=5)
    # the oracle tokenizes with the tokenizers library itself and pads by hand with <pad> = 1
    encoded = [tok.encode(p).ids for p in PROMPTS]
    width = max(len(e) for e in encoded)
    ids = torch.tensor([e + [1] * (width - len(e)) for e in encoded])
    with torch.no_grad():
        txt = text(ids)
        img = visual(oracle_pixels(frames))
    segments = [(0, PROMPTS[0]), (2, PROMPTS[1]), (5, PROMPTS[2])]
    scorer = score_frames(vision, frames, tower, segments, frames_per_block=4)
    assert_rows(scorer.rows, *expected_scores(img, txt[[0, 0, 1, 1, 1, 2]], img[:1]))
    # blocks of 1 latent frame = 4 video frames: frame 0 alone (its latent frame decodes to one), then 4 each
    assert [r.block for r in scorer.rows] == [0, 1, 1, 1, 1, 2]
    # a prompt's embedding does not depend on how much padding its batch has
    alone = tower.encode([PROMPTS[0]])
    assert (alone - tower.encode(PROMPTS)[:1]).abs().max() <= 1e-5


def test_xlm_roberta_without_tokenizer_is_a_clear_error(tmp_path, xlmr_clip):
    path = tmp_path / "wan_clip.pth"
    torch.save(wan_sd(*xlmr_clip), path)
    with pytest.raises(ValueError, match="xlm-roberta-large's tokenizer"):
        load_text_tower(path)


def test_vision_only_file_has_no_text_tower(tmp_path, openclip_model):
    path = tmp_path / "vision_only.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in openclip_model.state_dict().items()
                                 if k.startswith("visual.")}, str(path))
    with pytest.raises(ValueError, match="no CLIP text tower found.*CLIP-I and frame consistency still work"):
        load_text_tower(path)


# ------------------------------------------------------------------------------------------------------------
# Streaming: block by block equals the whole batch; every n-th frame; bounded state
# ------------------------------------------------------------------------------------------------------------
def test_streaming_pieces_equal_whole_batch_and_every_n(tmp_path, openclip_model):
    path = tmp_path / "oc.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in openclip_model.state_dict().items()}, str(path))
    (tmp_path / "config.json").write_text('{"text_config": {"hidden_act": "gelu"}}')
    vision, text = load_clip_vision(path), load_text_tower(path)
    frames = frames_for(13, seed=6)
    timeline = "0: a red fox in the snow\n5: a blue whale under water"
    whole = score_frames(vision, frames, text, timeline, batch=13)
    stream = StreamingScorer(vision, text, timeline)
    for start, count in ((0, 1), (1, 4), (5, 4), (9, 4)):  # the video's first latent frame gives 1 frame, then 4
        stream.update(frames[start:start + count].unsqueeze(0), start, block=start // 5)
    for a, b in zip(whole.rows, stream.rows):
        for name in ("clip_t", "clip_i", "consistency"):
            x, y = getattr(a, name), getattr(b, name)
            assert (x is None and y is None) or abs(x - y) <= 1e-4
    # every 4th frame: frames 0, 4, 8, 12; consistency is between consecutive scored frames
    every = StreamingScorer(vision, text, timeline, every_n=4)
    for start, count in ((0, 1), (1, 4), (5, 4), (9, 4)):
        every.update(frames[start:start + count], start)
    assert [r.frame for r in every.rows] == [0, 4, 8, 12]
    with torch.no_grad():
        img = F.normalize(openclip_model.encode_image(oracle_pixels(frames[[0, 4, 8, 12]])), dim=-1)
    assert abs(every.rows[2].consistency - float(100 * (img[2] * img[1]).sum())) <= TOL
    assert [r.segment for r in every.rows] == [0, 0, 1, 1]
    # what the scorer holds between pieces: the previous embedding, the reference and the prompts, no frames
    held = [v for v in vars(every).values() if isinstance(v, torch.Tensor)]
    assert sum(t.numel() for t in held) == (1 + 1 + 2) * 32
    paths = every.write(str(tmp_path / "scores"))
    back = read_csv(paths["csv"])
    assert [r.frame for r in back] == [0, 4, 8, 12] and abs(back[3].clip_i - every.rows[3].clip_i) < 1e-5
    summary = every.summary()
    assert summary["segments"][1]["frames"] == 2
    assert abs(summary["segments"][1]["clip_t"] - (every.rows[2].clip_t + every.rows[3].clip_t) / 2) < 1e-9


def test_parse_segments_and_active_prompt():
    assert parse_segments("a cat") == [(0, "a cat")]
    assert parse_segments("0: a cat\n# comment\n48: a dog") == [(0, "a cat"), (48, "a dog")]
    assert parse_segments([(10, "b"), (0, "a")]) == [(0, "a"), (10, "b")]
    segs = [(0, "a"), (10, "b")]
    assert [segment_at(segs, f) for f in (0, 9, 10, 11)] == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="line 2 .* no start frame"):
        parse_segments("0: a\nb")
    with pytest.raises(ValueError, match="must start at frame 0"):
        parse_segments("5: a")
    with pytest.raises(ValueError, match="same frame"):
        parse_segments([(0, "a"), (0, "b")])


def test_prompts_without_text_tower_is_a_clear_error():
    from comfyui_clipwan.clip_vision import default_clip_vision

    vision = default_clip_vision("ViT-B/32", layers=1)
    with pytest.raises(ValueError, match="no text tower"):
        StreamingScorer(vision, None, "a cat")
    with pytest.raises(ValueError, match="every_n must be 1 or more"):
        StreamingScorer(vision, every_n=0)


def test_plot_png_and_image_mark_switches(tmp_path):
    from comfyui_clipwan.clip_vision.score_plot import plot_image, plot_png
    from comfyui_clipwan.clip_vision.scores import FrameScore

    rows = [FrameScore(f, f // 4, int(f >= 8), 30 - f * 0.5, 100 - f, None if f == 0 else 95.0) for f in range(16)]
    segs = [(0, "a cat"), (8, "a dog")]
    png = plot_png(str(tmp_path / "chart.png"), rows, segs)
    from PIL import Image

    with Image.open(png) as im:
        assert im.size == (800, 360)
    dark, light = plot_image(rows, segs, "dark"), plot_image(rows, segs, "light")
    assert dark.shape == (1, 360, 800, 3) and dark.mean() < 0.3 < 0.8 < light.mean()
    # the three score colours are drawn (Okabe-Ito orange, sky blue, green)
    for rgb in ((0xE6, 0x9F, 0x00), (0x56, 0xB4, 0xE9), (0x00, 0x9E, 0x73)):
        target = torch.tensor(rgb, dtype=torch.float32) / 255
        assert ((light[0] - target).abs().max(-1).values < 0.02).sum() > 50, rgb


# ------------------------------------------------------------------------------------------------------------
# CLI: `score VIDEO` equals scoring the decoded frames; `sample --scores` / demo write them beside the video
# ------------------------------------------------------------------------------------------------------------
def test_cli_score_video_equals_open_clip_on_decoded_frames(tmp_path, openclip_model, capsys):
    from comfyui_clipwan.cli import main
    from comfyui_clipwan.wan.video.writer import VideoWriter, read_video_frames

    path = tmp_path / "oc.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in openclip_model.state_dict().items()}, str(path))
    (tmp_path / "config.json").write_text('{"text_config": {"hidden_act": "gelu"}}')
    video = tmp_path / "v.mp4"
    with VideoWriter(str(video), fps=16) as w:
        w.write(frames_for(9, seed=8))
    (tmp_path / "tl.txt").write_text("0: a red fox in the snow\n4: a blue whale under water\n")
    # no block size given: 'N: prompt' lines are video frames (the score's own form, kept)
    assert main(["score", str(video), "--timeline", str(tmp_path / "tl.txt"), "--clip", str(path), "--every", "2"]) == 0
    rows = read_csv(str(tmp_path / "v.clip_scores.csv"))
    assert (tmp_path / "v.clip_scores.png").stat().st_size > 10_000 and (tmp_path / "v.clip_scores.json").exists()
    decoded = torch.from_numpy(read_video_frames(str(video))).float() / 255  # what the oracle sees: the file
    picked = decoded[[0, 2, 4, 6, 8]]
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    with torch.no_grad():
        img = openclip_model.encode_image(oracle_pixels(picked))
        txt = openclip_model.encode_text(tokenizer(PROMPTS[:2]))
    assert_rows(rows, *expected_scores(img, txt[[0, 0, 1, 1, 1]], img[:1]))
    assert [r.block for r in rows] == [0] * 5  # no block size: one block
    assert main(["score", str(tmp_path / "missing.mp4"), "--prompt", "x"]) == 2
    assert "video not found" in capsys.readouterr().err


def test_real_size_wan_text_tower_key_names_and_shapes():
    """At real size (on the meta device: no memory), our XLM-R tower's parameters are exactly the ``textual.*``
    keys of Wan's .pth with their shapes (written from Wan's XLMRobertaCLIP definition), and the config
    detected from those shapes is xlm-roberta-large's (16 heads of 64, 24 layers, 1024-d head)."""
    from comfyui_clipwan.clip_vision.text_tower import XLMRobertaConfig, XLMRobertaTower, xlmr_config

    want = {"token_embedding.weight": (250002, 1024), "type_embedding.weight": (1, 1024),
            "pos_embedding.weight": (514, 1024), "norm.weight": (1024,), "norm.bias": (1024,),
            "head.0.weight": (1024, 1024), "head.2.weight": (1024, 1024)}
    for i in range(24):
        for name in ("attn.q", "attn.k", "attn.v", "attn.o"):
            want[f"blocks.{i}.{name}.weight"], want[f"blocks.{i}.{name}.bias"] = (1024, 1024), (1024,)
        for name in ("norm1", "norm2"):
            want[f"blocks.{i}.{name}.weight"], want[f"blocks.{i}.{name}.bias"] = (1024,), (1024,)
        want[f"blocks.{i}.ffn.0.weight"], want[f"blocks.{i}.ffn.0.bias"] = (4096, 1024), (4096,)
        want[f"blocks.{i}.ffn.2.weight"], want[f"blocks.{i}.ffn.2.bias"] = (1024, 4096), (1024,)
    with torch.device("meta"):
        tower = XLMRobertaTower(XLMRobertaConfig())
    assert {k: tuple(v.shape) for k, v in tower.state_dict().items()} == want
    shapes = {k: torch.empty(v, device="meta") for k, v in want.items()}
    assert xlmr_config(shapes) == XLMRobertaConfig()
    assert XLMRobertaConfig().max_tokens == 512  # Wan tokenizes to max_text_len - 2
