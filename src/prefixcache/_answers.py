"""What :class:`prefixcache.RadixTree` gives back beyond plain values: the answer to a
query and the error of a write to a closed tree."""

from __future__ import annotations

from typing import Any

from clusterrouting import ClusterRoutingError

__all__ = ["Query", "TreeClosedError"]


class TreeClosedError(ClusterRoutingError, RuntimeError):
    """A write reached a tree closed by :meth:`RadixTree.close_if_empty` (its owner, e.g.
    an ``Index``, has dropped it: write to the owner's current tree instead)."""


class Query:
    """What :meth:`RadixTree.query` knows about a key, in plain values.

    Attributes:
        owner: the value of the deepest live node on the key's path, or ``None``.
        depth: that node's depth (0 without an owner).
        positions: the positions of the requested values that own nodes (ascending); the
            others weigh 0.0.
        sums: for each of those positions, its weight divided by ``scale``.
        scale: the common factor: ``weight = sums[j] * scale``.
    """

    __slots__ = ("depth", "owner", "positions", "scale", "sums")

    def __init__(
        self, owner: Any, depth: int, positions: list[int], sums: list[float], scale: float
    ) -> None:
        self.owner = owner
        self.depth = depth
        self.positions = positions
        self.sums = sums
        self.scale = scale
