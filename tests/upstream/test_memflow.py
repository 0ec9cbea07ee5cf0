"""MemFlow's own pipelines (``CausalInferencePipeline`` of its ``inference.py``, ``InteractiveCausalInferencePipeline``
of its ``interactive_inference.py``) vs the pack's loop shape "memory" on shared tiny random weights, same noise
(replayed through our noise hook), fp32. Runs when ``UPSTREAM_MEMFLOW_DIR`` points at KlingTeam/MemFlow.

MemFlow's model code hard-codes 1560 tokens per latent frame (Wan 1.3B at 480x832) and blocks of 3 frames in
its bank formulas, so the latent here is the real 60x104 frame; the model keeps the real head layout (12 x 128,
their cache allocation) with one layer and a small FFN. Bank 2 / record interval 1 / sink 1 / window 5 (their
shipped 3 / 3 / 3 / 12 scaled down) make the bank fill after two blocks and compress at every block after,
within a few blocks. Slow on CPU (a few minutes: full-size attention).

Packages this needs beside the pack's own (pip names; the module-level imports on the path the test imports from the
authors' tree, measured by an AST walk of the checkout, plus the test's own): diffusers, easydict, einops, ftfy,
numpy, regex, scipy, torch, torchvision, tqdm, transformers; the test: omegaconf; with a LoRA: peft."""

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, PromptSwitch, WanConfig, sample_causal
from .conftest import fp32_attention
from .harness import IdentityVAE, ReplayTorchGlobalNoise, Texts, random_state_dict, their_wrapper

H, W = 60, 104  # 30 x 52 = 1560 tokens per frame, MemFlow's hard-coded frame size
ONE_LAYER = WanConfig(dim=1536, ffn_dim=256, num_heads=12, num_layers=1, in_dim=16)
STEPS = [1000, 500]
BANK, INTERVAL, SINK, WINDOW = 2, 1, 1, 5


def _their_pipeline(interactive: bool):
    from omegaconf import OmegaConf
    from wan.modules.causal_model import CausalWanModel as TheirModel

    if interactive:
        from pipeline.interactive_causal_inference import InteractiveCausalInferencePipeline as Pipeline
    else:
        from pipeline.causal_inference import CausalInferencePipeline as Pipeline
    kwargs = {"local_attn_size": WINDOW, "sink_size": SINK, "bank_size": BANK, "record_interval": INTERVAL,
              "SMA": False}
    model = TheirModel(model_type="t2v", dim=1536, ffn_dim=256, num_heads=12, num_layers=1, **kwargs).eval()
    sd = random_state_dict(config=ONE_LAYER)
    model.load_state_dict(sd, strict=True)
    args = OmegaConf.create({"denoising_step_list": STEPS, "warp_denoising_step": True, "num_frame_per_block": 3,
                             "model_kwargs": {**kwargs, "timestep_shift": 5.0}, "context_noise": 0,
                             "global_sink": True})
    pipe = Pipeline(args, torch.device("cpu"), generator=their_wrapper(model), text_encoder=Texts(), vae=IdentityVAE())
    pipe.num_transformer_blocks = 1  # their hard-coded 30 layers; frame_seq_length stays their 1560
    return pipe, sd


def _ours(sd, frames, noise, text, switches=(), pipeline="auto"):
    settings = CausalSettings(steps=STEPS, shift=5.0, frames_per_block=3, sink_size=SINK, local_window=WINDOW,
                              loop="memory", memory_bank=BANK, memory_interval=INTERVAL, memory_pipeline=pipeline)
    return sample_causal(CausalWanModel.from_state_dict(sd), torch.zeros(1, 16, frames, H, W), text,
                         settings=settings, prompt_switches=list(switches), noise=ReplayTorchGlobalNoise(noise, 42))


def _report(label, ours, theirs):
    diff = (ours - theirs).abs().max().item()
    print(f"\n{label}: max |ours - MemFlow| = {diff:.2e} (output scale {theirs.abs().max().item():.2f})")
    assert theirs.abs().mean() > 0.1
    assert diff <= 1e-4


