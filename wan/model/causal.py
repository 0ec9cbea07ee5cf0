"""``CausalWanModel``: a Wan 2.1 / Wan 2.2 TI2V DiT ready for block-causal sampling — our own weights, or ComfyUI's adopted.

This is also the object the pack's ``MODEL`` socket carries from ``LoadCausalWanModel``; the sampler node
recognises it by ``is_clipwan_causal_model``.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import torch
from torch import nn

from . import dit
from ...weights import FilePages
from .checkpoint import load_wan_state_dict, read_file, resolve_dtype
from .config import WanConfig, config_from_shapes


def _check_cast(key: str, before: torch.Tensor, after: torch.Tensor, source: str) -> None:
    """A cast to a narrower float dtype (fp32/bf16 -> fp16) must not turn finite weights into inf (a LoRA merged
    at a huge strength, or weights beyond fp16's ±65504): refused naming the weight, not NaN video later."""
    if after.dtype == before.dtype or not after.is_floating_point() or after.device.type == "meta" \
            or torch.finfo(after.dtype).max >= torch.finfo(before.dtype).max or torch.isfinite(after).all():
        return
    peak = float(before.float().abs().max())
    raise ValueError(f"{source}: weight '{key}' holds values up to {peak:.3g}, beyond what "
                     f"{str(after.dtype).replace('torch.', '')} holds ({torch.finfo(after.dtype).max:.3g}); load the "
                     f"model in bf16 or fp32 (or lower the LoRA strength).")


class CausalWanModel:
    is_clipwan_causal_model = True  # how CausalWanSampler tells it from a ComfyUI ModelPatcher

    def __init__(self, tree: nn.Module, config: WanConfig, source: str = "", compute_dtype=None, device=None):
        self.tree = tree
        self._device = None if device is None else torch.device(device)
        self.config = config
        self.source = source
        self.compute_dtype = compute_dtype or dit.model_dtype(tree)

    # --- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], dtype=None, device="cpu", source: str = "state dict",
                        num_heads: Optional[int] = None) -> "CausalWanModel":
        """Build on the meta device and *assign* the given tensors (no copy unless dtype/device change)."""
        config = config_from_shapes({k: tuple(v.shape) for k, v in sd.items()}, num_heads=num_heads)
        dtype = resolve_dtype(dtype)
        with torch.device("meta"):
            tree = dit.WanDiT(config)
        expected = set(tree.state_dict().keys())
        missing = sorted(expected - set(sd))
        unexpected = sorted(set(sd) - expected)
        if missing or unexpected:
            raise ValueError(
                f"{source} does not match {config.describe()}: missing keys {missing[:6]}"
                f"{' ...' if len(missing) > 6 else ''}, unexpected keys {unexpected[:6]}"
                f"{' ...' if len(unexpected) > 6 else ''}. Is it a plain Wan 2.1 / Wan 2.2 TI2V DiT or Wan2.1-VACE (not S2V, Animate or a LoRA)?")
        tensors = {}
        pages = FilePages()  # a cast copy replaces a mapped file tensor: give its pages back (one model, not two)
        for k, v in sd.items():
            target = dtype if (dtype is not None and v.is_floating_point()) else None
            # Wan keeps the patch Conv3d in fp32 (ComfyUI too); other float weights follow the requested dtype
            if k.startswith("patch_embedding.") and target is not None:
                target = torch.float32 if v.dtype == torch.float32 else target
            tensors[k] = v.to(device=device, dtype=target) if (target or device) else v
            _check_cast(k, v, tensors[k], source)
            if tensors[k].data_ptr() != v.data_ptr():
                pages.release(v)
        tree.load_state_dict(tensors, strict=True, assign=True)
        if any(p.dtype not in (torch.float32, torch.float16, torch.bfloat16) for p in tree.parameters()):
            # e.g. fp8 files: store as is, compute in bf16 (weights are cast per layer by our Linear)
            return cls(tree.eval(), config, source, compute_dtype=torch.bfloat16)
        return cls(tree.eval(), config, source)

    @classmethod
    def from_file(cls, path: str, dtype=None, device="cpu", entry: str = "auto", lora: Optional[str] = None,
                  lora_strength: float = 1.0, prefer_entry: Optional[str] = None,
                  vace: Optional[str] = None) -> "CausalWanModel":
        """``lora``: a LoRA file (LongLive's lora.pt) merged into the weights before they are placed;
        ``prefer_entry``: with ``entry`` auto, the entry to take where the file has it (a family's). ``vace``: a
        Wan2.1-VACE checkpoint or VACE module file whose VACE weights are put beside the base's blocks (Scope's
        way of giving LongLive, Self-Forcing, Reward Forcing, MemFlow or Krea a VACE); the LoRA touches the base
        blocks only, as in Scope (VACE is loaded first, the LoRA wraps it)."""
        sd, source = load_wan_state_dict(path, entry, prefer_entry)
        if vace:
            from .vace import apply_vace, vace_state_dict_from

            sd = apply_vace(sd, vace_state_dict_from(read_file(vace), os.path.basename(vace)))
            source = f"{source} + VACE {os.path.basename(vace)}"
        if lora:
            from .lora import load_lora_file, merge_lora_file
            from .lora_live import remember

            tensors = load_lora_file(lora)
            sd, source = merge_lora_file(sd, lora, lora_strength, source, tensors)
        model = cls.from_state_dict(sd, dtype=dtype, device=device, source=source)
        if lora:  # its strength may change while a run plays (wan/model/lora_live.py)
            remember(model.tree, os.path.basename(lora), tensors, lora_strength)
        return model

    @classmethod
    def random(cls, config: WanConfig, seed: int = 0, dtype=torch.float32, device="cpu") -> "CausalWanModel":
        """Seeded random-init model of the given architecture (the embedded default; not a trained model)."""
        tree = dit.init_random(dit.WanDiT(config), seed).to(device=device, dtype=dtype)
        return cls(tree.eval(), config, f"random-init seed {seed}")

    @classmethod
    def adopt(cls, diffusion_model: nn.Module, compute_dtype=None, device=None,
              source: str = "ComfyUI MODEL") -> "CausalWanModel":
        """Wrap a module tree with Wan's names (ComfyUI's ``WanModel``) *without copying* its weights;
        ``device`` is where to compute (ComfyUI's load device; its ops move offloaded weights there)."""
        shapes = {k: tuple(v.shape) for k, v in diffusion_model.state_dict(keep_vars=True).items()}
        config = config_from_shapes(shapes, num_heads=getattr(diffusion_model, "num_heads", None))
        return cls(diffusion_model, config, source, compute_dtype=compute_dtype, device=device)

    # --- use ---------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        if self._device is not None:
            return self._device
        return self.tree.blocks[0].self_attn.q.weight.device

    def state_dict(self) -> dict:
        return self.tree.state_dict()

    def forward(self, x, t, text, clip_fea=None, y=None, vace=None) -> torch.Tensor:
        """Plain bidirectional forward (all frames at once) -> flow ``[B, 16, F, H, W]``; ``vace`` a
        ``vace.VaceStep`` (Wan2.1-VACE models)."""
        with torch.no_grad():
            return dit.forward(self.tree, self.config, x.to(self.device), t, text, clip_fea, y,
                               dtype=self.compute_dtype, vace=vace)

    def __repr__(self) -> str:
        return f"CausalWanModel({self.config.describe()}, from {self.source}, compute {self.compute_dtype})"


# The embedded default: the real Wan 2.1 i2v architecture (head_dim 128, umt5 4096-d text, ViT-H 1280-d CLIP
# tokens, 36 input channels, 3D RoPE) at a size a CPU runs in seconds. Seeded random init, NOT trained.
DEFAULT_CONFIG = WanConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=4, in_dim=36, has_img_emb=True)


def default_causal_wan(seed: int = 0, dtype=torch.float32, device="cpu") -> CausalWanModel:
    model = CausalWanModel.random(DEFAULT_CONFIG, seed=seed, dtype=dtype, device=device)
    model.source = (f"embedded default: seeded random-init Wan 2.1 i2v architecture (seed {seed}, dim 256, "
                    f"4 layers), not pretrained")
    return model
