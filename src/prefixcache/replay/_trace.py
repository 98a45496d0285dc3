"""Reading request traces in the Mooncake JSONL format.

One request per line: ``{"timestamp": <ms>, "input_length": <tokens>, "output_length":
<tokens>, "hash_ids": [<int>, ...]}``. ``hash_ids`` are prefix-chained block ids (block ``i``
stands for the whole prompt prefix up to the end of block ``i``), so two requests share
exactly their common leading ids. A trace whose ids name a block by its content alone (the
same id under two different prefixes) is read as if chained: each id met under a second
prefix gets a fresh id for it, with a warning (an engine's prefix cache keys a block by its
whole prefix). Files may be gzip-compressed (``.gz``).

Other traces in this shape differ in their clock: some write absolute timestamps, some in
nanoseconds, some as strings of digits (a parser that reads JSON numbers as doubles loses
nanoseconds beyond 2**53). Timestamps may therefore be numbers or strings of ASCII digits
(or of a decimal number), below 2**64, in ``time_unit`` (:data:`TimeUnit`, ``"ms"`` by
default). Requests are ordered by their exact timestamps, and arrivals count from the
earliest one: integer timestamps are subtracted exactly before the conversion to seconds,
fractional ones as floats. The replay's default speed-up (``auto``) sets the load from the
trace's own spacing, so the unit only matters to an explicit speed-up. A trace's block size
(tokens per hash id) is the cluster's ``block_tokens``.
"""

from __future__ import annotations

import gzip
import json
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal, get_args

import attrs

from clusterrouting import ClusterRoutingError, InvalidRecordError

#: An ``isinstance`` target built once (an inline union is built on every call).
_NUMBER = (int, float)

TimeUnit = Literal["s", "ms", "us", "ns"]
"""The unit of a trace's timestamps."""

_PER_SECOND: Final[Mapping[str, int]] = MappingProxyType(
    dict(zip(get_args(TimeUnit), (1, 1_000, 1_000_000, 1_000_000_000), strict=True))
)

#: Block ids and timestamps are below this.
_BOUND: Final = 2**64

__all__ = [
    "BUNDLED_TRACE",
    "Request",
    "TimeUnit",
    "TraceFormatError",
    "TraceRekeyedWarning",
    "ideal_hit_ratio",
    "load_trace",
    "parse_trace",
]

BUNDLED_TRACE = (
    Path(__file__).resolve().parent / "data" / "mooncake_fast25_conversation_trace.jsonl.gz"
)
"""The Mooncake FAST'25 conversation trace shipped inside the package (``replay/data/``), so
``clusterrouting-replay`` works after a plain ``pip install``."""


class TraceFormatError(ClusterRoutingError, ValueError):
    """A trace line is malformed. ``line`` is 1-based; ``field`` names the bad key."""

    def __init__(self, line: int, field: str, reason: str) -> None:
        self.line = line
        self.field = field
        self.reason = reason
        super().__init__(f"trace line {line}: field {field!r}: {reason}")


class TraceRekeyedWarning(UserWarning):
    """A trace's block ids were not prefix-chained and were re-keyed on loading (see the
    module); the message counts the ids re-keyed and the fresh ids made."""


@attrs.frozen(kw_only=True, slots=True)
class Request:
    """One traced request.

    Raises:
        InvalidRecordError: a negative or non-finite time, a negative or non-int token
            count, ``blocks`` not a tuple (ids themselves are checked by ``parse_trace``).

    Attributes:
        arrival: arrival time in seconds since the trace's first request (already divided
            by any speed-up the caller applied; :func:`parse_trace` leaves it unscaled).
        input_tokens: prompt length in tokens (>= 0).
        output_tokens: generated tokens (>= 0).
        blocks: the prefix-chained block ids of the prompt, shallow to deep.
    """

    arrival: float
    input_tokens: int
    output_tokens: int
    blocks: tuple[int, ...]

    def __attrs_post_init__(self) -> None:
        if not (isinstance(self.arrival, _NUMBER) and 0 <= self.arrival < math.inf):
            raise InvalidRecordError("arrival", self.arrival, "must be a finite number >= 0")
        for name in ("input_tokens", "output_tokens"):
            v = getattr(self, name)
            if type(v) is not int or v < 0:
                raise InvalidRecordError(name, v, "must be an int >= 0")
        if type(self.blocks) is not tuple:
            raise InvalidRecordError("blocks", self.blocks, "must be a tuple of block ids")


