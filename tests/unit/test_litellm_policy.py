"""The LiteLLM plugin's decision without LiteLLM's router around it (``choose`` and
``release`` called directly, at an injected time): requests in flight hold their prompts,
and the default policy's hot-prefix rule (``HotPrefixes.credit``) applies."""

from __future__ import annotations

import datetime
import itertools
import math
import os
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import

import pytest

from clusterrouting import InvalidRecordError
from prefixcache import ReplicaKey, SessionPins, extract_chain, messages_prefix_source
from prefixcache.integrations import _litellm_costs as costs
from prefixcache.integrations._litellm_requests import first_token_times
from prefixcache.integrations.litellm import DEFAULT_PREFILL_TOKENS_PER_S, PrefixRoutingPlugin

GROUP = "m"
DEPLOYMENTS = [{"model_info": {"id": "a"}}, {"model_info": {"id": "b"}}]
LONG = "You are a careful assistant for a shipping company; answer briefly. " * 150  # ~10 kB


def chat(user: str, system: str = LONG) -> list[dict[str, str]]:
    msgs = [{"role": "system", "content": system}] if system else []
    return [*msgs, {"role": "user", "content": user}]


def route(plugin: PrefixRoutingPlugin, messages: list[dict[str, str]]) -> tuple[str, Any]:
    """Choose a deployment; returns its id and the callback kwargs that release it."""
    kwargs: dict[str, Any] = {"metadata": {}}
    pos = plugin.choose(GROUP, DEPLOYMENTS, messages, kwargs, now=1.0)
    info = DEPLOYMENTS[pos]["model_info"]
    done = {"litellm_params": {"metadata": kwargs["metadata"], "model_info": info}}
    return str(info["id"]), done


def served(plugin: PrefixRoutingPlugin, messages: list[dict[str, str]]) -> str:
    """Route and complete a request (success): the deployment it went to."""
    home, done = route(plugin, messages)
    assert plugin.release(done, success=True, now=1.0)
    return home


def observed(plugin: PrefixRoutingPlugin, messages: list[dict[str, str]]) -> dict[str, int]:
    chain = extract_chain(GROUP, messages_prefix_source(messages))
    return {d: plugin.mirror.matched_blocks(ReplicaKey(d), chain) for d in "ab"}


def test_a_prompt_in_flight_counts_as_cached_where_it_runs_until_it_ends() -> None:
    plugin = PrefixRoutingPlugin(None)
    # Unrelated one-off requests first: the long prompt is not hot (1 dispatch in 13).
    for k in range(12):
        served(plugin, chat(f"unrelated question {k} " * 5, system=""))
    first, first_done = route(plugin, chat("question 1"))
    # Nothing has succeeded yet, so nothing is observed; but the engine holds the prompt
    # of the request it is running, so the same prompt follows it (without the credit
    # the costs tie and the request goes to the other deployment, used less recently).
    assert observed(plugin, chat("question 2")) == {"a": 0, "b": 0}
    second, second_done = route(plugin, chat("question 2"))
    assert second == first
    # Failures release the reservations and observe nothing: the credit is gone.
    assert plugin.release(first_done, success=False, now=1.0)
    assert plugin.release(second_done, success=False, now=1.0)
    assert plugin.reservations() == 0
    assert observed(plugin, chat("question 3")) == {"a": 0, "b": 0}
    assert plugin.stats().errors == 0


def test_a_hot_prompt_keeps_its_deployment_until_it_is_overloaded() -> None:
    plugin = PrefixRoutingPlugin(None)
    # Half the requests share the prompt (demand: one deployment's share of the traffic),
    # and each one completes before the next: the holder keeps them all, even the second of
    # two in a row (a warm copy elsewhere would win that tie, as the deployment used less
    # recently). The unrelated requests go to the other deployment and even out the
    # dispatch shares, so the share price moves nothing.
    homes = set()
    for k in range(2):
        homes.add(served(plugin, chat(f"question {2 * k}")))
        homes.add(served(plugin, chat(f"question {2 * k + 1}")))
        served(plugin, chat(f"unrelated question {k} " * 5, system=""))
    for k in range(2, 4):
        served(plugin, chat(f"unrelated question {k} " * 5, system=""))
    assert len(homes) == 1
    (home,) = homes
    # Requests that overlap stay while the holder is within the load guard (at most
    # 1.5 x the least loaded + 1 and 2 above it: one request while the other is idle);
    # the third finds it beyond, and the other deployment, a warm copy now (credited with
    # the prompt), takes it. Without the rule it would stay too: the prompt saves ~2,500
    # tokens there.
    burst = [route(plugin, chat(f"burst {k}"))[0] for k in range(3)]
    assert burst[:2] == [home] * 2 and burst[2] != home
    # The copy is credited for the choice only: the request still prefills the whole
    # prompt there, and that is the backlog it adds (~2,600 tokens, not its user turn).
    assert plugin.backlog(burst[2], now=1.0) > 2000
    assert plugin.stats().errors == 0


