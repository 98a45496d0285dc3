"""pick_best_replica, pick_with_affinity, build_candidates, the load guard."""

from __future__ import annotations

import pytest

from clusterrouting import (
    DEFAULT_AFFINITY_SLACK,
    NODE_ONLINE_WINDOW,
    InvalidRecordError,
    NodeData,
    ReplicaCandidate,
    build_candidates,
    pick_best_replica,
    pick_with_affinity,
    within_load_guard,
)


def rc(
    node_id: str,
    in_flight: int = 0,
    last_used: float | None = None,
    vram: int = 0,
    replica_index: int = 0,
) -> ReplicaCandidate:
    return ReplicaCandidate(
        node_id=node_id,
        in_flight=in_flight,
        last_used=last_used,
        available_vram=vram,
        replica_index=replica_index,
    )


class TestPickBestReplica:
    def test_empty_is_none(self) -> None:
        assert pick_best_replica([]) is None
        assert pick_best_replica(()) is None

    def test_tier1_fewest_in_flight_wins_over_everything_else(self) -> None:
        # Without tier 1 first, the older / bigger-VRAM replica "a" would win.
        a = rc("a", in_flight=2, last_used=None, vram=10**12)
        b = rc("b", in_flight=1, last_used=100.0, vram=0)
        assert pick_best_replica([a, b]) is b

    def test_tier2_oldest_last_used_breaks_in_flight_tie(self) -> None:
        # Counterfactual: with VRAM deciding, "a" (more VRAM) would take every request.
        a = rc("a", in_flight=1, last_used=50.0, vram=10**12)
        b = rc("b", in_flight=1, last_used=10.0, vram=0)
        assert pick_best_replica([a, b]) is b

    def test_never_used_is_oldest(self) -> None:
        a = rc("a", last_used=0.0)
        b = rc("b", last_used=None)
        c = rc("c", last_used=-1e9)
        assert pick_best_replica([a, b, c]) is b

    def test_tier3_most_vram_breaks_remaining_tie(self) -> None:
        a = rc("a", in_flight=0, last_used=5.0, vram=1)
        b = rc("b", in_flight=0, last_used=5.0, vram=2)
        assert pick_best_replica([a, b]) is b

    def test_full_tie_keeps_first_candidate(self) -> None:
        a = rc("z", in_flight=1, last_used=3.0, vram=7)
        b = rc("a", in_flight=1, last_used=3.0, vram=7)
        assert pick_best_replica([a, b]) is a
        assert pick_best_replica([b, a]) is b

    def test_returns_the_element_itself_not_an_equal_copy(self) -> None:
        a = rc("a")
        a2 = rc("a")
        assert pick_best_replica([a, a2]) is a

    def test_take_turns_when_host_refreshes_last_used(self) -> None:
        # The reason for tier 2: refreshing last_used on each pick rotates equal replicas.
        cands = {n: rc(n, vram=v) for n, v in (("a", 3), ("b", 2), ("c", 1))}
        picks = []
        for t in range(6):
            best = pick_best_replica(list(cands.values()))
            assert best is not None
            picks.append(best.node_id)
            cands[best.node_id] = rc(best.node_id, last_used=float(t), vram=best.available_vram)
        assert picks == ["a", "b", "c", "a", "b", "c"]


class TestPickWithAffinity:
    def test_empty_is_none_even_with_preferred(self) -> None:
        assert pick_with_affinity([], "a") is None
        assert pick_with_affinity([], None) is None

    @pytest.mark.parametrize("preferred", [None, ""])
    def test_no_preference_is_pick_best(self, preferred: str | None) -> None:
        cands = [rc("a", 2), rc("b", 0), rc("c", 0, last_used=1.0)]
        assert pick_with_affinity(cands, preferred) is pick_best_replica(cands)

    def test_preferred_within_slack_is_kept(self) -> None:
        a = rc("a", in_flight=3)
        b = rc("b", in_flight=1)
        # 3 <= 1 + 2: exactly at the limit is still within.
        assert pick_with_affinity([a, b], "a") is a

    def test_preferred_one_over_slack_falls_back(self) -> None:
        a = rc("a", in_flight=4)
        b = rc("b", in_flight=1)
        assert pick_with_affinity([a, b], "a") is b

    def test_min_in_flight_is_over_all_candidates(self) -> None:
        # The minimum includes the preferred replica itself and every other candidate.
        a = rc("a", in_flight=2)
        b = rc("b", in_flight=0)
        c = rc("c", in_flight=5)
        assert pick_with_affinity([a, b, c], "a", slack=2) is a
        assert pick_with_affinity([a, b, c], "a", slack=1) is b

    def test_unknown_preferred_falls_back(self) -> None:
        cands = [rc("a", 1), rc("b", 0)]
        assert pick_with_affinity(cands, "zzz") is cands[1]

    def test_last_duplicate_preferred_is_tested_against_slack(self) -> None:
        # Two replicas of node "a": the first is idle, the last is overloaded. The last one
        # is the one tested, so the pick falls back to the best replica (the idle "a"/"b").
        first = rc("a", in_flight=0, last_used=5.0, replica_index=0)
        b = rc("b", in_flight=0, last_used=1.0)
        last = rc("a", in_flight=3, replica_index=1)
        assert pick_with_affinity([first, b, last], "a") is b
        # And when the last one is within the slack it is returned, not the first.
        last_ok = rc("a", in_flight=2, replica_index=1)
        assert pick_with_affinity([first, b, last_ok], "a") is last_ok

    def test_slack_zero_requires_preferred_to_be_least_loaded(self) -> None:
        a = rc("a", in_flight=1)
        b = rc("b", in_flight=1, last_used=0.0)
        assert pick_with_affinity([b, a], "a", slack=0) is a
        a2 = rc("a", in_flight=2)
        assert pick_with_affinity([b, a2], "a", slack=0) is b

    def test_default_slack_is_two(self) -> None:
        assert DEFAULT_AFFINITY_SLACK == 2

    @pytest.mark.parametrize("slack", [-1, 1.5, True])
    def test_bad_slack_is_a_typed_error_naming_it(self, slack: object) -> None:
        with pytest.raises(InvalidRecordError, match="slack"):
            pick_with_affinity([rc("a")], "a", slack=slack)  # type: ignore[arg-type]


