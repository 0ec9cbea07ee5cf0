"""MemFlow (KlingTeam/MemFlow): LongLive's sink + local window plus a *memory bank* of single latent frames,
kept by their relevance to the prompt. The loop shape ``"memory"`` (``CausalSettings.loop``).

What the authors' code does (``wan/modules/causal_model.py``: ``CausalWanSelfAttention.forward``,
``_apply_cache_updates``, ``_apply_cache_updates_before``, ``compress_kv_bank``; ``pipeline/causal_inference.py``
for ``inference.py``, ``pipeline/interactive_causal_inference.py`` for ``interactive_inference.py``; shipped
configs ``configs/inference.yaml`` / ``interactive_inference.yaml``), restated in block terms:

* Everything else is LongLive 1.0: blocks of 3 latent frames from frame 0 (t2v, no start image in their code),
  steps 1000/750/500/250 warped onto the shift-5 grid, re-noise with ``randn_like`` of the ``[B·3, C, h, w]``
  block from the global generator, a clean pass at t=0 (``context_noise`` 0) that writes the block's K/V,
  sink 3 frames (``global_sink``), window 12 frames (``local_attn_size``, sink included). Checkpoint
  ``base.pt`` (entry ``generator``, ``use_ema: false``) + ``lora.pt`` (LongLive's trainer format, PEFT rank 256,
  alpha 256 on every Linear of the attention blocks).
* The bank: ``bank_size`` (3) slots of ONE latent frame each (1560 tokens at 480x832), per layer and per batch
  element, holding that frame's post-RoPE keys and values as written by its clean pass. Every self-attention
  of a block (each denoising step and the clean pass) attends to ``[sink | bank | local window]``, one
  softmax over all of them (no mask; a bank frame may also be in the sink or the window: it then counts twice).
* When it changes: only before the first denoising step of a block ``j >= 1`` (their ``q_bank``). With
  ``L = (j - 1) // record_interval + 1`` (their bank index, in frames): while ``L <= bank_size`` the *pending*
  frame is written into slot ``L - 1`` (so within one record interval the same slot is overwritten); after
  that every block *compresses*: the ``bank_size - 1`` slots most relevant to the prompt are kept (in
  ``torch.topk`` order) and the pending frame is appended.
* Relevance (``bank_scores``): the cross-attention text keys of that layer (``norm_k(k(text))`` over all 512
  padded umt5 tokens) act as queries; score = mean over text tokens, heads and the frame's tokens of
  ``q·k/√d``. No softmax, no image tokens.
* The pending frame is the FIRST latent frame of a block, from its clean pass. ``inference.py``
  (``memory_pipeline="single"``) takes it from every block, i.e. the previous one; ``interactive_inference.py``
  (``"interactive"``) only from the recorded blocks (``j % record_interval == 0``), so it is the first frame of
  the last recorded block. Otherwise the two entry points run the bank identically. ``"auto"`` follows the
  authors: the single-prompt pipeline, or the interactive one when prompt switches are given.
* Prompt switch (interactive only): LongLive's joint re-cache (``recache="joint"``, ``global_sink``), except
  that the re-cache forward also runs the bank step and attends to the bank. Their cross-attention cache is
  zeroed just before, so that bank step, and the one of the first block after the switch, score with an
  all-zero text: every score is 0 and ``torch.topk`` decides (on CPU it keeps the first slots for the shipped
  3 -> 2). We use the same ``torch.topk``, so the outcome is the authors' on the same device. From the next
  block on the new prompt scores.
* A 1-step list makes the interactive pipeline's clean pass run the bank step once more (their ``q_bank`` is
  left at True); we do the same. ``SMA`` (their per-query top-k routing over sink + bank chunks, the paper's
  "sparse memory activation") is ``SMA: False`` in every shipped config; it is not implemented and no setting
  here turns it on.

Their code hard-codes 1560 tokens per frame and blocks of 3 frames in these formulas; written per block as
above they hold for any size. With a start image (``first_frames``, not in the authors' code) the image is
block 0 like a generated block: its first frame is the first pending frame.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from .loop import RECACHE_MODES, CausalLoop

PIPELINES = ("auto", "single", "interactive")


def bank_scores(text_k: torch.Tensor, bank_k: torch.Tensor) -> torch.Tensor:
    """MemFlow's relevance of each bank frame to the prompt (``compress_kv_bank``): ``text_k [B, Lt, H, d]``
    (a layer's cross-attention text keys), ``bank_k [B, n, T, H, d]`` -> ``[B, n]``, the mean over text
    tokens, heads and the frame's ``T`` tokens of ``q·k / √d`` (a mean of dot products, so taken as the dot
    product of the means)."""
    b, n, tokens, heads, d = bank_k.shape
    q = text_k.float().mean(1)  # [B, H, d]
    return torch.einsum("bhd,bnthd->bn", q, bank_k.float()) / (tokens * heads) * d ** -0.5


def keep_most_relevant(bank: torch.Tensor, scores: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` frames of ``bank [B, n, ...]`` with the highest ``scores [B, n]``, in ``torch.topk`` order
    (descending; ties resolved by ``torch.topk`` as in the authors' code)."""
    idx = torch.topk(scores, k=min(keep, bank.shape[1]), dim=1).indices  # [B, keep]
    return torch.gather(bank, 1, idx.view(*idx.shape, *([1] * (bank.dim() - 2))).expand(-1, -1, *bank.shape[2:]))


