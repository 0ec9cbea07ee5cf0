"""``bench live --image``: what a reference image (and a LoRA strength) sent while a causal stream runs costs.

The loop runs LongLive 1.0's block rules (blocks of 3 latent frames, 4 steps, sink 3 + window 12) on the embedded
default DiT — the real Wan 2.1 **i2v** architecture (CLIP ``img_emb`` + ``k_img``/``v_img``, 36 input channels) at
dim 256 / 4 layers, random init — so an image change takes both routes an i2v model reads: the CLIP reference (the
cross-attention K/V rebuilt once, at the boundary) and the concat channels (the new known frame). Images go
through ``LiveControl.request_image`` as the stream node's HTTP route sends them: encoded on the worker thread by a
CLIP ViT-H/14 (the real architecture cut to ``--clip-layers`` blocks, random init) and a Wan 2.1 VAE encoder
(random init at ``--vae-dim``; real: 96), then taken at the next block boundary.

Reported, against a run without changes (per block the fastest of ``--repeats`` alternating runs):
1. blocks from the request (sent after the first step of block k) to the first block sampled with the image (goal 1)
   and the seconds to that block's frames; the encode time off the sampling thread;
2. time per block with an image being encoded in the background vs the same block of the plain run (goal ≤ 1.05x),
   and the change block itself (the context rebuild);
3. with the features sent ready (no encoder beside the sampler): the loop's own cost;
4. a LoRA strength change (``--lora-rank``, every Linear of the blocks): its time at the boundary against a block.
"""

from __future__ import annotations

import statistics
import time

import torch


def add_arguments(parser) -> None:
    """The options ``bench live`` adds for ``--image`` (its own ``--size/--blocks/--requests/--repeats`` apply)."""
    parser.add_argument("--image", action="store_true", help="measure live reference-image (and LoRA) changes "
                                                             "instead of prompts (benchmarks/bench_live_image.py)")
    parser.add_argument("--clip-layers", type=int, default=2, help="--image: blocks of the stand-in ViT-H/14")
    parser.add_argument("--vae-dim", type=int, default=8, help="--image: width of the stand-in Wan VAE (real: 96)")
    parser.add_argument("--lora-rank", type=int, default=32, help="--image: rank of the LoRA whose strength changes")


def _settings():
    from ..wan import CausalSettings

    return CausalSettings(steps=[1000, 750, 500, 250], frames_per_block=3, sink_size=3, local_window=12)


