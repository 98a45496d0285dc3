"""What every peer routing policy of the replay shares: the trace-to-text mapping, the
engines' event index, a block-granular character tree and the policy base classes.

Mapping onto the trace (fact sheet section 10): a trace block of ``T`` tokens stands for
``C = chars_per_token x T`` characters (default 4, llm-d's own constant); the last,
partial block for ``chars_per_token`` characters per token it holds. Character trees are
built at block granularity (one edge per block; a match never counts part of a block).
Chunk hashes (llm-d's 64 characters, production-stack's and AIBrix's 128) cut the whole text
from its start, so a chunk may straddle blocks when its size does not divide ``C``
(:func:`text_chunks`).
Engine-event policies read the simulated engines' event stream, whose engine
block is the trace block.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

import attrs

from clusterrouting import InvalidRecordError
from prefixcache._types import ReplicaKey
from prefixcache.kvevents import EventBatch, KvResidency
from prefixcache.replay._sim import TOKEN_MASK
from prefixcache.replay._trace import Request

__all__ = [
    "CHARS_PER_TOKEN",
    "REPLAY_MODEL",
    "CharTree",
    "EngineIndex",
    "EventPeer",
    "Peer",
    "TreeMatch",
    "block_chars",
    "text_chunks",
]

REPLAY_MODEL = "trace"
"""The model name engine events and indexes are filed under (traces carry none)."""

CHARS_PER_TOKEN = 4
"""Characters per token of the stand-in text (llm-d's own constant; fact sheet 10)."""


class Peer:
    """A peer policy's defaults: observes at dispatch, reads no engine events, and ignores
    the dispatch, first-token and completion callbacks."""

    name = "peer"
    observe_at: str = "dispatch"
    reads_kv_events = False

    def on_dispatch(self, i: int, request: Request, replica: int, now: float) -> None:
        pass

    def on_first_token(self, i: int, request: Request, replica: int, now: float) -> None:
        pass

    def on_complete(self, i: int, request: Request, replica: int, now: float) -> None:
        pass


def block_chars(request: Request, block_tokens: int, chars_per_token: int) -> list[int]:
    """Characters of each block of ``request``'s stand-in text (last block partial)."""
    n = len(request.blocks)
    if n == 0:
        return []
    full = block_tokens * chars_per_token
    last = max(0, request.input_tokens - block_tokens * (n - 1)) * chars_per_token
    out = [full] * n
    out[-1] = min(full, last)
    return out


#: A chunk of the stand-in text: the block holding its last character, and that
#: character's end offset in the block (see :func:`text_chunks`).
Chunk = tuple[int, int]


def text_chunks(
    request: Request,
    block_tokens: int,
    chars_per_token: int,
    chunk_chars: int,
    *,
    partial: bool,
    limit: int | None = None,
) -> list[Chunk]:
    """``request``'s stand-in text cut into ``chunk_chars``-character chunks from its start,
    across block boundaries, as a peer that hashes fixed-size byte chunks cuts its text.

    Chunk ``k`` covers characters ``[k x chunk_chars, (k + 1) x chunk_chars)`` and is named
    ``(block, end)``: the block holding its last character and that character's end offset
    in the block. Trace block ids chain their prefix, so the name stands for the whole
    text up to the chunk's end, as the peers' chained hashes do. The trailing partial chunk
    is kept iff ``partial``; at most ``limit`` chunks (``None``: all).
    """
    chars = block_chars(request, block_tokens, chars_per_token)
    # No block holds more than c // chunk_chars + 1 chunk ends: a bound on the chunks, cut
    # to ``limit`` so that the walk stops once it has them.
    cap = len(request.blocks) * (block_tokens * chars_per_token // chunk_chars + 1)
    if limit is not None:
        cap = min(cap, limit)
    out: list[Chunk] = []
    start = 0  # the block's first character
    end = chunk_chars  # the next chunk's end
    last: Chunk | None = None  # where the text ends
    for block, c in zip(request.blocks, chars, strict=True):
        stop = start + c
        if c:
            last = (block, c)
        if end <= stop:
            ends = range(end - start, c + 1, chunk_chars)  # offsets in the block
            out += [(block, e) for e in ends]
            end = start + ends[-1] + chunk_chars
            if len(out) >= cap:
                return out[:cap]
        start = stop
    if partial and last is not None and end - chunk_chars < start:  # a trailing partial chunk
        out.append(last)
    return out[:cap]


# --- engine events -------------------------------------------------------------------


class EngineIndex:
    """The engines' cached blocks, as ``prefixcache.kvevents.KvResidency`` records them.

    Replicas are numbered; each maps to ``ReplicaKey("replica-NN")``. Batches come from
    the simulated engines, whose block ``i`` is one stand-in token (see
    ``ClusterModel``), so the residency runs at ``block_tokens=1`` and its chain over a
    request's block ids identifies trace blocks. ``apply`` hands a batch to
    ``KvResidency.apply`` (refcounts, restarts, gaps as documented there); ``overlaps``
    hashes a request once and asks ``overlap_chain`` for every replica.
    """

    __slots__ = ("_keys", "residency")

    def __init__(self) -> None:
        self.residency = KvResidency(block_tokens=1)
        self._keys: list[ReplicaKey] = []

    def key(self, replica: int) -> ReplicaKey:
        """The residency key of replica ``replica``."""
        keys = self._keys
        while len(keys) <= replica:
            keys.append(ReplicaKey(f"replica-{len(keys):02d}"))
        return keys[replica]

    def state(self, replica: int) -> str:
        """``"exact"``, ``"degraded"`` or ``"unknown"``."""
        return str(self.residency.state(self.key(replica)))

    def apply(self, replica: int, seq: int, batch: EventBatch) -> None:
        """Apply one engine batch of replica ``replica``."""
        self.residency.apply(self.key(replica), seq, batch, model=REPLAY_MODEL, now=batch.ts)

    def chain(self, blocks: Sequence[int]) -> tuple[int, ...]:
        """The residency's chain of a request's block ids."""
        return self.residency.chain(REPLAY_MODEL, [b & TOKEN_MASK for b in blocks])

    def overlaps(self, blocks: Sequence[int], n: int) -> list[int]:
        """Leading blocks of ``blocks`` held by each of replicas ``0..n-1``."""
        if not blocks:
            return [0] * n
        keys = [self.key(r) for r in range(n)]
        got = self.residency.overlap_chain(self.chain(blocks), keys)
        return [got[k] for k in keys]

    def run(self, replica: int, blocks: Sequence[int]) -> int:
        """Leading blocks of ``blocks`` that ``replica`` holds."""
        return self.overlaps(blocks, replica + 1)[replica]


class EventPeer(Peer):
    """A peer policy that reads the engines' event stream into its ``engine_index``."""

    reads_kv_events = True

    def __init__(self) -> None:
        self.engine_index = EngineIndex()

    def on_kv_events(self, replica: int, seq: int, batch: EventBatch, now: float) -> None:
        self.engine_index.apply(replica, seq, batch)


# --- character tree ------------------------------------------------------------------


def _count(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not int or value < 0:
        raise InvalidRecordError(attr.name, value, "must be an int >= 0")


@attrs.frozen(kw_only=True, slots=True)
class TreeMatch:
    """What :meth:`CharTree.match` found for a request.

    Attributes:
        blocks: leading blocks present in the tree (for some tenant).
        chars: their characters.
        text: the request's characters (all its blocks).
    """

    blocks: int = attrs.field(validator=_count)
    chars: int = attrs.field(validator=_count)
    text: int = attrs.field(validator=_count)

    @property
    def rate(self) -> float:
        """The matched share of the text (``chars / text``; 0.0 for an empty text): the
        match rate SGLang's and AIBrix's thresholds compare."""
        return self.chars / self.text if self.text else 0.0


class CharTree:
    """A character radix tree at block granularity, shared by all tenants, with the
    nodes, stamps and eviction of SMG's ``crates/kv_index/src/string_tree.rs`` (smg
    @73da68ca and @f8daa883).

    Blocks are the edges (ids are prefix-chained, so a block has one parent); SMG's nodes
    are runs of them. An insert that leaves the tree creates one node holding all its new
    blocks; a node is cut in two where a later insert ends inside it or branches off it
    (``insert_from``'s split), and nodes are never merged. A node is named by its last
    block, its *end* (``ends``); every other block of a node has exactly one child, the
    next block of the node.

    Per block: tenant -> stamp, parent, children, characters. Every block of a node holds
    the node's tenants (an insert joins whole nodes, a split keeps both halves' tenants,
    eviction takes a tenant off a whole node). Per node, kept on its end: the stamps that
    count (an operation counter, see :meth:`next_stamp`; stamps on other blocks are never
    read), the owner (``owner``, SMG's ``last_tenant``: the tenant whose insert created the
    node, until a lookup finds it gone and stores another, see :meth:`resolve_owner`) and
    the origin (``origin``: the node's end when an insert created it; a split keeps it
    for both halves, as SMG's split copies the tenant map with its hasher, so
    ``smg-cache-aware`` orders a node's tenants by it). Per tenant: characters held, the
    sum over the nodes that hold it. Invariant: a tenant on a block is on its parent too.
    :meth:`_check` asserts all of this.

    Not thread-safe; the replay drives it from one thread.

    >>> tree = CharTree()
    >>> tree.insert((1, 2, 3), (40, 40, 40), tenant=0)
    >>> tree.insert((1, 2, 4), (40, 40, 40), tenant=1)
    >>> sorted(tree.ends), tree.node_end(1), tree.chars
    ([2, 3, 4], 2, {0: 120, 1: 120})
    """

    __slots__ = (
        "chars",
        "chars_of",
        "children",
        "ends",
        "nodes",
        "op",
        "origin",
        "owner",
        "parent",
    )

    def __init__(self) -> None:
        self.nodes: dict[int, dict[int, int]] = {}
        self.parent: dict[int, int | None] = {}
        self.children: dict[int, set[int]] = {}
        self.chars_of: dict[int, int] = {}
        self.ends: set[int] = set()
        self.owner: dict[int, int] = {}
        self.origin: dict[int, int] = {}
        self.chars: dict[int, int] = {}
        self.op = 0

    def next_stamp(self) -> int:
        """The next value of the operation counter (SMG's ``get_epoch``: fetch, then add)."""
        op = self.op
        self.op = op + 1
        return op

    def match(self, blocks: Sequence[int], chars: Sequence[int]) -> TreeMatch:
        """The leading ``blocks`` present for some tenant and their characters, out of
        ``sum(chars)`` (``chars[k]``: block ``k``'s characters)."""
        k = 0
        c = 0
        nodes = self.nodes
        n = len(blocks)
        while k < n and blocks[k] in nodes:
            c += chars[k]
            k += 1
        return TreeMatch(blocks=k, chars=c, text=sum(chars))

    def node_end(self, block: int) -> int:
        """The end (last block) of the node holding ``block``, a block in the tree.
        O(blocks of the node below ``block``)."""
        ends = self.ends
        children = self.children
        while block not in ends:
            (block,) = children[block]
        return block

    def resolve_owner(self, end: int) -> int:
        """The owner of the node ending at ``end`` (SMG's cached ``last_tenant``). If it
        has left the node, the lowest-index tenant still there replaces it for good
        (fact sheet section 10 resolves SMG's "first in map order" by index)."""
        owner = self.owner[end]
        tenants = self.nodes[end]
        if owner not in tenants:
            owner = min(tenants)
            self.owner[end] = owner
        return owner

    def _cut(self, block: int) -> None:
        """Make ``block`` the end of a node: the upper half of a split copies the node's
        tenant stamps, owner and origin (``insert_from``)."""
        if block in self.ends:
            return
        end = self.node_end(block)
        self.ends.add(block)
        self.nodes[block].update(self.nodes[end])
        self.owner[block] = self.owner[end]
        self.origin[block] = self.origin[end]

    def insert(
        self, blocks: Sequence[int], chars: Sequence[int], tenant: int, stamp: int | None = None
    ) -> None:
        """Insert a text for ``tenant`` as SMG's ``insert_text`` does. The node where the
        text ends or branches off is cut there; the tenant joins the path's nodes it
        did not hold with stamp 0 (nodes it held keep theirs); the blocks left over
        become one new node owned by ``tenant``; the last node gets ``stamp`` (by
        default :meth:`next_stamp`)."""
        if stamp is None:
            stamp = self.next_stamp()
        nodes = self.nodes
        n = len(blocks)
        k = 0
        while k < n and blocks[k] in nodes:
            k += 1
        if k:
            self._cut(blocks[k - 1])
        add = 0
        for j in range(k):
            held = nodes[blocks[j]]
            if tenant not in held:
                held[tenant] = 0
                add += chars[j]
        if k < n:
            parent = self.parent
            children = self.children
            chars_of = self.chars_of
            prev = blocks[k - 1] if k else None
            for j in range(k, n):
                b = blocks[j]
                nodes[b] = {tenant: stamp}
                parent[b] = prev
                children[b] = set()
                chars_of[b] = ch = chars[j]
                add += ch
                if prev is not None:
                    children[prev].add(b)
                prev = b
            last = blocks[-1]
            self.ends.add(last)
            self.owner[last] = tenant
            self.origin[last] = last
        elif k:
            nodes[blocks[-1]][tenant] = stamp
        self.chars[tenant] = self.chars.get(tenant, 0) + add

    def _is_leaf(self, end: int, tenant: int) -> bool:
        nodes = self.nodes
        return not any(tenant in nodes[c] for c in self.children[end])

    def _remove(self, end: int, tenant: int) -> int | None:
        """Take ``tenant`` off the node ending at ``end``, unlink the node if that
        empties it, and return the node's parent (an end, or ``None`` at the root)."""
        nodes = self.nodes
        parent = self.parent
        ends = self.ends
        chars_of = self.chars_of
        run = [end]
        par = parent[end]
        while par is not None and par not in ends:
            run.append(par)
            par = parent[par]
        for b in run:
            del nodes[b][tenant]
            self.chars[tenant] -= chars_of[b]
        if not nodes[end] and not self.children[end]:
            ends.discard(end)
            del self.owner[end], self.origin[end]
            for b in run:
                del nodes[b], parent[b], self.children[b], chars_of[b]
            if par is not None:
                self.children[par].discard(run[-1])
        return par

    def evict(self, cap_chars: int, *, per_tenant: bool) -> None:
        """SMG's ``evict_tenant_by_size``: drop (tenant, leaf node) entries, least recently
        stamped first, until each tenant (``per_tenant=True``, smg @73da68ca) or the whole
        tree (smg @f8daa883, one budget per model) holds at most ``cap_chars``. A node is
        a leaf for a tenant when no child holds that tenant; its parent becomes one when
        the last such child goes. An entry takes the tenant off the whole node, and the cap
        is checked only between entries, so a pass may end up to one node under the cap.
        Ties in stamp go to the lower end block, then the lower tenant (the source orders
        by stamp alone). O(blocks + entries x log entries)."""
        chars = self.chars
        total = sum(chars.values())
        over = {t for t, c in chars.items() if c > cap_chars or not per_tenant}
        if (per_tenant and not over) or (not per_tenant and total <= cap_chars):
            return
        nodes = self.nodes
        children = self.children
        heap: list[tuple[int, int, int]] = []
        push = heap.append
        for b in self.ends:
            ts = nodes[b]
            kids = children[b]
            for t, stamp in ts.items():
                if t in over and not any(t in nodes[c] for c in kids):
                    push((stamp, b, t))
        heapq.heapify(heap)
        while heap:
            if not per_tenant and total <= cap_chars:
                break
            _stamp, b, t = heapq.heappop(heap)
            if per_tenant and chars.get(t, 0) <= cap_chars:
                continue
            held = nodes.get(b)
            if held is None or t not in held or not self._is_leaf(b, t):
                continue
            before = chars[t]
            par = self._remove(b, t)
            total -= before - chars[t]
            if par is not None:
                pts = nodes[par]
                if t in pts and self._is_leaf(par, t):
                    heapq.heappush(heap, (pts[t], par, t))

    def _check(self) -> None:
        """Assert the invariants of the class docstring (for tests)."""
        nodes = self.nodes
        ends = self.ends
        assert set(self.parent) == set(self.children) == set(self.chars_of) == set(nodes)
        assert ends <= set(nodes) and set(self.owner) == set(self.origin) == ends
        held: dict[int, int] = {}
        for b, tenants in nodes.items():
            assert tenants, b
            par = self.parent[b]
            assert par is None or (b in self.children[par] and set(tenants) <= set(nodes[par]))
            kids = self.children[b]
            assert all(self.parent[c] == b for c in kids)
            if b not in ends:
                assert len(kids) == 1, b
                (c,) = kids
                assert set(tenants) == set(nodes[c]), b
            for t in tenants:
                held[t] = held.get(t, 0) + self.chars_of[b]
        assert {t: c for t, c in self.chars.items() if c} == held
