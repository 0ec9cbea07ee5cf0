"""The one place where the pack touches ComfyUI at run time.

Every ComfyUI module is imported lazily, inside a function, so that the node classes import and run in
plain Python (tests, the CLI) without ComfyUI. Outside ComfyUI each helper has a sensible fallback:
model names are plain file paths, progress goes nowhere, interrupts never happen.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional

import torch

from ..outputs import reserve_numbered


def in_comfyui() -> bool:
    """True when running inside a ComfyUI process (its ``comfy`` and ``folder_paths`` are importable)."""
    return _folder_paths() is not None and _model_management() is not None


def _model_management():
    """``comfy.model_management`` inside ComfyUI, else None (the one place that import is attempted)."""
    try:
        import comfy.model_management as mm
    except Exception:
        return None
    return mm


def _folder_paths():
    try:
        import folder_paths

        return folder_paths
    except Exception:
        return None


def list_model_files(*folders: str) -> list[str]:
    """Relative file names in ComfyUI model folders (e.g. ``"clip_vision"``); ``[]`` outside ComfyUI."""
    fp = _folder_paths()
    if fp is None:
        return []
    names: list[str] = []
    for folder in folders:
        try:
            names.extend(n for n in fp.get_filename_list(folder) if n not in names)
        except Exception:
            continue
    return names


def resolve_model_path(name: str, *folders: str) -> str:
    """Full path of a model file named in a node widget.

    Inside ComfyUI the name is looked up in the given model folders (first hit wins). An existing
    absolute/relative path is accepted as is, which is what tests and API users without ComfyUI use.
    """
    fp = _folder_paths()
    if fp is not None:
        for folder in folders:
            try:
                full = fp.get_full_path(folder, name)
            except Exception:
                full = None
            if full:
                return full
    if os.path.isfile(name) or os.path.isdir(name):  # a folder: the loader says "a folder, not a file"
        return os.path.abspath(name)
    where = ", ".join(f"models/{f}" for f in folders) or "the model folders"
    raise FileNotFoundError(
        f"Model file '{name}' was not found in {where}. Put the file there (or give an existing path) "
        f"and refresh the node list (press 'r' in the ComfyUI window)."
    )


def output_directory() -> str:
    """ComfyUI's output directory, or ``./output`` outside ComfyUI."""
    fp = _folder_paths()
    if fp is not None:
        return fp.get_output_directory()
    return os.path.abspath("output")


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel (no-op outside ComfyUI)."""
    mm = _model_management()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


class Progress:
    """Progress bar in the ComfyUI node (with optional preview image); a plain callback elsewhere.

    ``callback(value, total, preview_pil_or_None)`` lets tests and the CLI observe progress.
    """

    def __init__(self, total: int, node_id: Optional[str] = None,
                 callback: Optional[Callable[[int, int, Any], None]] = None):
        self.total = max(int(total), 1)
        self.value = 0
        self._callback = callback
        self._bar = None
        try:
            import comfy.utils

            self._bar = comfy.utils.ProgressBar(self.total, node_id=node_id)
        except Exception:
            self._bar = None

    def update_absolute(self, value: int, preview_image=None) -> None:
        """Set progress to ``value``; ``preview_image`` is a PIL image shown on the node."""
        self.value = int(value)
        if self._bar is not None:
            preview = ("JPEG", preview_image, 512) if preview_image is not None else None
            self._bar.update_absolute(self.value, self.total, preview)
        if self._callback is not None:
            self._callback(self.value, self.total, preview_image)

    def step(self, preview_image=None) -> None:
        self.update_absolute(self.value + 1, preview_image)


def prompt_server():
    """ComfyUI's ``PromptServer.instance`` when the server module is loaded, else None.

    We look in ``sys.modules`` instead of importing ``server``: outside ComfyUI another top-level module
    of that name may exist, and importing ComfyUI's would start pulling in the whole app.
    """
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    return instance


def send_ui_event(event: str, data: dict, client_id: Optional[str] = None) -> bool:
    """Send a websocket event to the front end (our web extension listens); False outside ComfyUI."""
    server = prompt_server()
    if server is None:
        return False
    try:
        server.send_sync(event, data, client_id if client_id is not None else server.client_id)
    except Exception:
        return False
    return True


# --- model management and previews (used by nodes/wan_nodes.py) ------------------------------------------


def load_models_gpu(models: list) -> bool:
    """Let ComfyUI's model management load (and patch) the given ModelPatchers; False outside ComfyUI."""
    mm = _model_management()
    if mm is None:
        return False
    mm.load_models_gpu(models)
    return True


