"""Every causal setting, declared once: name, type, default, range, tooltip, who uses it, CLI flag, node widget.

Built from this table (nothing else lists these settings):
  * the widgets of Causal Wan Sampler / Causal Wan Stream Video (``node_widgets``: names and order kept as
    saved workflows have them; every setting widget optional, with its default = the old behaviour, so an API
    prompt saved before a widget existed still runs; most marked ComfyUI ``advanced``),
  * the widget layouts of earlier versions (``widget_layouts``: how a saved UI workflow's ``widgets_values``
    map back to names, see web/clipwan_logic.js ``migrateWidgetValues``),
  * the node/CLI values -> ``CausalSettings`` mapping (``causal_settings``) and the one run rule shared by the
    node and the CLI (``run_settings``: family rules, the model generation's rules, the block layout fit),
  * the CLI ``sample`` options (``add_cli_options``; old flags kept as aliases) and their validation before any
    model is loaded (``check_values``, errors naming the flag or the widget),
  * the family presets' validation (``check_preset``) and the settings table of docs/wan.md (``markdown_table``).

Defaults of loop settings live in ``CausalSettings`` (wan/sampling/loop.py) and are read from there; every
``CausalSettings`` field has exactly one row here (tests/test_settings_spec.py checks it).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Callable, Optional, Sequence

from ..timeline.live import DEFAULT_ENCODER_PRIORITY, ENCODER_PRIORITIES
from .cache import POSITION_MODES
from .loop import (FIRST_FRAME_POLICIES, LOOP_SHAPES, RECACHE_MODES, SOLVERS, WAN22_LOOP_RULES, CausalSettings,
                   block_layout, check_window, fit_block_layout, loop_rules_for)

SAMPLER, STREAM = "sampler", "stream"  # the two causal nodes that show these widgets
NODE_SINCE = {SAMPLER: 1, STREAM: 2}  # the widget layout version each node first appeared in
WIDGET_KINDS = ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")
SEED_CONTROL = "control_after_generate"  # the front end's widget after a seed (saved in widgets_values)
DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")
STREAM_FORMATS = {"mp4 (H.264)": "mp4", "webm (VP9)": "webm"}  # stream node label -> file format
STREAM_DECODERS = ("wan vae", "tiny (taew2_1)")
MEMORY_PIPELINES = ("auto", "single", "interactive")
ALL = "every family and loop shape"
_FROM_SETTINGS = object()  # default: the CausalSettings field's


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str  # the node widget / CLI dest / keyword name (kept as saved workflows have it)
    kind: str  # INT | FLOAT | BOOLEAN | STRING | COMBO (ComfyUI widget types; a rule-only field's value type)
    tooltip: str
    default: object = _FROM_SETTINGS
    field: Optional[str] = None  # the CausalSettings field it sets; None: not a loop setting (run input)
    choices: object = ()  # COMBO / rule choices: a tuple, or a callable giving the list (family presets)
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None
    optional: bool = False  # rule field: None is also a value (no EMA, no first-block list)
    nodes: tuple = (SAMPLER, STREAM)  # nodes showing it as a widget; () = a rule set by families / the Python API
    advanced: bool = True  # under the node's advanced section (ComfyUI's `advanced` input option)
    cli: Optional[str] = None  # the `sample` flag; None: not on the CLI
    cli_aliases: tuple = ()  # earlier flags that still work
    used_by: str = ALL  # which families / loop shapes read it (docs table)
    # whether a run with these CausalSettings reads it (None: always): a family's preset shows only the knobs
    # its loop reads (``family_knobs``)
    used_when: Optional[Callable[[CausalSettings], bool]] = None
    since: int = 1  # the node widget layout version that added it (saved-workflow migration)
    multiline: bool = False  # a STRING widget's text box is several lines

    @property
    def widget_default(self):
        if self.default is not _FROM_SETTINGS:
            return self.default
        value = CausalSettings.__dataclass_fields__[self.field].default
        if self.name == "cache_dtype":
            return "auto" if value is None else value
        return ",".join(str(v) for v in value) if isinstance(value, tuple) else value

    def choice_list(self) -> list:
        return list(self.choices() if callable(self.choices) else self.choices)

    def node_input(self) -> tuple:
        """The ``INPUT_TYPES`` entry of this widget."""
        opts = {"default": self.widget_default, "tooltip": self.tooltip}
        for key in ("min", "max", "step"):
            if getattr(self, key) is not None:
                opts[key] = getattr(self, key)
        if self.advanced:
            opts["advanced"] = True
        if self.multiline:
            opts["multiline"] = True
        if self.kind == "COMBO":
            return (self.choice_list(), opts)
        return (self.kind, opts)

    def check(self, value, where: str = "") -> Optional[str]:
        """A message naming ``where`` (the flag or widget) when ``value`` is not valid for this setting."""
        where = where or self.name
        if value is None and self.optional:
            return None
        if self.kind == "COMBO":
            choices = self.choice_list()
            return None if value in choices else f"{where} '{value}' is not one of {choices}."
        if self.kind == "BOOLEAN":
            return None if isinstance(value, bool) else f"{where} must be true or false, not {value!r}."
        if self.kind == "STRING":
            if not isinstance(value, str) and not (self.name.endswith("steps") and isinstance(value, (list, tuple))):
                return f"{where} must be text, not {value!r}."
            if self.name in ("steps", "first_block_steps"):
                from .scheduler import parse_steps

                try:
                    parse_steps(value, True)
                except ValueError as exc:
                    return f"{where}: {exc}"
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (self.kind == "INT" and not float(value).is_integer()):
            return f"{where} must be {'a whole number' if self.kind == 'INT' else 'a number'}, not {value!r}."
        if not math.isfinite(float(value)):
            return f"{where} must be a finite number, not {value}."
        lo = -math.inf if self.min is None else self.min
        hi = math.inf if self.max is None else self.max
        if not lo <= value <= hi:
            return f"{where} {value} is outside [{self.min}, {self.max}]."
        return None


def _families():
    from .presets import family_choices

    return family_choices()


FAMILY_TOOLTIP = (
    "The released family whose loop rules this run follows beyond the widgets (Reward Forcing's EMA sink, Causal "
    "Forcing++'s 4-step first block, the loop shapes of Rolling Forcing / Krea / MemFlow ...; docs/wan.md lists "
    "them). Choosing one in the browser also fills the widgets with the authors' values (and the conditioning "
    "node's length). The widgets always run as set: where they differ from the family's values the log says "
    "which. custom = the widgets alone.")

# Node widgets first, in the order saved workflows have them (sampler: seed .. image_conditioning, then the
# stream node's own, then switch_at_block, family); then the loop rules families and the Python API set.
SETTINGS = (
    Setting("seed", "INT", "Noise seed (initial noise and per-step re-noising).", default=0, min=0,
            max=0xFFFFFFFFFFFFFFFF, advanced=False, cli="--seed"),
    Setting("steps", "STRING", "Denoising timesteps per block (e.g. 1000,750,500,250), or a step count such as 4 "
            "(evenly spaced from 1000, then warped; on a Wan 2.2 model the UniPC step count).", field="steps",
            advanced=False, cli="--steps"),
    Setting("shift", "FLOAT", "Timestep shift (Self-Forcing/LongLive 5, CausVid 8).", field="shift", min=0.01,
            max=100.0, step=0.1, cli="--shift"),
    Setting("warp_steps", "BOOLEAN", "On: each step k becomes the shifted grid timestep (Self-Forcing, LongLive, "
            "Causal Forcing). Off: the timesteps are fed as typed, sigma from the nearest grid point (CausVid).",
            field="warp", cli="--warp-steps", cli_aliases=("--no-warp",), since=2,
            used_by="the renoise solver (Wan 2.1 families; Wan 2.2's UniPC ignores it)",
            used_when=lambda s: s.solver == "renoise"),
    Setting("frames_per_block", "INT", "Latent frames generated per block.", field="frames_per_block", min=1,
            max=64, cli="--frames-per-block"),
    Setting("sink_size", "INT", "First latent frames kept in attention forever (with a window).",
            field="sink_size", min=0, max=1024, cli="--sink-size", cli_aliases=("--sink",),
            used_by="runs with a local_window (LongLive, Rolling / Reward Forcing, Krea, MemFlow, LongLive 2.0)",
            used_when=lambda s: s.local_window > 0),
    Setting("local_window", "INT", "Latent frames attended (sink + recent + block); 0 = all.",
            field="local_window", min=0, max=4096, cli="--local-window", cli_aliases=("--window",),
            used_by="every loop; the families with a window: LongLive, Rolling / Reward Forcing, Krea, MemFlow, "
                    "LongLive 2.0", used_when=lambda s: s.local_window > 0),
    Setting("cache_dtype", "COMBO", "KV cache dtype; auto = the model's compute dtype.", field="cache_dtype",
            choices=DTYPE_CHOICES, cli="--cache-dtype"),
    Setting("independent_first_frame", "BOOLEAN", "First block = 1 latent frame (e.g. 21 latent frames with 3).",
            field="independent_first_frame", cli="--independent-first-frame",
            used_by="Wan 2.1 families (the start image as its own block); Wan 2.2 clamps it into block 0"),
    Setting("guidance_scale", "FLOAT", "CFG scale; 1.0 = off (distilled models).", field="guidance_scale",
            min=1.0, max=30.0, step=0.1, cli="--guidance-scale", cli_aliases=("--guidance",)),
    Setting("image_conditioning", "BOOLEAN", "Use the image conditioning in `positive`.", default=True,
            cli="--image-conditioning", cli_aliases=("--no-image",)),
    Setting("filename_prefix", "STRING", "Output file name prefix (subfolders allowed).", default="ClipWan/causal",
            nodes=(STREAM,), advanced=False, since=2, used_by="Causal Wan Stream Video"),
    Setting("format", "COMBO", "Video file format.", default="mp4 (H.264)", choices=tuple(STREAM_FORMATS),
            nodes=(STREAM,), advanced=False, since=2, used_by="Causal Wan Stream Video (the CLI: --video's suffix)"),
    Setting("fps", "INT", "Frames per second (Wan: 16).", default=16, min=1, max=120, nodes=(STREAM,), since=2,
            cli="--fps", used_by="Causal Wan Stream Video, `sample --video`"),
    Setting("decoder", "COMBO", "wan vae: the exact decode. tiny (taew2_1): the TAEHV approximation from "
            "models/vae_approx, much faster.", default=STREAM_DECODERS[0], choices=STREAM_DECODERS,
            nodes=(STREAM,), advanced=False, since=2, used_by="Causal Wan Stream Video (the CLI: --tiny-vae)"),
    Setting("return_frames", "BOOLEAN", "Also output every decoded frame as IMAGE (memory grows with length).",
            default=False, nodes=(STREAM,), since=2, used_by="Causal Wan Stream Video"),
    Setting("switch_at_block", "INT", "Block index (1 or more) from which switch_positive replaces positive; 0 = "
            "no switch.", default=0, min=0, max=100000, used_by="a prompt switch (switch_positive)"),
    # last, so workflows saved before it keep their widgets_values (a missing value = "custom")
    Setting("family", "COMBO", FAMILY_TOOLTIP, default="custom", choices=_families, advanced=False, since=3,
            field="family", cli="--family", cli_aliases=("--preset",)),
    # the stream node's inputs added after family (layouts 4, 5 and 6), so workflows saved before them keep their values
    Setting("score_every_n_frames", "INT", "Score frames 0, n, 2n, ... as they are decoded (with score_clip); "
            "0 = off.", default=0, min=0, max=1000, nodes=(STREAM,), since=4,
            used_by="Causal Wan Stream Video's live CLIP scores (the CLI: sample --scores)"),
    Setting("score_prompts", "STRING", "The prompt timeline for CLIP-T: one prompt, or 'FRAME: prompt' lines; empty "
            "= CLIP-I and consistency only.", default="", nodes=(STREAM,), since=4, multiline=True,
            used_by="Causal Wan Stream Video's live CLIP scores (the CLI: --score-timeline)"),
    Setting("until_stopped", "BOOLEAN", "Endless stream: ignore the latent's length (it is only the start) and keep "
            "sampling until Cancel; the file is fragmented MP4 (playable at every moment) and memory stays flat. "
            "Needs a local_window; positions become relative (LongLive's relative RoPE) so they stay inside the "
            "window at any length. Block loop families only.", default=False, nodes=(STREAM,), since=5,
            used_by="Causal Wan Stream Video (block loop families with a window)"),
    # LongLive 2.0's multi-shot mode (layout 6; wan/sampling/multishot.py): what a timeline's scene cut ('12 cut: ...')
    # does. Off / 0 / empty = no multi-shot mode: a timeline with a cut is then refused, naming the family
    Setting("multi_shot_sink", "BOOLEAN", "Multi-shot attention sink (LongLive 2.0) at a timeline's scene cuts: the "
            "cut block's first sink_size frames are pinned as the new shot's sink next to the video's first sink_size "
            "frames (which stay); the previous shot's sink is evicted as the window slides.",
            field="multi_shot_sink", since=6, cli="--multi-shot-sink",
            used_by="scene cuts in a timeline (LongLive 2.0: on)", used_when=lambda s: s.multi_shot_sink),
    Setting("multi_shot_rope_offset", "FLOAT", "Multi-shot RoPE offset φ: after the k-th scene cut every frame's RoPE "
            "position moves by k·φ (LongLive 2.0: 8). Absolute positions only (LongLive's relative RoPE ignores it).",
            field="multi_shot_rope_offset", min=0.0, max=1024.0, step=1.0, since=6, cli="--multi-shot-rope-offset",
            used_by="scene cuts in a timeline (LongLive 2.0: 8)", used_when=lambda s: s.multi_shot_rope_offset != 0),
    Setting("scene_cut_prefix", "STRING", "Text put before a scene cut's prompt for the cut block only, before "
            "encoding (LongLive 2.0: 'The scene transitions. '); the shot's later blocks get the prompt alone.",
            field="scene_cut_prefix", since=6, cli="--scene-cut-prefix",
            used_by="scene cuts in a timeline (LongLive 2.0: 'The scene transitions. ')",
            used_when=lambda s: bool(s.scene_cut_prefix)),
    Setting("live_encode_priority", "COMBO", "How a prompt typed while the stream runs is encoded beside the "
            "sampler. normal: at once, sharing the CPU (on a CPU-only host blocks slow down while it encodes, "
            "about 2x on 2 cores); background: at the lowest OS priority (Linux), so blocks keep their pace and "
            "the prompt waits for spare CPU (later blocks; a fully busy machine can hold it back). No difference "
            "when the encoder runs on a GPU beside idle cores.", default=DEFAULT_ENCODER_PRIORITY,
            choices=tuple(ENCODER_PRIORITIES),
            nodes=(STREAM,), since=6, used_by="Causal Wan Stream Video's live prompts"),
    Setting("score_budget_percent", "FLOAT", "Live CLIP scores within a time budget: score_every_n_frames becomes "
            "the smallest stride, widened block by block so the measured scoring time stays under this percent of "
            "the stream's own time per block (10 = the pack's budget); 0 = off, a fixed stride.", default=0.0,
            min=0.0, max=100.0, step=1.0, nodes=(STREAM,), since=6, cli="--score-budget",
            used_by="Causal Wan Stream Video's live CLIP scores, `sample --scores`"),
    # loop rules: set by a family (FamilyPreset.rules), a model generation (Wan 2.2) or the Python API
    Setting("solver", "COMBO", "Per-block step rule: renoise (x0 then fresh noise) or unipc (LongLive 2.0).",
            field="solver", choices=SOLVERS, nodes=(), used_by="unipc: Wan 2.2 (LongLive 2.0); renoise: the rest"),
    Setting("first_frame", "COMBO", "Start-image frames: cache (blocks of their own) or clamp (inside block 0 at "
            "t=0).", field="first_frame", choices=FIRST_FRAME_POLICIES, nodes=(),
            used_by="clamp: Wan 2.2 (LongLive 2.0); cache: the rest"),
    Setting("first_block_steps", "STRING", "The first generated block's own step list; None = steps.",
            field="first_block_steps", optional=True, nodes=(), used_by="Causal Forcing++ frame-wise 2-step"),
    Setting("sigmas", "FLOAT", "Explicit per-block step sigmas (a ComfyUI SIGMAS list ending in 0); steps, shift "
            "and warp are then not used; none = the step list.", field="sigmas", optional=True, nodes=(),
            used_by="Causal Wan Loop Sampler (SamplerCustomAdvanced's SIGMAS)"),
    Setting("positions", "COMBO", "Cached keys' RoPE positions: absolute frames or cache slots.",
            field="positions", choices=POSITION_MODES, nodes=(), used_by="slots: Reward Forcing"),
    Setting("sink_ema", "FLOAT", "EMA rate of the sink (0.999); None = the sink never changes.", field="sink_ema",
            min=0.0, max=1.0, optional=True, nodes=(), used_by="Reward Forcing"),
    Setting("recache", "COMBO", "What a prompt switch re-encodes: joint (LongLive), blockwise, none.",
            field="recache", choices=tuple(RECACHE_MODES), nodes=(),
            used_by="prompt switches (LongLive 1.0, MemFlow: joint; Wan 2.2: none)"),
    Setting("global_sink", "BOOLEAN", "Joint re-cache: the sink keeps the old prompt's K/V.", field="global_sink",
            nodes=(), used_by="prompt switches with recache joint (LongLive 1.0)"),
    Setting("loop", "COMBO", "Loop shape: block, rolling (Rolling Forcing), memory (MemFlow), recompute (Krea).",
            field="loop", choices=LOOP_SHAPES, nodes=(),
            used_by="rolling: Rolling Forcing; memory: MemFlow; recompute: Krea Realtime; block: the rest"),
    Setting("shorter_last_block", "BOOLEAN", "A length that is not whole blocks: the last block is shorter "
            "(the node and the CLI turn it on, visibly, where the loop allows it).", field="shorter_last_block",
            nodes=(), used_by="loops block, memory, rolling, recompute"),
    Setting("memory_bank", "INT", "Frames in MemFlow's memory bank.", field="memory_bank", min=0, nodes=(),
            used_by="MemFlow (loop memory)"),
    Setting("memory_interval", "INT", "Blocks between two recorded memory frames.", field="memory_interval",
            min=1, nodes=(), used_by="MemFlow (loop memory)"),
    Setting("memory_pipeline", "COMBO", "Which MemFlow entry point the memory follows.", field="memory_pipeline",
            choices=MEMORY_PIPELINES, nodes=(), used_by="MemFlow (loop memory)"),
    Setting("keep_first_frame", "BOOLEAN", "Keep the first latent frame as the first context frame (off: "
            "re-encode it from decoded pixels, Krea's default).", field="keep_first_frame", nodes=(),
            used_by="Krea Realtime (loop recompute)"),
    Setting("context_bias", "FLOAT", "Attention bias on the context frames after the first (1.0 = off).",
            field="context_bias", min=0.0, nodes=(), used_by="Krea Realtime (loop recompute)"),
)

BY_NAME = {s.name: s for s in SETTINGS}
BY_FIELD = {s.field: s for s in SETTINGS if s.field}
LAYOUT_VERSION = max(s.since for s in SETTINGS)


def get(name: str) -> Setting:
    return BY_NAME[name]


# --------------------------------------------------------------------------------------------------
# Node widgets and saved workflows
# --------------------------------------------------------------------------------------------------
def node_widgets(node: str) -> list[Setting]:
    """The widgets a causal node shows, in saved-workflow order."""
    return [s for s in SETTINGS if node in s.nodes]


def node_inputs(node: str) -> tuple[dict, dict]:
    """``(required, optional)`` widget entries of a causal node's ``INPUT_TYPES``. Only ``seed`` is required
    (it always was); every other widget is optional with its old default, so API prompts saved before a widget
    existed still run. Required inputs come before optional ones, so the widget order stays the saved one."""
    required, optional = {}, {}
    for s in node_widgets(node):
        (required if s.name == "seed" else optional)[s.name] = s.node_input()
    return required, optional


def widget_defaults(node: str) -> dict:
    return {s.name: s.widget_default for s in node_widgets(node)}


def widget_layouts(node: str) -> list[list]:
    """Every ``widgets_values`` layout this node has saved, oldest first, as input names (the seed's
    front-end control widget as ``control_after_generate``); the last one is the current layout."""
    layouts = []
    for version in range(NODE_SINCE[node], LAYOUT_VERSION + 1):
        names = []
        for s in node_widgets(node):
            if s.since <= version:
                names.append(s.name)
                if s.name == "seed":
                    names.append(SEED_CONTROL)
        if not layouts or names != layouts[-1]:
            layouts.append(names)
    return layouts


def migrate_widget_values(node: str, values: Sequence) -> dict:
    """``{input name: value}`` of a saved ``widgets_values`` list, read with the layout of the version that
    saved it (matched by length); inputs the old layout lacks are left out (they take their defaults). The
    web extension does the same in the page (web/clipwan_logic.js ``migrateWidgetValues``, fed this module's
    layouts by GET /clipwan/widget_layouts); a layout no version had raises."""
    for names in widget_layouts(node):
        if len(names) == len(values):
            return dict(zip(names, values))
    raise ValueError(f"{node}: {len(values)} saved widget values match no layout this node ever had "
                     f"({[len(n) for n in widget_layouts(node)]} values).")


# --------------------------------------------------------------------------------------------------
# Values -> CausalSettings, the run rule shared by the node and the CLI
# --------------------------------------------------------------------------------------------------
def check_values(values: dict, name_of: Callable[[str], str] = lambda n: n) -> None:
    """Every given setting in range and of its type; the first problem raises a ValueError naming
    ``name_of(setting)`` (the widget, or the CLI flag). Unknown names raise too."""
    for name, value in values.items():
        if name not in BY_NAME:
            raise ValueError(f"unknown setting '{name}'; settings: {', '.join(BY_NAME)}.")
        problem = BY_NAME[name].check(value, name_of(name))
        if problem:
            raise ValueError(problem)
    if values.get("warp_steps") is False and "steps" in values:
        from .scheduler import parse_steps

        try:
            parse_steps(values["steps"], False)
        except ValueError as exc:
            raise ValueError(f"{name_of('steps')}: {exc}") from None


def causal_settings(values: dict) -> CausalSettings:
    """``CausalSettings`` from widget / CLI values (missing ones at their defaults)."""
    from ..model.checkpoint import resolve_dtype

    fields = {}
    for name, value in values.items():
        s = BY_NAME[name]
        if s.field is None:
            continue
        if name == "cache_dtype":
            value = resolve_dtype(value)
        elif name == "family":  # a released family's name ("custom" = the widgets alone: none)
            value = "" if value in (None, "custom") else value
        fields[s.field] = value
    return CausalSettings(**fields)


def run_settings(values: dict, family=None, config=None, num_frames: Optional[int] = None, log=None):
    """The node's and the CLI's one rule: ``(CausalSettings, notes)`` for widget/CLI ``values``.

    The family's loop rules are added (``values`` are never overridden; where they differ from the family's
    own values a note says which), then the model generation's rules (``config``: Wan 2.2 runs LongLive 2.0's
    loop), then the block layout is fitted to ``num_frames`` latent frames (a shorter last block where the
    loop allows it, with a note)."""
    from .presets import family_preset

    notes = []
    settings = causal_settings(values)
    preset = family_preset(family)
    if preset is not None:
        differences = preset.widget_differences(values)
        if differences:
            notes.append(f"family {preset.name} with the widgets as set, which differ from the family's values: "
                         f"{'; '.join(differences)}")
        settings = dataclasses.replace(settings, family=preset.name, **preset.loop_rules())
    if config is not None:
        settings = loop_rules_for(settings, config)
    if num_frames is not None:
        settings, note = fit_block_layout(settings, num_frames)
        if note:
            notes.append(note)
        check_window(settings, block_layout(num_frames, settings.frames_per_block, settings.independent_first_frame,
                                            settings.shorter_last_block))
    return settings, notes


# --------------------------------------------------------------------------------------------------
# Family presets
# --------------------------------------------------------------------------------------------------
PRESET_WIDGETS = ("steps", "shift", "warp_steps", "frames_per_block", "sink_size", "local_window",
                  "independent_first_frame", "guidance_scale", "multi_shot_sink", "multi_shot_rope_offset",
                  "scene_cut_prefix")  # what a preset sets on the node (and the CLI)


def family_settings(preset) -> CausalSettings:
    """The ``CausalSettings`` a family's preset runs with (its widget values, its rules, its generation's)."""
    values = {name: getattr(preset, name) for name in PRESET_WIDGETS}
    settings = dataclasses.replace(causal_settings(values), **preset.loop_rules())
    if preset.base.startswith("Wan2.2"):
        settings = dataclasses.replace(settings, **WAN22_LOOP_RULES)
    return settings


def family_knobs(preset) -> list:
    """The preset widgets this family's loop reads (the node shows these for the family; the others keep the
    family's value, hidden: e.g. no sink/window for a family that attends everything, no warp for UniPC)."""
    settings = family_settings(preset)
    return [n for n in PRESET_WIDGETS if BY_NAME[n].used_when is None or BY_NAME[n].used_when(settings)]