def test_a_shared_prompt_on_a_busy_holder_weighs_its_backlog_more() -> None:
    plugin = PrefixRoutingPlugin(None)
    for k in range(12):
        served(plugin, chat(f"unrelated question {k} " * 5, system=""))
    # Requests in flight sharing the prompt. From the third on, 2 to 4 of the 14 to 16
    # dispatches had it: a demand of 0.29 to 0.50 deployments, shared (>= 0.25) but below a
    # second copy (0.75); the plugin counts the observed share (HOT_CONFIDENCE, 0): one
    # standard error low the third would see 0.15 deployments and stay. The holder's
    # backlog (mostly the first request's whole prompt) then weighs 0.5, not 0.1, so the
    # holder's cost comes within the margin of the other's and the tie goes to the other,
    # used less recently: the third and the fourth go there. At 0.1 all five (and a sixth)
    # would stay on the holder.
    homes = [route(plugin, chat(f"question {k}"))[0] for k in range(5)]
    assert homes[:2] == homes[:1] * 2 and homes[2] != homes[0] and len(set(homes)) == 2


def test_hot_prefix_demand_is_kept_for_a_bounded_number_of_groups() -> None:
    plugin = PrefixRoutingPlugin(None)
    for g in range(70):
        kwargs: dict[str, Any] = {"metadata": {}}
        plugin.choose(f"group-{g}", DEPLOYMENTS, chat("hello"), kwargs, now=1.0)
    tracked = [g for g in range(70) if plugin.demand_window(f"group-{g}") is not None]
    assert tracked == list(range(6, 70))  # the 64 most recently first seen
    assert plugin.stats().errors == 0


def test_a_group_that_grows_gets_a_demand_window_for_its_size() -> None:
    plugin = PrefixRoutingPlugin(None)
    kwargs: dict[str, Any] = {"metadata": {}}
    plugin.choose(GROUP, DEPLOYMENTS[:1], chat("hello"), kwargs, now=1.0)
    assert plugin.demand_window(GROUP) == 256
    plugin.choose(GROUP, DEPLOYMENTS, chat("hello"), {"metadata": {}}, now=1.0)
    assert plugin.demand_window(GROUP) == 512  # 256 dispatches per deployment
    plugin.choose(GROUP, DEPLOYMENTS[:1], chat("hello"), {"metadata": {}}, now=1.0)
    assert plugin.demand_window(GROUP) == 512  # a shorter list keeps the larger window
    assert plugin.demand_window("never-seen") is None


def test_a_prompt_carrying_all_the_traffic_leaves_its_idle_holder_for_its_fair_share() -> None:
    plugin = PrefixRoutingPlugin(None)
    # One system prompt in front of every request, each request completing before the
    # next: its deployment holds the ~2,500-token prompt and stays idle, which alone would
    # keep the requests there for about 60 in a row (until 32 tokens per extra dispatch,
    # the share price, outweighed the cache). The prompt carries more than one
    # deployment's share of the traffic and only one holds it, so the pick is guarded:
    # once the holder has 5 of 5 dispatches (over 1.1 x 2.5 + 2) the 6th goes to the
    # other, which then catches up on its share (the share price) and the two alternate.
    homes = [served(plugin, chat(f"question {k}")) for k in range(90)]
    assert homes[:5] == [homes[0]] * 5 and homes[5] != homes[0]
    assert homes[5:10] == [homes[5]] * 5
    assert all(x != y for x, y in itertools.pairwise(homes[10:]))
    assert homes.count("a") == homes.count("b") == 45
    assert plugin.stats().errors == 0


