"""The LiteLLM plugin with the real thing: ``litellm.Router`` instances whose deployments are
the project's mock OpenAI backends over real HTTP on 127.0.0.1 (aiohttp servers in this
process), in filter and strategy mode; two routers sharing affinity and session pins through
the in-memory transport and through a real ``redis-server``.

LiteLLM is imported once for the module (it takes seconds); every test installs its plugins
and uninstalls them at the end, since ``litellm.callbacks`` is process-wide.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import

import litellm
from litellm import Router
from litellm.integrations.custom_logger import CustomLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples.gateway.mock_backend import MockBackend
from examples.gateway.serving import RunningServer, start_server
from prefixcache import (
    ReplicaKey,
    SessionPins,
    extract_chain,
    messages_prefix_source,
)
from prefixcache.integrations._litellm_requests import first_token_times
from prefixcache.integrations.litellm import (
    REQUEST_ID_METADATA_KEY,
    PrefixRoutingPlugin,
    install,
)
from prefixcache.testing import InMemoryTransport, ManualClock

pytestmark = pytest.mark.integration

MODEL = "chat"
SYSTEM = "You are the support assistant of a parcel company; answer briefly. " * 40  # ~2.7 kB


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), timeout=60)

    asyncio.run(bounded())


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll until ``predicate`` holds (LiteLLM runs its callbacks as background tasks)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        await asyncio.sleep(0.01)


class Backends:
    def __init__(self) -> None:
        self.backends: list[MockBackend] = []
        self.servers: list[RunningServer] = []

    def model_list(self) -> list[dict[str, Any]]:
        return [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": server.url + "/v1",
                    "api_key": "unused",
                },
                "model_info": {"id": f"d{i}"},
            }
            for i, server in enumerate(self.servers)
        ]

    def served(self) -> list[int]:
        return [b.served for b in self.backends]


@asynccontextmanager
async def backends(n: int) -> AsyncIterator[Backends]:
    bs = Backends()
    try:
        for i in range(n):
            backend = MockBackend(name=f"d{i}")
            bs.backends.append(backend)
            bs.servers.append(await start_server(backend.make_app()))
        yield bs
    finally:
        for server in bs.servers:
            await server.close()


def router(bs: Backends) -> Any:
    return Router(model_list=bs.model_list(), num_retries=0)


@asynccontextmanager
async def installed(*plugins: PrefixRoutingPlugin) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for p in plugins:
            p.uninstall()
        await asyncio.sleep(0)


def hot_of(plugin: Any, messages: list[dict[str, str]]) -> str | None:
    """The deployment the plugin's shared index says holds the longest prefix of
    ``messages``."""
    chain = extract_chain(MODEL, messages_prefix_source(messages))
    keys = [ReplicaKey("d0"), ReplicaKey("d1"), ReplicaKey("d2")]
    hot = plugin.index.decide(MODEL, chain, keys, time.time()).hot
    return None if hot is None else str(hot.node_id)


def cached_blocks(plugin: Any, messages: list[dict[str, str]]) -> dict[str, int]:
    """Leading blocks of ``messages`` the plugin's mirror holds, per deployment."""
    chain = extract_chain(MODEL, messages_prefix_source(messages))
    return {d: plugin.mirror.matched_blocks(ReplicaKey(d), chain) for d in ("d0", "d1", "d2")}


def chat(user: str, *, system: str = SYSTEM) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return [*msgs, {"role": "user", "content": user}]


async def ask(r: Any, messages: list[dict[str, str]], **kw: Any) -> str:
    """One completion; returns the replica that answered (the mock names itself)."""
    resp = await r.acompletion(model=MODEL, messages=messages, **kw)
    text = resp.choices[0].message.content
    return str(text).split(" from ")[1].split(" ")[0]


async def settled(plugin: PrefixRoutingPlugin, reserved: int) -> None:
    await wait_for(
        lambda: (
            plugin.stats().released + plugin.stats().expired == reserved
            and plugin.reservations() == 0
        ),
        "every reservation released",
    )


