"""Headless Chromium for tests: the DOM a real browser builds from a page, and a screenshot.

The binary: $HARNESS_CHROMIUM, else the first of chromium, chromium-browser, google-chrome on
PATH (``bash .ci/browser.sh install`` installs Debian's). Missing, a test is skipped locally
and fails under CI (env CI set), as tests/test_slurm.py treats a missing cluster.

Every run: --headless=new, --no-sandbox (root in containers has no usable sandbox), no GPU,
a host resolver that maps every name to nothing (a page can fetch nothing from the network),
a fresh profile in a temporary directory, and a bound in time; on timeout the whole process
group Chromium started is killed (its renderer and zygote children included).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 60.0
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--mute-audio", "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
INSTALL_HINT = "install it with `bash .ci/browser.sh install` (apt-get install chromium) or set HARNESS_CHROMIUM"


def find_chromium() -> str | None:
    """Path of the Chromium to use, or None."""
    override = os.environ.get("HARNESS_CHROMIUM")
    if override:
        return shutil.which(override) or (override if os.access(override, os.X_OK) else None)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The Chromium binary; skips the test without one (fails under CI)."""
    binary = find_chromium()
    if binary is None:
        where = f"HARNESS_CHROMIUM={os.environ['HARNESS_CHROMIUM']!r} is not executable" \
            if os.environ.get("HARNESS_CHROMIUM") else f"none of {', '.join(CANDIDATES)} on PATH"
        message = f"no headless Chromium ({where}): {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message + "; under CI it must be installed (scripts/test.sh does)")
        pytest.skip(message)
    return binary


def _run(args: list[str], timeout: float) -> str:
    """Run Chromium with FLAGS, a private profile and ``args``; return stdout (stderr on failure)."""
    binary = require_chromium()
    with tempfile.TemporaryDirectory(prefix="harness-chromium-") as profile:
        env = {**os.environ, "HOME": profile}  # crash reports, caches: nowhere outside the profile
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The group of the Chromium started here (its leader is not reaped yet, so the id
            # cannot belong to anyone else), renderer and zygote included.
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"Chromium timed out after {timeout:.0f} s: {' '.join(cmd)}\n{err[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(f"Chromium exited with {proc.returncode}: {' '.join(cmd)}\n{err[-3000:]}")
    return out


def dump_dom(html_path: str | os.PathLike[str], timeout: float = TIMEOUT_S) -> str:
    """The serialised DOM of a local page after Chromium parsed it (--dump-dom)."""
    url = Path(html_path).resolve().as_uri()
    return _run(["--dump-dom", url], timeout)


def screenshot(html_path: str | os.PathLike[str], png_path: str | os.PathLike[str],
               size: tuple[int, int] = (1280, 3000), timeout: float = TIMEOUT_S) -> Path:
    """A PNG of the top ``size`` (width, height) of a local page; returns its path."""
    png = Path(png_path).resolve()
    png.unlink(missing_ok=True)
    _run([f"--window-size={size[0]},{size[1]}", f"--screenshot={png}",
          Path(html_path).resolve().as_uri()], timeout)
    if not png.is_file():
        pytest.fail(f"Chromium wrote no screenshot to {png}")
    return png
