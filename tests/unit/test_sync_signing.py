"""Signed sync: the envelope, the verifier's verdicts, replay memory, rate limits, and a
router that requires signatures ignoring a stranger on the broker."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterrouting import InvalidRecordError
from prefixcache import Candidate, Index, InvalidateEvent, ObserveEvent, ReplicaKey, Sync
from prefixcache._signing import (
    RateLimit,
    RateLimiter,
    SignedTransport,
    Signer,
    SigningKeys,
    Verifier,
    canonical_json,
)
from prefixcache.testing import InMemoryTransport, ManualClock, RecordingPublisher

K1 = SigningKeys(keys={"k1": b"1" * 32}, active="k1")
SUBJECT = "prefixcache.observe"
PAYLOAD = ObserveEvent(model="m", chain=(1, 2), node_id="a").encode()


def signer(origin: str = "r1", keys: SigningKeys = K1, at: float = 1000.0) -> Signer:
    counter = iter(range(10**9))
    return Signer(keys, origin=origin, clock=lambda: at, nonce=lambda: f"n{next(counter)}")


def test_records_are_byte_identical_with_signing_off() -> None:
    pub = RecordingPublisher()
    sync = Sync(Index(), pub, clock=lambda: 0.0)
    sync.observe("m", (1, 2), ReplicaKey("a"), 0.0)
    sync.invalidate_node("m", "a")
    assert pub.published == [
        ("prefixcache.observe", PAYLOAD),
        ("prefixcache.invalidate", InvalidateEvent.for_node("m", "a").encode()),
    ]


def test_a_signed_event_is_the_same_event_to_a_reader_that_ignores_signatures() -> None:
    signed = signer().sign(SUBJECT, PAYLOAD)
    assert signed.startswith(PAYLOAD[:-1] + b",")
    assert ObserveEvent.decode(signed) == ObserveEvent.decode(PAYLOAD)
    doc = json.loads(signed)
    assert {"origin", "kid", "ts", "nonce", "sig"} <= doc.keys()
    assert doc["ts"] == 1_000_000 and doc["origin"] == "r1" and doc["kid"] == "k1"


def test_verdicts() -> None:
    v = Verifier(K1, window=30.0)
    s = signer()
    good = s.sign(SUBJECT, PAYLOAD)
    assert v.check(SUBJECT, good, now=1000.0) == ("ok", "r1")
    assert v.check(SUBJECT, good, now=1000.0) == ("replayed", "r1")
    assert v.check(SUBJECT, PAYLOAD, now=1000.0) == ("unsigned", None)
    # Another subject, a changed field, a case-variant key (Go would read it), another key.
    assert v.check("prefixcache.invalidate", s.sign(SUBJECT, PAYLOAD), now=1000.0)[0] == "forged"
    tampered = s.sign(SUBJECT, PAYLOAD).replace(b'"node_id":"a"', b'"node_id":"b"')
    assert v.check(SUBJECT, tampered, now=1000.0)[0] == "forged"
    extra = s.sign(SUBJECT, PAYLOAD).replace(b'{"model"', b'{"MODEL":"x","model"')
    assert v.check(SUBJECT, extra, now=1000.0)[0] == "forged"
    dup = s.sign(SUBJECT, PAYLOAD).replace(b'{"model":"m"', b'{"model":"m","model":"m"')
    assert v.check(SUBJECT, dup, now=1000.0)[0] == "forged"
    stranger = SigningKeys(keys={"k1": b"2" * 32}, active="k1")
    assert v.check(SUBJECT, signer(keys=stranger).sign(SUBJECT, PAYLOAD), now=1000.0)[0] == "forged"
    for junk in (b"[1]", b"not json", b'{"sig": 5}', b"\xff"):
        assert v.check(SUBJECT, junk, now=1000.0)[0] == "forged"


def test_the_time_window_is_inclusive_and_symmetric() -> None:
    v = Verifier(K1, window=30.0)
    assert v.check(SUBJECT, signer(at=1000.0).sign(SUBJECT, PAYLOAD), now=1030.0)[0] == "ok"
    assert v.check(SUBJECT, signer(at=1000.0).sign(SUBJECT, PAYLOAD), now=1030.001)[0] == "stale"
    assert v.check(SUBJECT, signer(at=1100.0).sign(SUBJECT, PAYLOAD), now=1069.999)[0] == "stale"
    assert v.check(SUBJECT, signer(at=1100.0).sign(SUBJECT, PAYLOAD), now=1070.0)[0] == "ok"


def test_the_nonce_memory_is_bounded_and_never_readmits_a_replay() -> None:
    v = Verifier(K1, window=30.0, max_nonces=3)
    s = signer()
    msgs = [s.sign(SUBJECT, PAYLOAD) for _ in range(10)]
    # The 4th fills the memory past its cap: the oldest pair goes, and with it every ts
    # up to its own (1000.0), so the rest are stale rather than possibly replayed.
    assert [v.check(SUBJECT, m, now=1000.0)[0] for m in msgs] == ["ok"] * 4 + ["stale"] * 6
    assert v.remembered() <= 3
    assert {v.check(SUBJECT, m, now=1000.0)[0] for m in msgs} <= {"replayed", "stale"}
    # Later messages are fine again: the floor is behind them.
    later = signer(at=1001.0)
    verdicts = [v.check(SUBJECT, later.sign(SUBJECT, PAYLOAD), now=1001.0)[0] for _ in range(3)]
    assert verdicts == ["ok"] * 3
    assert v.remembered() <= 3
    # Pairs leave with the window, and a clock stepping back does not readmit them.
    assert v.check(SUBJECT, signer(at=1040.0).sign(SUBJECT, PAYLOAD), now=1040.0)[0] == "ok"
    assert v.remembered() == 1
    assert v.check(SUBJECT, msgs[0], now=1000.0)[0] == "stale"


def test_key_rotation() -> None:
    old = SigningKeys(keys={"k1": b"1" * 32}, active="k1")
    both = SigningKeys(keys={"k1": b"1" * 32, "k2": b"2" * 32}, active="k2")
    new = SigningKeys(keys={"k2": b"2" * 32}, active="k2")
    v_both = Verifier(both)
    assert v_both.check(SUBJECT, signer(keys=old).sign(SUBJECT, PAYLOAD), now=1000.0)[0] == "ok"
    assert (
        v_both.check(SUBJECT, signer("r2", keys=new).sign(SUBJECT, PAYLOAD), now=1000.0)[0] == "ok"
    )
    assert Verifier(new).check(SUBJECT, signer(keys=old).sign(SUBJECT, PAYLOAD), now=1000.0)[0] == (
        "forged"
    )
    with pytest.raises(InvalidRecordError):
        SigningKeys(keys={"k1": b"short"}, active="k1")
    with pytest.raises(InvalidRecordError):
        SigningKeys(keys={"k1": b"1" * 32}, active="k2")


@given(st.data())
def test_a_signed_message_verifies_once_and_no_byte_flip_verifies(data: st.DataObject) -> None:
    model = data.draw(st.text(max_size=20))
    chain = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=8))
    payload = ObserveEvent(model=model, chain=chain, node_id="n").encode()
    signed = signer().sign(SUBJECT, payload)
    v = Verifier(K1)
    assert v.check(SUBJECT, signed, now=1000.0)[0] == "ok"
    i = data.draw(st.integers(0, len(signed) - 1))
    flipped = signed[:i] + bytes([signed[i] ^ data.draw(st.integers(1, 255))]) + signed[i + 1 :]
    assert Verifier(K1).check(SUBJECT, flipped, now=1000.0)[0] != "ok"


def test_the_guards_refuse_what_they_could_not_use_when_built() -> None:
    # Counterfactual: a Signer or Verifier without keys, a clock or nonce that is not
    # callable, a Sync or SignedTransport handed something that is not a Signer,
    # Verifier or RateLimit, were all taken, and every later message then failed to sign
    # or verify (dropped and counted, or raised on the publishing path).
    hub = InMemoryTransport()
    for make, field in (
        (lambda: Signer(None, origin="a"), "keys"),  # type: ignore[arg-type]
        (lambda: Signer({"k1": b"1" * 32}, origin="a"), "keys"),  # type: ignore[arg-type]
        (lambda: Signer(K1, origin="a", clock=1.0), "clock"),  # type: ignore[arg-type]
        (lambda: Signer(K1, origin="a", nonce="n"), "nonce"),  # type: ignore[arg-type]
        (lambda: Verifier(None), "keys"),  # type: ignore[arg-type]
        (lambda: SignedTransport(None), "transport"),  # type: ignore[arg-type]
        (lambda: SignedTransport(hub.connect(), signer=K1), "signer"),  # type: ignore[arg-type]
        (lambda: SignedTransport(hub.connect(), verifier=K1), "verifier"),  # type: ignore[arg-type]
        (lambda: SignedTransport(hub.connect(), rate_limit=5), "rate_limit"),  # type: ignore[arg-type]
        (lambda: SignedTransport(hub.connect(), clock=1.0), "clock"),  # type: ignore[arg-type]
        (lambda: Sync(Index(), signer=Verifier(K1)), "signer"),  # type: ignore[arg-type]
        (lambda: Sync(Index(), verifier=Signer(K1, origin="a")), "verifier"),  # type: ignore[arg-type]
        (lambda: Sync(Index(), rate_limit=(10, 5)), "rate_limit"),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidRecordError) as ei:
            make()
        assert ei.value.field == field
    limit = RateLimit(rate=10, burst=5)
    Sync(Index(), signer=Signer(K1, origin="a"), verifier=Verifier(K1), rate_limit=limit)
    SignedTransport(hub.connect(), rate_limit=RateLimiter(limit))


def test_canonical_json_ignores_key_order() -> None:
    assert canonical_json({"b": 1, "a": 2}) == canonical_json({"a": 2, "b": 1}) == b'{"a":2,"b":1}'


def test_token_bucket_with_a_manual_clock() -> None:
    rl = RateLimiter(RateLimit(rate=2.0, burst=3.0), max_keys=2)
    assert [rl.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert rl.allow("a", 0.25) is False  # half a token
    assert rl.allow("a", 0.5) is True  # one token after 0.5 s
    assert rl.allow("a", 0.0) is False  # a clock stepping back adds nothing
    assert rl.allow("b", 0.5) and rl.allow("c", 0.5)  # "a" is forgotten (max_keys=2)
    assert rl.allow("a", 0.5) is True  # starts full again
    assert (rl.allowed, rl.limited) == (7, 3)


def make_router(hub: InMemoryTransport, name: str, clock: ManualClock, **trust: object) -> Sync:
    sync = Sync(Index(), clock=clock, **trust)  # type: ignore[arg-type]
    sync.attach(hub.connect(name))
    return sync


def test_a_router_requiring_signatures_ignores_a_stranger_on_the_broker() -> None:
    clock = ManualClock(1000.0)
    hub = InMemoryTransport()
    a = make_router(hub, "a", clock, signer=Signer(K1, origin="a", clock=clock))
    b = make_router(hub, "b", clock, verifier=Verifier(K1), signer=Signer(K1, origin="b"))
    key = ReplicaKey("gpu-a")
    a.observe("m", (1, 2, 3), key, clock())
    assert b.decide("m", (1, 2, 3), [Candidate(key)], clock()).hot == key
    # The attack from the issue: anyone on the broker wipes a node's affinity everywhere.
    stranger = hub.connect("stranger")
    stranger.publish("prefixcache.invalidate", InvalidateEvent.for_node("m", "gpu-a").encode())
    assert b.decide("m", (1, 2, 3), [Candidate(key)], clock()).hot == key
    assert b.stats().dropped_unsigned == 1
    # A captured message sent again, and one sent too late.
    captured: list[bytes] = []
    spy = hub.connect("spy")
    spy.subscribe("prefixcache.observe", lambda _s, p: captured.append(p))
    a.observe("m", (7,), key, clock())
    stranger.publish("prefixcache.observe", captured[0])
    assert b.stats().dropped_replayed == 1
    clock.advance(31.0)
    b2 = make_router(hub, "b2", clock, verifier=Verifier(K1))
    stranger.publish("prefixcache.observe", captured[0])
    assert b2.stats().dropped_stale == 1 and b2.stats().applied_observe == 0
    assert b.stats().applied_observe == 2 and b.stats().apply_errors == 0


def test_per_origin_rate_limits_bound_what_one_peer_writes() -> None:
    clock = ManualClock(1000.0)
    hub = InMemoryTransport()
    noisy = make_router(hub, "noisy", clock, signer=Signer(K1, origin="noisy", clock=clock))
    calm = make_router(hub, "calm", clock, signer=Signer(K1, origin="calm", clock=clock))
    rx = make_router(
        hub, "rx", clock, verifier=Verifier(K1), rate_limit=RateLimit(rate=1.0, burst=5.0)
    )
    for i in range(100):
        noisy.observe("m", (i,), ReplicaKey("x"), clock())
    calm.observe("m", (10_000,), ReplicaKey("y"), clock())
    stats = rx.stats()
    assert stats.applied_observe == 6  # five of noisy's, calm's own
    assert stats.dropped_rate_limited == 95
    clock.advance(2.0)
    noisy.observe("m", (500,), ReplicaKey("x"), clock())
    assert rx.stats().applied_observe == 7


def test_signed_transport_guards_any_subject() -> None:
    clock = ManualClock(1000.0)
    hub = InMemoryTransport()
    a = SignedTransport(hub.connect("a"), signer=Signer(K1, origin="a"), clock=clock)
    b = SignedTransport(hub.connect("b"), verifier=Verifier(K1), clock=clock)
    got: list[bytes] = []
    b.subscribe("prefixcache.pin", lambda _s, p: got.append(p))
    pin = b'{"ns":"m","session":"s","deployment":"d1","t":1.0,"origin":"r9"}'
    a.publish("prefixcache.pin", pin)
    hub.connect("x").publish("prefixcache.pin", pin)
    assert len(got) == 1 and json.loads(got[0])["origin"] == "r9"  # the record's own origin
    assert b.dropped["unsigned"] == 1


def test_the_security_page_example_prints_what_it_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "security.md"
    (code,) = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.DOTALL)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<docs/security.md>", "exec"), {"__name__": "__doc_example__"})
    expected = [line[2:] for line in code.splitlines() if line.startswith("# ")]
    assert capsys.readouterr().out.splitlines() == expected
