"""Live prompt benchmark (one run, CPU unless CUDA is there): how fast a prompt sent while a causal stream runs
takes over, and what a pending change costs the sampler.

The loop runs LongLive 1.0's rules (blocks of 3 latent frames, 4 steps, sink 3 + window 12, the joint KV re-cache
at a switch) on the embedded default DiT (the real Wan 2.1 architecture at dim 256 / 4 layers, random init). Live
prompts go through ``LiveControl`` as the stream node's HTTP route sends them: the request returns at once, a
umt5 encoder (transformers' UMT5 architecture at 4096-d output, ``--encoder-layers`` layers, random init) encodes it
on its worker thread, and the loop takes it at the next block boundary.

1. **Latency**: a prompt is sent in the middle of block k (after the first of its 4 steps); reported: the block it
   is applied at minus k (goal 1: the next block) and the seconds from the request to the end of the first block
   sampled with it (its frames are final then).
2. **Time per block with vs without a pending change**: each block sampled while a request is being encoded in the
   background against the same block of a run with no live changes (median of the ratios; goal ≤ 1.05x; each
   kind runs ``--repeats`` times, alternating, and per block the fastest run counts). Measured twice: with the text
   encoded on the worker thread (on a CPU it shares the cores with the sampler), and with requests that carry a
   ready embedding (the loop's own cost of a pending change). The block where a switch is
   applied runs LongLive's re-cache (one more forward over the window): reported apart, it is the family's rule.

Usage: ``comfyui-clipwan bench live [--quick]``; ``--image``: reference images and a LoRA strength sent live instead of
prompts (``benchmarks/bench_live_image.py``).
"""

from __future__ import annotations

import json
import statistics
import time

import torch


def add_arguments(parser) -> None:
    parser.add_argument("--size", type=int, default=64, help="video width and height in pixels (default 64)")
    parser.add_argument("--blocks", type=int, default=16, help="blocks per run (3 latent frames each)")
    parser.add_argument("--requests", type=int, default=4, help="live prompts sent during the run")
    parser.add_argument("--encoder-layers", type=int, default=2, help="layers of the stand-in umt5 encoder")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each kind, alternating; per block the fastest is kept")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    parser.add_argument("--quick", action="store_true", help="tiny run (for tests): 32 px, 8 blocks, 2 requests")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--seed", type=int, default=0)
    from .bench_live_image import add_arguments as image_arguments

    image_arguments(parser)  # --image: reference images and a LoRA strength instead of prompts


def stand_in_encoder(layers: int, seed: int, device):
    """``text -> [1, L, 4096]``: the umt5 encoder architecture (transformers) at a few layers, random init, words
    hashed to token ids (the tokenizer is not what is measured)."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    model = UMT5EncoderModel(UMT5Config(vocab_size=1024, d_model=4096, d_kv=64, d_ff=2048, num_layers=layers,
                                        num_heads=8, feed_forward_proj="gated-gelu",
                                        is_encoder_decoder=False)).eval().to(device)

    def encode(text: str) -> torch.Tensor:
        ids = torch.tensor([[2 + sum(map(ord, w)) % 1000 for w in text.split()] + [1]], device=device)
        with torch.no_grad():
            return model(input_ids=ids).last_hidden_state.float()

    return encode


def _settings():
    from ..wan import CausalSettings

    return CausalSettings(steps=[1000, 750, 500, 250], frames_per_block=3, sink_size=3, local_window=12,
                          recache="joint", global_sink=True)


def run_live(model, encoder, blocks: int, size_px: int, requests: int, seed: int, device,
             pre_encoded: bool = False, priority: str = "background") -> dict:
    """One stream with ``requests`` live prompts, each sent after the first step of a block; per-block times.
    ``pre_encoded``: the requests carry their embedding (encoded before the run: what the loop itself costs)."""
    from ..wan.sampling.loop import SamplerHooks
    from ..wan.sampling.run import iter_causal_blocks
    from ..wan.timeline import LiveControl, parse_text

    timeline = parse_text("0: a red fox walks through snow").encode(encoder)
    live = LiveControl(encoder, priority=priority) if requests else None
    timeline.live = live
    send_at = set(range(2, blocks - 1, max(1, (blocks - 3) // max(1, requests)))) if requests else set()
    send_at = set(sorted(send_at)[:requests])
    sent: dict = {}
    ready = {f"prompt number {k + 2} a wolf howls": encoder(f"prompt number {k + 2} a wolf howls")
             for k in range(requests)} if pre_encoded else {}

    class Hooks(SamplerHooks):
        def on_step(self, block, step, total_steps):
            if step == 0 and block in send_at and block not in sent:
                text = f"prompt number {len(sent) + 2} a wolf howls"
                sent[block] = live.request(text, embedding=ready.get(text))

    h = w = size_px // 8
    loop = iter_causal_blocks(model, torch.zeros(1, 16, 3 * blocks, h, w), None, seed=seed, settings=_settings(),
                              timeline=timeline, hooks=Hooks())
    return timed_run(loop, live, device, sent)


def timed_run(loop, live, device, sent: dict) -> dict:
    """Run ``loop`` to its end: seconds per block (each block's frames final), the requests ``sent`` per block and
    the live control's events (its ``mark_block_done`` called as each block is out); the control is closed after."""
    times, t_prev = [], time.perf_counter()
    for result in loop:
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t_prev)
        if live is not None:
            live.mark_block_done(result.index)
        t_prev = time.perf_counter()
    events = live.status() if live else []
    if live:
        live.close()
    return {"times": times, "sent": sent, "events": events}


