"""Open an HTML file in headless Chromium and report its DOM and console errors.

::

    from tests.browser.chromium import find_chromium, render_file, Chromium

    dom, errors = render_file(Path("report.html"))       # one page, one browser
    with Chromium() as browser:                           # several pages, one browser
        for page in pages:
            dom, errors = browser.render(page)

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
commands go to the browser's fd 3, answers and events come back on its fd 4, each JSON
message ends with a NUL byte), so nothing beyond the standard library is needed and no
port is opened. Errors are typed by the protocol itself, which the ``--enable-logging``
stderr text is not: every console message is logged there at INFO level.

What counts as a console error: an uncaught exception or unhandled rejection
(``Runtime.exceptionThrown``), ``console.error``/``console.assert`` calls
(``Runtime.consoleAPICalled``), browser log entries of level error, such as a
resource that failed to load (``Log.entryAdded``), and any ``alert``/``confirm``/``prompt``
dialog (answered so the page does not block).

The browser binary is ``$CHARBENCH_CHROMIUM`` when set, else the first of ``chromium``,
``chromium-browser``, ``google-chrome`` on PATH.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: JavaScript that is true once every plotly div holds a drawn SVG (or there is none).
PLOTS_DRAWN_JS = (
    "(() => { const d = Array.from(document.querySelectorAll('div.plot'));"
    " return d.every(e => e.querySelector('svg.main-svg') !== null); })()"
)


class ChromiumError(RuntimeError):
    """The browser could not be started or stopped answering."""


def find_chromium() -> str | None:
    """Path of a Chromium binary, or None when there is none."""
    env = os.environ.get("CHARBENCH_CHROMIUM")
    if env:
        return shutil.which(env) or (env if os.path.isfile(env) else None)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless Chromium process driven over ``--remote-debugging-pipe``.

    Args:
        binary: browser executable (default :func:`find_chromium`).
        timeout_s: longest wait for one protocol answer or one page load.
    """

    def __init__(self, binary: str | None = None, timeout_s: float = 30.0) -> None:
        self.binary = binary or find_chromium()
        if not self.binary:
            raise ChromiumError("no chromium on PATH (install it, e.g. apt-get install chromium, or set CHARBENCH_CHROMIUM)")
        self.timeout_s = timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._profile: str | None = None
        self._next_id = 0
        self._answers: dict[int, dict[str, Any]] = {}
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._closed = False
        self.stderr_path: str | None = None

    # -- process -------------------------------------------------------------
    def start(self) -> Chromium:
        """Start the browser."""
        self._profile = tempfile.mkdtemp(prefix="charbench-chromium-")
        to_child_r, to_child_w = os.pipe()  # browser reads commands on its fd 3
        from_child_r, from_child_w = os.pipe()  # browser writes answers on its fd 4

        args = [
            self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
            f"--user-data-dir={self._profile}", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--mute-audio", "--allow-file-access-from-files",
            "--window-size=1280,900", "about:blank",
        ]
        # the browser expects the pipe on fds 3 and 4: bash moves them there and execs it
        # (no preexec_fn, which is unsafe in a process with threads; dash takes single-digit fds only)
        bash = shutil.which("bash")
        if bash is None:
            raise ChromiumError("bash not found; it is needed to hand the DevTools pipe to chromium on fds 3 and 4")
        # (copies at fd >= 10 first, so no source fd is 3 or 4 itself)
        r, w = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
        remap = f'exec "$0" "$@" 3<&{r} 4>&{w} {r}<&- {w}>&-'
        self.stderr_path = os.path.join(self._profile, "stderr.txt")
        with open(self.stderr_path, "wb") as err:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argument list
                [bash, "-c", remap, *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                pass_fds=(r, w),
            )
        for fd in (to_child_r, from_child_w, r, w):
            os.close(fd)
        self._wfd = to_child_w
        self._rfd = from_child_r
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        try:
            self.call("Browser.getVersion")  # fails fast when the pipe is not spoken
        except (OSError, ChromiumError) as exc:
            tail = Path(self.stderr_path).read_text(errors="replace")[-2000:] if os.path.exists(self.stderr_path) else ""
            self.close()
            raise ChromiumError(f"{self.binary} did not start with --remote-debugging-pipe ({exc}); its stderr ends with:\n{tail}") from exc
        return self

    def close(self) -> None:
        """Close the browser and remove its profile folder."""
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                self._send("Browser.close", {}, None)
                proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait(timeout=5)
        for fd in (getattr(self, "_wfd", None), getattr(self, "_rfd", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- protocol ------------------------------------------------------------
    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._rfd, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed_pipe = True
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw.decode("utf-8"))
                if "id" in msg:
                    with self._cond:
                        self._answers[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self._events.put(msg)

    def _send(self, method: str, params: dict[str, Any], session: str | None) -> int:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode("utf-8") + b"\0"
        while data:
            n = os.write(self._wfd, data)
            data = data[n:]
        return self._next_id

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send one protocol command and wait for its result.

        Raises:
            ChromiumError: the browser answered with an error, exited, or did not answer in time.
        """
        mid = self._send(method, params or {}, session)
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while mid not in self._answers:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChromiumError(f"no answer to {method} within {self.timeout_s:g} s")
                if getattr(self, "_closed_pipe", False):
                    raise ChromiumError(f"chromium exited before answering {method}; see {self.stderr_path}")
                self._cond.wait(min(left, 0.2))
            msg = self._answers.pop(mid)
        if "error" in msg:
            raise ChromiumError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    # -- pages ---------------------------------------------------------------
    def render(self, html_file: Path, settle_s: float = 5.0) -> tuple[str, list[str]]:
        """Load a file, wait until its plots are drawn, return ``(dom_html, console_errors)``.

        Args:
            html_file: the page to open.
            settle_s: longest wait after the load event for every ``div.plot`` to hold an SVG.
        """
        with self.page(html_file, settle_s=settle_s) as (session, errors):
            dom = self.evaluate(session, "document.documentElement.outerHTML")
        return str(dom or ""), errors

    @contextlib.contextmanager
    def page(self, html_file: Path, settle_s: float = 5.0, width: int = 1280, height: int = 900) -> Iterator[tuple[str, list[str]]]:
        """Open ``html_file`` in a new tab of ``width`` x ``height`` px and wait for its plots.

        Yields ``(session, console_errors)``; the errors list keeps filling until the tab closes
        (drained once more on exit), and the tab is closed on exit.
        """
        url = Path(html_file).resolve().as_uri()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        errors: list[str] = []
        try:
            for domain in ("Runtime", "Log", "Page"):
                self.call(f"{domain}.enable", {}, session)
            self.set_viewport(session, width, height, settle_s=0)
            self._drain(session, errors)
            self.call("Page.navigate", {"url": url}, session)
            self._wait_event(session, "Page.loadEventFired", errors)
            deadline = time.monotonic() + settle_s
            while self.evaluate(session, PLOTS_DRAWN_JS) is not True and time.monotonic() < deadline:
                time.sleep(0.05)
            yield session, errors
            self._drain(session, errors)
        finally:
            self.call("Target.closeTarget", {"targetId": target})

    def evaluate(self, session: str, expression: str) -> Any:
        """The value of a JavaScript expression in a tab (returned by value).

        Raises:
            ChromiumError: the expression threw.
        """
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise ChromiumError(f"evaluate: {(d.get('exception') or {}).get('description') or d.get('text')}")
        return res.get("result", {}).get("value")

    def set_viewport(self, session: str, width: int, height: int = 900, settle_s: float = 0.8) -> None:
        """Resize a tab's viewport (the page gets a resize event) and give its plots ``settle_s`` to relayout."""
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        if settle_s:
            time.sleep(settle_s)  # plotly's responsive relayout runs from a resize handler with its own delay

    def screenshot(self, session: str, path: Path) -> Path:
        """Write a PNG of the whole page (beyond the viewport) to ``path``."""
        size = self.evaluate(session, "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        w, h = (int(v) for v in size)
        res = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                    "clip": {"x": 0, "y": 0, "width": w, "height": min(h, 16000), "scale": 1}}, session)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(res["data"]))
        return path

    def _wait_event(self, session: str, method: str, errors: list[str]) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChromiumError(f"no {method} within {self.timeout_s:g} s")
            try:
                ev = self._events.get(timeout=min(left, 0.2))
            except queue.Empty:
                if getattr(self, "_closed_pipe", False):
                    raise ChromiumError(f"chromium exited while waiting for {method}; see {self.stderr_path}") from None
                continue
            if ev.get("sessionId") != session:
                continue
            self._collect(ev, errors)
            self._answer_dialog(ev, session)
            if ev.get("method") == method:
                return

    def _drain(self, session: str, errors: list[str]) -> None:
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return
            if ev.get("sessionId") == session:
                self._collect(ev, errors)
                self._answer_dialog(ev, session)

    def _answer_dialog(self, ev: dict[str, Any], session: str) -> None:
        # an alert()/confirm() blocks the page until answered; close it (it was recorded as an error)
        if ev.get("method") == "Page.javascriptDialogOpening":
            self._send("Page.handleJavaScriptDialog", {"accept": True}, session)

    @staticmethod
    def _collect(ev: dict[str, Any], errors: list[str]) -> None:
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            text = (d.get("exception") or {}).get("description") or d.get("text", "exception")
            errors.append(f"uncaught: {text} ({d.get('url', '')}:{d.get('lineNumber', '?')})")
        elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            parts = [str(a.get("value", a.get("description", a.get("type")))) for a in p.get("args", [])]
            errors.append(f"console.{p.get('type')}: {' '.join(parts)}")
        elif method == "Page.javascriptDialogOpening":
            errors.append(f"dialog {p.get('type')}: {p.get('message')}")
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            errors.append(f"log {e.get('source')}: {e.get('text')} {e.get('url', '')}".strip())


