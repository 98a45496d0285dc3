"""What :class:`~prefixcache.kvevents.KvResidency` reports: a replica's trust state, one
batch's outcome counts and a replica's snapshot."""

from __future__ import annotations

import functools
from enum import StrEnum
from typing import Final

import attrs

from clusterrouting import InvalidRecordError

__all__ = [
    "COUNT_NAMES",
    "Counts",
    "IngestReport",
    "ResidencyState",
    "ResidencyStatus",
    "make_report",
]


class ResidencyState(StrEnum):
    """How far :class:`KvResidency` trusts its record of one replica.

    Transitions (per replica key):

    * ``unknown``: never seen, or :meth:`KvResidency.forget` called, or refused because the
      replica cap was reached. Nothing is recorded.
    * -> ``exact``: a first batch at ``seq`` 0; an ``AllBlocksCleared`` that leaves no gap
      open; a publisher restart (``seq`` not above the last live one) whose batch is ``seq``
      0; a replayed batch that fills the last missing ``seq``.
    * -> ``degraded``: a first batch above ``seq`` 0 (the batches before it are missing); a
      ``seq`` gap; a restart whose first batch seen is above 0; a store whose parent is not
      held while no gap is open (or still unresolved when the gap closes); a batch with
      malformed events (``EventBatch.dropped > 0``); a gap given up (more than 64 open).
      A degraded replica leaves it for ``exact`` only when every gap is filled by replayed
      batches and nothing unexplained happened, or when a clear or restart resets it.

    ``exact`` means: every batch since the last reset was applied and nothing was
    inconsistent, so the record equals the engine's cache for the routed media and the main
    KV group (minus blocks forgotten to stay under the block cap).
    """

    EXACT = "exact"
    DEGRADED = "degraded"
    UNKNOWN = "unknown"


@attrs.frozen(kw_only=True, slots=True)
class IngestReport:
    """What :meth:`KvResidency.apply` did with one batch: counts by outcome.

    Counts are read as attributes (``report.stored_blocks``; 0 when nothing had that
    outcome); ``counts`` holds the non-zero ones as sorted ``(name, count)`` pairs.

    Batch level:
        state: the replica's state after the batch.
        refused: the batch was not applied (a new replica beyond the replica cap).
        duplicate: the batch's ``seq`` was already applied (a replay of a batch seen live):
            nothing changed.
        restarted: the live ``seq`` did not increase (the publisher restarted): everything
            the replica held was dropped before the batch was applied.
        missed: sequence numbers newly known to be missing (the gap this batch opened, or
            the batches after a replayed clear, which must be applied again after it).
        filled: 1 if this (replayed) batch filled a missing ``seq``, else 0.
        decode_dropped: ``batch.dropped``, the malformed events the decoder left out.

    Events:
        applied_stores / applied_removes / applied_clears: events applied.
        dropped_medium: events for a medium not routed on (``KvResidency(media=...)``).
        dropped_group: events for a KV group other than the main one(s).
        dropped_block_size: stores whose engine block size is not a multiple of
            ``block_tokens``.
        dropped_tokens: stores whose ``token_ids`` do not fill their blocks exactly (e.g.
            CPU placeholders with ``block_size=0``), or with no block.
            A store dropped for either reason degrades the replica when its tokens held a
            whole block of ours (it is then not held); a shorter page does too when it
            continues a chain through a block not held (SGLang's pages), not when it is a
            prompt's last page after a block held or its only one.
        dropped_self_reference: stores whose hashes repeat or contain their parent.
        dropped_orphan: stores whose parent is not held (and no gap could explain it).
        deferred: orphan stores held until a replay brings their parent.
        resumed: held stores applied by this batch (their parent arrived); counted in
            ``applied_stores`` too.
        abandoned: held stores dropped because every gap closed without their parent.

    Blocks (engine blocks, each split into ``block_size // block_tokens`` of ours):
        stored_blocks: block copies stored (a copy of a block already held counts too).
        removed_blocks: block copies removed.
        unknown_removals: removals of blocks not held (ignored; held for a replay when a gap
            is open or being filled).
        cleared_blocks: blocks dropped by ``AllBlocksCleared`` or a restart.
        evicted_blocks: blocks forgotten to stay under the per-replica block cap.

    Immutable: safe to share between threads.

    Every event of an applied batch has exactly one outcome: ``applied_stores - resumed +
    deferred + dropped_*`` (store drops) is the number of ``BlockStored`` events, and
    ``applied_removes`` + removal drops the number of ``BlockRemoved`` events.
    """

    state: ResidencyState
    refused: bool = False
    duplicate: bool = False
    restarted: bool = False
    counts: tuple[tuple[str, int], ...] = ()

    def count(self, name: str) -> int:
        """The count named ``name`` (0 when nothing had that outcome).

        Raises:
            InvalidRecordError: ``name`` is not one of the counts listed above.
        """
        if name not in COUNT_NAMES:
            raise InvalidRecordError("name", name, f"must be one of {sorted(COUNT_NAMES)}")
        for key, value in self.counts:
            if key == name:
                return value
        return 0

    @property
    def missed(self) -> int:
        return self.count("missed")

    @property
    def filled(self) -> int:
        return self.count("filled")

    @property
    def decode_dropped(self) -> int:
        return self.count("decode_dropped")

    @property
    def applied_stores(self) -> int:
        return self.count("applied_stores")

    @property
    def applied_removes(self) -> int:
        return self.count("applied_removes")

    @property
    def applied_clears(self) -> int:
        return self.count("applied_clears")

    @property
    def dropped_medium(self) -> int:
        return self.count("dropped_medium")

    @property
    def dropped_group(self) -> int:
        return self.count("dropped_group")

    @property
    def dropped_block_size(self) -> int:
        return self.count("dropped_block_size")

    @property
    def dropped_tokens(self) -> int:
        return self.count("dropped_tokens")

    @property
    def dropped_self_reference(self) -> int:
        return self.count("dropped_self_reference")

    @property
    def dropped_orphan(self) -> int:
        return self.count("dropped_orphan")

    @property
    def deferred(self) -> int:
        return self.count("deferred")

    @property
    def resumed(self) -> int:
        return self.count("resumed")

    @property
    def abandoned(self) -> int:
        return self.count("abandoned")

    @property
    def stored_blocks(self) -> int:
        return self.count("stored_blocks")

    @property
    def removed_blocks(self) -> int:
        return self.count("removed_blocks")

    @property
    def unknown_removals(self) -> int:
        return self.count("unknown_removals")

    @property
    def cleared_blocks(self) -> int:
        return self.count("cleared_blocks")

    @property
    def evicted_blocks(self) -> int:
        return self.count("evicted_blocks")