def _int_field(obj: dict[str, object], key: str, line: int) -> int:
    if key not in obj:
        raise TraceFormatError(line, key, "missing")
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise TraceFormatError(line, key, f"expected an integer, got {v!r}")
    if v < 0:
        raise TraceFormatError(line, key, f"must be >= 0, got {v!r}")
    return v


def _timestamp(obj: dict[str, object], line: int) -> int | float:
    """The line's ``timestamp``: a number in [0, 2**64), or a string of one in ASCII (a
    string of digits stays an exact int)."""
    ts = obj.get("timestamp")
    if isinstance(ts, str):
        text = ts.strip()
        try:
            if not text.isascii() or "_" in text:
                raise ValueError(text)
            ts = int(text) if text.isdigit() else float(text)
        except ValueError:
            raise TraceFormatError(line, "timestamp", f"not a number: {ts!r}") from None
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise TraceFormatError(line, "timestamp", f"expected a number, got {ts!r}")
    if not 0 <= ts < _BOUND:  # also refuses NaN (and ints too large for a float)
        raise TraceFormatError(line, "timestamp", f"must be in [0, 2**64), got {ts!r}")
    return ts


def parse_trace(lines: Iterable[str], *, time_unit: TimeUnit = "ms") -> list[Request]:
    """Parse Mooncake JSONL lines into requests sorted by timestamp (stable for ties).

    Blank lines are skipped. ``timestamp`` (a number or a string of one, in [0, 2**64)) is
    in ``time_unit``; :attr:`Request.arrival` is the time since the earliest timestamp in
    seconds (see the module docstring). Block ids that are not prefix-chained are re-keyed
    per prefix, with a :class:`TraceRekeyedWarning` (the module docstring).

    Raises:
        TraceFormatError: a line is not a JSON object, a field is missing, out of range or
            of the wrong type, or a block id is outside ``0 <= id < 2**64``.
        InvalidRecordError: ``time_unit`` is not a :data:`TimeUnit`.
    """
    return _parse(lines, time_unit)


