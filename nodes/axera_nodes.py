"""ComfyUI nodes + HTTP route for the Axera export (thin wrappers over ``axera_export``).

* ExportCLIPToAxmodel — CLIP (file / CLIP_VISION / embedded default) → ONNX → Pulsar2 inputs [→ .axmodel].
* CLIPZeroShotAxera   — labels in, scores out, on an exported folder (axengine on a board, ONNX Runtime here).
* POST /sdapi/v1/interrogate — Automatic1111's request/response shape on the same runtime.

ComfyUI is reached only through ``comfy_bridge`` (lazily), so this module imports in plain Python.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Callable, Optional

from .comfy_bridge import Progress, check_interrupt, list_model_files, output_directory, resolve_model_path

CATEGORY = "ClipWan/axera"
DEFAULT_SOURCE = "default (random-init ViT-B/32 CLIP)"
SOURCE_FOLDERS = ("clip", "clip_vision")
DEFAULT_SUBFOLDER = "clipwan_axera"


def safe_output_folder(subfolder: str, root: Optional[str] = None) -> str:
    """``subfolder`` inside ComfyUI's output directory; absolute paths and ``..`` are refused."""
    root = os.path.abspath(root or output_directory())
    sub = (subfolder or "").strip().replace("\\", "/")
    if not sub:
        raise ValueError("output_subfolder is empty: give a folder name such as 'clipwan_axera'")
    if os.path.isabs(sub) or sub.startswith("/") or (len(sub) > 1 and sub[1] == ":"):
        raise ValueError(f"output_subfolder {subfolder!r} is an absolute path; give a folder name relative to "
                         f"ComfyUI's output directory ({root})")
    if ".." in sub.split("/"):
        raise ValueError(f"output_subfolder {subfolder!r} contains '..'; exports must stay inside ComfyUI's "
                         f"output directory ({root})")
    folder = os.path.realpath(os.path.join(root, sub))
    if os.path.commonpath([folder, os.path.realpath(root)]) != os.path.realpath(root):
        raise ValueError(f"output_subfolder {subfolder!r} resolves outside ComfyUI's output directory (a symlink?)")
    if folder == os.path.realpath(root):  # an export replaces its folder as a whole: never the output directory
        raise ValueError(f"output_subfolder {subfolder!r} is the output directory itself; give a folder name inside "
                         f"it such as 'clipwan_axera'")
    return folder


def _adopt_clip_vision(clip_vision):
    """Our ClipVisionModel as is; ComfyUI core's (``get_sd()`` in HF layout) rebuilt through clip_vision."""
    from ..axera_export.sources import clip_vision_from_state_dict
    from ..clip_vision import ClipVisionModel

    clip_vision = getattr(clip_vision, "model_ref", clip_vision)  # the pack's loader inside ComfyUI (managed)
    if isinstance(clip_vision, ClipVisionModel):
        return clip_vision
    get_sd = getattr(clip_vision, "get_sd", None)
    if get_sd is None:
        raise ValueError(f"clip_vision input of type {type(clip_vision).__name__} is not a CLIP vision model "
                         f"(connect a Load CLIP Vision node)")
    return clip_vision_from_state_dict(get_sd(), "ComfyUI CLIP_VISION")