def bookkeeping_us(encoder, blocks: int, rounds: int = 200) -> tuple:
    """Microseconds the loop spends per block boundary in ``TextSchedule.take``: no change pending, and a ready live
    change taken (inserted into the timeline, schedule rebuilt). Noise-free, unlike a per-block timing on a busy
    machine."""
    from ..wan.sampling.loop import block_layout
    from ..wan.timeline import LiveControl, parse_text

    timeline = parse_text("0: a red fox").encode(encoder)
    timeline.live = LiveControl(None, threaded=False)
    schedule = timeline.compile(block_layout(3 * blocks, 3))
    embedding = encoder("a wolf")
    t0 = time.perf_counter()
    for i in range(rounds):
        schedule.take(1 + i % (blocks - 1))
    idle = (time.perf_counter() - t0) / rounds * 1e6
    t0 = time.perf_counter()
    for i in range(rounds):
        timeline.live.request("a wolf", embedding=embedding)
        schedule.take(1 + i % (blocks - 1))
    taken = (time.perf_counter() - t0) / rounds * 1e6
    return round(idle, 1), round(taken, 1)


def _encoded_figures(live: dict, plain: dict) -> dict:
    """Latency and per-block cost of one kind of live run against the run without live changes (same blocks)."""
    sent = {rid: block for block, rid in live["sent"].items()}
    applied = [e for e in live["events"] if e["state"] == "applied"]
    latency_s = [e["first_frame"] - e["requested"] for e in applied if e["first_frame"] is not None]
    encode_s = [e["encoded"] - e["requested"] for e in live["events"] if e["encoded"] is not None]
    switch_b = sorted({e["block"] for e in applied})
    # blocks sampled while a request was being encoded; the same block of the plain run is the reference
    # (early blocks attend to fewer frames)
    pending_b = sorted(set(live["sent"]) - set(switch_b))
    ratio = lambda blocks: round(statistics.median(live["times"][b] / plain["times"][b] for b in blocks), 3) \
        if blocks else None
    median = lambda xs: round(statistics.median(xs), 4) if xs else None
    return {"requests": len(sent), "applied": len(applied),
            "latency_blocks": [e["block"] - sent[e["id"]] for e in applied],
            "latency_s_median": median(latency_s), "encode_s_median": median(encode_s),
            "block_s_pending_median": median([live["times"][b] for b in pending_b]),
            "pending_over_plain": ratio(pending_b), "switch_over_plain": ratio(switch_b)}


