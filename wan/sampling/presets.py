"""One table of the released causal Wan 2.1 checkpoints and the settings their authors run them with.

The sampler node's web presets menu (GET ``/clipwan/presets``), the CLI (``sample --preset``), the tests and
the model table of docs/wan.md all read this table; nothing else holds these numbers. Sources: each family's
own inference config and README (named in ``config``).

Every preset is set up for the i2v templates: the start image enters a t2v-distilled causal model as its
first latent frame (``independent_first_frame`` on, the image route ``first_frame``), so a length fits when
the latent has ``1 + frames_per_block·k`` frames; ``recommended_length`` is such a length in pixel frames.
Only the Matrix-Game 2.0 rows take CLIP vision features (image route "clip": the start image's CLIP tokens are
its whole cross-attention context, plus the concat latent; keyboard / mouse actions per frame, no text; blocks
of 3 from frame 0). The others have no ``img_emb``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from .settings_spec import PRESET_WIDGETS as SAMPLER_WIDGETS  # the widgets a preset sets (declared there)
from .settings_spec import check_preset


@dataclasses.dataclass(frozen=True)
class FamilyPreset:
    name: str
    repo: str  # the authors' code
    files: tuple  # what users download: "hf-owner/hf-repo/path/in/repo" (base first, then LoRA)
    license: str
    base: str  # the Wan model it was distilled from
    config: str  # the authors' inference config the numbers come from
    steps: str
    shift: float
    warp_steps: bool
    frames_per_block: int
    sink_size: int = 0
    local_window: int = 0  # latent frames attended in all; 0 = everything so far
    independent_first_frame: bool = True  # the start image is the first latent frame (its own block)
    checkpoint_entry: str = "auto"
    lora_rank: int = 0  # LoRA shipped separately (merged at load); alpha = rank in every released one
    # the authors' loop rules that are not sampler widgets: ``CausalSettings`` fields as (name, value) pairs,
    # e.g. (("positions", "slots"), ("sink_ema", 0.999)); the node and the CLI apply them for the chosen family.
    # A prompt switch re-caches jointly by default (``CausalSettings.recache``, LongLive's and MemFlow's rule).
    rules: tuple = ()
    image_route: str = "first_frame"  # first_frame | clip | none
    recommended_length: int = 85  # pixel frames; (L-1)//4+1 latent frames fit the blocks
    guidance_scale: float = 1.0  # distilled: no CFG
    # LongLive 2.0's multi-shot mode (scene cuts in a timeline; wan/sampling/multishot.py); off for the others
    multi_shot_sink: bool = False
    multi_shot_rope_offset: float = 0.0
    scene_cut_prefix: str = ""
    note: str = ""
    # the names users save ``files`` under (same order; "" = the file's own name, already unmistakable): a bare
    # ``lora.pt`` / ``model_bf16.pt`` would collide with other families' and other packs' files in models/
    save_as: tuple = ()

    def local_name(self, i: int) -> str:
        """The name file ``i`` is saved under in ComfyUI's models folder (workflows and menus name this)."""
        named = self.save_as[i] if i < len(self.save_as) else ""
        return named or source_name(self.files[i])

    def download_url(self, i: int) -> str:
        owner, repo, path = self.files[i].split("/", 2)
        return f"https://huggingface.co/{owner}/{repo}/resolve/main/{path}"

    @property
    def model_file(self) -> str:
        return self.local_name(0)

    @property
    def lora_file(self) -> str:
        return self.local_name(1) if len(self.files) > 1 else ""

    @property
    def latent_frames(self) -> int:
        return (self.recommended_length - 1) // 4 + 1

    def loop_rules(self) -> dict:
        """``CausalSettings`` fields this family's loop sets beyond the widgets (``dataclasses.replace`` them)."""
        return dict(self.rules)

    def causal_settings(self, **overrides):
        """``CausalSettings`` of this family (widget values + loop rules), with ``overrides`` applied."""
        from .loop import CausalSettings

        values = dict(steps=self.steps, shift=self.shift, warp=self.warp_steps,
                      frames_per_block=self.frames_per_block, sink_size=self.sink_size,
                      local_window=self.local_window, independent_first_frame=self.independent_first_frame,
                      guidance_scale=self.guidance_scale, **self.loop_rules())
        values.update(overrides)
        return CausalSettings(**values)

    def sampler_values(self) -> dict:
        """The CausalWanSampler widget values of this preset, its ``family`` (whose loop rules apply) included."""
        return {**{k: getattr(self, k) for k in SAMPLER_WIDGETS}, "family": self.name}

    def widget_differences(self, values: dict) -> list:
        """``["shift 3 (family: 8)", ...]``: the widgets in ``values`` that differ from this family's values
        (steps compared as timestep lists, numbers with a tolerance)."""
        out = []
        for name in SAMPLER_WIDGETS:
            if name not in values:
                continue
            mine, theirs = getattr(self, name), values[name]
            if not _same_value(name, theirs, mine, values.get("warp_steps", self.warp_steps), self.warp_steps):
                out.append(f"{name} {theirs} (family: {mine})")
        return out