def _parse(lines: Iterable[str], time_unit: TimeUnit) -> list[Request]:
    """:func:`parse_trace`, for it and :func:`load_trace` (one depth below each, for the
    warning's stack level)."""
    per_s = _PER_SECOND.get(time_unit) if isinstance(time_unit, str) else None
    if per_s is None:
        raise InvalidRecordError("time_unit", time_unit, f"must be one of {get_args(TimeUnit)}")
    rows: list[tuple[int | float, int, int, tuple[int, ...]]] = []
    for n, raw in enumerate(lines, start=1):
        s = raw.strip()
        if not s:
            continue
        try:
            obj = json.loads(s)
        except ValueError as exc:
            raise TraceFormatError(n, "<line>", f"not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise TraceFormatError(n, "<line>", "not a JSON object")
        ts = _timestamp(obj, n)
        inp = _int_field(obj, "input_length", n)
        outp = _int_field(obj, "output_length", n)
        if "hash_ids" not in obj:  # as a missing length is: said so, not "got None"
            raise TraceFormatError(n, "hash_ids", "missing")
        ids = obj["hash_ids"]
        if not isinstance(ids, list):
            raise TraceFormatError(n, "hash_ids", f"expected a list of integers, got {ids!r}")
        for h in ids:
            if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < _BOUND:
                raise TraceFormatError(n, "hash_ids", f"bad block id {h!r}")
        rows.append((ts, inp, outp, tuple(ids)))
    rows.sort(key=lambda r: r[0])  # int and float compare exactly
    chained = _prefix_chained([ids for *_, ids in rows])
    start = rows[0][0] if rows else 0
    return [
        Request(arrival=(ts - start) / per_s, input_tokens=inp, output_tokens=outp, blocks=ids)
        for (ts, inp, outp, _), ids in zip(rows, chained, strict=True)
    ]


def _prefix_chained(chains: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """``chains`` with every block id standing for one prefix: an id met under a second
    parent (or again in its own chain) gets a fresh id for that prefix, the first pairing
    keeping the id. Prefix-chained chains come back as they are (the same tuples); a trace
    that names a block by its content alone (LMBench's GMI trace, for 849 of its 37,180
    ids) would otherwise let a request hit blocks cached under other prefixes, which no
    engine's prefix cache does. Fresh ids count down from ``2**64 - 1``, skipping the ids
    the trace uses and the ids whose low 32 bits one of them has (the replay's engines
    send a block's low 32 bits as its one stand-in token, ``TOKEN_MASK``, and a
    token-keyed index must tell the blocks apart). Warns (:class:`TraceRekeyedWarning`, at
    the caller of :func:`parse_trace` or :func:`load_trace`) with the ids re-keyed and the
    fresh ids made."""
    parent_of: dict[int, int | None] = {}
    setdefault = parent_of.setdefault
    for chain in chains:  # the common case first: one parent per id, nothing to do
        parent: int | None = None
        for raw in chain:
            if setdefault(raw, parent) != parent:
                return _rekeyed(chains)
            parent = raw
    return chains


def _rekeyed(chains: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """:func:`_prefix_chained` for chains that need fresh ids."""
    used = {b for chain in chains for b in chain}
    used_low = {b & 0xFFFF_FFFF for b in used}
    first_parent: dict[int, int | None] = {}
    keyed: dict[tuple[int | None, int], int] = {}
    fresh = _BOUND
    made = 0
    rekeyed: set[int] = set()
    out: list[tuple[int, ...]] = []
    for chain in chains:
        parent: int | None = None
        ids: list[int] = []
        for raw in chain:
            cid = keyed.get((parent, raw))
            if cid is None:
                if first_parent.setdefault(raw, parent) == parent:
                    cid = raw
                else:
                    fresh -= 1
                    while fresh in used or fresh & 0xFFFF_FFFF in used_low:
                        fresh -= 1
                    cid = fresh
                    made += 1
                    rekeyed.add(raw)
                keyed[parent, raw] = cid
            ids.append(cid)
            parent = cid
        out.append(tuple(ids))
    warnings.warn(  # at the caller of parse_trace / load_trace (through _parse and here)
        f"{len(rekeyed)} block ids of the trace stood under more than one prefix (hash_ids"
        f" not prefix-chained); re-keyed per prefix with {made} fresh ids",
        TraceRekeyedWarning,
        stacklevel=5,
    )
    return out


def load_trace(path: str | Path, *, time_unit: TimeUnit = "ms") -> list[Request]:
    """Read a Mooncake JSONL trace file (plain or ``.gz``); see :func:`parse_trace`.

    Raises:
        FileNotFoundError: no such file.
        TraceFormatError: malformed content.
        InvalidRecordError: ``time_unit`` is not a :data:`TimeUnit`.
    """
    p = Path(path)
    if p.suffix == ".gz":
        with gzip.open(p, "rt", encoding="utf-8") as fh:
            return _parse(fh, time_unit)
    with open(p, encoding="utf-8") as fh:
        return _parse(fh, time_unit)


def ideal_hit_ratio(requests: Sequence[Request]) -> float:
    """Block hit ratio of one infinite cache that sees every request in arrival order.

    For each request, its hits are the number of leading block ids already seen in an
    earlier request; then all its ids become seen. The ratio is hits over all blocks
    (0.0 for a trace without blocks). No placement of requests on replicas, and no finite
    cache, can do better: this is the ceiling the report compares policies to.

    >>> ideal_hit_ratio([Request(arrival=0, input_tokens=2, output_tokens=1, blocks=(1, 2)),
    ...                  Request(arrival=1, input_tokens=2, output_tokens=1, blocks=(1, 3))])
    0.25
    """
    seen: set[int] = set()
    hits = 0
    total = 0
    for r in requests:
        b = r.blocks
        k = 0
        n = len(b)
        while k < n and b[k] in seen:
            k += 1
        hits += k
        total += n
        seen.update(b)
    return hits / total if total else 0.0