def test_a_prompt_with_more_than_one_deployments_share_is_guarded() -> None:
    # Two of every three requests share the prompt (a demand of 1.33 deployments, above
    # DEFAULT_GUARD_DEMAND) and each completes before the next. Guarded, the prompt gets a
    # second copy once its holder is over its share, and neither deployment ends beyond
    # 1.1 x its mean share + 2 (51 of 90); unguarded, its idle holder would keep all 60.
    plugin = PrefixRoutingPlugin(None)
    hot = []
    homes = []
    for k in range(30):
        hot.append(served(plugin, chat(f"question {2 * k}")))
        hot.append(served(plugin, chat(f"question {2 * k + 1}")))
        homes.append(served(plugin, chat(f"unrelated question {k} " * 5, system="")))
    homes += hot
    assert set(hot) == {"a", "b"}
    assert max(homes.count("a"), homes.count("b")) <= 1.1 * 45 + 2


def test_the_hot_prefix_rules_wait_for_room_in_the_deployments_kv_caches() -> None:
    # The shared weight and the fair-share guard hold only while the prompts in flight on
    # every deployment fill less than 0.8 of mirror_blocks (the engine's KV cache as the
    # plugin models it). The plugin counts them from its tracked blocks (every 8th of a
    # chain, and its last): one ~10 kB prompt in flight is 40 blocks; a second one sharing
    # its system prompt but not its last tracked block adds 8, 48 (below 0.8 x 61, not
    # below 0.8 x 60).
    def shared_burst(mirror_blocks: int) -> list[str]:
        plugin = PrefixRoutingPlugin(None, mirror_blocks=mirror_blocks)
        for k in range(12):
            served(plugin, chat(f"unrelated question {k} " * 5, system=""))
        return [route(plugin, chat(f"question {k}"))[0] for k in range(5)]

    # As test_a_shared_prompt_on_a_busy_holder_weighs_its_backlog_more, then all on the
    # holder (the plain 0.1 weight) once two requests fill the cache.
    assert len(set(shared_burst(61))) == 2
    assert len(set(shared_burst(60))) == 1

    # One long unrelated prompt in flight on each deployment (55 blocks: below 0.8 x 69,
    # not below 0.8 x 68), then the prompt carrying all the traffic: guarded, it
    # leaves its idle holder after 5 dispatches (as in the test above); without room its
    # holder keeps all 20.
    def hot_traffic(mirror_blocks: int) -> str:
        plugin = PrefixRoutingPlugin(None, mirror_blocks=mirror_blocks)
        long = [
            route(plugin, chat(f"a long unrelated question {k} " * 500, system=""))[0]
            for k in range(2)
        ]
        assert sorted(long) == ["a", "b"]
        return "".join(served(plugin, chat(f"question {k}")) for k in range(20))

    guarded = hot_traffic(69)
    assert guarded[:5] == guarded[0] * 5 and guarded[5] != guarded[0]
    assert hot_traffic(68) == "a" * 20


def test_the_backlog_weighs_more_while_the_caches_have_room_and_a_deployment_has_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A prompt served on its home (40 blocks in the mirror), then a long unrelated request
    # in flight there (a deployment list of one forces it; its backlog is ceil(chars / 4)
    # + 2 tokens), and maybe one on the other deployment. The prompt's next request saves
    # ~2,570 tokens at home, so at the plain 0.1 it stays unless home's backlog exceeds the
    # other's by more than ~20,000 tokens, and at the room weight, 0.2, it goes by ~15,000
    # (beyond the 512-token margin both ways at 18,000). The room needs every cache in the
    # mirror filled below half (40 blocks of 81, not of 80) and some deployment's backlog
    # under 4,096 tokens. The weight passed to pick_lowest_cost is recorded.
    weights: list[float] = []
    pick = costs.pick_lowest_cost

    def recording_pick(*args: Any, **kwargs: Any) -> Any:
        weights.append(kwargs["queue_weight"])
        return pick(*args, **kwargs)

    monkeypatch.setattr(costs, "pick_lowest_cost", recording_pick)

    def stays(home_backlog: int, other_backlog: int = 0, **case: Any) -> bool:
        plugin = PrefixRoutingPlugin(None, mirror_blocks=case.get("mirror_blocks", 65536))
        if case.get("home") == "b":  # a short unrelated prompt goes first, to "a"
            assert served(plugin, chat("an unrelated first question", system="")) == "a"
        home = served(plugin, chat("question 0"))
        assert home == case.get("home", "a")
        other = "ab".replace(home, "")
        for dep, tokens in ((home, home_backlog), (other, other_backlog)):
            if tokens:
                only = [{"model_info": {"id": dep}}]
                messages = chat(dep * (4 * (tokens - 2)), system="")
                plugin.choose(GROUP, only, messages, {"metadata": {}}, now=1.0)
        assert plugin.backlog(home, now=1.0) == home_backlog
        assert plugin.backlog(other, now=1.0) == other_backlog
        return route(plugin, chat("question 1"))[0] == home

    assert not stays(18002) and weights[-1] == 0.2
    for home in "ab":  # whichever deployment holds the 40 blocks
        assert not stays(18002, mirror_blocks=81, home=home) and weights[-1] == 0.2
        assert stays(18002, mirror_blocks=80, home=home) and weights[-1] == 0.1
    assert not stays(22095, 4095) and weights[-1] == 0.2  # the other is under the bound
    assert stays(22096, 4096) and weights[-1] == 0.1  # every deployment at the bound or past


