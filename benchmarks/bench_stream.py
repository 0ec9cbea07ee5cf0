"""Streaming decode benchmark (one run, tiny models, CPU unless CUDA is there):

1. time to the first decoded frame: ``stream_video`` (sample a block, decode its latent frames one by one
   with the Wan VAE's streaming decoder, handing each out at once) vs the two-stage path (sample the whole latent, then decode it), at 81
   video frames (21 latent frames, 7 blocks of 3);
2. total wall time of both paths for the same video (and the largest difference between their frames:
   the streamed frames must be the two-stage frames); both run ``--repeats`` times, alternating, and the
   fastest run of each is reported;
3. live CLIP scores (``clip_vision.score_stream.LiveScorer``: the frames to score picked from each decoded
   piece, embedded in one vision forward per block; the embedded default ViT-B/32 CLIP pair, CLIP-T + CLIP-I +
   consistency): time spent scoring per block over the stream's own time per block, for each ``--score-every``
   setting (a stride, or ``auto``: the stride ``StrideBudget`` picks for ``--score-budget`` percent), the budget
   being <= 10 %; and where a scored frame's time goes (preprocessing, the vision forward one frame at a time and
   in a block's batch, the scores; the CSV/JSON/PNG written once at the end);
4. peak RSS (``VmHWM``, each run in a fresh subprocess) of a streaming run that writes an H.264 file, at
   100 and at 2,000 latent frames (blocks of 4, sink 4 + local window 12, so nothing grows with length).

The DiT is the embedded default (the real Wan 2.1 i2v architecture at dim 256 / 4 layers) and the VAE is
the real Wan 2.1 VAE architecture at reduced width (``--vae-dim``), both seeded random init.

Usage: ``comfyui-clipwan bench stream [--quick]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import torch


def add_arguments(parser) -> None:
    parser.add_argument("--frames", type=int, default=81, help="video frames of the latency comparison (1 + 4k)")
    parser.add_argument("--size", type=int, default=64, help="video width and height in pixels (default 64)")
    parser.add_argument("--vae-dim", type=int, default=32, help="VAE base width (Wan 2.1's real VAE: 96)")
    parser.add_argument("--short", type=int, default=100, help="latent frames of the short memory run")
    parser.add_argument("--long", type=int, default=2000, help="latent frames of the long memory run")
    parser.add_argument("--memory-size", type=int, default=32, help="video size in pixels of the memory runs")
    parser.add_argument("--memory-vae-dim", type=int, default=8, help="VAE base width of the memory runs")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs of each path, alternating (the fastest of each is reported)")
    parser.add_argument("--skip-memory", action="store_true", help="only the latency/throughput part")
    parser.add_argument("--score-every", default="1,4,8,auto",
                        help="comma list of strides for the CLIP-score part, 'auto' = the stride chosen for "
                             "--score-budget (empty: skip it)")
    parser.add_argument("--score-per-piece", action="store_true",
                        help="also score each fixed stride one decoded piece at a time (one forward per piece, the "
                             "way before one forward per block), in the same run")
    parser.add_argument("--score-budget", type=float, default=10.0,
                        help="percent of the stream's time per block the 'auto' stride keeps scoring within")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    parser.add_argument("--quick", action="store_true", help="tiny run (for tests): 33 frames, 32 px, 8/32 latent frames")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--seed", type=int, default=0)


def _models(size_px: int, vae_dim: int, seed: int, device):
    from ..wan.model.causal import DEFAULT_CONFIG, CausalWanModel
    from ..wan.vae.wan21 import WanVAE, WanVAEConfig

    model = CausalWanModel.random(DEFAULT_CONFIG, seed=seed, device=device)
    vae = WanVAE.random(WanVAEConfig(dim=vae_dim), seed=seed, device=device)
    return model, vae


def _inputs(latent_frames: int, size_px: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    h = w = size_px // 8
    return dict(latent=torch.zeros(1, 16, latent_frames, h, w), text=torch.zeros(1, 512, 4096),
                clip_fea=torch.randn(1, 257, 1280, generator=g))


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def two_stage(model, vae, inputs, settings, seed, device) -> dict:
    from ..wan import denormalize, sample_causal

    t0 = time.perf_counter()
    z = sample_causal(model, inputs["latent"], inputs["text"], seed=seed, settings=settings,
                      clip_fea=inputs["clip_fea"])
    _sync(device)
    t_sampled = time.perf_counter() - t0
    pixels = vae.decode(denormalize(z))
    _sync(device)
    total = time.perf_counter() - t0
    frames = ((pixels.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).cpu()
    # the first frame exists when the decode returns (VAE Decode hands out the whole batch at once)
    return {"first_frame_s": total, "total_s": total, "sampling_s": t_sampled, "frames": frames}


def streaming(model, vae, inputs, settings, seed, device) -> dict:
    from ..wan.video.stream import stream_video

    t0 = time.perf_counter()
    first = None
    blocks, done = [], 0
    for block in stream_video(model, inputs["latent"], inputs["text"], vae=vae, seed=seed, settings=settings,
                              clip_fea=inputs["clip_fea"]):
        _sync(device)
        if first is None:
            first = time.perf_counter() - t0
        blocks.append(block.frames)
        done += int(block.block_done)
    total = time.perf_counter() - t0
    return {"first_frame_s": first, "total_s": total, "frames": torch.cat(blocks, dim=1), "blocks": done}


def streaming_scored(model, vae, inputs, settings, seed, device, live) -> dict:
    """``streaming`` with a ``LiveScorer`` fed each decoded piece; the scoring time is measured around its calls
    (its own clock says the same: ``live.stats()``)."""
    from ..wan.video.stream import stream_video

    t0 = time.perf_counter()
    scoring, blocks = 0.0, 0
    for block in stream_video(model, inputs["latent"], inputs["text"], vae=vae, seed=seed, settings=settings,
                              clip_fea=inputs["clip_fea"]):
        _sync(device)
        s0 = time.perf_counter()
        live.add(block.frames[0], block.frame_start, block.index, block.block_done)
        scoring += time.perf_counter() - s0
        blocks += int(block.block_done)
    total = time.perf_counter() - t0
    return {"total_s": total, "scoring_s": scoring, "stream_s": total - scoring, "blocks": blocks,
            "scored_frames": len(live.rows), "scoring_per_block_s": scoring / blocks,
            "stream_per_block_s": (total - scoring) / blocks, "ratio": scoring / (total - scoring),
            "strides": live.stats()["strides"]}


class PerPiece:
    """The scorer fed one decoded piece at a time (one vision forward per piece, as before ``LiveScorer``): the
    comparison ``--score-per-piece`` adds to each fixed stride."""

    def __init__(self, scorer):
        self.scorer = scorer

    @property
    def rows(self) -> list:
        return self.scorer.rows

    def add(self, frames, frame_start, block, block_done=True) -> list:
        return self.scorer.update(frames, frame_start, block)

    def stats(self) -> dict:
        return {"strides": []}


def _best_of(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def score_profile(vision, text, frames: torch.Tensor, block_frames: int, repeats: int = 3) -> dict:
    """Where a scored frame's time goes (fastest of ``repeats``, ms per frame): preprocessing (resize, crop,
    normalise), the full vision forward (every output) and the scorer's embedding (``embeds_only``), one frame at
    a time and ``block_frames`` at once, the scores of embedded frames; and the files written once at the end of a
    run (CSV + JSON, the PNG chart), for ``len(frames)`` rows."""
    import tempfile as _tempfile

    from ..clip_vision.preprocess import preprocess_images
    from ..clip_vision.score_plot import plot_png
    from ..clip_vision.scores import StreamingScorer, cosine_scores, image_embeddings

    out = {"block_frames": block_frames}
    for name, batch in (("one", frames[:1]), ("block", frames[:block_frames])):
        n = batch.shape[0]
        pixels = preprocess_images(batch, vision.config, "center")
        preprocess = lambda: preprocess_images(batch, vision.config, "center")  # noqa: E731
        out[f"preprocess_ms_{name}"] = 1e3 * _best_of(preprocess, repeats) / n
        out[f"forward_ms_{name}"] = 1e3 * _best_of(lambda: vision.encode(pixels), repeats) / n
        out[f"embed_ms_{name}"] = 1e3 * _best_of(lambda: image_embeddings(vision, batch), repeats) / n
    embeds = image_embeddings(vision, frames[:block_frames])
    out["scores_ms"] = 1e3 * _best_of(lambda: cosine_scores(embeds, embeds.flip(0)), repeats) / block_frames
    fresh = StreamingScorer(vision, text, SCORE_PROMPTS)
    fresh.update(frames, 0)
    with _tempfile.TemporaryDirectory() as tmp:
        stem = os.path.join(tmp, "scores")
        out["csv_json_ms"] = 1e3 * _best_of(lambda: fresh.write(stem), 1)
        out["png_ms"] = 1e3 * _best_of(lambda: plot_png(stem + ".png", fresh.rows, fresh.segments), 1)
    out["rows"] = len(fresh.rows)
    return out


SCORE_PROMPTS = "0: a red fox in the snow\n40: a blue whale under water"


def _scoring_part(model, vae, inputs, settings, args, device, plain_total: float, frames: torch.Tensor) -> dict:
    from ..clip_vision.score_stream import LiveScorer
    from ..clip_vision.scores import StreamingScorer, load_score_models
    from ..wan.vae.latent import TIME_RATIO

    t0 = time.perf_counter()
    vision, text = load_score_models(seed=args.seed)
    StreamingScorer(vision, text, SCORE_PROMPTS)
    setup = time.perf_counter() - t0  # model build + tokenizer + text embeddings: once per run, not per block
    block_frames = TIME_RATIO * settings.frames_per_block  # the frames of a block after the first
    profile = score_profile(vision, text, frames, block_frames, getattr(args, "score_repeats", 3))
    out = {"clip": "embedded default ViT-B/32 CLIP pair (seeded random init)", "setup_s": setup,
           "budget_percent": args.score_budget, "profile": profile, "runs": {}}
    print(f"  scoring profile, ms per scored frame (ViT-B/32 at 224 px, frames {args.size} px): preprocess "
          f"{profile['preprocess_ms_block']:.1f}; vision forward {profile['forward_ms_one']:.0f} one frame at a time, "
          f"{profile['forward_ms_block']:.0f} in a batch of a block's {block_frames} frames; the scorer's embedding "
          f"(preprocessing + the tower, its last block for the CLS token only) {profile['embed_ms_one']:.0f} / "
          f"{profile['embed_ms_block']:.0f}; scores "
          f"{profile['scores_ms']:.3f}; once at the end for {profile['rows']} rows: CSV+JSON "
          f"{profile['csv_json_ms']:.0f} ms, PNG chart {profile['png_ms']:.0f} ms")
    settings_list = [e.strip() for e in str(args.score_every).split(",") if e.strip()]
    if getattr(args, "score_per_piece", False):
        settings_list = [x for e in settings_list for x in ([e, e + ":piece"] if e != "auto" else [e])]
    for every in settings_list:
        per_piece = every.endswith(":piece")
        stride = 1 if every == "auto" else int(every.split(":")[0])
        scorer = StreamingScorer(vision, text, SCORE_PROMPTS, every_n=stride)
        live = PerPiece(scorer) if per_piece else \
            LiveScorer(scorer, 1, args.score_budget) if every == "auto" else LiveScorer(scorer)
        run = streaming_scored(model, vae, inputs, settings, args.seed, device, live)
        run["ratio_to_plain_stream"] = run["total_s"] / plain_total
        out["runs"][every] = run
        label = (f"auto (budget {args.score_budget:g} %, strides {run['strides']})" if every == "auto"
                 else f"every {stride} frame(s), one forward per {'piece' if per_piece else 'block'}")
        print(f"  CLIP scores {label} ({run['scored_frames']} frames scored): scoring "
              f"{run['scoring_per_block_s'] * 1e3:.0f} ms per block vs the stream's own "
              f"{run['stream_per_block_s']:.2f} s per block -> {100 * run['ratio']:.1f} % (total {run['total_s']:.1f} s "
              f"= {run['ratio_to_plain_stream']:.3f}x the unscored stream of the same run)")
    print(f"  (scorer setup once per run: {setup:.1f} s — models, tokenizer, text embeddings)")
    return out


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, time
    def status(field):  # VmHWM: this process's peak resident set
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field)) * 1024
    import torch
    from comfyui_clipwan.benchmarks.bench_stream import memory_run
    frames, size, vae_dim, threads, out = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]),
                                           sys.argv[5])
    if threads:
        torch.set_num_threads(threads)
    result = memory_run(frames, size, vae_dim, out)
    result["peak_rss_bytes"] = status("VmHWM")
    print(json.dumps(result))
""")