def source_name(file: str) -> str:
    """The file's own name in its authors' repository (``.../models/lora.pt`` -> ``lora.pt``)."""
    return file.rsplit("/", 1)[-1]


def _same_value(name, given, wanted, given_warp, wanted_warp) -> bool:
    if name == "steps":
        from .scheduler import parse_steps

        try:
            return parse_steps(given, bool(given_warp)) == parse_steps(wanted, bool(wanted_warp))
        except ValueError:
            return str(given).strip() == str(wanted).strip()
    if isinstance(wanted, bool) or isinstance(given, bool):
        return bool(given) == bool(wanted)
    try:
        return abs(float(given) - float(wanted)) <= 1e-6 * max(1.0, abs(float(wanted)))
    except (TypeError, ValueError):
        return given == wanted


# LongLive 2.0's ``DEFAULT_SCENE_CUT_PREFIX`` (utils/dataset.py; inference.py's ``scene_cut_prefix`` default): what its
# prompt files put before the first prompt of every shot after the first, and how its pipeline finds the cuts
LONGLIVE2_SCENE_CUT_PREFIX = "The scene transitions. "


def _len(latent_frames: int) -> int:
    return 4 * (latent_frames - 1) + 1


PRESETS = (
    FamilyPreset(
        "Self-Forcing", "guandeh17/Self-Forcing", ("gdhe17/Self-Forcing/checkpoints/self_forcing_dmd.pt",),
        "Apache-2.0", "Wan2.1-T2V-1.3B", "configs/self_forcing_dmd.yaml + inference.py --use_ema",
        steps="1000,750,500,250", shift=5.0, warp_steps=True, frames_per_block=3, checkpoint_entry="generator_ema",
        recommended_length=_len(22), note="4 warped steps, blocks of 3, full attention"),
    FamilyPreset(
        "CausVid", "tianweiy/CausVid", ("tianweiy/CausVid/autoregressive_checkpoint/model.pt",),
        "CC-BY-NC-SA-4.0", "Wan2.1-T2V-1.3B", "configs/wan_causal_dmd.yaml (warp_denoising_step: false)",
        steps="1000,757,522", shift=8.0, warp_steps=False, frames_per_block=3, checkpoint_entry="generator",
        recommended_length=_len(22), save_as=("causvid_model.pt",), note="3 unwarped steps at shift 8, blocks of 3"),
    FamilyPreset(
        "LongLive 1.0", "NVlabs/LongLive (v1.0)",
        ("Efficient-Large-Model/LongLive-1.3B/models/longlive_base.pt",
         "Efficient-Large-Model/LongLive-1.3B/models/lora.pt"),
        "Apache-2.0", "Wan2.1-T2V-1.3B", "configs/longlive_inference.yaml (use_ema: false, adapter rank 256 alpha 256)",
        steps="1000,750,500,250", shift=5.0, warp_steps=True, frames_per_block=3, sink_size=3, local_window=12,
        checkpoint_entry="generator", lora_rank=256, recommended_length=_len(121),
        save_as=("", "longlive_lora.pt"), note="sink 3 + window 12 (flat memory), LoRA merged at load"),
    FamilyPreset(
        "Causal Forcing chunk-wise", "thu-ml/Causal-Forcing", ("zhuhz22/Causal-Forcing/chunkwise/causal_forcing.pt",),
        "Apache-2.0", "Wan2.1-T2V-1.3B", "configs/causal_forcing_dmd_chunkwise.yaml (README: no --use_ema)",
        steps="1000,750,500,250", shift=5.0, warp_steps=True, frames_per_block=3, checkpoint_entry="generator",
        recommended_length=_len(22), save_as=("causal_forcing_chunkwise.pt",), note="4 warped steps, blocks of 3"),
    FamilyPreset(
        "Causal Forcing frame-wise", "thu-ml/Causal-Forcing", ("zhuhz22/Causal-Forcing/framewise/causal_forcing.pt",),
        "Apache-2.0", "Wan2.1-T2V-1.3B", "configs/causal_forcing_dmd_framewise.yaml + --use_ema (native i2v)",
        steps="1000,750,500,250", shift=5.0, warp_steps=True, frames_per_block=1, checkpoint_entry="generator_ema",
        recommended_length=_len(21), save_as=("causal_forcing_framewise.pt",),
        note="4 warped steps, one latent frame per block; the authors' i2v model"),
    FamilyPreset(
        "Causal Forcing++ frame-wise 2-step", "thu-ml/Causal-Forcing",
        ("zhuhz22/Causal-Forcing/causal-forcing++/framewise-2step.pt",),
        "Apache-2.0", "Wan2.1-T2V-1.3B", "configs/causal_forcing_dmd_framewise_2step.yaml + --use_ema",
        steps="1000,500", shift=5.0, warp_steps=True, frames_per_block=1, checkpoint_entry="generator_ema",
        rules=(("first_block_steps", "1000,750,500,250"),), recommended_length=_len(21),
        save_as=("causal_forcing_pp_framewise_2step.pt",),
        note="2 warped steps per frame (the authors run their first frame with 4: 1000,750,500,250; with a "
             "start image that frame is the image)"),
    FamilyPreset(
        "Rolling Forcing", "TencentARC/RollingForcing", ("TencentARC/RollingForcing/checkpoints/rolling_forcing_dmd.pt",),
        "see repo LICENSE (academic use)", "Wan2.1-T2V-1.3B",
        "configs/rolling_forcing_dmd.yaml + inference.py --use_ema --num_output_frames 126",
        steps="1000,800,600,400,200", shift=5.0, warp_steps=True, frames_per_block=3, sink_size=3, local_window=21,
        checkpoint_entry="generator_ema", rules=(("loop", "rolling"),), recommended_length=_len(1 + 126),
        note="5 warped steps; a rolling window of 5 blocks at staggered noise levels denoised jointly, the first "
             "block as anchor + 21 attended frames (the README's 126 latent frames after the start image)"),
    FamilyPreset(
        "Reward Forcing", "JaydenLyh/Reward-Forcing", ("JaydenLu666/Reward-Forcing-T2V-1.3B/rewardforcing.pt",),
        "Apache-2.0", "Wan2.1-T2V-1.3B", "configs/reward_forcing.yaml (sink_size 3, local_attn_size 9)",
        steps="1000,750,500,250", shift=5.0, warp_steps=True, frames_per_block=3, sink_size=3, local_window=9,
        rules=(("positions", "slots"), ("sink_ema", 0.999)), recommended_length=_len(22),
        note="sink 3 + window 9, EMA-updated sink, keys at their slot positions"),
    FamilyPreset(
        "Krea Realtime 14B", "krea-ai/realtime-video", ("krea/krea-realtime-video/krea-realtime-video-14b.safetensors",),
        "CC-BY-NC-SA-4.0", "Wan2.1-T2V-14B",
        "release_server.py GenerateParams (num_denoising_steps 5, kv_cache_num_frames 3, keep_first_frame false, "
        "num_blocks 9, timestep_shift 5)",
        steps="1000,750,500,250,0", shift=5.0, warp_steps=True, frames_per_block=3, sink_size=1, local_window=6,
        rules=(("loop", "recompute"),), recommended_length=_len(1 + 27),
        note="5 warped steps (the last at t=0), blocks of 3; before each block the cache is recomputed from "
             "3 clean context frames (the first one re-encoded from decoded pixels once it is old)"),
    FamilyPreset(
        "MemFlow", "KlingTeam/MemFlow", ("KlingTeam/MemFlow/base.pt", "KlingTeam/MemFlow/lora.pt"),
        "Apache-2.0", "Wan2.1-T2V-1.3B",
        "configs/inference.yaml, interactive_inference.yaml (use_ema: false, bank_size 3, record_interval 3, "
        "adapter rank 256 alpha 256)",
        steps="1000,750,500,250", shift=5.0, warp_steps=True, frames_per_block=3, sink_size=3, local_window=12,
        checkpoint_entry="generator", lora_rank=256,
        rules=(("loop", "memory"), ("memory_bank", 3), ("memory_interval", 3)), recommended_length=_len(121),
        save_as=("memflow_base.pt", "memflow_lora.pt"),
        note="LongLive's sink 3 + window 12 plus a memory bank of 3 frames kept by relevance to the prompt "
             "(loop 'memory'); LoRA merged at load"),
    FamilyPreset(
        "LongLive 2.0", "NVlabs/LongLive (main)", ("Efficient-Large-Model/LongLive-2.0-5B/model_bf16.pt",),
        "Apache-2.0", "Wan2.2-TI2V-5B", "configs/inference_i2v.yaml (use_ema: false, sampling_steps 4, i2v: true, "
        "multi_shot_sink: true, multi_shot_rope_offset: 8; scene_cut_prefix: utils/dataset.py's default)",
        steps="4", shift=5.0, warp_steps=True, frames_per_block=8, sink_size=8, local_window=32,
        independent_first_frame=False, checkpoint_entry="generator", recommended_length=_len(16),
        multi_shot_sink=True, multi_shot_rope_offset=8.0, scene_cut_prefix=LONGLIVE2_SCENE_CUT_PREFIX,
        save_as=("longlive2_model_bf16.pt",),
        note="Wan 2.2 TI2V-5B: 4 UniPC steps per block, blocks of 8 from frame 0 with the start image clamped "
             "into the first one, sink 8 + window 32 (the loop switches to these rules for any Wan 2.2 model); "
             "scene cuts in a timeline run its multi-shot sink and RoPE offset"),
    # Matrix-Game 2.0 (Matrix-Game-2/configs/inference_yaml/*.yaml + configs/distilled_model/*/config.json):
    # one row per released checkpoint, the action mode is read from the weights (wan/model/actions.py)
    FamilyPreset(
        "Matrix-Game 2.0", "SkyworkAI/Matrix-Game (Matrix-Game-2)",
        ("Skywork/Matrix-Game-2.0/base_distilled_model/base_distill.safetensors",), "MIT",
        "SkyReels-V2-I2V-1.3B", "inference_universal.yaml + distilled_model/universal (local_attn_size 6)",
        steps="1000,666,333", shift=5.0, warp_steps=True, frames_per_block=3, local_window=6,
        independent_first_frame=False, image_route="clip", recommended_length=_len(15),
        note="universal scenes: CLIP features + concat, keys W/S/A/D + mouse, 3 warped steps, blocks of 3, "
             "window 6, 352x640",
        save_as=("matrix_game2_base_distill.safetensors",)),
    FamilyPreset(
        "Matrix-Game 2.0 GTA drive", "SkyworkAI/Matrix-Game (Matrix-Game-2)",
        ("Skywork/Matrix-Game-2.0/gta_distilled_model/gta_keyboard2dim.safetensors",), "MIT",
        "SkyReels-V2-I2V-1.3B", "inference_gta_drive.yaml + distilled_model/gta_drive (local_attn_size 4)",
        steps="1000,666,333", shift=5.0, warp_steps=True, frames_per_block=3, local_window=4,
        independent_first_frame=False, image_route="clip", recommended_length=_len(15),
        note="GTA driving: keys W/S + mouse steering, 3 warped steps, blocks of 3, window 4, 352x640",
        save_as=("matrix_game2_gta_keyboard2dim.safetensors",)),
    FamilyPreset(
        "Matrix-Game 2.0 Temple Run", "SkyworkAI/Matrix-Game (Matrix-Game-2)",
        ("Skywork/Matrix-Game-2.0/templerun_distilled_model/templerun_7dim_onlykey.safetensors",), "MIT",
        "SkyReels-V2-I2V-1.3B", "inference_templerun.yaml + distilled_model/templerun (local_attn_size 6)",
        steps="1000,750,500,250", shift=5.0, warp_steps=True, frames_per_block=3, local_window=6,
        independent_first_frame=False, image_route="clip", recommended_length=_len(15),
        note="Temple Run: 7 keys, no mouse, 4 warped steps, blocks of 3, window 6, 352x640",
        save_as=("matrix_game2_templerun_7dim_onlykey.safetensors",)),
)