@pytest.mark.parametrize("mode", ["filter", "strategy"])
def test_a_long_system_prompt_keeps_its_deployment_while_traffic_is_shared(mode: str) -> None:
    async def main() -> None:
        async with backends(3) as bs:
            r = router(bs)
            plugin = install(r, mode=mode)  # type: ignore[arg-type]
            async with installed(plugin):
                homes = []
                for i in range(6):
                    homes.append(await ask(r, chat(f"Where is parcel {i}?")))
                    # Unrelated one-off requests in between keep the dispatch shares even.
                    await ask(r, chat(f"Unrelated question number {i} " * 3, system=""))
                    await settled(plugin, plugin.stats().reserved)
                # Counterfactual: LiteLLM's simple-shuffle spreads six requests over three
                # deployments; the cost policy keeps the cached prompt where it is.
                assert len(set(homes)) == 1, homes
                assert plugin.stats().observed == 12
                assert plugin.stats().errors == 0
                # The unrelated requests went elsewhere (ties go to the least used).
                assert sum(1 for s in bs.served() if s) >= 2

    run(main)


def test_a_reserved_busy_deployment_sheds_new_requests() -> None:
    async def main() -> None:
        async with backends(2) as bs:
            r = router(bs)
            plugin = install(r)
            async with installed(plugin):
                home = await ask(r, chat("warm up"))
                await settled(plugin, 1)
                # Hold requests of the same conversation in flight (streams paused by the
                # mock until released): each one stays reserved on its deployment.
                streams = []
                for i in range(6):
                    s = await r.acompletion(
                        model=MODEL,
                        messages=chat(f"follow-up {i}"),
                        stream=True,
                        extra_headers={"X-Mock-Hold": f"hold-{i}"},
                    )
                    streams.append(s)
                assert plugin.reservations() == 6
                busy = plugin.in_flight(home)
                other = "d1" if home == "d0" else "d0"
                # The in-flight term (256 tokens per request above the least loaded) outgrew
                # the cached prompt's savings: some requests were shed to the other one.
                assert busy < 6 and plugin.in_flight(other) > 0
                async with aiohttp.ClientSession() as http:
                    for server in bs.servers:
                        for i in range(6):
                            for _ in range(6):  # one release per paused chunk
                                url = f"{server.url}/_mock/release/hold-{i}"
                                async with http.post(url) as resp:
                                    assert resp.status == 200
                for s in streams:
                    async for _chunk in s:
                        pass
                await settled(plugin, 7)
                assert plugin.in_flight(home) == plugin.in_flight(other) == 0
                # Once released, the conversation goes back to where its prompt is cached.
                assert await ask(r, chat("one more")) in (home, other)
                assert plugin.stats().errors == 0

    run(main)


def test_streamed_responses_teach_the_prefill_rate() -> None:
    # LiteLLM's success callback carries a streamed response's first-chunk time
    # (completion_start_time): the plugin learns how fast its deployments answer from it.
    # Sixteen streamed requests with cold prompts are enough for a first estimate (whatever
    # the mock's speed on this machine, it is not exactly the configured rate); responses
    # not streamed teach nothing.
    seen: list[tuple[bool, Any, Any, tuple[float, float | None] | None]] = []

    class Probe(CustomLogger):  # type: ignore[misc]  # what LiteLLM hands the callbacks
        async def async_log_success_event(
            self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any
        ) -> None:
            seen.append(
                (
                    kwargs.get("stream") is True,
                    kwargs.get("api_call_start_time"),
                    kwargs.get("completion_start_time"),
                    first_token_times(kwargs),
                )
            )

    async def main() -> None:
        async with backends(2) as bs:
            r = router(bs)
            plugin = install(r, prefill_tokens_per_s=20_000.0)
            probe = Probe()
            litellm.callbacks.append(probe)
            try:
                await streamed_and_not(r, plugin)
            finally:
                litellm.callbacks.remove(probe)
        # The LiteLLM facts the plugin reads: each attempt's hand-off time, and a first
        # chunk's time for a streamed response only.
        for streamed, handed, first, times in seen:
            assert isinstance(handed, datetime.datetime) and times is not None
            assert times[0] == handed.timestamp()
            if streamed:
                assert isinstance(first, datetime.datetime)
                assert times[1] == first.timestamp() > times[0]
            else:
                assert times[1] is None
        assert sum(streamed for streamed, *_ in seen) == 16

    async def streamed_and_not(r: Any, plugin: PrefixRoutingPlugin) -> None:
        async with installed(plugin):
            for k in range(4):
                await ask(r, chat("not streamed", system=f"{k} {SYSTEM}"))
            await settled(plugin, 4)
            assert plugin.stats().timed == 0
            for k in range(16):
                s = await r.acompletion(
                    model=MODEL,
                    messages=chat("streamed", system=f"s{k} {SYSTEM}"),
                    stream=True,
                )
                async for _chunk in s:
                    pass
            await settled(plugin, 20)
            await wait_for(lambda: plugin.stats().timed == 16, "16 first tokens learned")
            rate = plugin.prefill_rate()
            assert rate is not None and math.isfinite(rate) and rate != 20_000.0
            assert plugin.stats().errors == 0
            await wait_for(lambda: len(seen) == 20, "every success seen by the probe")

    run(main)