def check_preset(preset) -> None:
    """Every field of a ``FamilyPreset`` against this table: its widget values and its loop rules (each a
    ``CausalSettings`` field with a value the sampler takes), and its checkpoint entry."""
    problems = []
    for name in PRESET_WIDGETS:
        problem = BY_NAME[name].check(getattr(preset, name), f"preset {preset.name}: {name}")
        if problem:
            problems.append(problem)
    for field, value in preset.rules:
        if field not in BY_FIELD:
            problems.append(f"preset {preset.name}: rule '{field}' is not a CausalSettings field.")
            continue
        problem = BY_FIELD[field].check(value, f"preset {preset.name}: rule {field}")
        if problem:
            problems.append(problem)
    if preset.checkpoint_entry not in ("auto", "generator_ema", "generator", "model"):
        problems.append(f"preset {preset.name}: checkpoint_entry '{preset.checkpoint_entry}' is not an entry.")
    if preset.image_route not in ("first_frame", "clip", "none"):
        problems.append(f"preset {preset.name}: image_route '{preset.image_route}' is not first_frame, clip or none.")
    if not problems:  # the length the menu sets must be whole blocks (the authors' loops run no partial block)
        try:
            block_layout(preset.latent_frames, preset.frames_per_block, preset.independent_first_frame)
        except ValueError as exc:
            problems.append(f"preset {preset.name}: recommended_length {preset.recommended_length}: {exc}")
    if problems:
        raise ValueError(" ".join(problems))


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def cli_settings() -> list[Setting]:
    return [s for s in SETTINGS if s.cli]


