"""CLIP-like model families the Axera export knows: what differs between them, declared once per family.

A *family* is one way of turning a checkpoint into an image/text embedding pair and a score: CLIP (OpenAI /
OpenCLIP / HF ``CLIPModel``), SigLIP / SigLIP2 (HF ``SiglipModel``, open_clip ``ViT-*-SigLIP*``). The export pipeline, the runtime and the interrogation service are
written once and ask the family of the source (export side) or of the manifest (serving side) for every rule
below. One module per family in this folder; ``FAMILIES`` is the registry (order = detection order).

The interface (``base.Family``; a family module defines one subclass instance named ``FAMILY``)
------------------------------------------------------------------------------------------------

Declared values (class attributes):

* ``name``: the manifest's ``family.name`` and the registry key (``"clip"``); ``title``: for reports/docs.
* ``layouts``: the checkpoint layouts it reads (docs table), e.g. ``("hf", "openclip")``.
* ``default_crop``: the image preprocessing (``pixels.CROP_MODES``): ``"center"`` (CLIP: short side to the
  tower's size, centre crop) or ``"none"`` (squash, SigLIP); size and mean/std come from the vision config.
* ``score_rule``: ``"softmax"`` (softmax over the candidates of ``exp(logit_scale)·cos``, CLIP) or
  ``"sigmoid"`` (``sigmoid(exp(logit_scale)·cos + logit_bias)`` per label, SigLIP).
* ``text_pooling``: which hidden state of the text graph is the text embedding before the head:
  ``"eot_argmax"`` (the position of the largest id: CLIP's end-of-text), ``"last"`` (the last position; the
  tokenizer pads to the context length, SigLIP), ``"first"`` (CLS, BERT-like: Chinese-CLIP), ``"mean"`` (over
  the non-pad tokens: Jina-CLIP). Chinese-CLIP and Jina-CLIP pool inside the NPU graph (their text graphs output
  [1, width]) and override ``text_head``; the name then documents what the graph does.

Export side (may import torch, always inside the methods: the serving path imports this package too):

* ``detect(keys) -> layout | None``: the layout when this family's towers are in these state-dict keys.
* ``load(path, parts, tokenizer=None) -> ClipSource``: the towers asked for, from a checkpoint file in one of
  ``layouts`` (``ClipSource.family`` = ``name``; ``tokenizer``: a file/folder for families whose tokenizer is not
  bundled, kept as ``ClipSource.tokenizer_path``); ``default_source(seed, **sizes)``: seeded random-init at real
  key names. The towers: ``vision`` behaves as ``clip_vision.ClipVisionModel`` (``config`` with image_size,
  mean, std, proj_dim; ``model.pooled(pixels, export)`` = the NPU graph; ``encode(pixels).image_embeds`` = the
  torch reference), ``text`` as ``text_model.TextWeights`` (``build()`` = the NPU graph ids → hidden states,
  ``encode(ids)`` = the reference embedding).
* ``vision_heads(vision) / text_heads(text) -> {name: ndarray}``: the fp32 CPU-side weights saved in
  ``cpu_heads.npz`` (projections, biases).
* ``export_tokenizer(source) -> Tokenizer``: the tokenizer of the source (ids [N, context] int32) and the
  files an export carries under ``tokenizer/``.
* ``manifest_block(source, tokenizer | None) -> dict``: the manifest's ``family`` entry: ``name``,
  ``score_rule``, ``logit_scale``, ``logit_bias``, ``text_pooling``, ``tokenizer`` ({kind, name, files (paths
  under the export), context_length, ...}; absent for a vision-only export).
* ``cpu_split``: {part: {"npu": ..., "cpu": [...]}} for the report/manifest (default: CLIP's).
  Image preprocessing (size, mean/std, crop/resize) lives in ``parts.vision.config`` / ``crop`` as before.

Serving side (numpy only, from the manifest; never torch):

* ``tokenizer(block, folder) -> Tokenizer``: rebuilt from the files the export carries.
* ``vision_head(pooled, heads)`` / ``text_head(hidden, ids, heads)``: the CPU part after each NPU graph
  (pooling, projection, bias), fp32, not normalised.
* ``probabilities(cosine, block, rule=None)``: the score rule (or ``rule``) over a [..., N] table of cosines.

Adding a family: a module here with a ``Family`` subclass, its towers in ``clip_vision`` / ``text_model``
(torch), a tokenizer that runs without torch, registration in ``FAMILIES`` (before CLIP), a test like
``tests/test_siglip.py`` (towers vs the authors' classes, tokenizer vs theirs, export checks, serve round trip).

The default methods of ``base.Family`` implement CLIP's rules; a family overrides only what differs.
"""

from __future__ import annotations

from typing import Iterable, Optional

from .base import Family, Tokenizer
from .clip import FAMILY as CLIP
from .cnclip import FAMILY as CNCLIP
from .jinaclip import FAMILY as JINACLIP
from .siglip import FAMILY as SIGLIP

# detection order: CLIP last (it claims what is left)
FAMILIES = {f.name: f for f in (SIGLIP, CNCLIP, JINACLIP, CLIP)}
DEFAULT_FAMILY = CLIP.name


def get_family(name: Optional[str]) -> Family:
    """The family registered as ``name`` (None: CLIP, what exports before families were)."""
    family = FAMILIES.get(name or DEFAULT_FAMILY)
    if family is None:
        raise ValueError(f"unknown model family {name!r}; this version knows {sorted(FAMILIES)}: update "
                         f"comfyui-clipwan or re-export the model")
    return family


def of_manifest(manifest: dict) -> Family:
    """The family an export manifest was written for (manifests without a ``family`` entry are CLIP)."""
    return get_family((manifest.get("family") or {}).get("name"))


def detect(keys: Iterable[str]) -> tuple:
    """``(family, layout)`` of a checkpoint from its key names; nothing recognised → ``(CLIP, None)``: CLIP's
    loaders then raise their detailed "no tower found" errors naming the keys they expect."""
    keys = set(keys)
    for family in FAMILIES.values():
        layout = family.detect(keys)
        if layout is not None:
            return family, layout
    return CLIP, None


__all__ = ["FAMILIES", "DEFAULT_FAMILY", "Family", "Tokenizer", "detect", "get_family", "of_manifest"]