def test_a_failing_deployment_releases_its_reservation_and_is_not_observed() -> None:
    async def main() -> None:
        async with backends(2) as bs:
            r = router(bs)
            pins = SessionPins(ttl=600, max_entries=1000)
            plugin = install(r, pins=pins)
            async with installed(plugin):
                meta = {"session_id": "s-1"}
                first = await ask(r, chat("hello"), metadata=dict(meta))
                await settled(plugin, 1)
                assert pins.get(MODEL, "s-1") == first
                with pytest.raises(litellm.InternalServerError):
                    await r.acompletion(
                        model=MODEL,
                        messages=chat("this one fails", system="another prompt " * 50),
                        metadata=dict(meta),
                        extra_headers={"X-Mock-Status": "500"},
                    )
                await settled(plugin, 2)
                st = plugin.stats()
                assert (st.released, st.observed, st.expired) == (2, 1, 0)
                assert plugin.in_flight("d0") == plugin.in_flight("d1") == 0
                # Not observed: the failed prompt is known nowhere (the served one is).
                failed = cached_blocks(plugin, chat("x", system="another prompt " * 50))
                assert set(failed.values()) == {0}
                assert max(cached_blocks(plugin, chat("hello")).values()) > 0
                # The failure cleared the session's pin: the next turn re-pins on success.
                assert pins.get(MODEL, "s-1") is None and st.unpinned == 1
                again = await ask(r, chat("hello again"), metadata=dict(meta))
                await settled(plugin, 3)
                assert pins.get(MODEL, "s-1") == again

    run(main)


def test_a_session_pin_holds_against_cache_savings_elsewhere_in_strategy_mode() -> None:
    async def main() -> None:
        async with backends(2) as bs:
            r = router(bs)
            pins = SessionPins(ttl=600, max_entries=1000)
            plugin = install(r, mode="strategy", pins=pins)
            async with installed(plugin):
                # Another session warms one deployment with a long prompt.
                warm = await ask(r, chat("first"), metadata={"session_id": "warm"})
                await settled(plugin, 1)
                # A new session with a short prompt lands on the other (least used) one.
                mine = await ask(r, chat("hi", system=""), metadata={"session_id": "mine"})
                assert mine != warm
                await settled(plugin, 2)
                # Its next turn carries the long prompt cached on `warm`: the pin keeps it.
                # Counterfactual: without the session it would go to the cached deployment.
                for _ in range(3):
                    assert await ask(r, chat("second"), metadata={"session_id": "mine"}) == mine
                    await settled(plugin, plugin.stats().reserved)
                assert await ask(r, chat("third")) == warm

    run(main)


