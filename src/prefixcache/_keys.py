"""Validation of block-hash keys, times, numbers in range and the objects a constructor is
given (callables, transports), and the decay rule, shared by every index and component.

One place says what a valid key is (every element an ``int`` in ``[0, 2**64)``, checked by
type so that ``1.0`` or ``True`` never walks like a stored ``1``) and what a valid time is
(a number, not NaN). Errors are :class:`clusterrouting.InvalidRecordError` naming the field.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from typing import Any, Final

from clusterrouting import InvalidRecordError

#: ``isinstance`` targets are tuples built once: an inline ``int | float`` builds a
#: ``types.UnionType`` on every call (about 2k instructions), and these checks run on the
#: routing hot path.
NUMBER_TYPES: Final = (int, float)

__all__ = [
    "U64",
    "check_amount",
    "check_callable",
    "check_finite",
    "check_key",
    "check_methods",
    "check_number",
    "check_rate",
    "check_time",
    "decay",
    "fast_key_ok",
]

U64 = 1 << 64
"""Block hashes are integers in ``[0, U64)``."""

assert array("Q").itemsize == 8, "array 'Q' must hold exactly the uint64 range"


def check_time(name: str, value: object) -> float:
    """``value`` as a float, or :class:`InvalidRecordError` naming ``name`` if it is not a
    number (bools are not numbers here) or is NaN.

    >>> check_time("now", 3)
    3.0
    """
    if isinstance(value, bool) or not isinstance(value, NUMBER_TYPES) or math.isnan(value):
        raise InvalidRecordError(name, value, "must be a number (seconds), not NaN")
    return float(value)


def _as_float(value: object) -> float:
    """``value`` as a float: NaN for what is not a number (bools included), infinity for an
    int beyond any float."""
    if isinstance(value, NUMBER_TYPES) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    return math.nan


def check_rate(name: str, value: object) -> float | None:
    """``value`` as a finite float > 0 (``None`` stays ``None``), or
    :class:`InvalidRecordError` naming ``name`` (bools, NaN, infinities, ints beyond any
    float, and numbers <= 0 are refused).

    >>> check_rate("rate", 20_000)
    20000.0
    """
    if value is None:
        return None
    rate = _as_float(value)
    if not 0 < rate < math.inf:
        raise InvalidRecordError(name, value, "must be a finite number > 0 or None")
    return rate


def check_finite(name: str, value: object) -> float:
    """``value`` as a finite float, or :class:`InvalidRecordError` naming ``name`` (bools,
    NaN, infinities and ints beyond any float are refused).

    >>> check_finite("sent", -2)
    -2.0
    """
    number = _as_float(value)
    if not math.isfinite(number):
        raise InvalidRecordError(name, value, "must be a finite number")
    return number


def check_number(
    name: str, value: object, lo: float, hi: float = math.inf, *, above: bool = False
) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``above``), or
    :class:`InvalidRecordError` naming ``name`` (bools, NaN, infinities and ints beyond any
    float are refused): a parameter's range, checked when it is given.

    >>> check_number("mean_turns", 1, 1.0), check_number("fill", 0.5, 0.0, 1.0)
    (1.0, 0.5)
    """
    number = _as_float(value)
    if not (math.isfinite(number) and (number > lo if above else number >= lo) and number <= hi):
        if hi == math.inf:
            bound = f"a finite number {'>' if above else '>='} {lo:g}"
        else:
            bound = f"a number in {'(' if above else '['}{lo:g}, {hi:g}]"
        raise InvalidRecordError(name, value, f"must be {bound}")
    return number


def check_callable(name: str, value: object, *, optional: bool = False) -> None:
    """Refuse a ``value`` that is not callable (``None`` passes when ``optional``), naming
    ``name``: a clock or hook found when it is given, not at its first call.

    >>> check_callable("on_report", None, optional=True)
    """
    if not (callable(value) or (optional and value is None)):
        raise InvalidRecordError(name, value, "must be callable" + (" or None" if optional else ""))


def check_methods(
    name: str, value: object, *methods: str, what: str, optional: bool = False
) -> None:
    """Refuse a ``value`` without each of ``methods`` callable (``None`` passes when
    ``optional``), naming ``name``; the reason is ``must be <what>``.

    >>> check_methods("transport", None, "publish", what="a Transport", optional=True)
    """
    if optional and value is None:
        return
    if not all(callable(getattr(value, m, None)) for m in methods):
        raise InvalidRecordError(name, value, f"must be {what}" + (" or None" if optional else ""))


def check_amount(name: str, value: object) -> float:
    """``value`` as a finite float >= 0, or :class:`InvalidRecordError` naming ``name``
    (bools, NaN, infinities, ints beyond any float, and negative numbers are refused).

    >>> check_amount("seconds", 0)
    0.0
    """
    if type(value) is float and 0.0 <= value < math.inf:  # the common case: as it is
        return value
    amount = _as_float(value)
    if not 0 <= amount < math.inf:
        raise InvalidRecordError(name, value, "must be a finite number >= 0")
    return amount


def fast_key_ok(key: Sequence[Any], start: int) -> bool:
    """True when every element of ``key`` is exactly an ``int`` and ``key[start:]`` is in
    ``[0, 2**64)`` (``key[:start]`` equals a stored path, so it is in range): the common
    case, in C-level passes (the range check packs the tail into an unsigned 64-bit
    ``array``, which rejects exactly the out-of-range ints). False means: ask
    :func:`check_key`."""
    n = len(key)
    if list(map(type, key)).count(int) != n:
        return False
    if start >= n:
        return True
    try:
        array("Q", key[start:] if start else key)
    except OverflowError:
        return False
    return True


def check_key(key: Sequence[Any], start: int) -> Sequence[int] | None:
    """Validate ``key``, knowing that ``key[:start]`` equals a stored path: ``None`` if
    every element is an ``int`` in range, a normalised tuple if some are integer-like (numpy
    scalars), else raise.

    Raises:
        InvalidRecordError: an element is not an integer (bools and floats are not) or is
            outside ``[0, 2**64)``.

    >>> check_key((1, 2), 0) is None
    True
    >>> check_key((1, 2.0), 0)
    Traceback (most recent call last):
    ...
    clusterrouting._errors.InvalidRecordError: key=2.0: block hashes must be integers in [0, 2**64)
    """
    if fast_key_ok(key, start):
        return None
    out: list[int] = []
    for h in key:
        if isinstance(h, bool) or not hasattr(h, "__index__"):
            raise InvalidRecordError("key", h, "block hashes must be integers in [0, 2**64)")
        v = h.__index__()
        if not 0 <= v < U64:
            raise InvalidRecordError("key", h, "block hashes must be integers in [0, 2**64)")
        out.append(v)
    return tuple(out)


def decay(x: float) -> float:
    """``0.5 ** x`` for ``x = age / half_life``; ``math.inf`` where that overflows a float
    (``x <= -1024``: an entry more than 1024 half-lives in the future of ``now``), where
    Python's ``**`` would raise ``OverflowError``.

    >>> decay(1.0), decay(-2000.0)
    (0.5, inf)
    """
    return math.inf if x <= -1024.0 else 0.5**x