def test_memflow_single_prompt_pipeline_parity(upstream_tree, monkeypatch):
    upstream_tree("MEMFLOW")
    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    frames = 15  # 5 blocks: the bank compresses before blocks 3 and 4
    pipe, sd = _their_pipeline(interactive=False)
    noise = torch.randn(1, frames, 16, H, W, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(42)
    with torch.no_grad():
        _, theirs = pipe.inference(noise, text_prompts=["a prompt"], return_latents=True)
    theirs = theirs.permute(0, 2, 1, 3, 4)
    ours = _ours(sd, frames, noise, Texts()(["a prompt"])["prompt_embeds"])
    _report("MemFlow inference.py", ours, theirs)


def test_memflow_interactive_pipeline_parity_with_switch(upstream_tree, monkeypatch):
    upstream_tree("MEMFLOW")
    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    frames, switch = 18, 12  # 6 blocks, the switch at block 4 after the window slid and the bank compressed
    pipe, sd = _their_pipeline(interactive=True)
    noise = torch.randn(1, frames, 16, H, W, generator=torch.Generator().manual_seed(7))
    prompts = [["first prompt"], ["second prompt"]]
    torch.manual_seed(42)
    with torch.no_grad():
        _, theirs = pipe.inference(noise, text_prompts_list=prompts, switch_frame_indices=[switch],
                                   return_latents=True)
    theirs = theirs.permute(0, 2, 1, 3, 4)
    texts = [Texts()(p)["prompt_embeds"] for p in prompts]
    ours = _ours(sd, frames, noise, texts[0], [PromptSwitch(switch // 3, texts[1])])
    _report("MemFlow interactive_inference.py, switch at frame 12", ours, theirs)
    # sharp: the single-prompt bank rule (pending = the previous block) is the same here (interval 1), so the
    # difference that shows is the re-cache: LongLive's block loop without a bank is far off after block 1
    plain = sample_causal(CausalWanModel.from_state_dict(sd), torch.zeros(1, 16, frames, H, W), texts[0],
                          settings=CausalSettings(steps=STEPS, shift=5.0, sink_size=SINK, local_window=WINDOW),
                          prompt_switches=[PromptSwitch(switch // 3, texts[1])], noise=ReplayTorchGlobalNoise(noise, 42))
    first, rest = (plain[:, :, :3] - theirs[:, :, :3]).abs().max(), (plain[:, :, 3:] - theirs[:, :, 3:]).abs().max()
    print(f"LongLive's loop without the bank vs MemFlow: {first:.2e} on block 0, {rest:.2e} after")
    assert first <= 1e-4 < rest


def test_memflow_interactive_timeline_parity(upstream_tree, monkeypatch, tmp_path):
    """MemFlow's interactive prompt file (its ``interactive_benchmark.jsonl`` format: one line of prompts per video,
    the switch frames beside it) read by the pack's timeline reader, vs their interactive pipeline: three prompts."""
    upstream_tree("MEMFLOW")
    from comfyui_clipwan.wan.timeline import load

    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    frames, switch_frames = 18, [6, 12]
    prompts = ["a wizard in a chamber", "a dragon lands on his shoulder", "the wizard laughs"]
    path = tmp_path / "interactive_benchmark.jsonl"
    path.write_text('{"prompts": ["x", "y", "z"]}\n{"prompts": ["%s", "%s", "%s"]}\n' % tuple(prompts))
    pipe, sd = _their_pipeline(interactive=True)
    noise = torch.randn(1, frames, 16, H, W, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(42)
    with torch.no_grad():
        _, theirs = pipe.inference(noise, text_prompts_list=[[p] for p in prompts],
                                   switch_frame_indices=switch_frames, return_latents=True)
    theirs = theirs.permute(0, 2, 1, 3, 4)
    timeline = load(str(path), switch_frames=switch_frames, line=2).encode(lambda t: Texts()([t])["prompt_embeds"])
    settings = CausalSettings(steps=STEPS, shift=5.0, frames_per_block=3, sink_size=SINK, local_window=WINDOW,
                              loop="memory", memory_bank=BANK, memory_interval=INTERVAL)
    ours = sample_causal(CausalWanModel.from_state_dict(sd), torch.zeros(1, 16, frames, H, W), None,
                         settings=settings, timeline=timeline, noise=ReplayTorchGlobalNoise(noise, 42))
    _report("MemFlow interactive_inference.py, 3-prompt timeline (switches at frames 6, 12)", ours, theirs)
