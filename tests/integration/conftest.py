"""Integration suite: the pack inside a real ComfyUI server.

Runs only when ``COMFYUI_DIR`` points at a ComfyUI checkout and the Python running pytest is that
ComfyUI's environment (its requirements importable). Otherwise every test here is skipped at collection
with the reason, so the normal test run stays fast and needs no ComfyUI.

The session fixture starts ``main.py --cpu`` on a free loopback port with a throw-away
``--base-directory``: the pack is symlinked into its ``custom_nodes/`` and small generated checkpoints
(real key names, tiny or reduced-depth configs) are written into its ``models/`` folders, so the user's
ComfyUI folders are never touched.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "comfyui-clipwan"
# The ComfyUI requirements that tell us "this Python is ComfyUI's environment".
_COMFY_ENV_MODULES = ("comfyui_frontend_package", "yaml", "aiohttp", "safetensors", "torchvision")


def comfyui_skip_reason() -> str | None:
    """Why the integration suite cannot run here, or None when it can."""
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        return "COMFYUI_DIR is not set (point it at a ComfyUI checkout and run with its Python)"
    if not (pathlib.Path(comfy_dir) / "main.py").is_file():
        return f"COMFYUI_DIR={comfy_dir} has no main.py: not a ComfyUI checkout"
    missing = [m for m in _COMFY_ENV_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return (f"this Python ({sys.executable}) is not ComfyUI's environment: missing {', '.join(missing)}; "
                f"install ComfyUI's requirements.txt into it")
    return None


def pytest_collection_modifyitems(config, items):
    reason = comfyui_skip_reason()
    if reason is None:
        return
    here = pathlib.Path(__file__).parent
    marker = pytest.mark.skip(reason=reason)
    for item in items:
        if here in pathlib.Path(str(item.fspath)).parents:
            item.add_marker(marker)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A running ComfyUI process plus small HTTP helpers (stdlib only, so no extra test dependency)."""

    def __init__(self, comfy_dir: pathlib.Path, base_dir: pathlib.Path, extra_args=()):
        self.comfy_dir = comfy_dir
        self.base_dir = base_dir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base_dir / "comfyui.log"
        self.client_id = uuid.uuid4().hex
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(base_dir),
               "--database-url", "sqlite:///:memory:", "--preview-method", "latent2rgb", *extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=comfy_dir, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    # --- lifecycle -------------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                self.get("/system_stats", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        raise TimeoutError(f"ComfyUI did not answer within {timeout}s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    # --- HTTP ------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, timeout: float = 30.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            raw, status = err.read(), err.code
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = raw
        return status, payload

    def get(self, path: str, timeout: float = 30.0):
        status, payload = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise AssertionError(f"GET {path} -> {status}: {payload}")
        return payload

    def queue_prompt(self, prompt: dict) -> str:
        status, payload = self.request("POST", "/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise AssertionError(f"/prompt refused the prompt ({status}): {json.dumps(payload, indent=1)}")
        assert payload["node_errors"] == {}, payload
        return payload["prompt_id"]

    def wait_history(self, prompt_id: str, timeout: float = 300.0) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get(f"/history/{prompt_id}")
            entry = hist.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"].get("completed") or entry["status"].get("status_str") == "error"):
                return entry
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log()[-4000:]}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout}s")

    def run_prompt(self, prompt: dict, timeout: float = 300.0) -> dict:
        """Queue, wait, and fail with ComfyUI's own error message when the prompt errored."""
        entry = self.wait_history(self.queue_prompt(prompt), timeout)
        if entry["status"]["status_str"] != "success":
            errors = [m for m in entry["status"]["messages"] if m[0] == "execution_error"]
            detail = errors[0][1] if errors else entry["status"]
            if isinstance(detail, dict):
                detail = f"{detail.get('node_type')}: {detail.get('exception_message')}\n" + "".join(
                    detail.get("traceback", []))
            raise AssertionError(f"prompt failed: {detail}")
        return entry

    def output_path(self, item: dict) -> pathlib.Path:
        kind = item.get("type", "output")
        root = self.base_dir / ("output" if kind == "output" else "temp" if kind == "temp" else "input")
        return root / item.get("subfolder", "") / item["filename"]


@pytest.fixture(scope="session")
def comfy_dir() -> pathlib.Path:
    reason = comfyui_skip_reason()
    if reason:
        pytest.skip(reason)
    return pathlib.Path(os.environ["COMFYUI_DIR"]).resolve()


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory, comfy_dir) -> pathlib.Path:
    """A throw-away ComfyUI base directory: the pack in custom_nodes, generated test checkpoints in models."""
    from . import checkpoints

    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    for sub in ("input", "output", "temp", "user"):
        (base / sub).mkdir()
    checkpoints.populate(base)
    return base


@pytest.fixture(scope="session")
def server(comfy_dir, base_dir):
    srv = ComfyServer(comfy_dir, base_dir)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