def load_model_gpu(patcher) -> bool:
    """``load_models_gpu([patcher])`` for one managed model (e.g. CLIP vision before an encode)."""
    return load_models_gpu([patcher])


def is_model_patcher(model) -> bool:
    """A ComfyUI MODEL (ModelPatcher) carrying a diffusion model, as UNETLoader / our loader return."""
    return hasattr(getattr(model, "model", None), "diffusion_model") and hasattr(model, "load_device")


def load_diffusion_model_state_dict(sd: dict, dtype=None, source: str = "weights"):
    """ComfyUI's own diffusion-model loading (what UNETLoader does after reading the file) from a state dict
    with Wan key names; returns a ModelPatcher, or None outside ComfyUI."""
    try:
        import comfy.sd
    except Exception:
        return None
    options = {} if dtype is None else {"dtype": dtype}
    patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options=options)
    if patcher is None:
        raise ValueError(f"ComfyUI did not recognise {source} as a diffusion model (model detection failed); "
                         f"is it a Wan 2.1 DiT?")
    return patcher


def managed_module(module, load_device, offload_device):
    """Wrap a torch module in ComfyUI's ModelPatcher so model management loads/offloads it like core's CLIP
    vision; None outside ComfyUI."""
    try:
        import comfy.model_patcher
    except Exception:
        return None
    return comfy.model_patcher.ModelPatcher(module, load_device=load_device, offload_device=offload_device)


def text_encoder_offload_device():
    mm = _model_management()
    return mm.text_encoder_offload_device() if mm is not None else torch.device("cpu")


class ComfyModelAdapter:
    """``wan.conditioning.inputs`` adapter for a ComfyUI MODEL: its latent format normalises, its ``extra_conds`` turn the
    image entries into model inputs (the same tensors core samplers feed it)."""

    def __init__(self, patcher, seed: int = 0):
        self.patcher = patcher
        self.base = patcher.model
        self.seed = seed

    def latent_in(self, raw):
        return self.base.process_latent_in(raw.float())

    def latent_out(self, z):
        return self.base.process_latent_out(z)

    def image_inputs(self, text, extra, latent):
        device = self.patcher.load_device
        out = self.base.extra_conds(noise=latent.to(device), device=device, cross_attn=text, latent_image=latent,
                                    seed=self.seed, **extra)
        out = {k: getattr(v, "cond", v) for k, v in out.items()}
        return {"clip_fea": out.get("clip_fea"), "concat": out.get("c_concat")}


def inference_dtype(patcher):
    """The dtype ComfyUI computes this MODEL in (fp32/fp16/bf16; others, e.g. fp8 storage, compute in bf16)."""
    bm = patcher.model
    dtype = bm.get_dtype_inference() if hasattr(bm, "get_dtype_inference") else bm.get_dtype()
    return dtype if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.bfloat16


def intermediate_device():
    """Where ComfyUI keeps tensors between nodes (CPU unless --gpu-only); CPU outside ComfyUI."""
    mm = _model_management()
    return mm.intermediate_device() if mm is not None else torch.device("cpu")


def comfy_resize_center(images_bchw, width: int, height: int):
    """ComfyUI's ``common_upscale(..., "bilinear", "center")`` (what core WanImageToVideo uses), or None
    outside ComfyUI."""
    try:
        import comfy.utils
    except Exception:
        return None
    return comfy.utils.common_upscale(images_bchw, width, height, "bilinear", "center")


def latent_previewer(model_patcher=None, latent_format: str = "Wan21"):
    """ComfyUI's previewer (``--preview-method``) for the MODEL's latent format, or for
    ``comfy.latent_formats.<latent_format>`` when ``model_patcher`` is None. Build it once per run: with
    ``taesd`` this loads the TAE decoder from disk. None when previews are off or outside ComfyUI; call
    ``.decode_latent_to_preview(x0)`` on it (5-D latents: the first frame is shown)."""
    try:
        import comfy.latent_formats
        import latent_preview

        if model_patcher is not None:
            device, fmt = model_patcher.load_device, model_patcher.model.latent_format
        else:
            device, fmt = torch_device(), getattr(comfy.latent_formats, latent_format)()
        return latent_preview.get_previewer(device, fmt)
    except Exception:
        return None


def torch_device():
    """ComfyUI's compute device (``get_torch_device``); CPU outside ComfyUI."""
    mm = _model_management()
    return mm.get_torch_device() if mm is not None else torch.device("cpu")