class ExportCLIPToAxmodel:
    DESCRIPTION = ("Export a CLIP model to ONNX for the Axera AX650N NPU: vision and text towers as separate static "
                   "graphs, checked (onnx.checker, AX650 op list, ONNX Runtime vs torch parity), with calibration "
                   "sets, Pulsar2 configs and a build script. Runs pulsar2 when it is installed; otherwise says so "
                   "and prints the command. The default source is a seeded RANDOM-INIT ViT-B/32 (not pretrained).")
    CATEGORY = CATEGORY
    FUNCTION = "export"
    OUTPUT_NODE = True
    OUTPUT_TOOLTIPS = ("Folder of the export (ONNX graphs, calibration sets, Pulsar2 configs, build script).",
                       "Text report of the export and its checks.")
    SEARCH_ALIASES = ["onnx", "axera", "ax650", "axmodel", "pulsar2", "npu", "export clip", "clipwan"]
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("export_folder", "report")
    OUTPUT_TOOLTIPS = ("folder with the .onnx files, manifest.json, calibration tars, Pulsar2 configs",
                       "what was exported, checked and built (also shown on the node)")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "source": ([DEFAULT_SOURCE] + list_model_files(*SOURCE_FOLDERS), {
                    "tooltip": "full CLIP checkpoint (HF CLIPModel or OpenCLIP) from models/clip or "
                               "models/clip_vision, or the embedded random-init default. Ignored for the vision "
                               "tower when a CLIP_VISION is connected."}),
                "parts": (["both", "vision", "text"], {"default": "both",
                                                       "tooltip": "which towers to export (zero-shot needs both)"}),
                "npu_mode": (["NPU3", "NPU2", "NPU1", "NPU4"], {"default": "NPU3",
                             "tooltip": "NPU cores the model may use (AX650: NPU3 = all 3, fastest; AX620E/AX630C: "
                                        "NPU1-2; AX8860: NPU1/2/4)"}),
                "opset": ("INT", {"default": 14, "min": 11, "max": 20,
                                  "tooltip": "ONNX opset (Pulsar2 needs >= 11; 14 is what Axera's CLIP demos use)"}),
                "precision": (["u16", "mixed"], {"default": "u16",
                              "tooltip": "u16: whole graph 16-bit (proven for CLIP); mixed: 16-bit on the "
                                         "sensitive ops (softmax, norms, matmuls) and 8-bit elsewhere"}),
                "output_subfolder": ("STRING", {"default": DEFAULT_SUBFOLDER,
                                     "tooltip": "folder inside ComfyUI's output directory (no '..', no absolute "
                                                "paths)"}),
                "run_pulsar2": ("BOOLEAN", {"default": True,
                                "tooltip": "run `pulsar2 build` if pulsar2 is on PATH (takes minutes)"}),
            },
            "optional": {
                "clip_vision": ("CLIP_VISION", {"tooltip": "export this loaded vision tower (e.g. Wan's ViT-H/14) "
                                                           "instead of the source file's"}),
                "calibration_images": ("IMAGE", {"tooltip": "images from your domain for quantisation "
                                                            "(32+ recommended); preprocessed exactly as at inference"}),
                "calibration_prompts": ("STRING", {"multiline": True, "default": "",
                                        "tooltip": "one prompt per line for the text tower's calibration; "
                                                   "empty = built-in label prompts"}),
                "crop": (["center", "none"], {"default": "center",
                         "tooltip": "preprocessing of calibration images: center = ComfyUI's CLIPVisionEncode, "
                                    "none = Wan's squash"}),
                "target": (["AX650", "AX620E", "AX8860", "AX615", "AX637", "M76H", "M57"], {"default": "AX650",
                           "advanced": True,
                           "tooltip": "Pulsar2 target_hardware: AX650 (AX650N boards, M.2 cards), AX620E "
                                      "(AX630C), AX8860 (Pulsar2 7.x only)"}),
                "vision_output": (["embeddings", "wan"], {"default": "embeddings", "advanced": True,
                                  "tooltip": "embeddings: CLS → projection (zero-shot, interrogation); wan: Wan 2.1's "
                                             "i2v features (all blocks but the last, [1,257,1280] for ViT-H/14) — "
                                             "set crop to none for Wan's own preprocessing"}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def export(self, source, parts, npu_mode, opset, precision, output_subfolder, run_pulsar2=True,
               clip_vision=None, calibration_images=None, calibration_prompts="", crop="center", target="AX650",
               vision_output="embeddings", unique_id=None):
        from ..axera_export import default_source, export_clip, load_source, parse_parts, vision_source

        folder = safe_output_folder(output_subfolder)
        wanted = parse_parts(parts)
        if clip_vision is not None:
            src = vision_source(_adopt_clip_vision(clip_vision))
            if "text" in wanted:
                text_src = default_source() if source == DEFAULT_SOURCE else \
                    load_source(resolve_model_path(source, *SOURCE_FOLDERS), parts="text")
                vis_dim, txt_dim = src.vision.config.proj_dim, text_src.text.config.proj_dim
                if vis_dim != txt_dim:
                    raise ValueError(f"the connected CLIP_VISION projects to {vis_dim} dims but the text tower of "
                                     f"'{source}' to {txt_dim}: they are not one CLIP. Export parts=vision, or "
                                     f"pick the matching full CLIP file as source.")
                src.text, src.random_init = text_src.text, src.random_init or text_src.random_init
                src.description += f" + text of {text_src.description}"
        elif source == DEFAULT_SOURCE:
            src = default_source()
        else:
            src = load_source(resolve_model_path(source, *SOURCE_FOLDERS), parts=wanted)
        check_interrupt()
        # one bar step per stage the pipeline announces (export + parity per tower, then pulsar2)
        bar = Progress(2 * len(wanted) + 1, node_id=unique_id)

        def on_stage(message: str) -> None:
            print(f"[ClipWan/axera] {message}")
            check_interrupt()  # Cancel takes effect between stages
            bar.step()

        images = [calibration_images] if calibration_images is not None else None
        prompts = [p.strip() for p in (calibration_prompts or "").splitlines() if p.strip()] or None
        result = export_clip(src, folder, parts=wanted, calib_images=images, prompts=prompts, npu_mode=npu_mode,
                             opset=int(opset), crop=crop, precision=precision, target=target,
                             vision_output=vision_output, run_build=bool(run_pulsar2),
                             progress=on_stage)
        bar.update_absolute(bar.total)
        return {"ui": {"text": [result.report]}, "result": (result.folder, result.report)}


def resolve_export_folder(export_folder: str = "", root: Optional[str] = None, need=("vision", "text")) -> str:
    """'' → newest export in the output dir; else a folder relative to it (same safety rules as exports)."""
    from ..axera_export.interrogate import find_latest_export

    root = os.path.abspath(root or output_directory())
    if export_folder and export_folder.strip():
        folder = export_folder.strip()
        if os.path.isabs(folder) and os.path.isdir(folder):
            return folder  # the export_folder output of ExportCLIPToAxmodel is absolute
        return safe_output_folder(folder, root)
    found = find_latest_export(root, need)
    if found is None:
        raise FileNotFoundError(f"no CLIP export with {' and '.join(need)} towers in {root}; run "
                                f"ExportCLIPToAxmodel (parts=both) first or give export_folder")
    return found


class CLIPZeroShotAxera:
    DESCRIPTION = ("Zero-shot classification with an exported CLIP (the .axmodel on an Axera board via axengine, "
                   "else the .onnx via ONNX Runtime): image + labels → probabilities. Shows the exported model "
                   "working inside ComfyUI. Random-init exports give meaningless (but deterministic) scores.")
    CATEGORY = CATEGORY
    FUNCTION = "classify"
    OUTPUT_NODE = True
    OUTPUT_TOOLTIPS = ("Label probabilities as JSON (per image).", "The most likely label (of the first image).")
    SEARCH_ALIASES = ["onnx", "axera", "ax650", "axmodel", "zero-shot", "zero shot", "classify", "interrogate",
                      "clipwan"]
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("scores_json", "best_label")
    OUTPUT_TOOLTIPS = ("JSON list per image of {label: probability}, best first", "top label of the first image")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "image(s) to classify"}),
                "labels": ("STRING", {"multiline": True, "default": "cat\ndog\ncar\nlandscape",
                                      "tooltip": "one label per line (or comma-separated)"}),
                "template": ("STRING", {"default": "a photo of {}.",
                                        "tooltip": "prompt template; {} is replaced by each label"}),
                "export_folder": ("STRING", {"default": "",
                                  "tooltip": "export folder (output of ExportCLIPToAxmodel, or relative to the "
                                             "output directory); empty = the newest export"}),
                "backend": (["auto", "onnxruntime", "axengine", "axcl"], {"default": "auto",
                            "tooltip": "auto: .axmodel on the NPU provider pyaxengine offers when built, else ONNX; "
                                       "axengine: board NPU; axcl: AX650N PCIe/M.2 card via AXCL"}),
            },
        }

    def classify(self, image, labels, template, export_folder="", backend="auto"):
        from ..axera_export import ClipRuntime

        names = [x.strip() for x in labels.replace(",", "\n").splitlines() if x.strip()]
        if not names:
            raise ValueError("labels is empty: give one label per line")
        runtime = ClipRuntime(resolve_export_folder(export_folder), backend=backend)
        ranked = runtime.zero_shot(image, names, template)
        scores = [{label: round(p, 6) for label, p in row} for row in ranked]
        best = ranked[0][0][0]
        lines = [f"backend: {runtime.backends}" + (" (random-init export)" if runtime.random_init else "")]
        for i, row in enumerate(ranked):
            lines.append(f"image {i}: " + ", ".join(f"{label} {p:.3f}" for label, p in row))
        return {"ui": {"text": ["\n".join(lines)]}, "result": (json.dumps(scores), best)}


