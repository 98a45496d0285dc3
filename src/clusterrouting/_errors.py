"""The exception hierarchy of :mod:`clusterrouting`.

Every error the library raises on misuse is rooted in :class:`ClusterRoutingError` and also
subclasses the builtin it corresponds to, so ``except ValueError`` keeps working for callers
who do not know this package.
"""

from __future__ import annotations

__all__ = ["ClusterRoutingError", "InvalidRecordError", "NodeDataDecodeError"]


class ClusterRoutingError(Exception):
    """Root of every error raised by clusterrouting and prefixcache."""


class InvalidRecordError(ClusterRoutingError, ValueError, TypeError):
    """A record (or a policy argument) was built from an invalid value.

    It is both a ``ValueError`` (a negative in-flight count, NaN) and a ``TypeError`` (a
    non-string id), because callers catch either. ``field`` names the offending field and
    ``value`` holds what was passed.
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={value!r}: {reason}")


class NodeDataDecodeError(ClusterRoutingError, ValueError):
    """A ``NodeData`` JSON document could not be decoded.

    ``field`` is the Go field name that was wrong (``"<document>"`` for the document as a
    whole).
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"NodeData JSON field {field!r}: {reason}")