def test_internal_errors_return_the_input_unchanged_and_are_counted() -> None:
    async def main() -> None:
        async with backends(2) as bs:
            r = router(bs)
            plugin = install(r)
            async with installed(plugin):

                class Broken:
                    def matched_blocks(self, *_a: object) -> int:
                        raise RuntimeError("mirror bug")

                plugin._costs.mirror = Broken()  # type: ignore[assignment]
                # The request is still served (LiteLLM's own choice among the deployments).
                assert await ask(r, chat("still served")) in ("d0", "d1")
                assert plugin.stats().errors >= 1
                garbage = [{"model_name": MODEL}, {"model_info": {"id": 3}}]
                out = await plugin.async_filter_deployments(MODEL, garbage, [{"x": 1}], {})
                assert out is garbage
                await plugin.async_log_success_event(None, None, None, None)
                await plugin.async_log_failure_event({"litellm_params": 5}, None, None, None)
                assert plugin.reservations() == 0

    run(main)


def test_unreleased_reservations_expire_after_the_ttl() -> None:
    async def main() -> None:
        async with backends(2) as bs:
            clock = ManualClock(1000.0)
            plugin = PrefixRoutingPlugin(router(bs), reservation_ttl=30.0, clock=clock)
            deployments = bs.model_list()
            kwargs: dict[str, Any] = {"metadata": {}}
            pos = plugin.choose(MODEL, deployments, chat("lost"), kwargs)
            chosen = deployments[pos]["model_info"]["id"]
            assert kwargs["metadata"][REQUEST_ID_METADATA_KEY]
            assert plugin.in_flight(chosen) == 1
            assert plugin.expire(now=1030.0) == 0  # exactly the ttl: still held
            assert plugin.expire(now=1030.5) == 1
            assert plugin.in_flight(chosen) == 0 and plugin.stats().expired == 1
            # A callback arriving after expiry matches nothing and changes nothing.
            late = {
                "litellm_params": {"metadata": kwargs["metadata"], "model_info": {"id": chosen}}
            }
            assert not plugin.release(late, success=True)
            assert plugin.stats().unmatched == 1 and plugin.stats().observed == 0

    run(main)


def test_two_routers_share_affinity_and_pins_in_memory() -> None:
    async def main() -> None:
        async with backends(2) as bs:
            hub = InMemoryTransport()
            ra, rb = router(bs), router(bs)
            pa = install(ra, sync=hub.connect("a"), pins=SessionPins(ttl=600, max_entries=99))
            pb = install(rb, sync=hub.connect("b"), pins=SessionPins(ttl=600, max_entries=99))
            async with installed(pa, pb):
                await shared_scenario(ra, rb, pa, pb)

    run(main)


def test_two_routers_share_affinity_and_pins_through_redis(redis: Any) -> None:
    from prefixcache.transports.redis import RedisTransport

    run(lambda: shared_through_broker(lambda: RedisTransport.connect(redis.url)))


def test_two_routers_share_affinity_and_pins_through_nats(nats: Any) -> None:
    from prefixcache.transports.nats import NatsTransport

    run(lambda: shared_through_broker(lambda: NatsTransport.connect(nats.url)))


async def shared_through_broker(connect: Callable[[], Any]) -> None:
    """:func:`shared_scenario` with each router on its own transport from ``connect()``."""
    ta = await asyncio.to_thread(connect)
    tb = await asyncio.to_thread(connect)
    try:
        async with backends(2) as bs:
            ra, rb = router(bs), router(bs)
            pa = install(ra, sync=ta, pins=SessionPins(ttl=600, max_entries=99))
            pb = install(rb, sync=tb, pins=SessionPins(ttl=600, max_entries=99))
            async with installed(pa, pb):
                await shared_scenario(ra, rb, pa, pb)
    finally:
        await asyncio.to_thread(ta.close)
        await asyncio.to_thread(tb.close)


async def shared_scenario(ra: Any, rb: Any, pa: PrefixRoutingPlugin, pb: Any) -> None:
    """Router A learns a prompt and a session on d1; router B, which never saw either, sends
    them to d1 too. (Alone, B would pick d0: equal costs and no dispatches go to the least
    key.)"""
    assert await ask(ra, chat("unrelated", system="")) == "d0"  # A's ties now favour d1
    await settled(pa, 1)
    assert await ask(ra, chat("question one")) == "d1"
    await settled(pa, 2)
    # The session's first turn shares the long prompt, so it lands on d1 too.
    assert await ask(ra, chat("hi"), metadata={"session_id": "s"}) == "d1"
    await settled(pa, 3)
    await wait_for(lambda: pb.pins.get(MODEL, "s") == "d1", "the pin reached router B")
    await wait_for(lambda: hot_of(pb, chat("hi")) == "d1", "the observations reached B")
    assert pb.stats().decisions == 0
    # Same long prompt, other router: the shared index knows d1 holds it.
    assert await ask(rb, chat("question two")) == "d1"
    # Same session, a prompt nobody has seen: the shared pin decides.
    assert await ask(rb, chat("new topic", system="other"), metadata={"session_id": "s"}) == "d1"
    assert pa.stats().decisions == 3 and pb.stats().decisions == 2  # each decided its own