def run(args) -> int:
    from ..wan.model.causal import DEFAULT_CONFIG, CausalWanModel

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.size, args.blocks, args.requests, args.encoder_layers = 32, 8, 2, 1
    if args.image:
        from .bench_live_image import run as run_images

        result = run_images(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2)
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = CausalWanModel.random(DEFAULT_CONFIG, seed=args.seed, device=device)
    encoder = stand_in_encoder(args.encoder_layers, args.seed, device)
    encoder("warm up")
    run_live(model, encoder, 3, args.size, 0, args.seed, device)  # warm-up
    from ..wan.timeline.live import ENCODER_PRIORITIES

    priorities = list(ENCODER_PRIORITIES)
    plains, readies, lives = [], [], {p: [] for p in priorities}
    for _ in range(max(1, args.repeats)):  # alternating, so a slow spell of the machine hits every kind
        plains.append(run_live(model, encoder, args.blocks, args.size, 0, args.seed, device))
        for priority in priorities:
            lives[priority].append(run_live(model, encoder, args.blocks, args.size, args.requests, args.seed, device,
                                            priority=priority))
        readies.append(run_live(model, encoder, args.blocks, args.size, args.requests, args.seed, device, True))
    fastest = lambda runs: [min(r["times"][i] for r in runs) for i in range(args.blocks)]
    plain = {"times": fastest(plains)}
    ready = dict(readies[-1], times=fastest(readies))
    plain_med = statistics.median(plain["times"][1:])  # block 0 has no cache to attend to
    result = {"device": str(device), "size_px": args.size, "blocks": args.blocks, "requests": args.requests,
              "block_s_plain_median": round(plain_med, 4), "encoder": {}}
    for priority in priorities:
        result["encoder"][priority] = _encoded_figures(dict(lives[priority][-1], times=fastest(lives[priority])),
                                                       plain)
    # the same with the embeddings given (no encoder running beside the sampler): the loop's own cost
    ready_applied = {e["block"] for e in ready["events"] if e["state"] == "applied"}
    ready_pending = sorted(set(ready["sent"]) - ready_applied)
    result["pre_encoded_latency_blocks"] = [e["block"] - {r: b for b, r in ready["sent"].items()}[e["id"]]
                                            for e in ready["events"] if e["state"] == "applied"]
    result["pre_encoded_pending_over_plain"] = round(statistics.median(
        ready["times"][b] / plain["times"][b] for b in ready_pending), 3) if ready_pending else None
    result["pre_encoded_switch_over_plain"] = round(statistics.median(
        ready["times"][b] / plain["times"][b] for b in sorted(ready_applied)), 3) if ready_applied else None
    result["take_us_idle"], result["take_us_with_change"] = bookkeeping_us(encoder, args.blocks)
    print(f"live prompts on {device}, {args.size}x{args.size}, {args.blocks} blocks of 3 latent frames, "
          f"LongLive rules; time per block without live changes {result['block_s_plain_median']} s:")
    for priority, fig in result["encoder"].items():
        print(f"  text encoded on the worker thread at {priority} priority: applied {fig['applied']}/"
              f"{fig['requests']}, blocks from request to the first block sampled with it {fig['latency_blocks']} "
              f"(goal: 1 = the next block), {fig['latency_s_median']} s to its frames (encode "
              f"{fig['encode_s_median']} s); block sampled while encoding {fig['pending_over_plain']}x the same block "
              f"without (goal <= 1.05x); the switch block (LongLive's re-cache) {fig['switch_over_plain']}x")
    print(f"  embeddings sent ready (no encoder beside the sampler): applied after "
          f"{result['pre_encoded_latency_blocks']} "
          f"block(s); block with the change pending {result['pre_encoded_pending_over_plain']}x, switch block "
          f"{result['pre_encoded_switch_over_plain']}x")
    print(f"  the loop's bookkeeping per block boundary: {result['take_us_idle']} us idle, "
          f"{result['take_us_with_change']} us taking a change "
          f"({100 * result['take_us_with_change'] / 1e6 / plain_med:.3f} % "
          f"of a block)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
