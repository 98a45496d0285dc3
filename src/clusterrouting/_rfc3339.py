"""RFC 3339 timestamps exactly as Go's ``time.Time`` writes and reads them in JSON.

Times are carried as float seconds since the Unix epoch (UTC). On the wire they have
nanosecond resolution; encoding picks the nanosecond nearest to the float, so
``parse(format(t)) == t`` for every float ``t`` with ``abs(t) >= 2**23`` (97 days from the epoch:
any real wall-clock time), because float spacing there exceeds a nanosecond. Nearer the
epoch, sub-nanosecond digits are rounded away.
"""

from __future__ import annotations

import datetime as _dt
import re
from decimal import Decimal
from fractions import Fraction

__all__ = ["GO_ZERO_TIME", "MAX_TIME", "MIN_TIME", "format_rfc3339", "parse_rfc3339"]

_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_NS = 1_000_000_000
GO_ZERO_TIME = "0001-01-01T00:00:00Z"
#: Seconds of 0001-01-01T00:00:00Z (Go's zero time, which means "never").
MIN_TIME = float((_dt.date(1, 1, 1).toordinal() - _EPOCH_ORDINAL) * 86400)
#: Seconds of 10000-01-01T00:00:00Z (first instant RFC 3339 cannot write).
MAX_TIME = float((_dt.date(9999, 12, 31).toordinal() + 1 - _EPOCH_ORDINAL) * 86400)

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def parse_rfc3339(text: str) -> int | None:
    """Parse an RFC 3339 timestamp into integer nanoseconds since the epoch.

    Returns ``None`` for Go's zero time (``0001-01-01T00:00:00Z`` in any offset form that
    denotes that instant). Fractions longer than nine digits are truncated to nanoseconds
    (as Go does).

    Raises:
        ValueError: the text is not an RFC 3339 date-time, or names an impossible date/time.
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    try:
        ordinal = _dt.date(year, month, day).toordinal()
    except ValueError as exc:
        raise ValueError(f"impossible date in {text!r}: {exc}") from None
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"impossible time of day in {text!r}")
    frac = m.group(7) or ""
    frac_ns = int((frac + "000000000")[:9])
    offset = 0
    if m.group(8) is None:
        oh, om = int(m.group(10)), int(m.group(11))
        if oh > 23 or om > 59:
            raise ValueError(f"impossible UTC offset in {text!r}")
        offset = (oh * 3600 + om * 60) * (1 if m.group(9) == "+" else -1)
    seconds = (ordinal - _EPOCH_ORDINAL) * 86400 + hour * 3600 + minute * 60 + second - offset
    ns = seconds * _NS + frac_ns
    if ns == int(MIN_TIME) * _NS:
        return None
    return ns


def ns_to_seconds(ns: int) -> float:
    """Integer nanoseconds to float seconds, correctly rounded."""
    return ns / _NS


def format_rfc3339(seconds: float | None) -> str:
    """Format float seconds as Go's RFC 3339 with nanoseconds (``None`` -> Go's zero time).

    The fraction is written with trailing zeros removed, and omitted when zero, like Go's
    ``time.RFC3339Nano``; the zone is always ``Z``.

    Raises:
        ValueError: ``seconds`` is outside years 1..9999.
    """
    if seconds is None:
        return GO_ZERO_TIME
    if not (MIN_TIME <= seconds < MAX_TIME):
        raise ValueError(f"time {seconds!r} is outside the years 1..9999")
    # The shortest decimal that reads back as this float (repr) gives what a person or a Go
    # peer wrote (1767225600.123 -> ".123", not ".122999907"); if its nanosecond rounding
    # would not read back as the same float, use the float's exact value instead.
    ns = round(Decimal(repr(float(seconds))) * _NS)
    if ns / _NS != seconds:
        ns = round(Fraction(Decimal(seconds)) * _NS)
    whole, frac_ns = divmod(ns, _NS)
    days, rem = divmod(whole, 86400)
    date = _dt.date.fromordinal(days + _EPOCH_ORDINAL)
    hh, rem = divmod(rem, 3600)
    mm, ss = divmod(rem, 60)
    text = f"{date.year:04d}-{date.month:02d}-{date.day:02d}T{hh:02d}:{mm:02d}:{ss:02d}"
    if frac_ns:
        text += "." + f"{frac_ns:09d}".rstrip("0")
    return text + "Z"