NODE_CLASS_MAPPINGS = {"ExportCLIPToAxmodel": ExportCLIPToAxmodel, "CLIPZeroShotAxera": CLIPZeroShotAxera}
NODE_DISPLAY_NAME_MAPPINGS = {"ExportCLIPToAxmodel": "Export CLIP to Axera .axmodel (ClipWan)",
                              "CLIPZeroShotAxera": "CLIP Zero-Shot on Axera export (ClipWan)"}


# --- POST /sdapi/v1/interrogate and /sdapi/v1/interrogate/structured --------------------------------------
# The aiohttp front end of axera_export.service (the same handler `comfyui-clipwan serve` uses).
INTERROGATE_PATH = "/sdapi/v1/interrogate"
STRUCTURED_PATH = "/sdapi/v1/interrogate/structured"


class InterrogateService:
    """aiohttp adapter: reads the body (bounded), hands it to ``InterrogationService.respond`` in an executor
    thread. ``folder_resolver()`` names the export folder to use (raises if there is none)."""

    def __init__(self, folder_resolver: Callable[[], str], labels=None, threshold: Optional[float] = None,
                 max_body_bytes: Optional[int] = None, **config):
        from ..axera_export.interrogate import MAX_BODY_BYTES, Defaults
        from ..axera_export.service import InterrogationService, ServiceConfig

        defaults = config.pop("defaults", None) or Defaults(**({} if threshold is None else {"threshold": threshold}))
        self.service = InterrogationService(folder_resolver, ServiceConfig(
            labels=list(labels) if labels else None, defaults=defaults,
            max_body_bytes=max_body_bytes or MAX_BODY_BYTES, **config))

    @property
    def labels(self) -> list:
        from ..axera_export.vocabulary import DEFAULT_LABELS

        return list(self.service.config.labels or DEFAULT_LABELS)

    @property
    def threshold(self) -> float:
        return self.service.config.defaults.threshold

    async def _read_body(self, request) -> bytes:
        from ..axera_export.interrogate import RequestError, size_text

        limit = self.service.config.max_body_bytes
        too_big = RequestError(413, f"request body is larger than {size_text(limit)}")
        if request.content_length is not None and request.content_length > limit:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(64 * 1024):  # also bounds chunked uploads
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def _handle(self, request, kind: str):
        from aiohttp import web

        from ..axera_export.interrogate import RequestError

        try:
            body = await self._read_body(request)
        except RequestError as exc:
            return web.json_response({"error": exc.message, "detail": exc.message}, status=exc.status)
        reply = await asyncio.get_running_loop().run_in_executor(None, self.service.respond, kind, body)
        return web.json_response(reply.payload, status=reply.status, headers=reply.headers)

    async def handle(self, request):
        return await self._handle(request, "interrogate")

    async def handle_structured(self, request):
        return await self._handle(request, "structured")


