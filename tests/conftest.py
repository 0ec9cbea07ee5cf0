"""Shared pytest setup. Tests import the pack as the installed package ``comfyui_clipwan``."""

import os
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine (CI runners, shared boxes) spinning
# workers made small convolutions 10-40x slower. Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# 2 CPU cores on CI: keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

CHECKOUT = Path(__file__).resolve().parent.parent


class _CheckoutIsAFolder:
    """Collect the checkout as a plain folder, never as a test package.

    The checkout's ``__init__.py`` is the pack itself (ComfyUI imports the folder as a package). pytest
    would import that file on its own when it collects the checkout; in a folder whose name is not an
    identifier (the README's ``comfyui-clipwan``) it has no parent package then and every test errors with
    "attempted relative import with no known parent package". Registered as a plugin, not a conftest hook,
    because conftest hooks do not apply to the folder above the conftest.
    """

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if Path(path).resolve() == CHECKOUT:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    config.pluginmanager.register(_CheckoutIsAFolder(), "clipwan-checkout-is-a-folder")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