def test_a_backlog_drains_at_the_prefill_rate_until_its_requests_end() -> None:
    # LiteLLM reports a request only when it ends, long after its prefill: a deployment's
    # backlog (the ~2,600 uncached tokens of a cold prompt) drains at prefill_tokens_per_s
    # from the reservation on, and is gone once nothing is in flight there.
    plugin = PrefixRoutingPlugin(None, prefill_tokens_per_s=1000.0)
    kwargs: dict[str, Any] = {"metadata": {}}
    pos = plugin.choose(GROUP, DEPLOYMENTS, chat("question"), kwargs, now=10.0)
    home = str(DEPLOYMENTS[pos]["model_info"]["id"])
    start = plugin.backlog(home, now=10.0)
    assert 2000 < start < 3500
    assert plugin.backlog(home, now=11.0) == start - 1000
    assert plugin.backlog(home, now=10.0 + start / 1000 + 1) == 0
    # Without a rate the tokens stay until the request ends.
    held = PrefixRoutingPlugin(None, prefill_tokens_per_s=None)
    home2, done = route(held, chat("question"))
    assert held.backlog(home2, now=1000.0) == start
    assert held.release(done, success=True, now=1000.0)
    assert held.backlog(home2, now=1000.0) == 0
    for bad in (0, -1.0, float("inf"), float("nan"), True, "fast", 10**400):
        with pytest.raises(InvalidRecordError, match="prefill_tokens_per_s"):
            PrefixRoutingPlugin(None, prefill_tokens_per_s=bad)  # type: ignore[arg-type]
    assert DEFAULT_PREFILL_TOKENS_PER_S == 20_000.0


def test_a_choice_reads_the_drained_backlog() -> None:
    # Nine cold ~2,600-token prompts reserved on "a" at t=0 (about 23,000 tokens of
    # backlog), the first of them the conversation's. Its next turn saves ~2,600 tokens on
    # "a" (held in flight) but would wait behind the backlog (0.1 x 23,000) and eight more
    # requests: it goes to "b". Ten seconds later the backlog has drained at 20,000 tokens
    # per second and the turn stays on "a"; with the tokens held until the requests end it
    # still goes to "b".
    def next_turn_home(rate: float | None, at: float) -> str:
        plugin = PrefixRoutingPlugin(None, prefill_tokens_per_s=rate)
        for k in range(9):
            kwargs: dict[str, Any] = {"metadata": {}}
            plugin.choose(
                GROUP, DEPLOYMENTS[:1], chat(f"question {k}", system=f"{k} {LONG}"), kwargs, now=0.0
            )
        assert plugin.backlog("a", now=0.0) > 20_000
        kwargs = {"metadata": {}}
        pos = plugin.choose(
            GROUP, DEPLOYMENTS, chat("question 9", system=f"0 {LONG}"), kwargs, now=at
        )
        return str(DEPLOYMENTS[pos]["model_info"]["id"])

    assert next_turn_home(20_000.0, 0.0) == "b"
    assert next_turn_home(20_000.0, 10.0) == "a"
    assert next_turn_home(None, 10.0) == "b"


def streamed(
    done: dict[str, Any], sent: float, first: float, *, stream: object = True
) -> dict[str, Any]:
    """A success callback's ``kwargs`` for a streamed response: LiteLLM's ``start_time`` and
    ``completion_start_time`` (the first chunk's arrival)."""
    return {**done, "stream": stream, "start_time": sent, "completion_start_time": first}