class MemoryBank:
    """One branch's bank: per layer ``[B, slots, T, H, d]`` keys and values (``None`` while empty), the
    pending frame, and the absolute frame index held in each slot (``frames[layer] [B, slots]``)."""

    def __init__(self, num_layers: int, size: int):
        self.size = size
        self.k: List[Optional[torch.Tensor]] = [None] * num_layers
        self.v: List[Optional[torch.Tensor]] = [None] * num_layers
        self.frames: List[Optional[torch.Tensor]] = [None] * num_layers
        self.pending_k: List[Optional[torch.Tensor]] = [None] * num_layers
        self.pending_v: List[Optional[torch.Tensor]] = [None] * num_layers
        self.pending_frame = -1
        self.text_cleared = False  # after a prompt switch: the bank steps score with an all-zero text

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v if t is not None)

    def hold(self, layer: int, k: torch.Tensor, v: torch.Tensor, frame: int) -> None:
        """Keep one frame's K/V ``[B, T, H, d]`` as the pending frame."""
        self.pending_k[layer], self.pending_v[layer] = k.clone(), v.clone()
        self.pending_frame = frame

    def step(self, slot_count: int, text_k: Optional[List[torch.Tensor]]) -> None:
        """The bank step before a block: ``slot_count`` = their bank index ``L`` in frames; ``text_k`` per
        layer (None: all-zero text)."""
        for i, (pk, pv) in enumerate(zip(self.pending_k, self.pending_v)):
            pk, pv = pk.unsqueeze(1), pv.unsqueeze(1)
            pf = torch.full((pk.shape[0], 1), self.pending_frame, dtype=torch.long)
            held = 0 if self.k[i] is None else self.k[i].shape[1]
            if slot_count <= self.size and slot_count > held:  # a new slot
                self.k[i], self.v[i] = (pk, pv) if held == 0 else (torch.cat([self.k[i], pk], 1),
                                                                    torch.cat([self.v[i], pv], 1))
                self.frames[i] = pf if held == 0 else torch.cat([self.frames[i], pf], 1)
            elif slot_count <= self.size:  # the same slot again (within one record interval)
                self.k[i], self.v[i], self.frames[i] = self.k[i].clone(), self.v[i].clone(), self.frames[i].clone()
                self.k[i][:, slot_count - 1], self.v[i][:, slot_count - 1] = pk[:, 0], pv[:, 0]
                self.frames[i][:, slot_count - 1] = self.pending_frame
            else:  # full: keep the size-1 most relevant, append the pending frame
                scores = torch.zeros(self.k[i].shape[:2], device=self.k[i].device) if text_k is None else \
                    bank_scores(text_k[i], self.k[i])
                keep = self.size - 1
                self.k[i] = torch.cat([keep_most_relevant(self.k[i], scores, keep), pk], 1)
                self.v[i] = torch.cat([keep_most_relevant(self.v[i], scores, keep), pv], 1)
                self.frames[i] = torch.cat([keep_most_relevant(self.frames[i], scores.cpu(), keep), pf], 1)


