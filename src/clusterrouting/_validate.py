"""attrs validators shared by the records: each names the field and the bad value."""

from __future__ import annotations

import math
from typing import Any

import attrs

from clusterrouting._errors import InvalidRecordError

__all__ = ["check_int", "check_nonneg_int", "check_optional_time", "check_str"]


def check_str(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Reject anything that is not a ``str``."""
    if not isinstance(value, str):
        raise InvalidRecordError(
            attribute.name, value, f"must be a str, not {type(value).__name__}"
        )


def check_int(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Reject non-integers (``bool`` included: ``True`` is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRecordError(
            attribute.name, value, f"must be an int, not {type(value).__name__}"
        )


def check_nonneg_int(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Reject non-integers and negative integers."""
    check_int(_inst, attribute, value)
    assert isinstance(value, int)
    if value < 0:
        raise InvalidRecordError(attribute.name, value, "must be >= 0")


def check_optional_time(_inst: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """Accept ``None`` or a finite real number of seconds."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRecordError(
            attribute.name, value, f"must be a float of seconds or None, not {type(value).__name__}"
        )
    if not math.isfinite(value):
        raise InvalidRecordError(
            attribute.name, value, "must be finite (NaN and inf are not times)"
        )