def test_streamed_first_tokens_teach_the_prefill_rate() -> None:
    # Sixteen cold ~2,600-token prompts, each streamed back 0.5 s after it was sent with
    # nothing else in flight: from the 16th on the backlog drains at what they took
    # (tokens / 0.5 s), not at the configured 20,000 tokens per second.
    plugin = PrefixRoutingPlugin(None)
    assert plugin.prefill_rate() == DEFAULT_PREFILL_TOKENS_PER_S
    uncached = []
    for k in range(16):
        home, done = route(plugin, chat(f"question {k}", system=f"{k} {LONG}"))
        uncached.append(plugin.backlog(home, now=1.0))
        t = 10.0 * k
        assert plugin.release(streamed(done, t, t + 0.5), success=True, now=1.0)
    assert plugin.stats().timed == 16
    rate = plugin.prefill_rate()
    assert rate is not None and rate == pytest.approx(sum(uncached) / (16 * 0.5))
    assert 4000 < rate < 7000
    # A backlog now drains at the learned rate.
    home, _ = route(plugin, chat("one more", system=f"new {LONG}"))
    level = plugin.backlog(home, now=1.0)
    assert plugin.backlog(home, now=1.1) == level - round(0.1 * rate)


def test_only_streamed_successes_with_both_times_teach_the_rate() -> None:
    plugin = PrefixRoutingPlugin(None)
    when = datetime.datetime(2026, 12, 7, 12, 0, 0)
    cases = [
        ({"stream": False}, 0),  # LiteLLM sets a non-streamed response's first token to its end
        ({"stream": "yes"}, 0),
        ({"completion_start_time": None}, 0),
        ({"start_time": "0"}, 0),
        ({"start_time": math.nan}, 0),
        ({"completion_start_time": 0.0}, 0),  # not after the start: out of step
        (
            {"start_time": when, "completion_start_time": when + datetime.timedelta(seconds=1)},
            1,
        ),
        ({}, 1),
    ]
    for k, (change, counted) in enumerate(cases):
        before = plugin.stats().timed
        _, done = route(plugin, chat(f"question {k}", system=f"{k} {LONG}"))
        kwargs = {**streamed(done, 1.0, 2.0), **change}
        assert plugin.release(kwargs, success=True, now=1.0)
        assert plugin.stats().timed - before == counted, change
    # A failure, a plugin told not to learn and one holding tokens until release learn nothing.
    _, done = route(plugin, chat("failed", system=f"f {LONG}"))
    assert plugin.release(streamed(done, 1.0, 2.0), success=False, now=1.0)
    assert plugin.stats().timed == 2
    for other in (
        PrefixRoutingPlugin(None, learn_prefill_rate=False),
        PrefixRoutingPlugin(None, prefill_tokens_per_s=None),
    ):
        _, done = route(other, chat("question"))
        assert other.release(streamed(done, 1.0, 2.0), success=True, now=1.0)
        assert other.stats().timed == 0
    for bad in (1, "yes", None):
        with pytest.raises(InvalidRecordError, match="learn_prefill_rate"):
            PrefixRoutingPlugin(None, learn_prefill_rate=bad)  # type: ignore[arg-type]


def test_the_attempts_hand_off_time_is_the_start_and_a_stale_first_chunk_is_not_timed() -> None:
    kw: dict[str, Any] = {"stream": True, "start_time": 100.0, "completion_start_time": 103.0}
    # LiteLLM's start_time also spans its own pre-call work (and, in the proxy, guardrails
    # and earlier attempts); api_call_start_time is when this attempt went out.
    assert first_token_times({**kw, "api_call_start_time": 102.0}) == (102.0, 103.0)
    assert first_token_times(kw) == (100.0, 103.0)
    assert first_token_times({**kw, "api_call_start_time": 99.0}) == (100.0, 103.0)
    # A first chunk not after the hand-off (an earlier attempt's), or at the end (what
    # LiteLLM leaves when it had none), is no first-token time: the tokens still count.
    assert first_token_times({**kw, "api_call_start_time": 103.5}) == (103.5, None)
    assert first_token_times({**kw, "end_time": 103.0}) == (100.0, None)
    assert first_token_times({**kw, "end_time": 104.0}) == (100.0, 103.0)
    assert first_token_times({**kw, "stream": False}) == (100.0, None)
    assert first_token_times({"stream": True}) is None
    assert first_token_times({"start_time": True, "completion_start_time": 1.0}) is None


