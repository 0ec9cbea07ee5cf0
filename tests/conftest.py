"""Shared pytest setup. Tests import the pack as the installed package ``comfyui_clipwan``."""

import os

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine (CI runners, shared boxes) spinning
# workers made small convolutions 10-40x slower. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# 2 CPU cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