#: The names of :class:`IngestReport`'s counts.
COUNT_NAMES: Final = frozenset(
    {
        "missed",
        "filled",
        "decode_dropped",
        "applied_stores",
        "applied_removes",
        "applied_clears",
        "dropped_medium",
        "dropped_group",
        "dropped_block_size",
        "dropped_tokens",
        "dropped_self_reference",
        "dropped_orphan",
        "deferred",
        "resumed",
        "abandoned",
        "stored_blocks",
        "removed_blocks",
        "unknown_removals",
        "cleared_blocks",
        "evicted_blocks",
    }
)


@attrs.frozen(kw_only=True, slots=True)
class ResidencyStatus:
    """A snapshot of one replica's record (:meth:`KvResidency.status`).

    Attributes:
        state: see :class:`ResidencyState`.
        blocks: engine blocks held (all media and groups routed on).
        canonical_blocks: distinct blocks of ours held (what :meth:`KvResidency.overlap`
            matches against).
        last_seq: the highest ``seq`` applied, ``None`` when unknown.
        missing: sequence numbers known missing (open gaps).
        restarts: publisher restarts seen since the replica was first seen.
        updated_at: the clock's time of the last applied batch, ``None`` when unknown.

    Immutable: safe to share between threads.
    """

    state: ResidencyState
    blocks: int = 0
    canonical_blocks: int = 0
    last_seq: int | None = None
    missing: int = 0
    restarts: int = 0
    updated_at: float | None = None


# Counts of one apply call, by name (see IngestReport); only outcomes that happened are keys.
Counts = dict[str, int]


def make_report(
    state: ResidencyState,
    tally: Counts,
    *,
    refused: bool = False,
    duplicate: bool = False,
    restarted: bool = False,
) -> IngestReport:
    """The report of one batch: ``tally``'s outcomes (only those that happened are keys)."""
    return _shared_report(state, refused, duplicate, restarted, tuple(tally.items()))


# Reports are immutable values and a stream repeats a few outcomes ("4 stores of 4 blocks,
# exact") batch after batch: equal reports are shared, built once (building a frozen record
# costs as much as applying a one-block store). Bounded: least recently used dropped first.
# Keyed by the tally in counting order (one code path always counts in the same order), so
# a shared report costs no sort.
@functools.lru_cache(maxsize=1024)
def _shared_report(
    state: ResidencyState,
    refused: bool,
    duplicate: bool,
    restarted: bool,
    tallied: tuple[tuple[str, int], ...],
) -> IngestReport:
    return IngestReport(
        state=state,
        refused=refused,
        duplicate=duplicate,
        restarted=restarted,
        counts=tuple(sorted(tallied)),
    )