class MemoryLoop(CausalLoop):
    """``CausalLoop`` with MemFlow's memory bank appended to every self-attention (see the module doc).
    ``settings.memory_bank`` / ``memory_interval`` / ``memory_pipeline`` are MemFlow's ``bank_size``,
    ``record_interval`` and entry point. After the loop ``bank_frames(layer)`` tells which frames a layer's
    bank holds."""

    def __init__(self, model, latent, text, **kwargs):
        super().__init__(model, latent, text, **kwargs)
        s = self.settings
        if not int(s.sink_size) or not int(s.local_window):
            raise ValueError(f"the memory loop (MemFlow) needs an attention sink and a local window (sink_size "
                             f"{s.sink_size}, local_window {s.local_window}): MemFlow attends to its bank only next to "
                             f"the sink; use its config, sink_size 3 and local_window 12.")
        if int(s.memory_bank) < 1 or int(s.memory_interval) < 1:
            raise ValueError(f"memory_bank ({s.memory_bank}) and memory_interval ({s.memory_interval}) must be >= 1 "
                             f"(MemFlow: bank_size 3, record_interval 3).")
        if s.memory_pipeline not in PIPELINES:
            raise ValueError(f"memory_pipeline '{s.memory_pipeline}' is not one of {list(PIPELINES)}.")
        if s.positions != "absolute" or s.sink_ema is not None or s.solver != "renoise":
            raise ValueError("the memory loop (MemFlow) keeps LongLive's cache and steps: positions='absolute', "
                             "no sink_ema, solver 'renoise'.")
        pipeline = s.memory_pipeline
        if pipeline == "auto":
            pipeline = "interactive" if self.prompt_changes else "single"
        if self.prompt_changes and pipeline != "interactive":
            raise ValueError("MemFlow's single-prompt pipeline (memory_pipeline='single', its inference.py) has no "
                             "prompt switches; use memory_pipeline 'auto' or 'interactive' (interactive_inference.py).")
        if self.prompt_changes and s.recache != "joint":
            raise ValueError(f"MemFlow re-caches at a prompt switch like LongLive (recache='joint'), not "
                             f"'{s.recache}'.")
        self.pipeline = pipeline
        self.bank_size, self.interval = int(s.memory_bank), int(s.memory_interval)

    @property
    def cache_nbytes(self) -> int:
        return super().cache_nbytes + sum(br.memory.nbytes for br in self.branches)

    def bank_frames(self, layer: int, branch: int = 0) -> list:
        """``[[frame, ...] per batch element]`` held in ``layer``'s bank, in slot order."""
        f = self.branches[branch].memory.frames[layer]
        return [] if f is None else f.tolist()

    def _setup(self) -> None:
        super()._setup()
        for br in self.branches:
            br.memory = MemoryBank(self.cfg.num_layers, self.bank_size)

    def _records(self, bi: int) -> bool:
        """Does block ``bi``'s clean pass become the pending frame? (every block, or the recorded ones)"""
        return self.pipeline == "single" or bi % self.interval == 0

    def _bank_step(self, bi: int, branch) -> None:
        if bi == 0:
            return
        mem = branch.memory
        text = None if mem.text_cleared else branch.ctx.text_k
        mem.step((bi - 1) // self.interval + 1, text)

    def _kv_hook(self, kind, block, branch, start):
        inner = branch.cache.hook(start)
        mem, tok = branch.memory, self.tokens_per_frame
        record = kind == "cache" and self._records(block)

        def kv_hook(layer, k, v):
            if record:
                mem.hold(layer, k[:, :tok].to(branch.cache.dtype), v[:, :tok].to(branch.cache.dtype), start)
            k_all, v_all = inner(layer, k, v)
            if mem.k[layer] is None:
                return k_all, v_all
            return (torch.cat([k_all, mem.k[layer].flatten(1, 2).to(k_all.dtype)], 1),
                    torch.cat([v_all, mem.v[layer].flatten(1, 2).to(v_all.dtype)], 1))

        return kv_hook

    @torch.no_grad()
    def _denoise(self, bi, start, n):
        for br in self.branches:
            self._bank_step(bi, br)
            br.memory.text_cleared = False
        return super()._denoise(bi, start, n)

    @torch.no_grad()
    def _cache_pass(self, bi, start, x0):
        generated = self.clamp or start + x0.shape[2] > self.known
        if self.pipeline == "interactive" and generated and len(self._schedule(bi)[0]) == 1:
            for br in self.branches:  # their 1-step clean pass runs the bank step again (q_bank still True)
                self._bank_step(bi, br)
        super()._cache_pass(bi, start, x0)

    @torch.no_grad()
    def _switch_prompt(self, bi, text):
        branch = self.branches[0]
        branch.ctx = self._encode(text, bi)
        branch.memory.text_cleared = True  # their cross-attention cache is zeroed before the re-cache
        self._bank_step(bi, branch)  # the re-cache forward's own bank step
        RECACHE_MODES[self.settings.recache](self, bi, branch)
