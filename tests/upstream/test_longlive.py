"""LongLive v1.0's own ``InteractiveCausalInferencePipeline`` vs ``sample_causal`` on shared tiny random weights,
same noise (replayed through our noise hook), prompt switches included; and LongLive as its authors ship it, the
base weights with their ``lora.pt`` applied through their own PEFT path. Runs when ``UPSTREAM_LONGLIVE_DIR``
points at NVlabs/LongLive (branch ``v1.0``). Its tree needs ``omegaconf``, ``easydict`` (its ``wan/configs``), ``peft``,
``diffusers`` and ``einops`` beside torch. The 3-prompt test reads their interactive prompt file format through
the pack's timeline reader.

The tiny model keeps the real head layout (12 heads x 128) because the pipeline allocates its caches with
those sizes; it has 2 layers and a small FFN. The pipeline's hard-coded 30 blocks / 1560 tokens per frame
are set to the tiny model's values (attributes, not code).

Packages this needs beside the pack's own (pip names; the module-level imports on the path the test imports from the
authors' tree, measured by an AST walk of the checkout, plus the test's own): diffusers, easydict, einops, ftfy,
numpy, peft, regex, scipy, torch, torchvision, tqdm, transformers; the test: omegaconf."""

import pytest
import torch

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, PromptSwitch, sample_causal
from .conftest import fp32_attention
from .harness import H, W, IdentityVAE, ReplayTorchGlobalNoise, Texts, fit_pipeline, random_state_dict, their_wrapper

STEPS = [1000, 750, 500, 250]


def _their_pipeline(window, sink, global_sink, load_state_dict=True, interactive=True):
    from omegaconf import OmegaConf
    from pipeline.causal_inference import CausalInferencePipeline
    from pipeline.interactive_causal_inference import InteractiveCausalInferencePipeline
    from wan.modules.causal_model import CausalWanModel as TheirModel

    model = TheirModel(model_type="t2v", dim=1536, ffn_dim=256, num_heads=12, num_layers=2,
                       local_attn_size=window or -1, sink_size=sink).eval()
    state_dict = random_state_dict()
    if load_state_dict:
        model.load_state_dict(state_dict, strict=True)
    args = OmegaConf.create({
        "denoising_step_list": STEPS, "warp_denoising_step": True, "num_frame_per_block": 3,
        "model_kwargs": {"local_attn_size": window or -1, "sink_size": sink, "timestep_shift": 5.0},
        "context_noise": 0, "global_sink": global_sink})
    kind = InteractiveCausalInferencePipeline if interactive else CausalInferencePipeline
    pipe = kind(args, torch.device("cpu"), generator=their_wrapper(model), text_encoder=Texts(), vae=IdentityVAE())
    return fit_pipeline(pipe), state_dict


