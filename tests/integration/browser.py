"""Headless Chromium driven over the Chrome DevTools Protocol (aiohttp's websocket client; no Selenium).

Only what the integration suite needs: open a page, collect console errors and uncaught exceptions,
evaluate JavaScript (awaiting promises), take a screenshot.

The browser reaches loopback hosts only: every page request is intercepted (CDP ``Fetch``) and failed
unless its host is 127.0.0.1 / localhost / ::1 (the attempts are kept in ``blocked``), and Chromium's own
traffic goes to a dead proxy with DNS answering "not found", so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import base64
import json
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# Browser-level guard: non-loopback names resolve to nothing and non-loopback traffic goes to a closed port
# (Chromium never proxies loopback), so even requests outside the page (updates, safe browsing) fail.
NETWORK_FLAGS = ("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
                 "--proxy-server=http://127.0.0.1:9", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-pings")


def is_loopback_url(url: str) -> bool:
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("data", "blob", "about", "chrome", "devtools"):
        return True
    return urllib.parse.urlsplit(url).hostname in LOOPBACK_HOSTS


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    def __init__(self, executable: str, width: int = 1600, height: int = 900):
        self.port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="clipwan-chromium-")
        self.proc = subprocess.Popen(
            [executable, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", f"--window-size={width},{height}", *NETWORK_FLAGS,
             f"--remote-debugging-port={self.port}", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.console: list[dict] = []
        self.blocked: list[str] = []  # URLs the page tried to reach outside loopback (all failed)
        self._id = 0
        self._pending: dict[int, asyncio.Future] = {}
        self._ws = self._session = self._reader = None

    def _page_ws_url(self, timeout: float = 30.0) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError("Chromium did not open its DevTools port")

    async def start(self):
        import aiohttp

        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self._page_ws_url(), max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())
        for domain in ("Runtime", "Log", "Page"):
            await self.send(f"{domain}.enable")
        await self.send("Fetch.enable", {"patterns": [{"urlPattern": "*"}]})

    async def _gate(self, params: dict):
        """Let a paused request through only when it goes to a loopback host."""
        url = params.get("request", {}).get("url", "")
        if is_loopback_url(url):
            await self.send("Fetch.continueRequest", {"requestId": params["requestId"]})
        else:
            self.blocked.append(url)
            await self.send("Fetch.failRequest", {"requestId": params["requestId"], "errorReason": "BlockedByClient"})

    async def _read(self):
        async for msg in self._ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
                continue
            method = data.get("method")
            params = data.get("params", {})
            if method == "Fetch.requestPaused":  # answered from a task: its reply comes through this loop
                asyncio.ensure_future(self._gate(params))
            elif method == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                self.console.append({"level": params.get("type"), "text": text})
            elif method == "Runtime.exceptionThrown":
                d = params.get("exceptionDetails", {})
                text = d.get("exception", {}).get("description") or d.get("text", "")
                self.console.append({"level": "exception", "text": text})
            elif method == "Log.entryAdded":
                e = params.get("entry", {})
                self.console.append({"level": e.get("level"), "text": f"{e.get('text', '')} {e.get('url', '')}"})

    async def send(self, method: str, params: dict | None = None, timeout: float = 60.0) -> dict:
        self._id += 1
        fut = asyncio.get_event_loop().create_future()
        self._pending[self._id] = fut
        await self._ws.send_str(json.dumps({"id": self._id, "method": method, "params": params or {}}))
        reply = await asyncio.wait_for(fut, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression: str, timeout: float = 60.0):
        result = await self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                                      "returnByValue": True}, timeout)
        if "exceptionDetails" in result:
            d = result["exceptionDetails"]
            raise RuntimeError(d.get("exception", {}).get("description") or d.get("text"))
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.5):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = await self.evaluate(expression)
                if last:
                    return last
            except RuntimeError as err:
                last = err
            await asyncio.sleep(interval)
        raise TimeoutError(f"timed out waiting for {expression!r} (last: {last!r})")

    async def press_escape(self):
        """A real Escape key press (closes the page's dialogs and search box)."""
        for kind in ("keyDown", "keyUp"):
            await self.send("Input.dispatchKeyEvent", {"type": kind, "key": "Escape", "code": "Escape",
                                                       "windowsVirtualKeyCode": 27, "nativeVirtualKeyCode": 27})

    async def type_text(self, text: str):
        """Type into the focused element as a user would (input events included)."""
        await self.send("Input.insertText", {"text": text})

    async def navigate(self, url: str):
        await self.send("Page.navigate", {"url": url})

    async def screenshot(self, path: pathlib.Path, quality: int = 70) -> pathlib.Path:
        fmt = "jpeg" if path.suffix.lower() in (".jpg", ".jpeg") else "png"
        params = {"format": fmt, **({"quality": quality} if fmt == "jpeg" else {})}
        data = await self.send("Page.captureScreenshot", params)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    async def close(self):
        if self._reader:
            self._reader.cancel()
        if self._ws:
            await self._ws.close()
        if self._session:
            await self._session.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