# the Matrix-Game 2.0 row of each action mode (the mode is read from the weights: wan/model/actions.py)
MATRIX_GAME_FAMILIES = {"universal": "Matrix-Game 2.0", "gta_drive": "Matrix-Game 2.0 GTA drive",
                        "templerun": "Matrix-Game 2.0 Temple Run"}

for _preset in PRESETS:  # every field against the settings' declaration (a bad value fails at import)
    check_preset(_preset)
_BY_NAME = {p.name: p for p in PRESETS}


def get_preset(name: str) -> FamilyPreset:
    if name not in _BY_NAME:
        raise ValueError(f"unknown preset '{name}'; choose one of: {', '.join(_BY_NAME)}.")
    return _BY_NAME[name]


def preset_names() -> list[str]:
    return list(_BY_NAME)


CUSTOM_FAMILY = "custom"  # the sampler's `family` when no family's loop rules apply (the widgets alone)


def family_choices() -> list[str]:
    """The sampler's ``family`` combo: "custom", then every preset (new rows appear by themselves)."""
    return [CUSTOM_FAMILY] + preset_names()


def family_preset(family) -> Optional[FamilyPreset]:
    """The preset of a ``family`` value; None for "custom" (or nothing)."""
    return None if family in (None, "", CUSTOM_FAMILY) else get_preset(family)