CASES = {  # frames, switch frame, window, sink, global_sink
    "no_switch_window": (15, None, 6, 3, True),
    "switch_after_eviction_global_sink": (15, 9, 6, 3, True),
    "switch_after_eviction_no_global_sink": (15, 9, 6, 3, False),
    "switch_before_eviction": (12, 6, 9, 3, True),
    "switch_no_window": (12, 6, 0, 0, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_longlive_interactive_pipeline_parity(case, upstream_tree, monkeypatch):
    upstream_tree("LONGLIVE")
    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    frames, switch, window, sink, global_sink = CASES[case]
    pipe, sd = _their_pipeline(window, sink, global_sink)
    noise = torch.randn(1, frames, 16, H, W, generator=torch.Generator().manual_seed(7))
    prompts = [["first prompt"]] + ([["second prompt"]] if switch else [])
    torch.manual_seed(42)
    with torch.no_grad():
        _, theirs = pipe.inference(noise, text_prompts_list=prompts, switch_frame_indices=[switch] if switch else [],
                                   return_latents=True)
    theirs = theirs.permute(0, 2, 1, 3, 4)

    ours_model = CausalWanModel.from_state_dict(sd)
    texts = [Texts()(p)["prompt_embeds"] for p in prompts]
    settings = CausalSettings(steps=STEPS, shift=5.0, frames_per_block=3, sink_size=sink, local_window=window,
                              global_sink=global_sink, recache="joint")
    switches = [PromptSwitch(switch // 3, texts[1])] if switch else []
    ours = sample_causal(ours_model, torch.zeros(1, 16, frames, H, W), texts[0], settings=settings,
                         prompt_switches=switches, noise=ReplayTorchGlobalNoise(noise, 42))
    diff = (ours - theirs).abs().max().item()
    print(f"\n{case}: max |ours - LongLive| = {diff:.2e} (output scale {theirs.abs().max().item():.2f})")
    assert theirs.abs().mean() > 0.1
    assert diff <= 1e-4
    if switch:  # sharp: the pack's earlier block-by-block re-cache is far off after the switch, equal before
        settings.recache = "blockwise"
        old = sample_causal(ours_model, torch.zeros(1, 16, frames, H, W), texts[0], settings=settings,
                            prompt_switches=switches, noise=ReplayTorchGlobalNoise(noise, 42))
        before = (old[:, :, :switch] - theirs[:, :, :switch]).abs().max().item()
        after = (old[:, :, switch:] - theirs[:, :, switch:]).abs().max().item()
        print(f"{case}: blockwise re-cache vs LongLive: {before:.2e} before the switch, {after:.2e} after")
        assert before <= 1e-4 < after


# --- LongLive as shipped: longlive_base.pt + lora.pt through their own PEFT code --------------------------------
# configs/longlive_(interactive_)inference.yaml: adapter {type: lora, rank: 256, alpha: 256, dropout: 0.0}. The test
# LoRA keeps their alpha = rank at a small rank (PEFT's scale alpha/rank = 1, as in the release).
LORA_RANK = 16
LORA_CASES = {  # frames, switch frame, window, sink, global_sink; inference.py without a switch, else interactive
    "lora_inference_py_window": (15, None, 6, 3, True),
    "lora_interactive_switch_after_eviction_global_sink": (15, 9, 6, 3, True),
}


def _adapter():
    from omegaconf import OmegaConf

    return OmegaConf.create({"type": "lora", "rank": LORA_RANK, "alpha": LORA_RANK, "dropout": 0.0,
                             "dtype": "bfloat16", "verbose": False})


def _write_longlive_files(folder, state_dict):
    """``longlive_base.pt`` ({generator: their WanDiffusionWrapper's keys, ``model.<wan key>``}) and ``lora.pt`` as
    their trainer saves it: {generator_lora, critic_lora, step}, each ``get_peft_model_state_dict`` of the model
    wrapped by their ``configure_lora_for_model`` (generator: their CausalWanModel; critic: their bidirectional
    WanModel), the LoRA matrices random (PEFT starts B at zero, which would be no LoRA at all)."""
    from peft import get_peft_model_state_dict
    from utils.lora_utils import configure_lora_for_model
    from wan.modules.causal_model import CausalWanModel as TheirModel
    from wan.modules.model import WanModel as TheirBidirectional

    gen = torch.Generator().manual_seed(11)
    saved = {}
    for name, tree in (("generator", TheirModel(model_type="t2v", dim=1536, ffn_dim=256, num_heads=12, num_layers=2)),
                       ("fake_score", TheirBidirectional(model_type="t2v", dim=1536, ffn_dim=256, num_heads=12,
                                                         num_layers=2))):
        wrapped = configure_lora_for_model(tree, name, _adapter(), is_main_process=False)
        with torch.no_grad():
            for key, p in wrapped.named_parameters():
                if ".lora_A." in key or ".lora_B." in key:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        saved[name] = {k: v.clone() for k, v in get_peft_model_state_dict(wrapped).items()}
    base = folder / "longlive_base.pt"
    torch.save({"generator": {"model." + k: v for k, v in state_dict.items()}}, base)
    lora = folder / "lora.pt"
    torch.save({"generator_lora": saved["generator"], "critic_lora": saved["fake_score"], "step": 3000}, lora)
    return str(base), str(lora), saved["generator"]


@pytest.mark.parametrize("case", sorted(LORA_CASES))
def test_longlive_lora_pipeline_parity(case, upstream_tree, monkeypatch, tmp_path):
    """Their inference.py (``CausalInferencePipeline``) / interactive_inference.py (``InteractiveCausal..``): the
    pipeline, ``generator.load_state_dict(torch.load(generator_ckpt)["generator"])``, then ``generator.model =
    configure_lora_for_model(..)`` and ``peft.set_peft_model_state_dict(.., torch.load(lora_ckpt)["generator_lora"])``
    (unmerged PEFT layers; their scripts then cast to bf16, the suite stays fp32) — vs our loader given the files."""
    upstream_tree("LONGLIVE")
    import peft
    from utils.lora_utils import configure_lora_for_model

    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    frames, switch, window, sink, global_sink = LORA_CASES[case]
    base_path, lora_path, lora_sd = _write_longlive_files(tmp_path, random_state_dict())
    pipe, _ = _their_pipeline(window, sink, global_sink, load_state_dict=False, interactive=switch is not None)
    pipe.generator.load_state_dict(torch.load(base_path, map_location="cpu")["generator"])
    pipe.generator.model = configure_lora_for_model(pipe.generator.model, model_name="generator",
                                                    lora_config=_adapter(), is_main_process=False)
    result = peft.set_peft_model_state_dict(pipe.generator.model,
                                            torch.load(lora_path, map_location="cpu")["generator_lora"])
    assert not result.unexpected_keys
    assert len(lora_sd) == 2 * 2 * 10  # A and B for 10 Linear layers in each of the 2 blocks
    noise = torch.randn(1, frames, 16, H, W, generator=torch.Generator().manual_seed(7))
    prompts = [["first prompt"]] + ([["second prompt"]] if switch else [])
    torch.manual_seed(42)
    with torch.no_grad():
        if switch:
            _, theirs = pipe.inference(noise, text_prompts_list=prompts, switch_frame_indices=[switch],
                                       return_latents=True)
        else:
            _, theirs = pipe.inference(noise, text_prompts=prompts[0], return_latents=True)
    theirs = theirs.permute(0, 2, 1, 3, 4)

    texts = [Texts()(p)["prompt_embeds"] for p in prompts]
    settings = CausalSettings(steps=STEPS, shift=5.0, frames_per_block=3, sink_size=sink, local_window=window,
                              global_sink=global_sink, recache="joint")
    switches = [PromptSwitch(switch // 3, texts[1])] if switch else []

    def ours(model):
        return sample_causal(model, torch.zeros(1, 16, frames, H, W), texts[0], settings=settings,
                             prompt_switches=switches, noise=ReplayTorchGlobalNoise(noise, 42))

    merged = CausalWanModel.from_file(base_path, entry="generator", lora=lora_path)  # what the loader node calls
    assert merged.source == "longlive_base.pt [generator] + LoRA lora.pt x1"
    diff = (ours(merged) - theirs).abs().max().item()
    print(f"\n{case}: max |ours (LoRA merged) - LongLive (PEFT)| = {diff:.2e} "
          f"(output scale {theirs.abs().max().item():.2f})")
    assert theirs.abs().mean() > 0.1
    assert diff <= 1e-4

    # sharp: the base alone, and the LoRA at PEFT's default lora_alpha 8 (scale 8/16) instead of their alpha = rank
    from comfyui_clipwan.wan.model.checkpoint import load_wan_state_dict
    from comfyui_clipwan.wan.model.lora import load_lora_file, merge_lora

    base_sd, _ = load_wan_state_dict(base_path, "generator")
    no_lora = (ours(CausalWanModel.from_state_dict(base_sd)) - theirs).abs().max().item()
    half = merge_lora(base_sd, load_lora_file(lora_path), alpha=8)
    wrong_scale = (ours(CausalWanModel.from_state_dict(half)) - theirs).abs().max().item()
    print(f"{case}: without the LoRA {no_lora:.2e}; LoRA at alpha 8 (scale 0.5) {wrong_scale:.2e}")
    assert no_lora > 100 * 1e-4 and wrong_scale > 100 * 1e-4


# --- a prompt timeline: three prompts from LongLive's interactive prompt file ------------------------------------
def test_longlive_three_prompt_timeline_parity(upstream_tree, monkeypatch, tmp_path):
    """Their ``interactive_inference.py`` input (a JSONL line of prompts + ``switch_frame_indices``) read by the pack's
    timeline reader, each prompt encoded once, vs their ``InteractiveCausalInferencePipeline`` with the same prompts
    and switch frames. Frame 7 is not a block start: both switch at the first block from it (frame 9)."""
    upstream_tree("LONGLIVE")
    from comfyui_clipwan.wan.timeline import load

    fp32_attention(monkeypatch, "wan.modules.causal_model", "wan.modules.model")
    frames, switch_frames, window, sink = 18, [7, 12], 6, 3
    prompts = ["a boy stands on a lawn", "the boy starts to run", "the boy jumps"]
    path = tmp_path / "interactive_example.jsonl"
    path.write_text('{"prompts": ["%s", "%s", "%s"]}\n' % tuple(prompts))
    pipe, sd = _their_pipeline(window, sink, True)
    noise = torch.randn(1, frames, 16, H, W, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(42)
    with torch.no_grad():
        _, theirs = pipe.inference(noise, text_prompts_list=[[p] for p in prompts],
                                   switch_frame_indices=switch_frames, return_latents=True)
    theirs = theirs.permute(0, 2, 1, 3, 4)

    encoded = []
    timeline = load(str(path), switch_frames=switch_frames).encode(
        lambda text: encoded.append(text) or Texts()([text])["prompt_embeds"])
    assert encoded == prompts  # each prompt encoded once
    settings = CausalSettings(steps=STEPS, shift=5.0, frames_per_block=3, sink_size=sink, local_window=window,
                              global_sink=True, recache="joint")
    ours = sample_causal(CausalWanModel.from_state_dict(sd), torch.zeros(1, 16, frames, H, W), None,
                         settings=settings, timeline=timeline, noise=ReplayTorchGlobalNoise(noise, 42))
    diff = (ours - theirs).abs().max().item()
    print(f"\n3-prompt timeline: max |ours - LongLive| = {diff:.2e} (output scale {theirs.abs().max().item():.2f})")
    assert theirs.abs().mean() > 0.1
    assert diff <= 1e-4
    # sharp: the third prompt one block late is far off from frame 12 on
    late = load(str(path), switch_frames=[7, 13]).encode(lambda text: Texts()([text])["prompt_embeds"])
    off = sample_causal(CausalWanModel.from_state_dict(sd), torch.zeros(1, 16, frames, H, W), None,
                        settings=settings, timeline=late, noise=ReplayTorchGlobalNoise(noise, 42))
    assert (off[:, :, :12] - theirs[:, :, :12]).abs().max() <= 1e-4 < (off[:, :, 12:] - theirs[:, :, 12:]).abs().max()
