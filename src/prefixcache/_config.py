"""Configuration of prefix-cache routing: :class:`Config`, :class:`RoutePolicy`, overrides."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

import attrs

from clusterrouting import ClusterRoutingError

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_MAX_MODELS",
    "Config",
    "ConfigError",
    "RoutePolicy",
    "validate_thresholds",
]

DEFAULT_MAX_ENTRIES = 250_000
"""Default cap on one model's index entries (see :class:`Config`)."""
DEFAULT_MAX_MODELS = 4
"""Default cap on the models an index holds a tree for (see :class:`Config`)."""


class ConfigError(ClusterRoutingError, ValueError):
    """A configuration value is invalid. The message names the snake_case field and value."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={value!r}: {reason}")


class RoutePolicy(enum.IntEnum):
    """How a model's requests are routed.

    ``DEFAULT`` (0) inherits the global policy; ``ROUND_ROBIN`` (1) ignores the cache;
    ``PREFIX_CACHE`` (2) routes by prefix-cache affinity.

    >>> str(RoutePolicy.parse("round_robin"))
    'round_robin'
    >>> RoutePolicy.parse("typo") is RoutePolicy.DEFAULT
    True
    >>> RoutePolicy.DEFAULT.resolve(RoutePolicy.PREFIX_CACHE) is RoutePolicy.PREFIX_CACHE
    True
    """

    DEFAULT = 0
    ROUND_ROBIN = 1
    PREFIX_CACHE = 2

    @classmethod
    def parse(cls, s: str) -> RoutePolicy:
        """Map ``"round_robin"`` / ``"prefix_cache"`` (exact) to their policy; anything
        else, ``""`` and ``"default"`` included, is :attr:`DEFAULT`. Never raises."""
        if s == "round_robin":
            return cls.ROUND_ROBIN
        if s == "prefix_cache":
            return cls.PREFIX_CACHE
        return cls.DEFAULT

    def __str__(self) -> str:
        return _POLICY_NAMES[self]

    def resolve(self, global_policy: RoutePolicy) -> RoutePolicy:
        """``global_policy`` when this is :attr:`DEFAULT`, else this policy."""
        return global_policy if self is RoutePolicy.DEFAULT else self


_POLICY_NAMES = {
    RoutePolicy.DEFAULT: "default",
    RoutePolicy.ROUND_ROBIN: "round_robin",
    RoutePolicy.PREFIX_CACHE: "prefix_cache",
}
_OVERRIDE_POLICIES = ("", "round_robin", "prefix_cache")


def _number(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(field, value, "must be a number")
    if math.isnan(value):
        raise ConfigError(field, value, "must not be NaN")
    return float(value)


def _integer(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, value, "must be an int")
    return value


def _check_policy(_i: object, _a: object, value: object) -> None:
    if not isinstance(value, RoutePolicy):
        raise ConfigError("policy", value, "must be a RoutePolicy")


def _check_min_match(_i: object, _a: object, value: object) -> None:
    if not 0.0 <= _number("min_prefix_match", value) <= 1.0:
        raise ConfigError("min_prefix_match", value, "must be in [0, 1]")


def _check_abs(_i: object, _a: object, value: object) -> None:
    if _integer("balance_abs_threshold", value) < 0:
        raise ConfigError("balance_abs_threshold", value, "must be >= 0")


def _check_rel(_i: object, _a: object, value: object) -> None:
    if _number("balance_rel_threshold", value) < 1.0:
        raise ConfigError("balance_rel_threshold", value, "must be >= 1")


def _check_ttl(_i: object, _a: object, value: object) -> None:
    if _number("ttl", value) <= 0.0:
        raise ConfigError("ttl", value, "must be > 0 (seconds)")


def _check_half_life(_i: object, _a: object, value: object) -> None:
    _number("half_life", value)


def _check_positive_int(field: str) -> Callable[[object, object, object], None]:
    def check(_i: object, _a: object, value: object) -> None:
        if _integer(field, value) <= 0:
            raise ConfigError(field, value, "must be > 0")

    return check


def _check_cap(field: str) -> Callable[[object, object, object], None]:
    def check(_i: object, _a: object, value: object) -> None:
        if _integer(field, value) < 0:
            raise ConfigError(field, value, "must be >= 0 (0: no cap)")

    return check


def _check_window(_i: object, _a: object, value: object) -> None:
    if _number("pressure_window", value) <= 0.0:
        raise ConfigError("pressure_window", value, "must be > 0 (seconds)")


def _check_scale(_i: object, _a: object, value: object) -> None:
    if _integer("pressure_scale_threshold", value) < 0:
        raise ConfigError("pressure_scale_threshold", value, "must be >= 0")


@attrs.frozen(kw_only=True)
class Config:
    """Prefix-cache routing configuration (times in seconds).

    Attributes:
        policy: the global :class:`RoutePolicy`.
        min_prefix_match: least matched fraction of a chain for the hot replica to win, [0, 1].
        balance_abs_threshold: absolute in-flight slack over the least loaded replica (>= 0).
        balance_rel_threshold: relative in-flight factor over the least loaded replica (>= 1).
        ttl: an index entry older than this is expired (> 0; age == ttl is still live).
        half_life: cache weight half-life; ``<= 0`` weighs every live entry 1.
        window_bytes: prompt bytes per chain block (> 0).
        max_depth: most blocks hashed per prompt (> 0).
        pressure_window: forced-disturb counting window (> 0).
        pressure_scale_threshold: disturb count at which the host should scale up (>= 0).
        max_entries: most entries (chain blocks with an owner, expired but unswept ones
            included) one model's tree holds (>= 0; 0: no cap). An observe that would
            exceed it evicts entries least recently seen first -- ancestors before
            descendants on equal ``last_seen``, then older observes first -- until the tree
            holds exactly ``max_entries``.
        max_models: most models an index holds a tree for at once (>= 0; 0: no cap). An
            observe that would create a tree beyond it stores nothing and returns
            ``False`` (counted by ``Index.refused_observes``); a model's tree is dropped,
            freeing its place, once an evict or invalidation leaves it empty.

    The defaults bound an index to ``max_models * max_entries`` (1,000,000) entries: one
    model's tree holds a whole working set of the bundled conversation trace (183,000
    entries at a 300 s ttl) without evicting. At the 135 bytes an entry measured on that
    trace (``make bench``), 1,000,000 entries are about 130 MiB on the ``dict`` backend;
    a flood where every entry comes from its own one-block
    observe (the costliest shape) costs about 1.5 KiB an entry, so a deployment exposed to
    untrusted writers lowers ``max_entries`` (docs/security.md).

    Raises:
        ConfigError: a value is out of range, NaN or of the wrong type; the message contains
            the snake_case field name.

    >>> Config().ttl
    300.0
    >>> Config(ttl=0)
    Traceback (most recent call last):
    ...
    prefixcache._config.ConfigError: ttl=0: must be > 0 (seconds)
    """

    policy: RoutePolicy = attrs.field(default=RoutePolicy.PREFIX_CACHE, validator=_check_policy)
    min_prefix_match: float = attrs.field(default=0.3, validator=_check_min_match)
    balance_abs_threshold: int = attrs.field(default=2, validator=_check_abs)
    balance_rel_threshold: float = attrs.field(default=1.5, validator=_check_rel)
    ttl: float = attrs.field(default=300.0, validator=_check_ttl)
    half_life: float = attrs.field(default=120.0, validator=_check_half_life)
    window_bytes: int = attrs.field(default=256, validator=_check_positive_int("window_bytes"))
    max_depth: int = attrs.field(default=64, validator=_check_positive_int("max_depth"))
    pressure_window: float = attrs.field(default=60.0, validator=_check_window)
    pressure_scale_threshold: int = attrs.field(default=1, validator=_check_scale)
    max_entries: int = attrs.field(default=DEFAULT_MAX_ENTRIES, validator=_check_cap("max_entries"))
    max_models: int = attrs.field(default=DEFAULT_MAX_MODELS, validator=_check_cap("max_models"))


DEFAULT_CONFIG = Config()


def validate_thresholds(
    route_policy: str,
    balance_abs_threshold: int,
    balance_rel_threshold: float,
    min_prefix_match: float,
) -> None:
    """Check a model's per-model routing overrides.

    Rules: ``route_policy`` is one of ``""``, ``"round_robin"``, ``"prefix_cache"`` (typos are
    errors); ``min_prefix_match`` in [0, 1]; ``balance_abs_threshold >= 0``;
    ``balance_rel_threshold`` is 0 (inherit) or >= 1. Numeric overrides of 0 mean "inherit".

    Raises:
        ConfigError: naming the offending field (``route_policy``, ``min_prefix_match``,
            ``balance_abs_threshold`` or ``balance_rel_threshold``) and value.

    >>> validate_thresholds("prefix_cache", 0, 0, 0.5)
    >>> validate_thresholds("prefix-cache", 0, 0, 0.5)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    prefixcache._config.ConfigError: route_policy='prefix-cache': must be one of ...
    """
    if route_policy not in _OVERRIDE_POLICIES:
        raise ConfigError(
            "route_policy", route_policy, "must be one of '', 'round_robin', 'prefix_cache'"
        )
    if not 0.0 <= _number("min_prefix_match", min_prefix_match) <= 1.0:
        raise ConfigError("min_prefix_match", min_prefix_match, "must be in [0, 1]")
    if _number("balance_abs_threshold", balance_abs_threshold) < 0:
        raise ConfigError("balance_abs_threshold", balance_abs_threshold, "must be >= 0")
    rel = _number("balance_rel_threshold", balance_rel_threshold)
    if rel != 0.0 and rel < 1.0:
        raise ConfigError("balance_rel_threshold", balance_rel_threshold, "must be 0 or >= 1")
