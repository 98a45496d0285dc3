"""Config and the Index records: validation, RoutePolicy, validate_thresholds."""

from __future__ import annotations

import math

import attrs
import pytest

import prefixcache
from clusterrouting import ClusterRoutingError, InvalidRecordError
from prefixcache import (
    DEFAULT_CONFIG,
    Candidate,
    Config,
    ConfigError,
    PrefixDecision,
    ReplicaKey,
    RoutePolicy,
    validate_thresholds,
)


def test_defaults_match_spec() -> None:
    c = Config()
    assert c == DEFAULT_CONFIG
    assert (c.policy, c.min_prefix_match, c.balance_abs_threshold, c.balance_rel_threshold) == (
        RoutePolicy.PREFIX_CACHE,
        0.3,
        2,
        1.5,
    )
    assert (c.ttl, c.half_life, c.window_bytes, c.max_depth) == (300.0, 120.0, 256, 64)
    assert (c.pressure_window, c.pressure_scale_threshold) == (60.0, 1)
    assert hash(c) == hash(DEFAULT_CONFIG)
    # The integer fields are ints, not floats that compare equal.
    assert type(c.balance_abs_threshold) is int and type(c.pressure_scale_threshold) is int
    assert type(c.window_bytes) is int and type(c.max_depth) is int


def test_config_is_frozen_and_keyword_only() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        DEFAULT_CONFIG.ttl = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        Config(RoutePolicy.PREFIX_CACHE)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_prefix_match", -0.01),
        ("min_prefix_match", -1e-12),
        ("min_prefix_match", 1.01),
        ("min_prefix_match", 1.0000001),
        ("min_prefix_match", math.nan),
        ("balance_abs_threshold", -1),
        ("balance_rel_threshold", 0.99),
        ("balance_rel_threshold", 0.9999999),
        ("balance_rel_threshold", 0.0),
        ("window_bytes", 0),
        ("window_bytes", -1),
        ("window_bytes", -5),
        ("max_depth", 0),
        ("max_depth", -64),
        ("ttl", 0),
        ("ttl", 0.0),
        ("ttl", -0.0),
        ("ttl", -1.0),
        ("ttl", -300.0),
        ("ttl", math.nan),
        ("policy", "prefix_cache"),
        ("pressure_window", 0.0),
    ],
)
def test_invalid_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**{field: value})  # type: ignore[arg-type]
    assert field in str(info.value)
    assert info.value.field == field


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_prefix_match": 0.0},
        {"min_prefix_match": 1.0},
        {"min_prefix_match": 0},
        {"min_prefix_match": 1},
        {"balance_abs_threshold": 0},
        {"balance_rel_threshold": 1.0},
        {"balance_rel_threshold": 1},
        {"window_bytes": 1, "max_depth": 1},
        {"window_bytes": 1},
        {"max_depth": 1},
        {"ttl": 0.001},
        {"ttl": 1e-9},
        {"half_life": 0.0},  # <= 0 means every live entry weighs 1
        {"half_life": -1.0},
        {"policy": RoutePolicy.DEFAULT},
        {"policy": RoutePolicy.ROUND_ROBIN},
    ],
)
def test_boundary_configs_are_valid(kwargs: dict[str, object]) -> None:
    Config(**kwargs)  # type: ignore[arg-type]


def test_config_error_is_a_value_error_rooted_in_the_package() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, ClusterRoutingError)


@pytest.mark.parametrize("policy", ["", "round_robin", "prefix_cache"])
def test_validate_thresholds_accepts_known_policies(policy: str) -> None:
    # rel is 0 (inherit) or >= 1; abs >= 0; the min match in [0, 1], ends included.
    validate_thresholds(policy, 0, 0, 0.0)
    validate_thresholds(policy, 3, 1.0, 1.0)
    validate_thresholds(policy, 0, 0.0, 1.0)
    validate_thresholds(policy, 5, 1.0, 0.5)
    validate_thresholds(policy, 0, 1, 0)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("prefix-cache", 0, 0, 0.5), "route_policy"),
        (("default", 0, 0, 0.5), "route_policy"),  # "" inherits; "default" is a typo here
        (("Prefix_Cache", 0, 0, 0.5), "route_policy"),  # case matters
        (("round-robin", 0, 0, 0.5), "route_policy"),
        ((" prefix_cache", 0, 0, 0.5), "route_policy"),  # not stripped
        (("", 0, 0, 1.5), "min_prefix_match"),
        (("", 0, 0, 1.01), "min_prefix_match"),
        (("", 0, 0, -0.1), "min_prefix_match"),
        (("", 0, 0, -0.01), "min_prefix_match"),
        (("", -1, 0, 0.5), "balance_abs_threshold"),
        (("", 0, 0.5, 0.5), "balance_rel_threshold"),
        (("", 0, 0.999, 0.5), "balance_rel_threshold"),
        (("", 0, -1, 0.5), "balance_rel_threshold"),
        (("", 0, -1.0, 0.5), "balance_rel_threshold"),
    ],
)
def test_validate_thresholds_rejects(args: tuple[str, int, float, float], field: str) -> None:
    with pytest.raises(ConfigError, match=field) as info:
        validate_thresholds(*args)
    assert isinstance(info.value, ValueError)


