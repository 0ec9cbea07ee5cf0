"""Every ```python and ```bash snippet of README.md and docs/*.md runs here, at tiny size.

Convention (also stated in README.md, "Contributing"): a snippet that cannot run in the test suite
(it installs packages, needs a running ComfyUI, a GPU, the Axera toolchain) carries the HTML comment
``<!-- skip-test: REASON -->`` on the line just above its opening fence; pytest reports it as skipped with
that reason. Every other snippet must run. Usage synopses (``[--flag X]``) go in ```text fences.

Snippets run in a scratch folder holding tiny stand-ins under the file names the docs use (``STAND_INS``:
the real key layouts and containers, one block deep), so a reader's command and the tested command are the
same text. A snippet naming a new file needs its stand-in here. Bash snippets find ``comfyui-clipwan`` and
``python`` on PATH (this interpreter, this checkout); Python snippets run in a fresh namespace.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

import comfyui_clipwan

CHECKOUT = pathlib.Path(comfyui_clipwan.__file__).resolve().parent
RUN_LANGS = {"python", "bash", "sh", "shell"}
SKIP = re.compile(r"^<!--\s*skip-test:\s*(.+?)\s*-->$")


@dataclasses.dataclass
class Snippet:
    file: str
    line: int
    lang: str
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.file}:{self.line}"


def doc_snippets(root: pathlib.Path = CHECKOUT) -> list[Snippet]:
    """Fenced blocks of README.md and docs/*.md in the languages we run, with their skip reasons."""
    found = []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            opening = re.match(r"^```(\w*)\s*$", lines[i])
            if not opening:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            above = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            skip = SKIP.match(above)
            if opening.group(1) in RUN_LANGS:
                found.append(Snippet(str(path.relative_to(root)), i + 1, opening.group(1),
                                     "\n".join(lines[i + 1:end]), skip.group(1) if skip else None))
            i = end + 1
    return found


# ---- tiny stand-ins under the names the docs use ---------------------------------------------------------

def _tiny_vit_h() -> dict:
    """Canonical (HF / ComfyUI) names of a 1-block ViT-H/14: the real width, 257 tokens, projection."""
    from comfyui_clipwan.clip_vision import default_clip_vision

    return {k: v.contiguous() for k, v in default_clip_vision("ViT-H/14", seed=3, layers=1).state_dict_hf().items()}


def _wan_clip_pth(hf: dict) -> dict:
    """The same tower under the key names of Wan's models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth."""
    e, layer = "vision_model.embeddings.", "vision_model.encoder.layers.0."
    sd = {"visual.patch_embedding.weight": hf[e + "patch_embedding.weight"],
          "visual.cls_embedding": hf[e + "class_embedding"].view(1, 1, -1),
          "visual.pos_embedding": hf[e + "position_embedding.weight"].unsqueeze(0),
          "visual.head": hf["visual_projection.weight"].t().contiguous(),
          "log_scale": torch.tensor(4.6052), "textual.token_embedding.weight": torch.zeros(4, 8)}
    for ours, theirs in (("pre_layrnorm", "pre_norm"), ("post_layernorm", "post_norm")):
        for p in ("weight", "bias"):
            sd[f"visual.{theirs}.{p}"] = hf[f"vision_model.{ours}.{p}"]
    for p in ("weight", "bias"):
        sd[f"visual.transformer.0.attn.to_qkv.{p}"] = torch.cat(
            [hf[f"{layer}self_attn.{x}_proj.{p}"] for x in "qkv"])
        for ours, theirs in (("layer_norm1", "norm1"), ("layer_norm2", "norm2"), ("self_attn.out_proj", "attn.proj"),
                             ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2")):
            sd[f"visual.transformer.0.{theirs}.{p}"] = hf[f"{layer}{ours}.{p}"]
    return sd


def _self_forcing_pt(path: pathlib.Path) -> None:
    """A 1-layer Wan 2.1 i2v DiT in Self-Forcing's container: ``generator_ema`` with ``model.`` prefixes."""
    from comfyui_clipwan.wan import CausalWanModel, WanConfig

    cfg = WanConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=1, in_dim=36, has_img_emb=True)
    sd = CausalWanModel.random(cfg, seed=0).state_dict()
    torch.save({"generator_ema": {"model." + k: v.contiguous() for k, v in sd.items()}}, path)


def _rolling_forcing_pt(path: pathlib.Path) -> None:
    """A 1-layer Wan 2.1 t2v DiT in Rolling Forcing's container: ``generator`` (``model.``) and the EMA copy
    ``generator_ema`` with FSDP-wrapped keys (``model._fsdp_wrapped_module.``), as its authors save them."""
    from comfyui_clipwan.wan import CausalWanModel, WanConfig

    cfg = WanConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=1, in_dim=16)
    sd = CausalWanModel.random(cfg, seed=0).state_dict()
    torch.save({"generator": {"model." + k: v.contiguous() for k, v in sd.items()},
                "generator_ema": {"model._fsdp_wrapped_module." + k: v.contiguous() for k, v in sd.items()}}, path)


def _krea_safetensors(path: pathlib.Path) -> None:
    """A 1-layer Wan 2.1 t2v DiT as Krea ships ``krea-realtime-video-14b.safetensors``: flat ``model.*`` keys."""
    from comfyui_clipwan.wan import CausalWanModel, WanConfig

    cfg = WanConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=1, in_dim=16)
    sd = CausalWanModel.random(cfg, seed=0).state_dict()
    safetensors.torch.save_file({"model." + k: v.contiguous() for k, v in sd.items()}, str(path))


def _longlive2_files(ws: pathlib.Path) -> None:
    """LongLive 2.0's ``model_bf16.pt`` layout (``generator`` entry, ``model.`` prefixes) around a 1-layer
    Wan 2.2 TI2V-shaped DiT (48 latent channels), a raw 48-channel start latent and two umt5 prompts."""
    from comfyui_clipwan.wan import CausalWanModel, WanConfig

    cfg = WanConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=1, in_dim=48, out_dim=48)
    sd = CausalWanModel.random(cfg, seed=0).state_dict()
    torch.save({"generator": {"model." + k: v.contiguous() for k, v in sd.items()}}, ws / "model_bf16.pt")
    g = torch.Generator().manual_seed(0)
    torch.save(torch.randn(1, 48, 1, 4, 4, generator=g), ws / "start_latent.pt")
    for name in ("prompt.pt", "prompt2.pt"):
        torch.save(torch.randn(1, 7, 4096, generator=g), ws / name)


def _longlive(folder: pathlib.Path) -> None:
    """LongLive 1.0 as shipped: ``longlive_base.pt`` {generator} with ``model.`` prefixes and ``lora.pt``
    {generator_lora, critic_lora, step} with PEFT keys (rank 4 here, 256 in the real file); plus the VAE latent
    of a start image at the CLI's default 128x128."""
    from comfyui_clipwan.wan import CausalWanModel, WanConfig

    sd = CausalWanModel.random(WanConfig(dim=128, ffn_dim=256, num_heads=1, num_layers=1), seed=1).state_dict()
    torch.save({"generator": {"model." + k: v.contiguous() for k, v in sd.items()}}, folder / "longlive_base.pt")
    g = torch.Generator().manual_seed(2)
    lora = {}
    for key, w in sd.items():
        if key.startswith("blocks.") and key.endswith(".weight") and w.dim() == 2:
            module = "base_model.model." + key[: -len(".weight")]
            lora[module + ".lora_A.weight"] = torch.randn(4, w.shape[1], generator=g) * 0.02
            lora[module + ".lora_B.weight"] = torch.randn(w.shape[0], 4, generator=g) * 0.02
    torch.save({"generator_lora": lora, "critic_lora": {}, "step": 1}, folder / "lora.pt")
    safetensors.torch.save_file({"latent": torch.randn(1, 16, 1, 16, 16, generator=g)},
                                str(folder / "start_latent.safetensors"))


def _open_clip_b32(path: pathlib.Path) -> None:
    """A full OpenCLIP CLIP (vision + text) of ViT-B/32's layout, 1 block and 64 wide per tower."""
    import open_clip

    model = open_clip.model.CLIP(
        embed_dim=32, quick_gelu=True,
        vision_cfg=open_clip.model.CLIPVisionCfg(layers=1, width=64, patch_size=32, image_size=224, head_width=32),
        text_cfg=open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=1))
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _siglip(folder: pathlib.Path) -> None:
    """A google/siglip-base-patch16-224 repo folder: SiglipModel weights (real key names, 1 block, 32 wide, 32 px),
    its config.json, and a SentencePiece spiece.model trained on a few sentences (SigLIP's special pieces)."""
    import sentencepiece
    from transformers import SiglipConfig, SiglipModel

    folder.mkdir()
    torch.manual_seed(0)
    config = SiglipConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=16))
    model = SiglipModel(config)
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                str(folder / "model.safetensors"))
    config.save_pretrained(str(folder))
    (folder / "s.txt").write_text("a photo of a cat\na photo of a dog\na red car at night\n" * 20)
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "s.txt"), model_prefix=str(folder / "spiece"), vocab_size=30, hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        minloglevel=2)


def _wan_vae(ws: pathlib.Path) -> None:
    """The Wan 2.1 VAE at base width 8 (real: 96), Wan's key names: ComfyUI's .safetensors and Wan's .pth."""
    from comfyui_clipwan.wan.vae.wan21 import WanVAE, WanVAEConfig

    sd = {k: v.contiguous() for k, v in WanVAE.random(WanVAEConfig(dim=8), seed=0).tree.state_dict().items()}
    safetensors.torch.save_file(sd, str(ws / "wan_2.1_vae.safetensors"))
    torch.save(sd, ws / "Wan2.1_VAE.pth")


def _umt5(ws: pathlib.Path) -> None:
    """Wan's umt5 encoder .pth (its key names, 4096-d like the real one, 1 layer, 1 head of 8) and a
    tokenizer folder; plus prompt.pt, a saved umt5 context."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    from comfyui_clipwan.wan.text.umt5 import _WAN_TO_HF

    words = "a red fox trotting through fresh snow in".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    torch.manual_seed(0)
    hf = UMT5EncoderModel(UMT5Config(vocab_size=len(vocab), d_model=4096, d_kv=8, d_ff=8, num_layers=1,
                                     num_heads=1, feed_forward_proj="gated-gelu", is_encoder_decoder=False))
    hf_sd = hf.state_dict()
    to_wan = {h: w for w, h in _WAN_TO_HF}
    wan = {"token_embedding.weight": hf_sd["shared.weight"], "norm.weight": hf_sd["encoder.final_layer_norm.weight"]}
    for key, value in hf_sd.items():
        if key.startswith("encoder.block."):
            _, _, i, rest = key.split(".", 3)
            wan[f"blocks.{i}.{to_wan[rest]}"] = value.contiguous()
    torch.save(wan, ws / "models_t5_umt5-xxl-enc-bf16.pth")
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(str(ws / "google" / "umt5-xxl"))
    if not (ws / "prompt.pt").exists():  # the Wan 2.2 stand-ins may have written one already
        torch.save(torch.randn(1, 5, 4096, generator=torch.Generator().manual_seed(0)), ws / "prompt.pt")


def _image(path: pathlib.Path, seed: int, size=(96, 64)) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> pathlib.Path:
    ws = tmp_path_factory.mktemp("docs")
    hf = _tiny_vit_h()
    safetensors.torch.save_file({k: v.half() for k, v in hf.items()}, str(ws / "clip_vision_h.safetensors"))
    (ws / "models" / "clip_vision").mkdir(parents=True)
    safetensors.torch.save_file(hf, str(ws / "models" / "clip_vision" / "clip_vision_h.safetensors"))
    torch.save(_wan_clip_pth(hf), ws / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    _self_forcing_pt(ws / "self_forcing_dmd.pt")
    _rolling_forcing_pt(ws / "rolling_forcing_dmd.pt")
    _krea_safetensors(ws / "krea-realtime-video-14b.safetensors")
    _longlive(ws)
    _open_clip_b32(ws / "open_clip_vit_b32.safetensors")
    _siglip(ws / "siglip-base-patch16-224")
    _longlive2_files(ws)
    _wan_vae(ws)
    _umt5(ws)
    for i, name in enumerate(("img.png", "a.png", "b.jpg")):
        _image(ws / name, i)
    (ws / "imgs").mkdir()
    for i in range(2):
        _image(ws / "imgs" / f"{i}.png", 10 + i, (64, 80))
    (ws / "prompts.txt").write_text("a photo of a dog\na photo of a cat\n")
    for shared in ("example_workflows", "tests"):
        (ws / shared).symlink_to(CHECKOUT / shared)
    bin_dir = ws.parent / f"{ws.name}-bin"
    bin_dir.mkdir()
    for name, target in (("comfyui-clipwan", f'"{sys.executable}" -m comfyui_clipwan'), ("python", f'"{sys.executable}"')):
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {target} \"$@\"\n")
        (bin_dir / name).chmod(0o755)
    yield ws
    shutil.rmtree(ws, ignore_errors=True)  # ~0.9 GB of tiny-but-real checkpoints: gone after the module
    shutil.rmtree(bin_dir, ignore_errors=True)


def _environment(ws: pathlib.Path) -> dict:
    env = dict(os.environ)
    # no pulsar2 / docker from the host: the export then writes its build inputs and skips the build
    env["PATH"] = f"{ws.parent / (ws.name + '-bin')}:/usr/bin:/bin"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


SNIPPETS = doc_snippets()


def test_snippets_are_found_and_skips_give_reasons():
    assert len(SNIPPETS) >= 5, [s.id for s in SNIPPETS]
    assert all(s.skip.strip() for s in SNIPPETS if s.skip is not None)


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_doc_snippet_runs(snippet, workspace):
    if snippet.skip is not None:
        pytest.skip(f"{snippet.id}: {snippet.skip}")
    env = _environment(workspace)
    if snippet.lang == "python":
        command = [sys.executable, "-c", snippet.code]
    else:
        command = ["bash", "-e", "-o", "pipefail", "-c", snippet.code]
    out = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{snippet.id} failed:\n{snippet.code}\n--- output:\n{out.stdout[-3000:]}{out.stderr[-3000:]}"


def test_docs_name_no_machine_paths():
    """Docs are read on other machines: no absolute paths of the machine they were written on."""
    machine = re.compile(r"(?<![\w.])/(?:work|tmp|root|home|Users)/[\w.-]+")
    found = [f"{path.name}:{n}: {m.group(0)}"
             for path in [CHECKOUT / "README.md", *sorted((CHECKOUT / "docs").glob("*.md"))]
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             for m in machine.finditer(line)]
    assert found == []