def alternative_names(name: str) -> list:
    """Other names the same downloaded file may have: for an identifying name (``longlive_lora.pt``) the
    authors' own name (``lora.pt``, what users who downloaded it earlier have); for an authors' name, the
    identifying names of every file published under it (``lora.pt`` -> LongLive's and MemFlow's)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    out = []
    for p in PRESETS:
        for i, file in enumerate(p.files):
            local, source = p.local_name(i), source_name(file)
            if local == source:
                continue
            if base == local:
                out.append(source)
            elif base == source:
                out.append(local)
    return list(dict.fromkeys(out))
def _base_model(preset: FamilyPreset) -> tuple:
    """``("Wan 2.1", "1.3B")`` from a preset's ``base`` (``Wan2.1-T2V-1.3B``; ``Wan2.2-TI2V-5B`` -> TI2V-5B)."""
    head, _, rest = preset.base.partition("-")
    if head == "SkyReels" and rest.startswith("V2-"):  # SkyReels-V2 (Matrix-Game 2.0's base) is the Wan 2.1 DiT
        head, rest = "Wan2.1", rest[len("V2-"):]
    generation = head.replace("Wan", "Wan ")
    size = rest.split("-", 1)[1] if rest.startswith("T2V-") or rest.startswith("I2V-") else rest
    return generation, size


