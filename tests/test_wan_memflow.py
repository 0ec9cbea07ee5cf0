"""MemFlow's memory bank (loop shape "memory") against a reference written here from the definition: every
committed frame's clean K/V kept, each forward attending to [sink | window | block | bank] with the bank
rebuilt before each block from the rule (slot L-1 while L <= bank size, then the bank_size-1 frames whose
keys score highest against the layer's cross-attention text keys, plus the pending frame), the scores taken
as a full text-query x frame-key product averaged, not as the module's product of means."""

import pytest
import torch

from comfyui_clipwan.wan.model.checkpoint import load_wan_state_dict
from comfyui_clipwan.wan.model.lora import merge_lora_file
from comfyui_clipwan.wan.sampling.presets import get_preset

from comfyui_clipwan.wan import CausalSettings, CausalWanModel, WanConfig, sample_causal
from comfyui_clipwan.wan.model import dit
from comfyui_clipwan.wan.sampling.memflow import MemoryLoop, bank_scores
from comfyui_clipwan.wan.sampling.loop import LOOP_SHAPES, PromptSwitch, block_layout, initial_noise, step_noise
from comfyui_clipwan.wan.sampling.run import iter_causal_blocks
from comfyui_clipwan.wan.sampling.scheduler import denoising_schedule

from tiny_models import sharpened

T2V = WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=2, in_dim=16)
H = W = 8
TOK = (H // 2) * (W // 2)


@pytest.fixture(scope="module")
def t2v():
    return sharpened(T2V, seed=5)


def _score(text_k, frame_k):
    """mean over text tokens, heads and frame tokens of q·k/√d: text_k [Lt, H, d], frame_k [T, H, d]."""
    d = frame_k.shape[-1]
    prod = torch.einsum("ihd,thd->hit", text_k.double(), frame_k.double()) / d ** 0.5
    return prod.mean().item()


@torch.no_grad()
def memflow_reference(model, frames, text, s, seed, first=None, pipeline="single"):
    cfg = model.config
    layout = block_layout(frames, s.frames_per_block, s.independent_first_frame, s.shorter_last_block)
    sched = denoising_schedule(s.steps, s.shift, s.warp)
    noise = initial_noise(seed, (1, 16, frames, H, W))
    ctx = dit.encode_context(model.tree, cfg, text, None, torch.float32, 1)
    out = torch.zeros(1, 16, frames, H, W)
    clean = [dict() for _ in range(cfg.num_layers)]  # layer -> frame -> (k, v) of its clean pass
    bank = [[] for _ in range(cfg.num_layers)]  # layer -> [frame, ...] in slot order
    known = 0 if first is None else first.shape[2]
    def bank_step(j):
        slots = (j - 1) // s.memory_interval + 1
        recorded = j - 1 if pipeline == "single" else (j - 1) // s.memory_interval * s.memory_interval
        pending = layout[recorded][0]
        for i in range(cfg.num_layers):
            if slots <= s.memory_bank:
                bank[i][slots - 1:] = [pending]
            else:
                by_score = sorted(bank[i], key=lambda f: -_score(ctx.text_k[i][0], clean[i][f][0][0, :TOK]))
                bank[i] = by_score[:s.memory_bank - 1] + [pending]

    for j, (st, n) in enumerate(layout):
        if j:
            bank_step(j)
        end = st + n
        attended = [f for f in range(st) if f < s.sink_size or f >= end - (s.local_window - s.sink_size)]

        def hook(write):
            def kv_hook(i, k, v):
                if write:
                    for f in range(n):
                        clean[i][st + f] = (k[:, f * TOK:(f + 1) * TOK], v[:, f * TOK:(f + 1) * TOK])
                ks = [clean[i][f][0] for f in attended] + [k] + [clean[i][f][0][:, :TOK] for f in bank[i]]
                vs = [clean[i][f][1] for f in attended] + [v] + [clean[i][f][1][:, :TOK] for f in bank[i]]
                return torch.cat(ks, 1), torch.cat(vs, 1)
            return kv_hook

        if end <= known:
            x0 = first[:, :, st:end]
        else:
            x = noise[:, :, st:end]
            for step, sigma in enumerate(sched.sigmas):
                t = torch.tensor([sched.timesteps[step]], dtype=torch.float64)
                flow = dit.transformer(model.tree, cfg, x, t, ctx, start_frame=st, kv_hook=hook(False))
                x0 = x - sigma * flow
                if step + 1 < len(sched.sigmas):
                    fresh = step_noise(seed, j, step + 1, x0.shape, None)
                    x = (1 - sched.sigmas[step + 1]) * x0 + sched.sigmas[step + 1] * fresh
        out[:, :, st:end] = x0
        if j and pipeline == "interactive" and len(sched.sigmas) == 1 and end > known:
            bank_step(j)  # interactive_inference.py with one step: its clean pass runs the bank step again
        dit.transformer(model.tree, cfg, x0, torch.zeros(1), ctx, start_frame=st, kv_hook=hook(True), run_head=False)
    return out, bank


CASES = {
    # MemFlow's shipped numbers scaled down: bank 2 full after 2 blocks, a compression every block after
    "single_interval1": dict(memory_bank=2, memory_interval=1, memory_pipeline="single"),
    "single_interval2": dict(memory_bank=2, memory_interval=2, memory_pipeline="single"),
    "interactive_interval2": dict(memory_bank=2, memory_interval=2, memory_pipeline="interactive"),
    "bank3": dict(memory_bank=3, memory_interval=1, memory_pipeline="single"),
    # interactive_inference.py with one step runs the bank step again in the clean pass (1.3e-2 without it)
    "interactive_one_step": dict(memory_bank=3, memory_interval=1, memory_pipeline="interactive", steps="1000"),
}


def _settings(**kw):
    base = dict(steps="1000,750,500,250", shift=5.0, frames_per_block=3, sink_size=3, local_window=9, loop="memory")
    return CausalSettings(**{**base, **kw})


@pytest.mark.parametrize("case", sorted(CASES))
def test_memory_bank_equals_reference(case, t2v):
    s = _settings(**CASES[case])
    text = torch.randn(1, 12, 4096, generator=torch.Generator().manual_seed(2))
    frames = 27
    loop = iter_causal_blocks(t2v, torch.zeros(1, 16, frames, H, W), text, seed=4, settings=s)
    assert isinstance(loop, MemoryLoop)
    ours = torch.zeros(1, 16, frames, H, W)
    for r in loop:
        ours[:, :, r.start_frame:r.start_frame + r.num_frames] = r.x0
    ref, bank = memflow_reference(t2v, frames, text, s, 4, pipeline=s.memory_pipeline)
    assert ours.abs().mean() > 0.1
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)
    for i in range(T2V.num_layers):
        assert loop.bank_frames(i) == [bank[i]]
    # the bank matters: without it (plain LongLive cache) the blocks after the first differ
    plain = sample_causal(t2v, torch.zeros(1, 16, frames, H, W), text, seed=4,
                          settings=CausalSettings(steps=s.steps, shift=5.0, sink_size=3, local_window=9))
    torch.testing.assert_close(plain[:, :, :3], ref[:, :, :3], atol=2e-5, rtol=0)
    assert (plain[:, :, 3:] - ref[:, :, 3:]).abs().max() > 1e-3