plain_text = st.text(st.characters(codec="ascii"), max_size=40) | st.text(max_size=10)
plain_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant"]), "content": plain_text}
    ),
    max_size=6,
)


@given(plain_messages)
def test_the_plain_message_shortcut_agrees_with_messages_prefix_source(
    messages: list[dict[str, str]],
) -> None:
    # The plugin builds the source of plain ASCII chat messages itself (speed); whenever it
    # does, it must equal the library's rule, and it must decline what it cannot build.
    from prefixcache.integrations.litellm import _plain_source

    whole = messages_prefix_source(messages)
    fast = _plain_source(messages)
    if fast is not None:
        assert fast == (whole, len(whole))
    else:
        assert not messages or not whole.isascii()
    assert _plain_source([{"Role": "user", "content": "x"}]) is None  # case-folded key
    assert _plain_source([{"role": "user", "content": None}]) is None
    assert _plain_source([{"role": "user", "content": "x", "name": "n"}]) is None
    assert _plain_source([{"role": 5, "content": "x"}]) is None  # a role that is no string
    assert _plain_source(["ab"]) is None  # two characters, not a two-key message
    parts = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    assert _plain_source(parts) is None


candidate_fields = st.tuples(
    st.sampled_from(["a", "b"]),
    *(st.integers(min_value=0, max_value=3) for _ in range(5)),
)


@given(st.lists(candidate_fields, max_size=30))
def test_a_reused_cost_candidate_always_equals_a_fresh_one(
    calls: list[tuple[str, int, int, int, int, int]],
) -> None:
    # The plugin reuses a deployment's last CostCandidate when its fields are unchanged
    # (speed); a reused one that differed in any field would mislead the cost policy.
    from prefixcache import CostCandidate

    plugin = PrefixRoutingPlugin(None)
    for name, in_flight, cached, queued, recent, pinned in calls:
        key = ReplicaKey(name)
        got = plugin._costs._candidate(key, in_flight, cached, queued, recent, pinned)
        assert got == CostCandidate(
            key=key,
            in_flight=in_flight,
            cached_tokens=cached,
            queued_tokens=queued,
            recent_dispatches=recent,
            pinned_tokens=pinned,
            tie_rank=recent,
        )


chain_steps = st.lists(
    st.tuples(
        st.sampled_from(["s", "t", None]),
        st.booleans(),  # continue the session's last prompt, or start a new one
        st.text(st.sampled_from("ab"), max_size=12) | st.just("é"),
    ),
    max_size=25,
)


@given(chain_steps, st.sampled_from([1, 2, 3]))
def test_a_continued_session_chain_equals_extract_chain(
    steps: list[tuple[str | None, bool, str]], capacity: int
) -> None:
    # The plugin hashes only the blocks a session's prompt adds to its previous one
    # (speed); every chain must still be extract_chain's, whether the prompt continues,
    # rewrites, shortens or outgrows (max_depth) the previous one, or is not ASCII.
    from prefixcache import Config
    from prefixcache.integrations._litellm_chains import SessionChains

    config = Config(window_bytes=3, max_depth=5)
    chains = SessionChains(config, capacity=capacity)
    prompts: dict[str | None, str] = {}
    for session, extend, text in steps:
        prompt = prompts.get(session, "") + text if extend else text
        prompts[session] = prompt
        assert chains.chain("m", session, prompt) == extract_chain("m", prompt, config)
        assert len(chains) <= capacity