def check_family_fits(family, config) -> None:
    """Refuse a family whose loop rules were distilled for another Wan generation or size than the model's
    (``config``: the model's ``WanConfig``). The size is compared only for the released sizes (1.3B, 14B,
    TI2V-5B); a custom-size model takes any family of its generation."""
    preset = family_preset(family)
    if preset is None:
        return
    generation, size = _base_model(preset)
    same_generation = [p.name for p in PRESETS if _base_model(p)[0] == config.generation]
    if config.generation != generation:
        raise ValueError(f"family '{preset.name}' was distilled from {preset.base} ({generation}), but the model is "
                         f"{config.describe()}: its loop rules do not apply to a {config.generation} model. Choose "
                         f"family 'custom' or a {config.generation} family ({', '.join(same_generation) or 'none'}).")
    # Matrix-Game's rows run on its action model of their own mode only (and no other model runs them)
    mode = config.actions.mode if config.actions is not None else None
    wanted = next((m for m, name in MATRIX_GAME_FAMILIES.items() if name == preset.name), None)
    if mode != wanted:
        needs = f"a Matrix-Game 2.0 model with {wanted!r} actions" if wanted else "a model without action modules"
        fits = f"family '{MATRIX_GAME_FAMILIES[mode]}'" if mode else "a family of a model without actions"
        raise ValueError(f"family '{preset.name}' is for {needs}, but the model is {config.describe()}. Choose "
                         f"{fits} or 'custom'.")
    if config.size_name != "custom" and config.size_name != size:
        same_size = [p.name for p in PRESETS if _base_model(p) == (config.generation, config.size_name)]
        raise ValueError(f"family '{preset.name}' was distilled from {preset.base} ({size}), but the model is "
                         f"{config.describe()}: its settings are for another size. Choose family 'custom' or a "
                         f"{config.generation} {config.size_name} family ({', '.join(same_size) or 'none'}).")


