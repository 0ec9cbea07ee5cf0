"""Image and LoRA changes on a timeline: a new reference image (CLIP features, start-image latent) or a new LoRA
strength from a block on, beside the prompt segments (kept apart from them: ``Timeline.controls``).

What a change does, per image route the model reads (``wan.conditioning.image.ImageRoutes``):

* **clip** (Wan i2v, SkyReels-V2-I2V, Matrix-Game 2.0: ``img_emb`` + ``k_img``/``v_img``): the cross-attention
  context is rebuilt ONCE at the change with the new features (``dit.encode_context``), as Matrix-Game's
  ``crossattn_cache`` is built once per conditioning; the self-attention KV cache keeps what it holds. A blend over
  N blocks moves the features linearly, ``lerp(old, new, t)`` with ``t = linspace(0, 1, N)`` (the timeline's blend
  convention: the first block still has the old features, the N-th the new ones): one rebuild per blend block.
* **concat** (Wan i2v, in_dim 36): from the change's first latent frame on, Wan's ``y`` marks that frame as known
  (mask 1 on its 4 channels) and carries the new image's latent there — Wan's own i2v rule (known first frame)
  moved to the block where the image changes; later frames keep the run's own ``y`` (unknown, grey latent).
* **first frames** (t2v causal models, Wan 2.2 TI2V): the first latent frame of the change's block is clamped to
  the new image's clean latent at timestep 0 while the block is denoised (LongLive 2.0's i2v clamp,
  ``loop.clamp_first_frames``, applied at that block), so the video continues from exactly that image; the block's
  normal cache pass writes it into the KV cache.

No public code defines a mid-video image change for a causal Wan (LongLive main has no per-shot image input, its
i2v clamps the first block only; Matrix-Game and SkyReels build their image conditioning once per video), so the
rules above are the pack's: each is the family's own start-image rule applied at the change's block. The attention
sink is not rewritten (LongLive 2.0's multi-shot sink pins a block at a *scene cut*; combine a cut with an image
change for that).

A **LoRA strength** change needs a LoRA merged into the weights at load (``LoadCausalWanModel``'s lora_name, the
CLI's ``--lora``: ``wan.model.lora_live``); the delta ``(s_new - s_old)·alpha/rank·B@A`` is added in place at the
block boundary and the loaded strength is put back when the run ends. Refused for families whose LoRA *is* the
distilled generator (LongLive 1.0, MemFlow: ``presets.lora_rank``).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict, List, Optional, Sequence

import torch

from ..model.features import check_clip_features

IMAGE_ROUTES = ("both", "clip", "start")  # what an image change carries: both, the CLIP reference, the start image


@dataclasses.dataclass
class ImageChange:
    """From ``block`` on: ``clip_fea`` ``[1|B, 257, 1280]`` (CLIP vision penultimate states of the new image) and/or
    ``latent`` ``[1|B, C, 1, h, w]`` (its clean VAE latent, normalised: the concat / first-frame routes).
    ``blend_blocks`` > 0 moves the CLIP features there over that many blocks (from ``blend_from`` if given, else
    from the features in use); a blend carries no latent."""

    block: int
    clip_fea: Optional[torch.Tensor] = None
    latent: Optional[torch.Tensor] = None
    blend_blocks: int = 0
    blend_from: Optional[torch.Tensor] = None
    label: str = ""  # what the player and the sidecar show (a file name)
    source: str = ""
    path: str = ""  # an image file still to encode (a timeline text line; Controls.encode_images)
    route: str = "both"  # what encoding it makes: "both", "clip" (CLIP features only) or "start" (latent only)

    @property
    def encoded(self) -> bool:
        return self.clip_fea is not None or self.latent is not None

    def check(self, where: str = "") -> "ImageChange":
        at = f"{where or self.source or 'image change'}: "
        if int(self.block) < 1:
            raise ValueError(f"{at}an image change starts at block 1 or later (block {self.block}); block 0's image "
                             f"is the run's own start image (Wan I2V Conditioning / the CLI's --image).")
        if not self.encoded and not self.path:
            raise ValueError(f"{at}the change holds no image: give its CLIP vision features and/or its latent.")
        if self.route not in IMAGE_ROUTES:
            raise ValueError(f"{at}route '{self.route}' is not one of {list(IMAGE_ROUTES)}.")
        for t, what in ((self.clip_fea, "CLIP features"), (self.blend_from, "blend_from CLIP features")):
            if t is not None:
                check_clip_features(t, f"{at}{what}")
        if int(self.blend_blocks) < 0:
            raise ValueError(f"{at}blend_blocks {self.blend_blocks} must be >= 0 (0 = change at once).")
        if self.blend_blocks and self.encoded and (self.clip_fea is None or self.latent is not None):
            raise ValueError(f"{at}a blend moves the CLIP reference only: give clip_fea and no latent (a new start "
                             f"image changes at once: blend_blocks 0).")
        if self.latent is not None and (not isinstance(self.latent, torch.Tensor) or self.latent.dim() != 5
                                        or self.latent.shape[2] != 1):
            shape = list(self.latent.shape) if isinstance(self.latent, torch.Tensor) else type(self.latent).__name__
            raise ValueError(f"{at}the image latent is {shape}; expected one VAE-encoded frame [1, C, 1, h, w] "
                             f"(encode the single image, not a video).")
        return self


@dataclasses.dataclass
class LoraChange:
    """From ``block`` on, the merged LoRA ``name`` ("" = the model's only one) at ``strength``."""

    block: int
    strength: float
    name: str = ""
    source: str = ""

    def check(self, where: str = "") -> "LoraChange":
        from ..model.lora import check_strength

        at = where or self.source or "LoRA change"
        if int(self.block) < 1:
            raise ValueError(f"{at}: a LoRA strength change starts at block 1 or later (block {self.block}); block "
                             f"0's strength is the one the model was loaded with (lora_strength / --lora-strength).")
        self.strength = check_strength(self.strength, at)
        return self


class Controls:
    """The image and LoRA changes of a timeline (``Timeline.controls``), each list in the order added; per block
    the last one added wins."""

    def __init__(self, images: Sequence[ImageChange] = (), loras: Sequence[LoraChange] = ()):
        self.images: List[ImageChange] = [c.check() for c in images]
        self.loras: List[LoraChange] = [c.check() for c in loras]
        self.clip_vision = None  # the host's CLIP vision model for live images (ComfyUI: a timeline node's input)

    def __bool__(self) -> bool:
        return bool(self.images or self.loras)

    def copy(self) -> "Controls":
        out = Controls([dataclasses.replace(c) for c in self.images], [dataclasses.replace(c) for c in self.loras])
        out.clip_vision = self.clip_vision
        return out

    def pending_images(self) -> list:
        """The image changes still to encode (read from a timeline text: a path each)."""
        return [c for c in self.images if not c.encoded]

    def encode_images(self, encoder, folder: str = "") -> "Controls":
        """Encode every pending image change: ``encoder(image [1, H, W, 3] in 0..1, route) -> (clip_fea, latent)``
        (``image_encoder``); paths are relative to ``folder`` (the timeline file's)."""
        from ...images import read_image_array

        for c in self.pending_images():
            path = c.path if os.path.isabs(c.path) or not folder else os.path.join(folder, c.path)
            image = torch.from_numpy(read_image_array(path))[:1]
            c.clip_fea, c.latent = encoder(image, "clip" if c.blend_blocks else c.route)
            if c.blend_blocks:
                c.latent = None
            c.label = c.label or os.path.basename(c.path)
            c.check()
        return self

    def insert(self, change) -> None:
        """Add a change (a live one, at its block); one of the same kind already at that block is replaced."""
        change.check()
        if isinstance(change, ImageChange):
            self.images = [c for c in self.images if c.block != change.block] + [change]
        else:
            self.loras = [c for c in self.loras if (c.block, c.name) != (change.block, change.name)] + [change]


def lerp_features(a: torch.Tensor, b: torch.Tensor, blocks: int) -> list:
    """The CLIP features of the ``blocks`` blocks of a blend from ``a`` to ``b`` (float32)."""
    a, b = a.float(), b.float()
    return [torch.lerp(a, b, float(t)) for t in torch.linspace(0, 1, steps=int(blocks))]


@dataclasses.dataclass
class BlockControls:
    """What changes before one block: new CLIP features (None: unchanged), a new image latent (None: none), LoRA
    strengths ``{name: strength}``, and the change indices (for the player's label)."""

    clip_fea: Optional[torch.Tensor] = None
    latent: Optional[torch.Tensor] = None
    loras: Dict[str, float] = dataclasses.field(default_factory=dict)
    image: Optional[int] = None  # index into controls.images
    lora: Optional[int] = None  # index into controls.loras


class ControlSchedule:
    """The timeline's controls compiled against a run: ``at[block]`` (``BlockControls``). ``take(block)`` first
    inserts the live changes ready at that boundary (``LiveControl.take_controls``) and rebuilds; ``applied``
    lists ``(block, kind, index)``."""

    def __init__(self, timeline, clip_fea: Optional[torch.Tensor] = None, check=None, first_block: int = 1):
        self.timeline, self.base_clip = timeline, clip_fea
        self.check = check  # the run's own checks of a change (the loop's): raise before any block is sampled
        self.first_block = max(1, int(first_block))  # changes before it wait (the start image's own blocks)
        self.applied: list = []
        for c in self.controls.images + self.controls.loras:
            self._check(c)
        self._build()

    @property
    def controls(self) -> Controls:
        return self.timeline.controls

    @property
    def live(self):
        return self.timeline.live

    def _check(self, change) -> None:
        if isinstance(change, ImageChange) and not change.encoded:
            raise ValueError(f"{change.source or 'an image change'} ({change.path}) is not encoded yet: the CLI "
                             f"encodes a timeline's images with --vae (start image) and --clip (CLIP reference); in "
                             f"Python call timeline.controls.encode_images(image_encoder(...)).")
        if change.block < self.first_block:
            raise ValueError(f"{change.source or 'a change'} at block {change.block}: this run's first generated "
                             f"block is {self.first_block} (the blocks before hold the start image); start it there "
                             f"or later.")
        if self.check is not None:
            self.check(change)

    def _build(self) -> None:
        self.at: Dict[int, BlockControls] = {}
        current = self.base_clip
        by_block = {c.block: i for i, c in enumerate(self.controls.images)}  # per block the last added wins
        starts = sorted(by_block)
        for k, block in enumerate(starts):
            i = by_block[block]
            c = self.controls.images[i]
            if c.blend_blocks:
                end = starts[k + 1] if k + 1 < len(starts) else block + int(c.blend_blocks)
                source = c.blend_from if c.blend_from is not None else current
                steps = lerp_features(source, c.clip_fea, c.blend_blocks) if source is not None else [c.clip_fea]
                for j, fea in enumerate(steps[:max(1, end - block)]):  # a later change cuts the blend short
                    self.at.setdefault(block + j, BlockControls()).clip_fea = fea
                    self.at[block + j].image = i
                current = steps[min(len(steps), max(1, end - block)) - 1]
            else:
                entry = self.at.setdefault(block, BlockControls())
                entry.clip_fea, entry.latent, entry.image = c.clip_fea, c.latent, i
                current = c.clip_fea if c.clip_fea is not None else current
        for i, c in enumerate(self.controls.loras):
            entry = self.at.setdefault(c.block, BlockControls())
            entry.loras[c.name] = c.strength
            entry.lora = i

    def take(self, block: int) -> Optional[BlockControls]:
        """The changes before ``block`` (None: nothing changes); ready live changes are placed here first."""
        if self.live is not None and block >= self.first_block and hasattr(self.live, "take_controls"):
            changes = self.live.take_controls(block, self._check)
            for change in changes:
                change.block = block
                self.controls.insert(change)
            if changes:
                self._build()
        entry = self.at.get(block)
        if entry is not None:
            if entry.image is not None:
                self.applied.append((block, "image", entry.image))
            if entry.lora is not None:
                self.applied.append((block, "lora", entry.lora))
        return entry

    def label(self) -> Optional[str]:
        """"image from block 8: fox.png; LoRA style.safetensors x0.5 from block 12" (the latest of each kind; a blend
        counts from its first block)."""
        parts = []
        for kind, changes in (("image", self.controls.images), ("lora", self.controls.loras)):
            seen = [(b, i) for b, k, i in self.applied if k == kind]
            if not seen:
                continue
            index = seen[-1][1]
            start = min(b for b, i in seen if i == index)
            c = changes[index]
            if kind == "image":
                parts.append(f"image from block {start}: {c.label or 'image'}")
            else:
                parts.append(" ".join(filter(None, ("LoRA", c.name, f"x{c.strength:g} from block {start}"))))
        return "; ".join(parts) or None


def concat_with_image(y: Optional[torch.Tensor], start: int, image_frame: int, latent: torch.Tensor,
                      mask_channels: int = 4) -> Optional[torch.Tensor]:
    """Wan i2v's ``y`` of a block starting at latent frame ``start`` with the frame ``image_frame`` marked known
    (mask 1) and holding ``latent`` ``[1|B, C, 1, h, w]`` (the concat route of an image change)."""
    if y is None or not start <= image_frame < start + y.shape[2]:
        return y
    y = y.clone()
    i = image_frame - start
    y[:, :mask_channels, i] = 1.0
    y[:, mask_channels:, i] = latent[:, :, 0].to(device=y.device, dtype=y.dtype)
    return y


class LoopControls:
    """A run's image and LoRA changes as the loop applies them (``CausalLoop``: ``before_block`` at each block
    boundary, ``concat`` / ``clamp`` when a forward reads the image, ``end`` when the run ends). Built only when the
    timeline has controls or takes live changes."""

    def __init__(self, loop, timeline):
        from ..conditioning.image import ImageRoutes

        self.loop = loop
        self.routes = ImageRoutes(loop.cfg)
        self.image = None  # (latent frame, latent [1|B, C, 1, h, w]) of the last image change with a latent
        self.touched_lora = False
        first = loop.first_generated if loop.first_generated is not None else len(loop.layout)
        if timeline.live is not None:  # what a live image must be (the live route checks it before encoding)
            timeline.live.expect = self.describe()
        self.schedule = ControlSchedule(timeline, loop.clip_fea, check=self.check, first_block=first)

    def describe(self) -> dict:
        """What an image change needs for this run: which routes read it and the latent's shape."""
        _, c, _, h, w = self.loop.latent.shape
        return {"clip": self.routes.clip, "latent": True, "latent_shape": [1, c, 1, h, w]}

    def check(self, change) -> None:
        """A change this run cannot apply, refused naming the fix (before any block for the timeline's own)."""
        cfg, where = self.loop.cfg, change.source or f"the change at block {change.block}"
        if self.loop.settings.loop == "rolling":
            raise ValueError(f"{where}: the 'rolling' loop (Rolling Forcing) takes no image or LoRA changes (it "
                             f"denoises several blocks at once, with no boundary between them); use a block-loop "
                             f"family.")
        if isinstance(change, LoraChange):
            from ..model.lora_live import check_live

            try:
                change.name = check_live(self.loop.model, change.name, self.loop.settings.family).name  # "" = the only
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            return
        if change.clip_fea is not None and not self.routes.clip:
            raise ValueError(f"{where}: a CLIP reference change needs a model with an image embedding (Wan 2.1 i2v, "
                             f"SkyReels-V2-I2V, Matrix-Game 2.0), but {cfg.describe()} is text-to-video; send the "
                             f"image as a new start image (its latent: route 'start') instead.")
        if change.latent is not None:
            _, c, _, h, w = self.loop.latent.shape
            got = list(change.latent.shape)
            if got[1] != c or got[3:] != [h, w] or got[0] not in (1, self.loop.batch):
                raise ValueError(f"{where}: the new image's latent is {got}, the run's latent frames are [1, {c}, 1, "
                                 f"{h}, {w}]: encode the image at the run's width x height ({8 * w}x{8 * h} for a "
                                 f"Wan 2.1 VAE) with the model's VAE (Wan 2.1: 16 channels, Wan 2.2: 48).")
            if cfg.image_context_only and not self.routes.concat:
                raise ValueError(f"{where}: {cfg.describe()} takes no start-image latent.")

    def before_block(self, bi: int) -> bool:
        """Apply the changes before block ``bi``; True when the cross-attention context must be rebuilt (new CLIP
        features: once per change, or per block of a blend)."""
        entry = self.schedule.take(bi)
        if entry is None:
            return False
        from ..model.lora_live import set_strength

        for name, strength in entry.loras.items():
            set_strength(self.loop.model, name, strength)
            self.touched_lora = True
        if entry.latent is not None:
            self.image = (self.loop.layout[bi][0], entry.latent)
        if entry.clip_fea is not None and self.routes.clip:
            self.loop.clip_fea = entry.clip_fea
            return True
        return False

    def concat(self, y, start: int):
        """The concat route: ``y`` of a forward from latent frame ``start`` with the new image's known frame."""
        if self.image is None or not self.routes.concat:
            return y
        return concat_with_image(y, start, self.image[0], self.image[1])

    def clamp(self, start: int):
        """The first-frame route: ``(clean latent, its first latent frame)`` clamped in the block at ``start``."""
        if self.image is None or self.routes.concat or self.image[0] != start:
            return None
        return self.image[1].expand(self.loop.batch, -1, -1, -1, -1), start

    def end(self) -> None:
        """The run ended (or stopped): LoRAs back at their loaded strength."""
        if self.touched_lora:
            from ..model.lora_live import restore

            restore(self.loop.model)
            self.touched_lora = False


# --- the sidecar (wan/timeline/files.py writes these beside the prompts) ----------------------------------------------
_IMAGE_TENSORS = ("clip_fea", "latent", "blend_from")


def controls_to_dict(controls: Controls) -> dict:
    """The controls as the sidecar's JSON ``"controls"`` entry; tensors are named by ``key`` (``controls_tensors``)."""
    images = []
    for i, c in enumerate(controls.images):
        d = {"block": int(c.block), "label": c.label, "source": c.source}
        if c.path:
            d.update(path=c.path, route=c.route)
        if c.blend_blocks:
            d["blend_blocks"] = int(c.blend_blocks)
        for name in _IMAGE_TENSORS:
            if getattr(c, name) is not None:
                d[name] = f"image{i}.{name}"
        images.append(d)
    loras = [{"block": int(c.block), "strength": float(c.strength), "name": c.name, "source": c.source}
             for c in controls.loras]
    return {"images": images, "loras": loras}


def controls_tensors(controls: Controls) -> dict:
    """``{key: tensor}`` of every image change (each in its own dtype: a replay feeds the very same numbers)."""
    out = {}
    for i, c in enumerate(controls.images):
        for name in _IMAGE_TENSORS:
            t = getattr(c, name)
            if t is not None:
                out[f"image{i}.{name}"] = t.detach().cpu().contiguous()
    return out


def controls_from_dict(data: Optional[dict], tensors: Optional[dict], source: str = "timeline") -> Controls:
    """The ``"controls"`` entry of a sidecar (with its tensors) back as ``Controls``."""
    if not data:
        return Controls()
    images = []
    for i, d in enumerate(data.get("images") or []):
        where = f"{source}, controls.images[{i}]"
        values = {}
        for name in _IMAGE_TENSORS:
            key = d.get(name)
            if key is not None:
                if not tensors or key not in tensors:
                    raise ValueError(f"{where}: tensor '{key}' is not in the embeddings file beside the timeline; "
                                     f"keep the .safetensors written with it.")
                values[name] = tensors[key]
        images.append(ImageChange(block=int(d.get("block", 0)), blend_blocks=int(d.get("blend_blocks", 0)),
                                  label=str(d.get("label", "")), source=str(d.get("source") or where),
                                  path=str(d.get("path", "")), route=str(d.get("route", "both")), **values)
                      .check(where))
    loras = [LoraChange(block=int(d.get("block", 0)), strength=d.get("strength", 1.0), name=str(d.get("name", "")),
                        source=str(d.get("source") or f"{source}, controls.loras[{i}]")).check()
             for i, d in enumerate(data.get("loras") or [])]
    return Controls(images, loras)


def controls_comment(controls: Controls) -> dict:
    """The changes in a video's comment tag: ``{"images": [[block, label]], "loras": [[block, name, strength]]}``
    (empty when there are none: the tag stays as it was)."""
    out = {}
    if controls.images:
        out["images"] = [[int(c.block), c.label or "image"] for c in controls.images]
    if controls.loras:
        out["loras"] = [[int(c.block), c.name, float(c.strength)] for c in controls.loras]
    return out


# --- the timeline text form's image and LoRA lines (files.parse_text hands them here) ---------------------------------
_CONTROL_LINE = re.compile(r"^\s*(?P<block>\d+)\s+(?P<kind>image|lora)\b(?P<options>[^:]*):\s*(?P<value>.*?)\s*$")
CONTROL_HELP = ("write 'BLOCK image[ clip|start][ blend N]: path/to/image.png' for a new reference image, "
                "'BLOCK lora[ NAME]: 0.5' for a LoRA strength")


def parse_control_line(line: str, where: str):
    """An ``ImageChange`` (its path still to encode) or a ``LoraChange`` from a timeline text line; None when the line
    is no image/LoRA line (a prompt line)."""
    m = _CONTROL_LINE.match(line)
    if not m:
        return None
    block, options, value = int(m["block"]), m["options"].split(), m["value"]
    if not value:
        raise ValueError(f"{where}: nothing after the colon; {CONTROL_HELP}.")
    if m["kind"] == "lora":
        if len(options) > 1:
            raise ValueError(f"{where}: 'lora' takes one LoRA name before the colon; {CONTROL_HELP}.")
        try:
            strength = float(value)
        except ValueError:
            raise ValueError(f"{where}: LoRA strength '{value}' is not a number; {CONTROL_HELP}.") from None
        return LoraChange(block, strength, options[0] if options else "", source=where).check()
    route, blend_blocks = "both", 0
    i = 0
    while i < len(options):
        if options[i] in IMAGE_ROUTES:
            route = options[i]
        elif options[i] == "blend" and i + 1 < len(options) and options[i + 1].isdigit():
            blend_blocks, i = int(options[i + 1]), i + 1
        else:
            raise ValueError(f"{where}: '{options[i]}' is not an image option; {CONTROL_HELP}.")
        i += 1
    return ImageChange(block, blend_blocks=blend_blocks, route="clip" if blend_blocks else route, path=value,
                       label=os.path.basename(value), source=where).check()


def image_encoder(vae_encode, from_raw, width: int, height: int, clip_vision=None, crop=False):
    """``(image [1, H, W, 3] in 0..1, route) -> (clip_fea or None, latent or None)``: what an image change needs, from
    the run's VAE (``vae_encode``: pixels ``[1, 3, 1, H, W]`` in -1..1 -> raw latent; ``from_raw``: the model's
    normalisation; None: no start-image route) at the run's ``width`` x ``height`` (resized, centre-cropped like Wan
    I2V Conditioning) and a CLIP vision model (``encode_image(image, crop=...)``; None: no CLIP reference)."""
    from ..conditioning.image import clip_features, resize_center_crop

    def encode(image: torch.Tensor, route: str):
        clip = latent = None
        if route in ("both", "start") and vae_encode is not None:
            pixels = resize_center_crop(image[..., :3].float().movedim(-1, 1), width, height)
            latent = from_raw(vae_encode(pixels[:, :, None] * 2.0 - 1.0).float())
        if route in ("both", "clip") and clip_vision is not None:
            clip = clip_features(clip_vision.encode_image(image, crop=crop))
        if route == "clip" and clip is None:
            raise ValueError("a CLIP reference change needs a CLIP vision model (ComfyUI: clip_vision on the Prompt "
                             "Timeline node; CLI: --clip clip_vision_h.safetensors).")
        if route == "start" and latent is None:
            raise ValueError("a new start image needs the model's VAE (ComfyUI: vae; CLI: --vae).")
        if clip is None and latent is None:
            raise ValueError("nothing encodes the image: give a VAE (start image) and/or a CLIP vision model.")
        return clip, latent

    return encode