# --- CLIP vision (nodes/clip_nodes.py) -------------------------------------------------------------------

def text_encoder_device():
    """Where ComfyUI runs text/vision encoders (``text_encoder_device()``); outside ComfyUI: cuda if present."""
    mm = _model_management()
    if mm is not None:
        return mm.text_encoder_device()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gpu_device():
    """ComfyUI's main torch device; outside ComfyUI cuda, or None when there is no GPU."""
    mm = _model_management()
    if mm is not None:
        device = mm.get_torch_device()
        return None if device.type == "cpu" else device
    return torch.device("cuda") if torch.cuda.is_available() else None


def new_clip_vision_output():
    """An empty ``comfy.clip_vision.Output`` inside ComfyUI (what core consumers expect), else None."""
    try:
        import comfy.clip_vision

        return comfy.clip_vision.Output()
    except Exception:
        return None


def lora_weight_patch(up, down, alpha: float):
    """A ComfyUI weight patch adding ``strength · alpha/rank · up @ down`` (its LoRA adapter; the legacy
    ``("lora", ...)`` tuple on ComfyUI versions before weight adapters). Outside ComfyUI: the raw tuple."""
    weights = (up, down, alpha, None, None, None)
    try:
        from comfy.weight_adapter import LoRAAdapter
    except Exception:
        return ("lora", weights)
    return LoRAAdapter(set(), weights)


# --- streaming video (nodes/stream_nodes.py) ------------------------------------------------------------

def video_save_path(filename_prefix: str, extension: str, width: int, height: int) -> tuple[str, str, str]:
    """``(full path, file name, subfolder)`` of a new numbered video file in the output folder, ComfyUI's
    naming (``prefix_00001_.mp4``); the prefix may not leave the output folder."""
    fp = _folder_paths()
    if fp is not None:
        folder, name, counter, subfolder, _ = fp.get_save_image_path(filename_prefix, fp.get_output_directory(),
                                                                      width, height)
    else:
        root = os.path.abspath(output_directory())
        target = os.path.abspath(os.path.join(root, filename_prefix))
        if os.path.commonpath([root, target]) != root:
            raise ValueError(f"filename_prefix '{filename_prefix}' points outside the output folder; use a "
                             f"relative name such as 'ClipWan/causal'.")
        folder, name = os.path.split(target)
        subfolder = os.path.relpath(folder, root)
        subfolder = "" if subfolder == "." else subfolder
        counter = 1
        if os.path.isdir(folder):
            taken = [f for f in os.listdir(folder) if f.startswith(name + "_") and f[len(name) + 1:][:5].isdigit()]
            counter = 1 + max([int(f[len(name) + 1:][:5]) for f in taken], default=0)
    os.makedirs(folder, exist_ok=True)
    # the name is reserved now (an empty file created exclusively): a second run started meanwhile with the
    # same prefix takes the next number, never this file
    path, counter = reserve_numbered(folder, lambda n: f"{name}_{n:05}_.{extension}", counter)
    return path, os.path.basename(path), subfolder


def video_output(path: str):
    """ComfyUI's VIDEO object for a file (``VideoFromFile``), so core Save/Preview Video take it; None where
    the host has no VIDEO type (older ComfyUI, plain Python)."""
    try:
        from comfy_api.latest import InputImpl
    except Exception:
        return None
    return InputImpl.VideoFromFile(path)


def progress_text(text: str, node_id) -> bool:
    """Status text shown on the node (ComfyUI's ``send_progress_text``); False outside ComfyUI."""
    server = prompt_server()
    if server is None or node_id is None or not hasattr(server, "send_progress_text"):
        return False
    try:
        server.send_progress_text(text, str(node_id))
    except Exception:
        return False
    return True


def vae_module(vae):
    """``(module tree, device, dtype)`` of a ComfyUI VAE, loaded by its model management (weights not copied)."""
    patcher = getattr(vae, "patcher", None)
    if patcher is not None:
        load_models_gpu([patcher])
    device = getattr(vae, "device", None)
    dtype = getattr(vae, "vae_dtype", None)
    return vae.first_stage_model, device, dtype


def tiny_decoder_file(prefixes: tuple) -> Optional[str]:
    """Full path of the first ``models/vae_approx`` file whose name starts with one of ``prefixes``."""
    for name in list_model_files("vae_approx"):
        if os.path.basename(name).startswith(prefixes):
            return resolve_model_path(name, "vae_approx")
    return None
