"""Optional parity suite against the authors' own inference code.

Each family's test runs only when ``UPSTREAM_<FAMILY>_DIR`` points at a checkout of the authors' source tree
(e.g. ``UPSTREAM_LONGLIVE_DIR`` = NVlabs/LongLive at branch ``v1.0``) and skips cleanly otherwise. The
authors' trees are imported as they are (their top-level ``wan``, ``utils``, ``pipeline`` packages); nothing of
theirs is copied here. They need their Python dependencies (diffusers, omegaconf, ...) but no flash-attn and
no GPU: where a tree asks CUDA for a device at import time, a CPU-only run answers device 0.
"""

import importlib
import os
import sys

import pytest
import torch

# the authors' trees all use these top-level package / module names: one tree imported at a time (the last
# three are Krea Realtime's server modules)
_TOP_LEVEL = ("wan", "utils", "pipeline", "model", "trainer", "demo_utils", "release_server", "v2v", "settings")


def _forget_upstream_modules():
    for name in list(sys.modules):
        if name.split(".")[0] in _TOP_LEVEL:
            del sys.modules[name]


@pytest.fixture
def upstream_tree(request, monkeypatch):
    """``upstream_tree("LONGLIVE")`` -> the tree's path, importable; skips when the env var is unset."""

    def use(family: str) -> str:
        var = f"UPSTREAM_{family}_DIR"
        path = os.environ.get(var)
        if not path:
            pytest.skip(f"{var} is not set (point it at the authors' source tree to run this parity test)")
        if not os.path.isdir(os.path.join(path, "wan")):
            pytest.fail(f"{var}={path} does not look like the authors' tree (no wan/ package in it)")
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
