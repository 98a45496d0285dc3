"""clusterrouting records: validation, online window, model filter."""

from __future__ import annotations

import math

import attrs
import pytest

from clusterrouting import (
    NODE_ONLINE_WINDOW,
    ClusterRoutingError,
    InvalidRecordError,
    NodeData,
    ReplicaCandidate,
)


class TestReplicaCandidate:
    def test_defaults(self) -> None:
        c = ReplicaCandidate(node_id="a")
        assert (c.address, c.replica_index, c.in_flight, c.last_used, c.available_vram) == (
            "",
            0,
            0,
            None,
            0,
        )

    def test_frozen_and_keyword_only(self) -> None:
        c = ReplicaCandidate(node_id="a")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            c.in_flight = 3  # type: ignore[misc]
        with pytest.raises(TypeError):
            ReplicaCandidate("a")  # type: ignore[misc]

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("in_flight", -1),
            ("available_vram", -1),
            ("replica_index", -1),
            ("in_flight", 1.5),
            ("in_flight", True),
            ("last_used", math.nan),
            ("last_used", math.inf),
            ("last_used", "yesterday"),
            ("address", 5),
        ],
    )
    def test_invalid_fields_raise_typed_error_naming_field_and_value(
        self, field: str, value: object
    ) -> None:
        with pytest.raises(InvalidRecordError) as info:
            ReplicaCandidate(node_id="a", **{field: value})
        assert info.value.field == field
        assert field in str(info.value) and repr(value) in str(info.value)
        assert isinstance(info.value, ClusterRoutingError)

    def test_non_string_id_is_both_type_and_value_error(self) -> None:
        with pytest.raises(TypeError, match="node_id"):
            ReplicaCandidate(node_id=7)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="node_id"):
            ReplicaCandidate(node_id=None)  # type: ignore[arg-type]

    def test_evolve_revalidates(self) -> None:
        c = ReplicaCandidate(node_id="a")
        assert attrs.evolve(c, in_flight=2).in_flight == 2
        with pytest.raises(InvalidRecordError):
            attrs.evolve(c, in_flight=-2)


class TestNodeData:
    def test_window_is_forty_seconds(self) -> None:
        assert NODE_ONLINE_WINDOW == 40.0

    def test_exactly_forty_seconds_old_is_offline(self) -> None:
        n = NodeData(id="a", last_seen=1000.0)
        assert n.is_online_at(1039.999999)
        assert not n.is_online_at(1040.0)  # strict: < 40, not <= 40
        assert not n.is_online_at(5000.0)

    def test_future_last_seen_is_online(self) -> None:
        assert NodeData(id="a", last_seen=2000.0).is_online_at(1000.0)

    def test_never_seen_is_offline(self) -> None:
        assert not NodeData(id="a").is_online_at(0.0)
        assert not NodeData(id="a", last_seen=None).is_online_at(1e9)

    def test_serves_model(self) -> None:
        n = NodeData(models=("llama", "qwen"))
        assert n.serves_model("llama")
        assert not n.serves_model("Llama")  # exact match, case-sensitive
        assert not n.serves_model("mistral")
        assert n.serves_model("")  # empty request model: no filter
        assert NodeData().serves_model("anything")  # empty models: unknown, eligible

    def test_models_list_is_stored_as_tuple(self) -> None:
        assert NodeData(models=["a", "b"]).models == ("a", "b")  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("id", 3),
            ("name", None),
            ("available_vram", -5),
            ("available_vram", 2**64),
            ("last_seen", math.nan),
            ("models", "llama"),
            ("models", ("a", 3)),
            ("models", 42),
        ],
    )
    def test_invalid_fields(self, field: str, value: object) -> None:
        with pytest.raises(InvalidRecordError) as info:
            NodeData(**{field: value})
        assert info.value.field == field