def run_images(model, encoder, blocks: int, size_px: int, requests: int, seed: int, device,
               ready: dict = None) -> dict:
    """One i2v stream with ``requests`` live images, each sent after the first step of a block (``ready``: their
    (clip_fea, latent) given, nothing encoded during the run)."""
    from ..wan.sampling.loop import SamplerHooks
    from ..wan.sampling.run import iter_causal_blocks
    from ..wan.timeline import LiveControl, parse_text
    from .bench_live import timed_run

    timeline = parse_text("0: a red fox walks through snow").encode(lambda text: torch.ones(1, 4, 4096))
    live = LiveControl(None) if requests else None
    if live is not None:
        live.image_encoder = encoder
    timeline.live = live
    send_at = sorted(set(range(2, blocks - 1, max(1, (blocks - 3) // max(1, requests)))))[:requests]
    sent: dict = {}

    class Hooks(SamplerHooks):
        def on_step(self, block, step, total_steps):
            if step == 0 and block in send_at and block not in sent:
                k = len(sent)
                if ready:
                    clip, latent = ready[k]
                    sent[block] = live.request_image(clip_fea=clip, latent=latent, label=f"image {k}")
                else:
                    sent[block] = live.request_image(_picture(seed + k, size_px), label=f"image {k}")

    h = w = size_px // 8
    frames = 3 * blocks
    clip = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(seed))
    y = torch.zeros(1, 20, frames, h, w)
    y[:, :4, 0] = 1.0
    loop = iter_causal_blocks(model, torch.zeros(1, 16, frames, h, w), None, seed=seed, settings=_settings(),
                              timeline=timeline, hooks=Hooks(), clip_fea=clip.to(device), concat=y.to(device))
    return timed_run(loop, live, device, sent)


def _picture(seed: int, size_px: int) -> torch.Tensor:
    return torch.rand(1, size_px, size_px, 3, generator=torch.Generator().manual_seed(seed))


def lora_change_ms(model, rank: int, seed: int, device, rounds: int = 3) -> float:
    """Milliseconds one strength change takes (every Linear of every block adapted, rank ``rank``)."""
    from ..wan.model import lora_live

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, p in model.tree.named_parameters():
        if name.startswith("blocks.") and name.endswith(".weight") and p.dim() == 2:
            module = name[: -len(".weight")]
            tensors[f"{module}.lora_A.weight"] = torch.randn(rank, p.shape[1], generator=g) * 0.01
            tensors[f"{module}.lora_B.weight"] = torch.randn(p.shape[0], rank, generator=g) * 0.01
    lora_live.remember(model.tree, "bench", tensors, 1.0)
    lora_live.set_strength(model, "bench", 0.9)  # the first change also keeps the loaded weights (CPU copy)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(rounds):
        lora_live.set_strength(model, "bench", 0.5 + 0.1 * i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / rounds * 1e3
    lora_live.restore(model)
    del model.tree.clipwan_loras
    return ms


def image_kv_ms(model, device, rounds: int = 20) -> float:
    """Milliseconds (the fastest of ``rounds``) of what a change adds at the boundary: the image cross-attention K/V
    of new CLIP features (``dit.image_kv``). Noise-free, unlike a per-block timing on a busy machine."""
    from ..wan.model import dit

    clip = torch.randn(1, 257, 1280, generator=torch.Generator().manual_seed(1)).to(device)
    best = float("inf")
    with torch.no_grad():
        for _ in range(rounds):
            t0 = time.perf_counter()
            dit.image_kv(model.tree, model.config, clip, model.compute_dtype, 1, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    return best * 1e3


def run(args) -> dict:
    from ..clip_vision import default_clip_vision
    from ..wan.conditioning.inputs import WanLatentAdapter
    from ..wan.model.causal import DEFAULT_CONFIG, CausalWanModel
    from ..wan.timeline.controls import image_encoder
    from ..wan.vae.wan21 import WanVAE, WanVAEConfig

    if args.quick:  # a one-block ViT-H: its encode fits in the run's remaining blocks on a test machine
        args.blocks, args.clip_layers, args.vae_dim = 16, 1, 8
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = CausalWanModel.random(DEFAULT_CONFIG, seed=args.seed, device=device)
    clip = default_clip_vision("ViT-H/14", seed=args.seed, layers=args.clip_layers, device=device)
    vae = WanVAE.random(WanVAEConfig(dim=args.vae_dim), seed=args.seed)
    encoder = image_encoder(vae.encode, WanLatentAdapter().latent_in, args.size, args.size, clip, False)
    encoder(_picture(0, args.size), "both")  # warm-up
    run_images(model, encoder, 3, args.size, 0, args.seed, device)
    ready = [tuple(t if t is None else t.to(device) for t in encoder(_picture(args.seed + k, args.size), "both"))
             for k in range(args.requests)]
    plains, lives, readies = [], [], []
    for _ in range(max(1, args.repeats)):
        plains.append(run_images(model, encoder, args.blocks, args.size, 0, args.seed, device))
        lives.append(run_images(model, encoder, args.blocks, args.size, args.requests, args.seed, device))
        readies.append(run_images(model, encoder, args.blocks, args.size, args.requests, args.seed, device, ready))
    fastest = lambda runs: [min(r["times"][i] for r in runs) for i in range(args.blocks)]
    plain = fastest(plains)

    def figures(runs) -> dict:
        times, last = fastest(runs), runs[-1]
        sent = {rid: block for block, rid in last["sent"].items()}
        applied = [e for e in last["events"] if e["state"] == "applied"]
        changed = sorted({e["block"] for e in applied})
        pending = sorted(set(last["sent"]) - set(changed))
        ratio = lambda blocks: round(statistics.median(times[b] / plain[b] for b in blocks), 3) if blocks else None
        latency_s = [e["first_frame"] - e["requested"] for e in applied if e["first_frame"] is not None]
        encode_s = [e["encoded"] - e["requested"] for e in last["events"] if e["encoded"] is not None]
        return {"requests": len(sent), "applied": len(applied),
                "latency_blocks": [e["block"] - sent[e["id"]] for e in applied],
                "latency_s_median": round(statistics.median(latency_s), 4) if latency_s else None,
                "encode_s_median": round(statistics.median(encode_s), 4) if encode_s else None,
                "pending_over_plain": ratio(pending), "change_over_plain": ratio(changed)}

    result = {"device": str(device), "size_px": args.size, "blocks": args.blocks,
              "block_s_plain_median": round(statistics.median(plain[1:]), 4),
              "encoded_live": figures(lives), "sent_ready": figures(readies)}
    result["lora_change_ms"] = round(lora_change_ms(model, args.lora_rank, args.seed, device), 2)
    result["block_s_fastest"] = round(min(plain[1:]), 4)
    result["image_kv_ms"] = round(image_kv_ms(model, device), 3)
    live, ready_f = result["encoded_live"], result["sent_ready"]
    print(f"live images on {device}, {args.size}x{args.size}, {args.blocks} blocks of 3 latent frames, i2v DiT "
          f"(CLIP + concat routes), LongLive block rules:")
    print(f"  applied {live['applied']}/{live['requests']}; blocks from request to the first block sampled with the "
          f"image: {live['latency_blocks']} (goal: 1 = the next block)")
    print(f"  seconds from request to that block's frames: median {live['latency_s_median']} s (CLIP + VAE encode "
          f"{live['encode_s_median']} s off the sampling thread)")
    print(f"  time per block: plain {result['block_s_plain_median']} s; with an image being encoded "
          f"{live['pending_over_plain']}x (goal <= 1.05x); the change block (context rebuilt once) "
          f"{live['change_over_plain']}x")
    print(f"  features sent ready: applied after {ready_f['latency_blocks']} block(s); block with the change pending "
          f"{ready_f['pending_over_plain']}x, change block {ready_f['change_over_plain']}x")
    print(f"  the change's own work at the boundary (image K/V of the new features, fastest of 20): "
          f"{result['image_kv_ms']} ms = {result['image_kv_ms'] / 1e3 / result['block_s_fastest']:.4f} of the fastest "
          f"block ({result['block_s_fastest']} s)")
    print(f"  a LoRA strength change (rank {args.lora_rank}, every Linear of the blocks): "
          f"{result['lora_change_ms']} ms "
          f"at the boundary = {result['lora_change_ms'] / 1e3 / result['block_s_plain_median']:.3f} of a block")
    return result
