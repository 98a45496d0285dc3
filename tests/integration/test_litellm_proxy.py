"""The example in ``examples/litellm``: the real LiteLLM proxy (a subprocess, started from
``config.yaml``, which loads the plugin) in front of two mock backends on loopback, driven by
the official ``openai`` client. Heavy (the proxy takes seconds to start): marked ``e2e``,
run by ``make e2e``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "litellm"))

from run import SYSTEM, litellm_proxy, mock_backends  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_the_proxy_keeps_conversations_and_sessions_on_their_deployment() -> None:
    import openai

    with mock_backends(2) as backends, litellm_proxy(backends) as (base_url, key):
        client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=0)

        def ask(user: str, *, system: str = SYSTEM, **kw: object) -> tuple[str, int]:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            reply = client.chat.completions.create(  # type: ignore[call-overload]
                model="chat", messages=messages, **kw
            )
            text = str(reply.choices[0].message.content)
            details = reply.usage.prompt_tokens_details if reply.usage else None
            return text.split(" from ")[1].split(" ")[0], (details.cached_tokens or 0)

        home, cached = ask("Where is parcel 0?")
        assert cached == 0
        for i in range(1, 4):
            # Counterfactual: simple-shuffle would send about half of these elsewhere, where
            # nothing is cached.
            replica, cached = ask(f"Where is parcel {i}?")
            assert replica == home and cached > 0

        # A session that starts on the other deployment stays there even when its next turn
        # carries the prompt cached on `home`: the x-session-id header pins it.
        other, _ = ask("hello", system="a different prompt", extra_headers={"x-session-id": "s"})
        assert other != home
        # (Its own prompt is cached there too; this turn also gives the proxy time to run the
        # success callback that pinned the session, which LiteLLM runs after answering.)
        assert (
            ask("hello", system="a different prompt", extra_headers={"x-session-id": "s"})[0]
            == other
        )
        for i in range(3):
            replica, _ = ask(f"turn {i}", extra_headers={"x-session-id": "s"})
            assert replica == other
