"""Sync events: the reference wire format, and defensive decoding of network input."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterrouting import ClusterRoutingError, InvalidRecordError
from prefixcache import (
    INVALIDATE_SUBJECT,
    MAX_EVENT_BYTES,
    MAX_EVENT_CHAIN,
    OBSERVE_SUBJECT,
    EventDecodeError,
    InvalidateEvent,
    ObserveEvent,
    ReplicaKey,
    decode_event,
)

U64_MAX = 2**64 - 1


def test_subjects_are_the_reference_subjects() -> None:
    assert OBSERVE_SUBJECT == "prefixcache.observe"
    assert INVALIDATE_SUBJECT == "prefixcache.invalidate"


def test_observe_encodes_reference_keys_and_integer_hashes() -> None:
    e = ObserveEvent(model="llama", chain=(1, U64_MAX), node_id="n1", replica=2)
    # Counterfactual: hashes as strings or floats would break Go's []uint64 decoding.
    assert e.encode() == (
        b'{"model":"llama","chain":[1,18446744073709551615],"node_id":"n1","replica":2}'
    )
    assert json.loads(e.encode()) == {
        "model": "llama",
        "chain": [1, U64_MAX],
        "node_id": "n1",
        "replica": 2,
    }


def test_invalidate_node_sends_replica_minus_one() -> None:
    e = InvalidateEvent.for_node("m", "n1")
    assert json.loads(e.encode()) == {"model": "m", "chain": [], "node_id": "n1", "replica": -1}
    assert e.whole_node and e.key is None
    k = InvalidateEvent.for_key("m", ReplicaKey("n1", 3))
    assert not k.whole_node and k.key == ReplicaKey("n1", 3)


def test_decode_accepts_what_a_go_router_sends() -> None:
    # Go's encoding/json: case-insensitive keys, unknown keys ignored, null slices.
    e = ObserveEvent.decode(b'{"Model":"m","Chain":[5,6],"NODE_ID":"n","replica":1,"x":{}}')
    assert e == ObserveEvent(model="m", chain=(5, 6), node_id="n", replica=1)
    assert ObserveEvent.decode(b'{"model":"m","chain":[5],"node_id":"n"}').replica == 0
    inv = InvalidateEvent.decode(b'{"model":"m","chain":null,"node_id":"n","replica":-1}')
    assert inv.whole_node
    assert InvalidateEvent.decode(b'{"model":"m","node_id":"n","replica":-7}').whole_node
    # The last duplicate wins, as in Go.
    assert ObserveEvent.decode(b'{"chain":[1],"node_id":"a","node_id":"b"}').node_id == "b"


def test_unicode_names_round_trip() -> None:
    e = ObserveEvent(model="модель/日本", chain=(3,), node_id="nœud")
    assert ObserveEvent.decode(e.encode()) == e


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"", "<payload>"),
        (b"\xff\xfe", "<payload>"),
        (b"[1,2]", "<payload>"),
        (b'{"chain":[1],"node_id":"n","x":NaN}', "<payload>"),
        (b'{"model":"m","chain":[],"node_id":"n"}', "chain"),
        (b'{"model":"m","node_id":"n"}', "chain"),
        (b'{"model":"m","chain":"1,2","node_id":"n"}', "chain"),
        (b'{"model":"m","chain":[-1],"node_id":"n"}', "chain"),
        (b'{"model":"m","chain":[18446744073709551616],"node_id":"n"}', "chain"),
        (b'{"model":"m","chain":[1.0],"node_id":"n"}', "chain"),
        (b'{"model":"m","chain":[true],"node_id":"n"}', "chain"),
        (b'{"model":"m","chain":["1"],"node_id":"n"}', "chain"),
        (b'{"model":"m","chain":[1],"node_id":""}', "node_id"),
        (b'{"model":"m","chain":[1]}', "node_id"),
        (b'{"model":"m","chain":[1],"node_id":7}', "node_id"),
        (b'{"model":3,"chain":[1],"node_id":"n"}', "model"),
        (b'{"model":"m","chain":[1],"node_id":"n","replica":-1}', "replica"),
        (b'{"model":"m","chain":[1],"node_id":"n","replica":true}', "replica"),
        (b'{"model":"m","chain":[1],"node_id":"n","replica":1.5}', "replica"),
        (b'{"model":"m","chain":[1],"node_id":"n","replica":9223372036854775808}', "replica"),
    ],
)
def test_malformed_observe_is_rejected_with_a_typed_error(payload: bytes, field: str) -> None:
    with pytest.raises(EventDecodeError) as info:
        ObserveEvent.decode(payload)
    assert info.value.field == field
    assert isinstance(info.value, ClusterRoutingError) and isinstance(info.value, ValueError)
    assert field in str(info.value)


def test_caps_on_chain_length_payload_size_and_names() -> None:
    ok = ObserveEvent(model="m", chain=range(MAX_EVENT_CHAIN), node_id="n")
    assert len(ok.encode()) <= MAX_EVENT_BYTES
    assert ObserveEvent.decode(ok.encode()) == ok
    too_long = json.dumps(
        {"model": "m", "chain": list(range(MAX_EVENT_CHAIN + 1)), "node_id": "n"}
    ).encode()
    with pytest.raises(EventDecodeError) as info:
        ObserveEvent.decode(too_long)
    assert info.value.field == "chain"
    huge = b'{"model":"m","chain":[1],"node_id":"n","pad":"' + b"x" * MAX_EVENT_BYTES + b'"}'
    with pytest.raises(EventDecodeError) as info:
        ObserveEvent.decode(huge)
    assert info.value.field == "<payload>"
    with pytest.raises(EventDecodeError) as info:
        ObserveEvent.decode(json.dumps({"chain": [1], "node_id": "n" * 2000}).encode())
    assert info.value.field == "node_id"
    deep = b"[" * 50_000 + b"]" * 50_000
    with pytest.raises(EventDecodeError):
        ObserveEvent.decode(deep)


def test_decode_event_dispatches_by_subject_and_rejects_unknown_subjects() -> None:
    e = ObserveEvent(model="m", chain=(1,), node_id="n")
    assert decode_event(OBSERVE_SUBJECT, e.encode()) == e
    with pytest.raises(EventDecodeError) as info:
        decode_event("prefixcache.other", e.encode())
    assert info.value.field == "<subject>"


def test_construction_validates_fields() -> None:
    with pytest.raises(InvalidRecordError, match="chain"):
        ObserveEvent(model="m", chain=(), node_id="n")
    with pytest.raises(InvalidRecordError, match="chain"):
        ObserveEvent(model="m", chain=(2**64,), node_id="n")
    with pytest.raises(InvalidRecordError, match="node_id"):
        InvalidateEvent(model="m", node_id="")
    with pytest.raises(InvalidRecordError, match="replica"):
        ObserveEvent(model="m", chain=(1,), node_id="n", replica=-1)


names = st.text(max_size=20)
hashes = st.integers(min_value=0, max_value=U64_MAX)


@given(
    model=names.filter(lambda s: s.isprintable()),
    chain=st.lists(hashes, min_size=1, max_size=70),
    node_id=st.text(min_size=1, max_size=20, alphabet=st.characters(codec="utf-8")),
    replica=st.integers(min_value=0, max_value=2**63 - 1),
)
def test_observe_round_trips(model: str, chain: list[int], node_id: str, replica: int) -> None:
    e = ObserveEvent(model=model, chain=chain, node_id=node_id, replica=replica)
    assert ObserveEvent.decode(e.encode()) == e
    assert decode_event(e.subject, e.encode()) == e


@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_decode_error(payload: bytes) -> None:
    for subject in (OBSERVE_SUBJECT, INVALIDATE_SUBJECT):
        with contextlib.suppress(EventDecodeError):
            decode_event(subject, payload)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(["model", "chain", "node_id", "replica", "Chain", "extra"]), json_values
    )
)
def test_wrongly_typed_objects_are_rejected_or_valid(doc: dict[str, object]) -> None:
    payload = json.dumps(doc).encode()
    for subject in (OBSERVE_SUBJECT, INVALIDATE_SUBJECT):
        try:
            e = decode_event(subject, payload)
        except EventDecodeError:
            continue
        # Whatever decodes is a valid event and survives re-encoding unchanged.
        assert decode_event(subject, e.encode()) == e
        if isinstance(e, ObserveEvent):
            assert e.chain and all(0 <= h <= U64_MAX for h in e.chain)
        assert e.node_id