def test_selection_is_by_relevance_not_recency(t2v):
    """Across layers the kept frames are not just the newest: relevance decides."""
    s = _settings(memory_bank=2, memory_interval=1, memory_pipeline="single")
    text = torch.randn(1, 12, 4096, generator=torch.Generator().manual_seed(2))
    _, bank = memflow_reference(t2v, 27, text, s, 4)
    # after the last block (9 blocks, first frames 0, 3, ..., 24): slot 1 holds the pending frame 21, slot 0
    # the winner of the previous compressions; recency alone would keep 18
    assert any(b[0] != 18 for b in bank), bank


def test_bank_scores_is_the_mean_of_text_key_products():
    g = torch.Generator().manual_seed(0)
    text_k, bank_k = torch.randn(2, 7, 3, 8, generator=g), torch.randn(2, 4, 5, 3, 8, generator=g)
    want = torch.tensor([[_score(text_k[b], bank_k[b, f]) for f in range(4)] for b in range(2)], dtype=torch.float64)
    torch.testing.assert_close(bank_scores(text_k, bank_k).double(), want, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shorter", [False, True])
def test_start_image_is_block_zero_and_the_first_pending_frame(shorter, t2v):
    """The image latent is block 0 (its frame the first pending one); with ``shorter_last_block`` (the node's
    rule for lengths that are not whole blocks) the bank rule is per block and holds for a last block of 2."""
    s = _settings(memory_bank=2, memory_interval=1, independent_first_frame=True, shorter_last_block=shorter)
    text = torch.randn(1, 12, 4096, generator=torch.Generator().manual_seed(3))
    first = torch.randn(1, 16, 1, H, W, generator=torch.Generator().manual_seed(9))
    frames = 1 + 3 * 6 + (2 if shorter else 0)
    ours = sample_causal(t2v, torch.zeros(1, 16, frames, H, W), text, seed=2, settings=s, first_frames=first)
    ref, _ = memflow_reference(t2v, frames, text, s, 2, first=first)
    torch.testing.assert_close(ours[:, :, :1], first, atol=0, rtol=0)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)