class TestLoadGuard:
    def test_absolute_slack_boundary(self) -> None:
        assert within_load_guard(5, 3, slack=2)
        assert not within_load_guard(6, 3, slack=2)

    def test_relative_factor_boundary(self) -> None:
        # in_flight <= min * factor + 1: 4 * 1.5 + 1 == 7.
        assert within_load_guard(7, 4, slack=10, factor=1.5)
        assert not within_load_guard(8, 4, slack=10, factor=1.5)

    def test_relative_factor_at_zero_minimum_allows_one(self) -> None:
        assert within_load_guard(1, 0, slack=5, factor=1.5)
        assert not within_load_guard(2, 0, slack=5, factor=1.5)

    def test_both_conditions_must_hold(self) -> None:
        assert not within_load_guard(4, 1, slack=2, factor=100.0)

    @pytest.mark.parametrize(
        ("slack", "factor", "field"),
        [(-1, None, "slack"), (1, 0.5, "factor"), (1, float("nan"), "factor")],
    )
    def test_bad_arguments(self, slack: int, factor: float | None, field: str) -> None:
        with pytest.raises(InvalidRecordError, match=field):
            within_load_guard(0, 0, slack=slack, factor=factor)


class TestBuildCandidates:
    NOW = 1_000_000.0

    def node(
        self, id_: str, age: float | None = 0.0, models: tuple[str, ...] = (), vram: int = 0
    ) -> NodeData:
        return NodeData(
            id=id_,
            name=f"n-{id_}",
            tunnel_address=f"addr-{id_}",
            last_seen=None if age is None else self.NOW - age,
            models=models,
            available_vram=vram,
        )

    def test_filters_offline_and_model_and_sorts_by_id(self) -> None:
        nodes = [
            self.node("c", vram=3),
            self.node("a", models=("m1",), vram=1),
            self.node("b", models=("m2",)),
            self.node("d", age=NODE_ONLINE_WINDOW),  # exactly 40 s old: offline
            self.node("e", age=None),  # never seen: offline
            self.node("f", age=-5.0),  # future last_seen (skew): online
        ]
        out = build_candidates(nodes, {"a": 4}, now=self.NOW, model="m1")
        assert [c.node_id for c in out] == ["a", "c", "f"]
        assert out[0] == ReplicaCandidate(
            node_id="a", address="addr-a", in_flight=4, available_vram=1
        )
        assert out[1].in_flight == 0 and out[1].available_vram == 3
        assert all(c.last_used is None and c.replica_index == 0 for c in out)

    def test_empty_model_means_no_filter(self) -> None:
        nodes = [self.node("b", models=("x",)), self.node("a", models=("y",))]
        assert [c.node_id for c in build_candidates(nodes, {}, now=self.NOW)] == ["a", "b"]

    def test_sorted_output_gives_full_tie_to_smallest_id(self) -> None:
        nodes = [self.node("b"), self.node("a")]
        best = pick_best_replica(build_candidates(nodes, {}, now=self.NOW))
        assert best is not None and best.node_id == "a"

    def test_negative_in_flight_is_rejected(self) -> None:
        with pytest.raises(InvalidRecordError, match="in_flight"):
            build_candidates([self.node("a")], {"a": -1}, now=self.NOW)

    def test_accepts_any_iterable(self) -> None:
        out = build_candidates(iter([self.node("a")]), {}, now=self.NOW)
        assert len(out) == 1