_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"})


class _PlotScan(HTMLParser):
    """Finds every ``div.plot`` and whether an ``svg.main-svg`` lies inside it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.open: list[tuple[int, int]] = []  # (stack depth of the div, index into plots)
        self.plots: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "div" and "plot" in classes:
            self.plots.append({"id": a.get("id") or f"#{len(self.plots)}", "drawn": False})
            self.open.append((len(self.stack), len(self.plots) - 1))
        if tag == "svg" and "main-svg" in classes:
            for _, i in self.open:
                self.plots[i]["drawn"] = True
        if tag not in _VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.stack:
            return
        while self.stack:
            if self.stack.pop() == tag:
                break
        self.open = [(d, i) for d, i in self.open if d < len(self.stack)]


def plot_status(dom_html: str) -> list[dict[str, Any]]:
    """One ``{"id", "drawn"}`` per ``div.plot`` of a DOM; drawn means it holds an ``svg.main-svg``."""
    scan = _PlotScan()
    scan.feed(dom_html)
    scan.close()
    return scan.plots


def render_file(html_file: Path, timeout_s: float = 30.0) -> tuple[str, list[str]]:
    """Open one HTML file in a fresh headless Chromium; return ``(dom_html, console_errors)``."""
    with Chromium(timeout_s=timeout_s) as browser:
        return browser.render(html_file)


def main(argv: list[str] | None = None) -> int:
    """``python tests/browser/chromium.py PAGE.html...``: print console errors and undrawn plots; exit 1 on any."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("pages", nargs="+", type=Path)
    args = ap.parse_args(argv)
    bad = 0
    with Chromium() as browser:
        for page in args.pages:
            dom, errors = browser.render(page)
            plots = plot_status(dom)
            undrawn = [p["id"] for p in plots if not p["drawn"]]
            print(f"{page}: {len(errors)} console error(s), {len(plots)} plot(s), {len(undrawn)} not drawn {undrawn or ''}")
            for e in errors:
                print(f"  {e}")
            bad += bool(errors) or bool(undrawn)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