def test_prompt_switch_scores_with_zero_text_and_keeps_earlier_blocks(t2v):
    """At a switch MemFlow's bank steps (the re-cache's and the next block's) see an all-zero text: every
    score is 0 and torch.topk keeps the first slot; blocks before the switch are unchanged."""
    s = _settings(memory_bank=2, memory_interval=1)
    text = torch.randn(1, 12, 4096, generator=torch.Generator().manual_seed(2))
    other = torch.randn(1, 12, 4096, generator=torch.Generator().manual_seed(7))
    frames = 18
    base = sample_causal(t2v, torch.zeros(1, 16, frames, H, W), text, seed=4,
                         settings=_settings(memory_bank=2, memory_interval=1, memory_pipeline="interactive"))
    loop = iter_causal_blocks(t2v, torch.zeros(1, 16, frames, H, W), text, seed=4, settings=s,
                              prompt_switches=[PromptSwitch(4, other)])
    blocks, banks = [], []
    for r in loop:
        blocks.append(r.x0)
        banks.append([(loop.bank_frames(i) or [[]])[0] for i in range(T2V.num_layers)])
    switched = torch.cat(blocks, 2)
    torch.testing.assert_close(switched[:, :, :12], base[:, :, :12], atol=0, rtol=0)
    assert (switched[:, :, 12:] - base[:, :, 12:]).abs().max() > 1e-3
    assert banks[1] == [[0]] * 2 and banks[2] == [[0, 3]] * 2
    kept = [b[0] for b in banks[3]]  # block 3 compressed [0, 3] by relevance to the first prompt
    assert [b[1] for b in banks[3]] == [6, 6] and all(f in (0, 3) for f in kept)
    # block 4: two zero-text steps (re-cache, block) each keep slot 0 and append the pending frame 9
    assert banks[4] == [[f, 9] for f in kept]
    # block 5 scores [kept, 9] with the new prompt
    assert all(b[0] in (f, 9) and b[1] == 12 for b, f in zip(banks[5], kept))


@pytest.mark.parametrize("kw, msg", [
    (dict(sink_size=0), "the memory loop (MemFlow) needs an attention sink and a local window (sink_size 0, "
                        "local_window 9): MemFlow attends to its bank only next to the sink; use its config, "
                        "sink_size 3 and local_window 12."),
    (dict(local_window=0), "the memory loop (MemFlow) needs an attention sink and a local window (sink_size 3, "
                           "local_window 0): MemFlow attends to its bank only next to the sink; use its config, "
                           "sink_size 3 and local_window 12."),
    (dict(memory_bank=0), "memory_bank (0) and memory_interval (3) must be >= 1 (MemFlow: bank_size 3, "
                          "record_interval 3)."),
    (dict(memory_pipeline="chat"), "memory_pipeline 'chat' is not one of ['auto', 'single', 'interactive']."),
    (dict(positions="slots"), "the memory loop (MemFlow) keeps LongLive's cache and steps: positions='absolute', "
                              "no sink_ema, solver 'renoise'."),
    (dict(loop="memroy"), f"loop shape 'memroy' is not one of {list(LOOP_SHAPES)}."),
])
def test_bad_settings_are_clear_errors(kw, msg, t2v):
    assert "memory" in LOOP_SHAPES
    with pytest.raises(ValueError) as e:
        iter_causal_blocks(t2v, torch.zeros(1, 16, 9, H, W), torch.zeros(1, 4, 4096), settings=_settings(**kw))
    assert str(e.value) == msg


def test_prompt_switches_need_the_interactive_pipeline_and_joint_recache(t2v):
    sw = [PromptSwitch(1, torch.zeros(1, 4, 4096))]
    with pytest.raises(ValueError) as e:
        iter_causal_blocks(t2v, torch.zeros(1, 16, 9, H, W), torch.zeros(1, 4, 4096),
                           settings=_settings(memory_pipeline="single"), prompt_switches=sw)
    assert str(e.value) == ("MemFlow's single-prompt pipeline (memory_pipeline='single', its inference.py) has no "
                            "prompt switches; use memory_pipeline 'auto' or 'interactive' (interactive_inference.py).")
    with pytest.raises(ValueError) as e:
        iter_causal_blocks(t2v, torch.zeros(1, 16, 9, H, W), torch.zeros(1, 4, 4096),
                           settings=_settings(recache="blockwise"), prompt_switches=sw)
    assert str(e.value) == "MemFlow re-caches at a prompt switch like LongLive (recache='joint'), not 'blockwise'."