def test_an_asyncio_transport_carries_observations_and_pins() -> None:
    from prefixcache import OBSERVE_SUBJECT, PIN_SUBJECT
    from prefixcache.testing import GatedAsyncTransport

    async def main() -> None:
        async with backends(2) as bs:
            transport = GatedAsyncTransport()
            transport.open()
            r = router(bs)
            plugin = install(r, sync=transport, pins=SessionPins(ttl=600, max_entries=9))
            async with installed(plugin):
                await plugin.ready()
                subjects = sorted(s for s, _ in transport.handlers)
                assert subjects == sorted(["prefixcache.invalidate", OBSERVE_SUBJECT, PIN_SUBJECT])
                replica = await ask(r, chat("hello"), metadata={"session_id": "s"})
                await settled(plugin, 1)
                assert plugin.pins is not None
                await plugin.pins.flush()
                await wait_for(lambda: len(transport.published) == 2, "both messages sent")
                sent = dict(transport.published)
                assert OBSERVE_SUBJECT in sent
                assert replica in sent[PIN_SUBJECT].decode()

    run(main)


def test_a_retry_after_a_refused_connection_releases_both_attempts_and_re_pins() -> None:
    import socket

    async def main() -> None:
        async with backends(1) as bs:
            with socket.socket() as sock:  # a port nobody listens on: connections are refused
                sock.bind(("127.0.0.1", 0))
                dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
                ml = [
                    *bs.model_list(),
                    {
                        "model_name": MODEL,
                        "litellm_params": {
                            "model": f"openai/{MODEL}",
                            "api_base": dead,
                            "api_key": "unused",
                        },
                        "model_info": {"id": "dead"},
                    },
                ]
                r = Router(model_list=ml, num_retries=2, retry_after=0)
                pins = SessionPins(ttl=600, max_entries=9)
                plugin = install(r, pins=pins)
                async with installed(plugin):
                    pins.pin(MODEL, "s", "dead")  # the first attempt goes there
                    assert await ask(r, chat("hi"), metadata={"session_id": "s"}) == "d0"
                    await settled(plugin, 2)
                    st = plugin.stats()
                    assert (st.released, st.observed, st.unpinned, st.pinned) == (2, 1, 1, 1)
                    assert pins.get(MODEL, "s") == "d0"  # re-pinned where it succeeded

    run(main)


def test_a_tokenizer_keys_chains_by_token_blocks() -> None:
    from prefixcache import extract_token_chain

    def tokenizer(group: str, text: str) -> list[int]:
        return [ord(c) for c in text]

    plugin = PrefixRoutingPlugin(None, tokenizer=tokenizer, block_tokens=16)
    deployments = [{"model_info": {"id": "d0"}}, {"model_info": {"id": "d1"}}]
    kwargs: dict[str, Any] = {"metadata": {}}
    messages = chat("hello", system="short system prompt")
    pos = plugin.choose(MODEL, deployments, messages, kwargs)
    chosen = ["d0", "d1"][pos]
    assert plugin.release(
        {"litellm_params": {"metadata": kwargs["metadata"], "model_info": {"id": chosen}}},
        success=True,
    )
    ids = tokenizer(MODEL, messages_prefix_source(messages))
    chain = extract_token_chain(MODEL, ids, block_tokens=16)
    assert plugin.mirror.matched_blocks(ReplicaKey(chosen), chain) == len(chain) > 1
    # Counterfactual: the byte-window chain of the same text is not what was stored.
    byte_chain = extract_chain(MODEL, messages_prefix_source(messages))
    assert plugin.mirror.matched_blocks(ReplicaKey(chosen), byte_chain) == 0


def test_misuse_raises_typed_errors_naming_the_argument() -> None:
    from clusterrouting import InvalidRecordError

    for kw, name in (
        ({"mode": "router"}, "mode"),
        ({"mode": "strategy"}, "router"),  # a strategy needs its router
        ({"reservation_ttl": 0}, "reservation_ttl"),
        ({"mirror_blocks": 0}, "mirror_blocks"),
        ({"block_tokens": 0}, "block_tokens"),
        ({"sync": object()}, "sync"),
        ({"pins": {}}, "pins"),
        # Found now, not as an AttributeError here or a TypeError at the first request:
        ({"session_header": 5}, "session_header"),
        ({"session_header": ""}, "session_header"),
        ({"session_metadata_key": ""}, "session_metadata_key"),
        ({"session_metadata_key": None}, "session_metadata_key"),
        ({"clock": 5.0}, "clock"),
        ({"clock": None}, "clock"),  # no clock at all: every call without now= would fail
        ({"tokenizer": "bert"}, "tokenizer"),
    ):
        with pytest.raises(InvalidRecordError) as err:
            PrefixRoutingPlugin(None, **kw)
        assert err.value.field == name