def _default_folder() -> str:
    from ..axera_export.interrogate import EXPORT_ENV

    configured = os.environ.get(EXPORT_ENV, "").strip()
    if configured:
        if not os.path.isdir(configured):
            raise FileNotFoundError(f"{EXPORT_ENV}={configured!r} is not a folder")
        return configured
    return resolve_export_folder("")


LABELS_ENV = "CLIPWAN_INTERROGATE_LABELS"  # a text file (one label per line) or 'imagenet-21k'; default built-in
THRESHOLD_ENV = "CLIPWAN_INTERROGATE_THRESHOLD"  # 0..1 (default 0.25)


def service_from_env(environ=None) -> InterrogateService:
    """The route's service, configured from the environment (labels file, threshold)."""
    from ..axera_export.vocabulary import resolve_labels

    env = os.environ if environ is None else environ
    labels, name = None, "default"
    if env.get(LABELS_ENV):
        try:
            labels, name = resolve_labels(env[LABELS_ENV])
        except (OSError, ValueError) as exc:
            raise ValueError(f"{LABELS_ENV}={env[LABELS_ENV]!r}: {exc}") from None
    threshold = None
    if env.get(THRESHOLD_ENV):
        try:
            threshold = float(env[THRESHOLD_ENV])
        except ValueError:
            raise ValueError(f"{THRESHOLD_ENV} must be a number in [0, 1], got {env[THRESHOLD_ENV]!r}") from None
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"{THRESHOLD_ENV} must be in [0, 1], got {threshold}")
    return InterrogateService(_default_folder, labels=labels, threshold=threshold, labels_name=name)


class LazyInterrogateRoute:
    """The routes' handler; its service is built on the first request, not at ComfyUI start-up, so a bad
    environment variable cannot make the pack fail to import and onnx is not imported at start-up. A failed
    build is answered 503 with the reason and retried on the next request."""

    def __init__(self, build: Callable[[], InterrogateService] = service_from_env):
        self._build = build
        self.service: Optional[InterrogateService] = None

    async def _service(self):
        from aiohttp import web

        if self.service is None:
            try:
                self.service = self._build()
            except (OSError, ValueError) as exc:
                return web.json_response({"error": f"the interrogate route is misconfigured: {exc}. Fix the "
                                                   f"environment variable and restart ComfyUI."}, status=503)
        return None

    async def handle(self, request):
        return await self._service() or await self.service.handle(request)

    async def handle_structured(self, request):
        return await self._service() or await self.service.handle_structured(request)


def register_routes(server) -> None:
    """Called by nodes/__init__.py inside ComfyUI: adds both POST routes (also under /api)."""
    route = LazyInterrogateRoute()
    server.routes.post(INTERROGATE_PATH)(route.handle)
    server.routes.post(STRUCTURED_PATH)(route.handle_structured)