def web_payload(names: Optional[list] = None) -> dict:
    """``{name: {note, values, knobs, ...}}`` for the web presets menu (GET /clipwan/presets): ``values`` are
    every widget the family sets, ``knobs`` the ones its loop reads (the node shows only those for it)."""
    out = {}
    from .settings_spec import family_knobs

    for p in PRESETS if names is None else [get_preset(n) for n in names]:
        out[p.name] = {"note": p.note, "values": p.sampler_values(), "knobs": family_knobs(p),
                       "model_file": p.model_file,
                       "lora_file": p.lora_file, "checkpoint_entry": p.checkpoint_entry,
                       "recommended_length": p.recommended_length, "image_route": p.image_route,
                       "license": p.license}
    return out


def markdown_table() -> str:
    """The model table of docs/wan.md (a test checks the docs hold exactly this)."""
    rows = ["| preset | file(s) to download | entry | steps (shift, warp) | blocks / sink / window | image route "
            "| length | license |", "|---|---|---|---|---|---|---|---|"]
    for p in PRESETS:
        files = " + ".join(f"`{p.local_name(i)}`" + ("" if p.local_name(i) == source_name(f) else
                                                     f" (published as `{source_name(f)}`)")
                           for i, f in enumerate(p.files)) + f" (HF `{'/'.join(p.files[0].split('/')[:2])}`)"
        warp = "warped" if p.warp_steps else "unwarped"
        route = {"first_frame": "start image = first latent frame", "clip": "CLIP features + concat",
                 "none": "none"}[p.image_route]
        rows.append(f"| {p.name} | {files} | {p.checkpoint_entry} | {p.steps} ({p.shift:g}, {warp}) | "
                    f"{p.frames_per_block} / {p.sink_size} / {p.local_window or 'all'} | {route} | "
                    f"{p.recommended_length} | {p.license} |")
    return "\n".join(rows)