def test_an_overloaded_pinned_deployment_loses_the_session_which_re_pins_where_it_lands() -> None:
    pins = SessionPins(ttl=600, max_entries=9)
    plugin = PrefixRoutingPlugin(None, pins=pins)
    deployments = [{"model_info": {"id": "d0"}}, {"model_info": {"id": "d1"}}]
    pins.pin(MODEL, "s", "d0")
    picks = []
    for i in range(4):  # concurrent turns of one session: none completes
        kwargs = {"metadata": {"session_id": "s"}}
        picks.append(["d0", "d1"][plugin.choose(MODEL, deployments, chat(f"t{i}"), kwargs)])
    # The pin holds while d0 is within the load guard (in flight <= least + 2 and <= least *
    # 1.5 + 1): with 0 and 1 in flight against 0 it is; with 2 against 0 it is not (2 > 1),
    # so the third turn goes to d1; with 2 against 1 (2 <= 2.5) it is again.
    assert picks == ["d0", "d0", "d1", "d0"]
    moved = {"metadata": {"session_id": "s"}}
    pos = plugin.choose(MODEL, deployments, chat("late"), moved)
    done = {
        "litellm_params": {
            "metadata": moved["metadata"],
            "model_info": deployments[pos]["model_info"],
        }
    }
    assert plugin.release(done, success=True)
    # 3 in flight against 1 (3 > 2.5): overloaded, so d1 serves and the session re-pins there.
    assert pos == 1 and pins.get(MODEL, "s") == "d1"


def test_uninstall_gives_a_strategy_mode_router_back_its_default_strategy() -> None:
    async def main() -> None:
        async with backends(2) as bs:
            r = router(bs)
            plugin = install(r, mode="strategy")
            async with installed(plugin):
                await r.acompletion(model=MODEL, messages=chat("q0"))
            decided = plugin.stats().decisions
            for i in range(4):
                await r.acompletion(model=MODEL, messages=chat(f"q{i + 1}"))
            # Counterfactual: on LiteLLM 1.110 without a reset, the plugin's strategy
            # stayed the router's and decided all four.
            assert plugin.stats().decisions == decided

    run(main)


def test_uninstall_keeps_the_routers_strategy_arguments() -> None:
    from litellm.router_strategy.lowest_latency import LowestLatencyLoggingHandler

    def latency_handlers() -> list[Any]:
        return [h for h in litellm.callbacks if isinstance(h, LowestLatencyLoggingHandler)]

    async def main() -> None:
        before = {id(h) for h in latency_handlers()}
        async with backends(2) as bs:
            r = Router(
                model_list=bs.model_list(),
                num_retries=0,
                routing_strategy="latency-based-routing",
                routing_strategy_args={"lowest_latency_buffer": 0.25, "ttl": 30.0},
            )
            try:
                plugin = install(r, mode="strategy")
                async with installed(plugin):
                    await r.acompletion(model=MODEL, messages=chat("q0"))
                ours = [h for h in latency_handlers() if id(h) not in before]
                # The default selector the router routes by again is built with the
                # router's arguments, not LiteLLM's defaults (buffer 0, ttl an hour).
                assert ours
                args = {(h.routing_args.lowest_latency_buffer, h.routing_args.ttl) for h in ours}
                assert args == {(0.25, 30.0)}
                decided = plugin.stats().decisions
                await r.acompletion(model=MODEL, messages=chat("q1"))
                assert plugin.stats().decisions == decided
            finally:
                for h in latency_handlers():
                    if id(h) not in before:
                        litellm.callbacks.remove(h)

    run(main)