# --- the released files and the preset --------------------------------------------------------------------------
def _memflow_files(tmp_path, raw_lora=False):
    """base.pt as MemFlow's inference.py reads it ({"generator": {"model.<Wan key>"}}), lora.pt in its trainer's
    format ({generator_lora, critic_lora, step}, PEFT names, rank 256) or, as its loader also accepts, the bare
    PEFT dict; LoRA on every Linear inside the attention blocks (utils/lora_utils.py)."""
    sd = CausalWanModel.random(T2V, seed=11).state_dict()
    base = tmp_path / "base.pt"
    torch.save({"generator": {"model." + k: v.clone() for k, v in sd.items()}}, str(base))
    tree = CausalWanModel.random(T2V, seed=11).tree
    targets = sorted(n for n, m in tree.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("blocks."))
    g = torch.Generator().manual_seed(12)
    lora = {}
    for t in targets:
        w = sd[t + ".weight"]
        lora[f"base_model.model.{t}.lora_A.weight"] = torch.randn(256, w.shape[1], generator=g) * 0.02
        lora[f"base_model.model.{t}.lora_B.weight"] = torch.randn(w.shape[0], 256, generator=g) * 0.02
    obj = lora if raw_lora else {"generator_lora": lora, "critic_lora": {}, "step": 1200}
    torch.save(obj, str(tmp_path / "lora.pt"))
    return sd, lora, targets, str(base), str(tmp_path / "lora.pt")


@pytest.mark.parametrize("raw_lora", [False, True])
def test_released_memflow_files_load_and_merge(raw_lora, tmp_path):
    sd, lora, targets, base, lora_path = _memflow_files(tmp_path, raw_lora)
    assert len(targets) == 10 * T2V.num_layers  # q k v o of both attentions, ffn.0, ffn.2
    preset = get_preset("MemFlow")
    got, source = load_wan_state_dict(base, preset.checkpoint_entry)
    assert source == "base.pt [generator]" and set(got) == set(sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    merged, _ = merge_lora_file(got, lora_path)
    for t in targets:  # PEFT's merge with MemFlow's alpha = rank = 256: W + B @ A
        a, b = lora[f"base_model.model.{t}.lora_A.weight"], lora[f"base_model.model.{t}.lora_B.weight"]
        torch.testing.assert_close(merged[t + ".weight"], sd[t + ".weight"] + b @ a, atol=1e-6, rtol=0)
    assert torch.equal(merged["blocks.0.modulation"], sd["blocks.0.modulation"])


def test_preset_is_memflows_config_and_runs_its_loop_with_a_start_image():
    import dataclasses

    p = get_preset("MemFlow")
    # saved under names that say whose files they are (published as base.pt / lora.pt)
    assert (p.model_file, p.lora_file, p.checkpoint_entry, p.lora_rank) == ("memflow_base.pt", "memflow_lora.pt",
                                                                            "generator", 256)
    assert (p.steps, p.shift, p.frames_per_block, p.sink_size, p.local_window) == ("1000,750,500,250", 5.0, 3, 3, 12)
    assert p.loop_rules() == {"loop": "memory", "memory_bank": 3, "memory_interval": 3}
    assert (p.latent_frames - 1) % p.frames_per_block == 0
    # the preset's widgets + rules at tiny size (a shorter video of the same shape: image + 6 blocks)
    v = p.sampler_values()
    s = dataclasses.replace(CausalSettings(steps=v["steps"], shift=v["shift"], warp=v["warp_steps"],
                                           frames_per_block=v["frames_per_block"], sink_size=v["sink_size"],
                                           local_window=v["local_window"],
                                           independent_first_frame=v["independent_first_frame"]), **p.loop_rules())
    model = CausalWanModel.random(T2V, seed=5)
    first = torch.randn(1, 16, 1, H, W, generator=torch.Generator().manual_seed(1))
    text = torch.randn(1, 8, 4096, generator=torch.Generator().manual_seed(2))
    loop = iter_causal_blocks(model, torch.zeros(1, 16, 1 + 3 * 12, H, W), text, settings=s, first_frames=first)
    out = torch.cat([r.x0 for r in loop], 2)
    assert isinstance(loop, MemoryLoop) and torch.isfinite(out).all()
    torch.testing.assert_close(out[:, :, :1], first, atol=0, rtol=0)
    # 13 blocks, recorded every 3rd: slots 0..2 filled from blocks 0, 3, 6, then compressed before blocks 10..12
    assert all(len(loop.bank_frames(i)[0]) == 3 for i in range(T2V.num_layers))
