"""Run the LiteLLM proxy with prefix-aware routing against two mock backends, and talk to it.

``python examples/litellm/run.py`` starts two mock OpenAI backends (``examples/gateway``) on
loopback, the LiteLLM proxy from ``config.yaml`` (which loads ``prefix_routing.plugin``), and
sends a conversation and a session through the official ``openai`` client, printing which
backend answered each turn and how many prompt tokens it found cached. Everything it started
is stopped at the end.

``--keep`` leaves the proxy running (Ctrl-C stops it) so you can send your own requests.

The pieces (:func:`mock_backends`, :func:`litellm_proxy`) are reused by the e2e test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "chat"
SYSTEM = "You are the support assistant of a parcel company; answer briefly. " * 40


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def mock_backends(n: int = 2) -> Iterator[list[str]]:
    """``n`` mock backends named ``backend-<i>`` on a private event loop thread; yields their
    ``/v1`` base URLs."""
    from examples.gateway.mock_backend import MockBackend
    from examples.gateway.serving import RunningServer, start_server

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="mock-backends", daemon=True)
    thread.start()
    servers: list[RunningServer] = []

    async def start() -> None:
        for i in range(n):
            servers.append(await start_server(MockBackend(name=f"backend-{i}").make_app()))

    async def stop() -> None:
        for server in servers:
            await server.close()

    try:
        asyncio.run_coroutine_threadsafe(start(), loop).result(30)
        yield [server.url + "/v1" for server in servers]
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()


@contextlib.contextmanager
def litellm_proxy(backends: list[str], *, timeout: float = 180.0) -> Iterator[tuple[str, str]]:
    """The LiteLLM proxy (``litellm --config config.yaml``) on a free loopback port; yields
    ``(base_url, api_key)`` once it answers its liveness probe; stopped afterwards."""
    port = free_port()
    key = "sk-" + secrets.token_hex(24)
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": key,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network fetch at start
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        **{f"BACKEND_{i}": url for i, url in enumerate(backends)},
    }
    litellm = Path(sys.executable).with_name("litellm")
    argv = [str(litellm), "--config", str(HERE / "config.yaml")]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    log = open(os.devnull, "wb")  # noqa: SIM115  # closed in finally
    proc = subprocess.Popen(argv, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the LiteLLM proxy exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(base + "/health/liveliness", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the LiteLLM proxy did not start within {timeout} s")
            time.sleep(0.25)
        yield base + "/v1", key
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
        log.close()


def demo(base_url: str, api_key: str) -> None:
    """A conversation (same system prompt, new questions) and a pinned session."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key)

    def ask(user: str, **kw: object) -> None:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        reply = client.chat.completions.create(model=MODEL, messages=messages, **kw)  # type: ignore[call-overload]
        details = reply.usage.prompt_tokens_details if reply.usage else None
        cached = details.cached_tokens if details else 0
        print(f"  {user!r:28} -> {reply.choices[0].message.content} (cached tokens: {cached})")

    print("One system prompt, four questions (it stays where it is cached):")
    for i in range(4):
        ask(f"Where is parcel {i}?")
    print("A session (x-session-id: demo) stays on its deployment:")
    for i in range(3):
        ask(f"Session turn {i}", extra_headers={"x-session-id": "demo"})


def main() -> None:
    keep = "--keep" in sys.argv[1:]
    with mock_backends() as backends, litellm_proxy(backends) as (base_url, key):
        print(f"LiteLLM proxy at {base_url} (api key {key})")
        demo(base_url, key)
        if keep:
            print("Running; Ctrl-C stops it.")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)


if __name__ == "__main__":
    main()