def add_cli_options(parser: argparse.ArgumentParser) -> None:
    """The ``sample`` flags of every setting with a CLI name. Defaults are None (= not given), so an explicit
    flag can be told from a preset's value; ``cli_values`` fills the rest."""
    for s in cli_settings():
        help_text = f"{s.tooltip} Default: {s.widget_default}."
        if s.kind == "BOOLEAN":
            parser.add_argument(s.cli, dest=s.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
            for alias in s.cli_aliases:  # the old negative flags (--no-warp, --no-image)
                parser.add_argument(alias, dest=s.name, action="store_false", default=None,
                                    help=f"same as --no-{s.cli[2:]}")
            continue
        kind = {"INT": int, "FLOAT": float}.get(s.kind, str)
        choices = s.choice_list() if s.kind == "COMBO" else None
        long_list = choices is not None and len(choices) > 4  # the families: listed in the help, not the usage
        parser.add_argument(s.cli, *s.cli_aliases, dest=s.name, type=kind, default=None, choices=choices,
                            metavar="NAME" if long_list else None,
                            help=help_text + (f" One of: {', '.join(choices)}." if long_list else ""))


def explicit_cli_values(args) -> dict:
    """The settings the user typed (flags left out are None)."""
    return {s.name: getattr(args, s.name) for s in cli_settings() if getattr(args, s.name, None) is not None}


def flag_of(name: str) -> str:
    s = BY_NAME[name]
    return s.cli or name


def with_flags(message: str) -> str:
    """A settings error as the CLI user typed it: setting names (``local_window``) become their flags."""
    import re

    names = [s.name for s in cli_settings() if "_" in s.name]  # identifiers only, never plain words
    return re.sub(r"\b(" + "|".join(names) + r")\b", lambda m: BY_NAME[m.group(1)].cli, message)


# --------------------------------------------------------------------------------------------------
# Docs
# --------------------------------------------------------------------------------------------------
def markdown_table() -> str:
    """The settings table of docs/wan.md (a test checks the docs hold exactly this)."""
    rows = ["| setting | type | default | range / choices | node widget | CLI flag | used by |",
            "|---|---|---|---|---|---|---|"]
    for s in SETTINGS:
        if s.kind == "COMBO":
            values = s.choice_list()
            span = "family names (table above)" if s.name == "family" else ", ".join(str(v) for v in values)
        elif s.max is not None:
            span = f"{_fmt(s.min)} … {_fmt(s.max)}"
        elif s.min is not None:
            span = f"≥ {_fmt(s.min)}"
        else:
            span = ""
        if s.optional:
            span = f"{span}, or none" if span else "a value, or none"
        if s.nodes:
            where = " + ".join({SAMPLER: "sampler", STREAM: "stream"}[n] for n in s.nodes)
            widget = f"`{s.name}` ({where}{', advanced' if s.advanced else ''})"
        else:
            widget = "– (family rule / Python API)"
        flags = " ".join(f"`{f}`" for f in ((s.cli,) + s.cli_aliases if s.cli else ()))
        field = f" → `{s.field}`" if s.field and s.field != s.name else ""
        rows.append(f"| `{s.name}`{field} | {s.kind.lower()} | {_fmt(s.widget_default)} | {span} | {widget} | "
                    f"{flags or '–'} | {s.used_by} |")
    return "\n".join(rows)


def _fmt(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int) and value >= 2 ** 32:
        return "2⁶⁴−1"
    return f"{value:g}" if isinstance(value, float) else str(value)