def test_route_policy_parse_str_resolve() -> None:
    assert RoutePolicy.parse("round_robin") is RoutePolicy.ROUND_ROBIN
    assert RoutePolicy.parse("prefix_cache") is RoutePolicy.PREFIX_CACHE
    for s in ("", "default", "Round_Robin", "typo"):
        assert RoutePolicy.parse(s) is RoutePolicy.DEFAULT
    assert [int(p) for p in RoutePolicy] == [0, 1, 2]
    assert [str(p) for p in RoutePolicy] == ["default", "round_robin", "prefix_cache"]
    assert RoutePolicy.DEFAULT.resolve(RoutePolicy.ROUND_ROBIN) is RoutePolicy.ROUND_ROBIN
    assert RoutePolicy.PREFIX_CACHE.resolve(RoutePolicy.ROUND_ROBIN) is RoutePolicy.PREFIX_CACHE


def test_route_policy_is_an_int_enum() -> None:
    assert RoutePolicy(0) is RoutePolicy.DEFAULT
    assert int(RoutePolicy.ROUND_ROBIN) == 1 and int(RoutePolicy.PREFIX_CACHE) == 2
    assert isinstance(RoutePolicy.DEFAULT, int)


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("round_robin", RoutePolicy.ROUND_ROBIN),
        ("prefix_cache", RoutePolicy.PREFIX_CACHE),
        ("", RoutePolicy.DEFAULT),
        ("default", RoutePolicy.DEFAULT),
        ("prefix-cache", RoutePolicy.DEFAULT),
        ("random", RoutePolicy.DEFAULT),
    ],
)
def test_route_policy_parse_table(text: str, policy: RoutePolicy) -> None:
    # Known names map; anything else (including "") is DEFAULT.
    assert RoutePolicy.parse(text) is policy


def test_route_policy_str_and_format_agree() -> None:
    # An f-string or %s gives the same text as str() (what a user formatting a policy
    # expects; Go's %s/%v use String()), and parse() reads it back.
    names = {
        RoutePolicy.DEFAULT: "default",
        RoutePolicy.ROUND_ROBIN: "round_robin",
        RoutePolicy.PREFIX_CACHE: "prefix_cache",
    }
    for p, name in names.items():
        assert str(p) == name
        assert f"{p}" == name and "%s" % p == name  # noqa: UP031
        assert RoutePolicy.parse(str(p)) is (p if p else RoutePolicy.DEFAULT)


def test_route_policy_resolve_every_pair() -> None:
    # resolve(global_policy) is global_policy when the policy is DEFAULT, else itself.
    for p in RoutePolicy:
        for g in RoutePolicy:
            assert p.resolve(g) is (g if p is RoutePolicy.DEFAULT else p)


def test_replica_key_positional_hashable_ordered() -> None:
    a0, a1, b0 = ReplicaKey("a"), ReplicaKey("a", 1), ReplicaKey(node_id="b", replica=0)
    assert a0.replica == 0
    assert sorted([b0, a1, a0]) == [a0, a1, b0]
    assert len({a0, ReplicaKey("a", 0), a1}) == 2
    assert ReplicaKey("a") == ReplicaKey("a", 0)
    assert hash(ReplicaKey("a")) == hash(ReplicaKey("a", 0))
    # Ordered by node id, then replica.
    assert ReplicaKey("a", 5) < ReplicaKey("b", 0) < ReplicaKey("b", 1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a0.replica = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"node_id": 3}, "node_id"),
        ({"node_id": "a", "replica": -1}, "replica"),
        ({"node_id": "a", "replica": 1.0}, "replica"),
        ({"node_id": "a", "replica": True}, "replica"),
    ],
)
def test_replica_key_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRecordError) as info:
        ReplicaKey(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_candidate_and_decision_records() -> None:
    k = ReplicaKey("n")
    assert Candidate(k).in_flight == 0
    assert Candidate(k, 4) == Candidate(key=k, in_flight=4)
    with pytest.raises(InvalidRecordError, match="in_flight"):
        Candidate(k, -1)
    with pytest.raises(InvalidRecordError, match="key"):
        Candidate("n")  # type: ignore[arg-type]
    d = PrefixDecision(k, 0.5, [k])
    assert d.has_hot and d.cold_order == (k,)
    other = ReplicaKey("o")
    d = PrefixDecision(k, 0.5, (other, k))
    assert d.hot == k and d.match_ratio == 0.5 and d.cold_order == (other, k)
    assert not PrefixDecision(None, 0.0, ()).has_hot
    for bad in (-0.1, 1.1, math.nan):
        with pytest.raises(InvalidRecordError, match="match_ratio"):
            PrefixDecision(k, bad, ())
    with pytest.raises(InvalidRecordError, match="cold_order"):
        PrefixDecision(None, 0.0, ("n",))  # type: ignore[arg-type]
    with pytest.raises(InvalidRecordError, match="hot"):
        PrefixDecision("n", 0.0, ())  # type: ignore[arg-type]


def test_public_all_is_sorted_and_resolvable() -> None:
    names = prefixcache.__all__
    assert list(names) == sorted(names)
    for name in names:
        assert getattr(prefixcache, name) is not None