def memory_run(latent_frames: int, size_px: int, vae_dim: int, out_path: str) -> dict:
    """Stream ``latent_frames`` latent frames (blocks of 4, sink 4 + window 12) into an H.264 file."""
    from ..wan import CausalSettings
    from ..wan.video.stream import stream_video
    from ..wan.video.writer import VideoWriter

    device = torch.device("cpu")
    model, vae = _models(size_px, vae_dim, 0, device)
    inputs = _inputs(latent_frames, size_px, 0)
    settings = CausalSettings(frames_per_block=4, sink_size=4, local_window=12)
    t0 = time.perf_counter()
    with VideoWriter(out_path, fps=16) as writer:
        for block in stream_video(model, inputs["latent"], inputs["text"], vae=vae, seed=0, settings=settings,
                                  clip_fea=inputs["clip_fea"]):
            writer.write(block.frames[0])
    return {"latent_frames": latent_frames, "video_frames": writer.frames_written,
            "seconds": time.perf_counter() - t0, "file_bytes": os.path.getsize(out_path)}


def _memory_case(latent_frames: int, args) -> dict:
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the package folder
    env["PYTHONPATH"] = os.pathsep.join(p for p in [os.path.dirname(here), env.get("PYTHONPATH", "")] if p)
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(latent_frames), str(args.memory_size),
                              str(args.memory_vae_dim), str(args.threads), os.path.join(tmp, "long.mp4")],
                             capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"memory run at {latent_frames} latent frames failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args) -> int:
    threads_before = torch.get_num_threads()
    try:
        if args.quick and not args.threads:
            args.threads = 1
        if args.threads:
            torch.set_num_threads(args.threads)
        results = _run(args)
    finally:
        torch.set_num_threads(threads_before)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def _run(args) -> dict:
    from ..wan import CausalSettings
    from ..wan.vae.latent import pixel_length_to_latent_frames

    if args.quick:
        args.frames, args.size, args.vae_dim, args.repeats = 33, 32, 8, 1
        args.short, args.long, args.memory_size = 8, 32, 32
        args.score_repeats = 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    latent_frames = pixel_length_to_latent_frames(args.frames)
    model, vae = _models(args.size, args.vae_dim, args.seed, device)
    settings = CausalSettings(frames_per_block=3)
    print(f"bench stream: DiT {model.config.describe()} + Wan 2.1 VAE architecture at dim {args.vae_dim} (both "
          f"seeded random init), {device}, {torch.get_num_threads()} threads; {args.frames} frames "
          f"({latent_frames} latent, blocks of 3) at {args.size}x{args.size} px")
    inputs = _inputs(latent_frames, args.size, args.seed)
    warm = _inputs(3, args.size, args.seed)  # warm-up: allocator, kernels
    streaming(model, vae, warm, settings, args.seed, device)
    twos, streams = [], []
    for _ in range(max(1, args.repeats)):  # alternate, so a busy spell of the machine hits both paths
        twos.append(two_stage(model, vae, inputs, settings, args.seed, device))
        streams.append(streaming(model, vae, inputs, settings, args.seed, device))
    two = min(twos, key=lambda r: r["total_s"])
    st = min(streams, key=lambda r: r["total_s"])
    st["first_frame_s"] = min(r["first_frame_s"] for r in streams)
    diff = float((two["frames"] - st["frames"]).abs().max())
    results = {
        "device": str(device), "threads": torch.get_num_threads(), "frames": args.frames,
        "latent_frames": latent_frames, "size": args.size, "vae_dim": args.vae_dim,
        "two_stage": {k: v for k, v in two.items() if k != "frames"},
        "streaming": {k: v for k, v in st.items() if k != "frames"},
        "repeats": len(twos),
        "first_frame_speedup": two["first_frame_s"] / st["first_frame_s"],
        "total_ratio": st["total_s"] / two["total_s"],
        "max_frame_difference": diff,
    }
    print(f"  fastest of {len(twos)} alternating runs of each path:")
    print(f"  two-stage (sample all {latent_frames} latent frames, then decode): first frame after "
          f"{two['first_frame_s']:.2f} s (sampling {two['sampling_s']:.2f} s + decode), total {two['total_s']:.2f} s")
    print(f"  streaming (each latent frame decoded once its block is final): first frame after {st['first_frame_s']:.2f} s, "
          f"total {st['total_s']:.2f} s, {st['blocks']} blocks")
    print(f"  first decoded frame {results['first_frame_speedup']:.1f}x sooner; total wall time streaming / "
          f"two-stage = {results['total_ratio']:.3f}; largest frame difference {diff:.2e}")
    if str(args.score_every).strip():
        results["scores"] = _scoring_part(model, vae, inputs, settings, args, device, st["total_s"],
                                          st["frames"][0, :16].cpu())
    if not args.skip_memory:
        short = _memory_case(args.short, args)
        long = _memory_case(args.long, args)
        results["memory"] = {"short": short, "long": long, "size": args.memory_size, "vae_dim": args.memory_vae_dim,
                             "peak_rss_ratio": long["peak_rss_bytes"] / short["peak_rss_bytes"]}
        print(f"  peak RSS streaming into an H.264 file ({args.memory_size}x{args.memory_size} px, VAE dim "
              f"{args.memory_vae_dim}, blocks of 4, sink 4 + window 12): {args.short} latent frames ({short['video_frames']} video frames) "
              f"{short['peak_rss_bytes'] / 2 ** 20:.0f} MiB, {args.long} latent frames ({long['video_frames']} video "
              f"frames, {long['seconds']:.0f} s) {long['peak_rss_bytes'] / 2 ** 20:.0f} MiB -> ratio "
              f"{results['memory']['peak_rss_ratio']:.3f}")
    return results
