"""Will a request fit? The memory a run would need, compared with what the device can give, *before* anything
big is allocated: a request that cannot fit (a 10⁶-frame latent, a 16384² frame) is refused up front with the
size it would need, instead of failing after minutes or swapping the machine to a halt.

Only the allocations that grow with the request are counted (the latent, the KV cache, one block's
activations); the model's own weights are already loaded when these checks run. A window keeps the KV cache
flat, so a streaming run of any length stays allowed.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

GIB = 1024 ** 3


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB / 10 else f"{nbytes / 1024 ** 2:.1f} MiB"


def free_bytes(device=None) -> Optional[int]:
    """Memory a request may use on ``device`` (CUDA: the card's total; CPU: the kernel's MemAvailable); None if
    unknown."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        # the whole card, not what is free now: inside ComfyUI other models hold memory it frees on demand, so
        # only a request larger than the card itself is sure not to fit
        try:
            return int(torch.cuda.mem_get_info(device)[1])
        except Exception:  # noqa: BLE001 — a device that cannot say: no check
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(what: str, nbytes: int, device=None, fix: str = "") -> None:
    """Raise ``ValueError`` naming ``what``, the bytes it needs and the bytes free, if it cannot fit."""
    free = free_bytes(device)
    if free is not None and nbytes > free:
        cpu = torch.device(device or "cpu").type == "cpu"
        where = f"this machine's memory has {gib(free)} free" if cpu else f"{device} has {gib(free)} in all"
        raise ValueError(f"{what} would need {gib(nbytes)}, but {where}; it was refused before anything was "
                         f"allocated. {fix}".rstrip())


def check_latent_fits(shape, what: str = "the latent", device=None) -> None:
    """A float32 latent of ``shape`` ``[B, C, T, h, w]`` must fit."""
    b, c, t, h, w = (int(v) for v in shape)
    check_fits(f"{what} [{b}, {c}, {t}, {h}, {w}] (float32)", 4 * b * c * t * h * w, device,
               "Use fewer frames (length) or a smaller width/height; for endless video stream it with a "
               "local_window (the KV cache then stays flat).")
