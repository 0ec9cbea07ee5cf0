"""Optional parity suite against the authors' own inference code.

Each family's test runs only when ``UPSTREAM_<FAMILY>_DIR`` points at a checkout of the authors' source tree
(e.g. ``UPSTREAM_LONGLIVE_DIR`` = NVlabs/LongLive at branch ``v1.0``) and skips cleanly otherwise. The
authors' trees are imported as they are (their top-level ``wan``, ``utils``, ``pipeline`` packages; CausVid's
``causvid``); nothing of theirs is copied here. They need their Python dependencies (diffusers, omegaconf, ...)
but no flash-attn and no GPU: where a tree asks CUDA for a device at import time, a CPU-only run answers device
0, and where a pipeline hard-codes ``device="cuda"`` for a tensor, ``cuda_as_cpu()`` makes it a CPU tensor
(the suite runs on the CPU).
"""

import contextlib
import importlib
import os
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

# the authors' trees all use these top-level package / module names: one tree imported at a time (CausVid's
# package, then Krea Realtime's server modules)
_TOP_LEVEL = ("wan", "wan_5b", "utils", "pipeline", "model", "trainer", "demo_utils", "causvid", "release_server",
              "v2v", "settings")


def _forget_upstream_modules():
    for name in list(sys.modules):
        if name.split(".")[0] in _TOP_LEVEL:
            del sys.modules[name]


@pytest.fixture
def upstream_tree(request, monkeypatch):
    """``upstream_tree("LONGLIVE")`` -> the tree's path, importable; skips when the env var is unset.
    ``package`` is the tree's top-level package that proves it is the authors' tree (``wan`` for the Self-Forcing
    lineage, ``causvid`` for CausVid)."""

    def use(family: str, package: str = "wan") -> str:
        var = f"UPSTREAM_{family}_DIR"
        path = os.environ.get(var)
        if not path:
            pytest.skip(f"{var} is not set (point it at the authors' source tree to run this parity test)")
        if not os.path.isdir(os.path.join(path, package)):
            pytest.fail(f"{var}={path} does not look like the authors' tree (no {package}/ package in it)")
        _forget_upstream_modules()
        monkeypatch.syspath_prepend(path)
        if not torch.cuda.is_available():  # import-time torch.cuda.current_device() in their memory helpers
            monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        importlib.invalidate_caches()
        request.addfinalizer(_forget_upstream_modules)
        return path

    return use


def fp32_attention(monkeypatch, *module_names):
    """The authors' attention runs flash-attn (CUDA, bf16/fp16 only) or an SDPA fallback that also casts to
    bf16. For an fp32 comparison their modules' ``attention`` / ``flash_attention`` names are pointed at plain
    fp32 SDPA (no padding masks: their causal paths pass none). Nothing else of theirs is changed."""

    def sdpa(q, k, v, *args, **kwargs):  # [B, L, heads, d] in and out, like theirs
        out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2).to(q.dtype),
                                                               v.transpose(1, 2).to(q.dtype))
        return out.transpose(1, 2).contiguous()

    for name in module_names:
        mod = importlib.import_module(name)
        for attr in ("attention", "flash_attention"):
            if hasattr(mod, attr):
                monkeypatch.setattr(mod, attr, sdpa)


class _CudaAsCpu(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.cuda:
            return args[0]
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if device is not None and torch.device(device).type == "cuda":
            kwargs = {**kwargs, "device": "cpu"}
        return func(*args, **kwargs)


@contextlib.contextmanager
def cuda_as_cpu():
    """Inside: a torch call given ``device="cuda"`` (CausVid's re-noise builds its timestep tensor that way)
    creates its tensor on the CPU, and ``tensor.cuda()`` (its step warp) leaves the tensor where it is: the
    suite runs on the CPU, with or without a GPU. Their code is not touched."""
    with _CudaAsCpu():
        yield