class _RaisingZone(datetime.tzinfo):
    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        raise ValueError("broken zone")

    def dst(self, dt: datetime.datetime | None) -> datetime.timedelta:
        raise ValueError("broken zone")

    def tzname(self, dt: datetime.datetime | None) -> str:
        return "broken"


class _NanTime(datetime.datetime):
    def timestamp(self) -> float:
        return math.nan


@pytest.mark.parametrize(
    "times",
    [
        {"start_time": 10**400},
        {"start_time": datetime.datetime.min},
        {"start_time": datetime.datetime(2026, 1, 1, tzinfo=_RaisingZone())},
        {"start_time": _NanTime(2026, 1, 1)},
        {"start_time": -1e308, "completion_start_time": 1e308},
        {"start_time": True},
    ],
)
def test_bad_times_from_litellm_never_break_a_release(times: dict[str, Any]) -> None:
    # Whatever LiteLLM's callback carries, the release completes: the session is pinned,
    # nothing raises, nothing is counted as an error, and nothing is learned from it.
    pins = SessionPins(ttl=600, max_entries=100)
    plugin = PrefixRoutingPlugin(None, pins=pins)
    kwargs: dict[str, Any] = {"metadata": {"session_id": "s"}}
    pos = plugin.choose(GROUP, DEPLOYMENTS, chat("hello"), kwargs, now=1.0)
    info = DEPLOYMENTS[pos]["model_info"]
    done = {"litellm_params": {"metadata": kwargs["metadata"], "model_info": info}}
    released = {**streamed(done, 1.0, 2.0), **times}
    plugin._release_quietly(released, success=True)
    stats = plugin.stats()
    assert (stats.released, stats.errors, stats.pinned, stats.timed) == (1, 0, 1, 0)
    assert pins.get(GROUP, "s") == info["id"]


def test_a_learned_rate_is_applied_at_the_plugins_time_not_litellms() -> None:
    # LiteLLM's datetimes (~1.8e9 s) are on another clock than the plugin's now (1.0): a
    # reservation still in flight when the rate is learned keeps its level at the release
    # and drains at the new rate from there.
    plugin = PrefixRoutingPlugin(None)
    home, _ = route(plugin, chat("still running", system=f"kept {LONG}"))
    level = plugin.backlog(home, now=1.0)
    assert level > 0
    for k in range(16):
        _, done = route(plugin, chat(f"q {k}", system=f"{k} {LONG}"))
        t = 1.8e9 + 10.0 * k
        assert plugin.release(streamed(done, t, t + 0.5), success=True, now=1.0)
    rate = plugin.prefill_rate()
    assert rate is not None and rate != 20_000.0
    assert plugin.backlog(home, now=1.0) == level
    assert plugin.backlog(home, now=1.1) == level - round(0.1 * rate)


def test_responses_not_streamed_add_their_tokens_to_the_busy_time_they_fell_in() -> None:
    # One deployment. Eight streamed requests, each answered 1 s after it was sent, and
    # eight not streamed, sent half-way through one of them: the rate counts both kinds'
    # tokens over the streamed ones' busy time (8 s), where leaving the second kind out
    # would halve it.
    plugin = PrefixRoutingPlugin(None)
    tokens = 0
    for k in range(8):
        t = 10.0 * k
        for kind, times in (("s", (t, t + 1.0)), ("n", (t + 0.5, None))):
            kwargs: dict[str, Any] = {"metadata": {}}
            plugin.choose(
                GROUP, DEPLOYMENTS[:1], chat(kind, system=f"{kind}{k} {LONG}"), kwargs, now=1.0
            )
            tokens += plugin.backlog("a", now=1.0)
            done = {"litellm_params": {"metadata": kwargs["metadata"], "model_info": {"id": "a"}}}
            sent, first = times
            extra = {
                "stream": first is not None,
                "start_time": sent,
                "completion_start_time": first,
            }
            assert plugin.release({**done, **extra}, success=True, now=1.0)
    assert plugin.stats().timed == 8
    assert plugin.prefill_rate() == pytest.approx(tokens / 8.0)
