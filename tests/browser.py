"""Headless Chromium for the e2e tests of the gateway's cluster page.

Chromium comes from the system (``make e2e``; Debian: ``apt-get install chromium``). A test
that needs it fails, never skips, when it is missing.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest

#: Where Chromium is looked for after PATH (the Debian package's location).
CHROMIUM_FALLBACK = Path("/usr/bin/chromium")


def find_chromium() -> str:
    """Chromium from PATH, else ``CHROMIUM_FALLBACK``; a test failure (never a skip) if
    neither. Call it before starting servers, so a missing browser fails at once."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None and CHROMIUM_FALLBACK.is_file():
        found = str(CHROMIUM_FALLBACK)
    if found is None:
        pytest.fail(
            "Chromium is needed by this e2e test and was found neither on PATH (chromium, "
            f"chromium-browser) nor at {CHROMIUM_FALLBACK}; install it (Debian: "
            "apt-get install chromium) or run `make test`, which leaves e2e tests out",
            pytrace=False,
        )
    return found


async def dump_dom(url: str) -> str:
    """The DOM of ``url`` after its scripts ran (``--virtual-time-budget``: 5 s of page time,
    so a ``fetch`` the page starts on load completes before the dump)."""
    with tempfile.TemporaryDirectory(prefix="gw-chromium-") as profile:
        proc = await asyncio.create_subprocess_exec(
            find_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
        return out.decode()
