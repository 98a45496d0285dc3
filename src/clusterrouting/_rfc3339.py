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

# RFC 3339 as Go's time package parses it first (its fast path): ASCII digits only, upper-case
# "T" and "Z", a "." before the fraction, two-digit fields. Go then falls back to a looser
# parser that also takes "," fractions, one-digit hours and offsets up to +24:00/+23:60;
# those are not RFC 3339 and are rejected here (a documented difference).
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:(Z)|([+-])([0-9]{2}):([0-9]{2}))"
)
_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year, 0 included)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_rfc3339(text: str) -> int | None:
    """Parse an RFC 3339 timestamp into integer nanoseconds since the epoch.

    Accepts what Go's ``time.Time`` JSON decoding accepts through its strict path:
    ``YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`` with ASCII digits, upper-case ``T``
    and ``Z``, years 0000..9999, real calendar dates, hours <= 23, minutes and seconds <= 59
    (no leap second), offsets up to 23:59. Fractions longer than nine digits are truncated to
    nanoseconds, as Go does.

    Returns ``None`` for Go's zero time (``0001-01-01T00:00:00Z`` in any offset form that
    denotes that instant).

    Raises:
        ValueError: the text is not such a timestamp, or names an impossible date or time.

    >>> parse_rfc3339("1970-01-01T00:00:01.5+00:00")
    1500000000
    """
    m = _RFC3339.fullmatch(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    if not 1 <= month <= 12:
        raise ValueError(f"impossible month in {text!r}")
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= day <= _DAYS_IN_MONTH[month - 1] + (month == 2 and leap):
        raise ValueError(f"impossible day of the month in {text!r}")
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
    days = _days_from_civil(year, month, day)
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset
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
