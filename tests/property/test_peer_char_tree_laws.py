"""``CharTree`` (blocks as edges, SMG's nodes as runs of them) against a naive tree of
real nodes written from SMG's ``crates/kv_index/src/string_tree.rs`` (smg @73da68ca
``insert_from``, ``match_prefix_with_counts``, ``evict_tenant_by_size``; the one budget of
@f8daa883), at block granularity: the same nodes, stamps, owners and sizes after any mix
of inserts, lookups and eviction passes."""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import scaled_examples

from prefixcache.replay import SglangCacheAwarePolicy
from prefixcache.replay._peer_base import CharTree


def _shared(a: Sequence[int], b: Sequence[int]) -> int:
    """Leading blocks ``a`` and ``b`` have in common."""
    k = 0
    while k < len(a) and k < len(b) and a[k] == b[k]:
        k += 1
    return k


class _Node:
    def __init__(
        self, blocks: list[int], parent: _Node | None, tenants: dict[int, int], owner: int
    ) -> None:
        self.blocks = blocks
        self.parent = parent
        self.children: dict[int, _Node] = {}
        self.tenants = tenants
        self.owner = owner
        self.origin = blocks[-1] if blocks else -1


class NaiveNodeTree:
    """SMG's string tree with a block for a character: a node holds a run of blocks."""

    def __init__(self, chars_of: dict[int, int]) -> None:
        self.root = _Node([], None, {}, -1)
        self.chars_of = chars_of
        self.size: dict[int, int] = {}
        self.op = 0

    def _tick(self) -> int:
        self.op += 1
        return self.op - 1

    def _chars(self, node: _Node) -> int:
        return sum(self.chars_of[b] for b in node.blocks)

    def insert(self, blocks: Sequence[int], tenant: int) -> None:
        cur = self.root
        i = 0
        while i < len(blocks):
            child = cur.children.get(blocks[i])
            if child is None:  # the rest is one new leaf, stamped
                leaf = _Node(list(blocks[i:]), cur, {tenant: self._tick()}, tenant)
                cur.children[blocks[i]] = leaf
                self.size[tenant] = self.size.get(tenant, 0) + self._chars(leaf)
                return
            s = _shared(child.blocks, blocks[i:])
            if s < len(child.blocks):  # split: a new upper node with a copy of the map
                upper = _Node(child.blocks[:s], cur, dict(child.tenants), child.owner)
                upper.origin = child.origin
                child.blocks = child.blocks[s:]
                child.parent = upper
                upper.children[child.blocks[0]] = child
                cur.children[blocks[i]] = upper
                child = upper
            if tenant not in child.tenants:
                child.tenants[tenant] = 0
                self.size[tenant] = self.size.get(tenant, 0) + self._chars(child)
            cur = child
            i += s
        cur.tenants[tenant] = self._tick()

    def lookup(self, blocks: Sequence[int]) -> int | None:
        stamp = self._tick()
        cur = self.root
        node = None
        i = 0
        while i < len(blocks) and blocks[i] in cur.children:
            node = cur.children[blocks[i]]
            s = _shared(node.blocks, blocks[i:])
            if s < len(node.blocks):
                break
            cur = node
            i += s
        if node is None:
            return None
        if node.owner not in node.tenants:
            node.owner = min(node.tenants)
        if stamp % 8 == 0:
            node.tenants[node.owner] = stamp
        return node.owner

    def _nodes(self) -> list[_Node]:
        out = []
        stack = list(self.root.children.values())
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(n.children.values())
        return out

    def evict(self, cap: int, *, per_tenant: bool) -> None:
        total = sum(self.size.values())
        if not per_tenant and total <= cap:
            return
        heap = []
        for n in self._nodes():
            for t, stamp in n.tenants.items():
                if not any(t in c.tenants for c in n.children.values()):
                    heap.append((stamp, n.blocks[-1], t, id(n), n))
        heapq.heapify(heap)
        while heap:
            if not per_tenant and total <= cap:
                return
            _s, _b, t, _i, n = heapq.heappop(heap)
            if per_tenant and self.size[t] <= cap:
                continue
            if t not in n.tenants or any(t in c.tenants for c in n.children.values()):
                continue
            del n.tenants[t]
            self.size[t] -= self._chars(n)
            total -= self._chars(n)
            par = n.parent
            assert par is not None
            if not n.tenants and not n.children:
                del par.children[n.blocks[0]]
            kids = par.children.values()
            if par is not self.root and t in par.tenants and not any(t in c.tenants for c in kids):
                heapq.heappush(heap, (par.tenants[t], par.blocks[-1], t, id(par), par))

    def state(self) -> dict[tuple[int, ...], tuple[dict[int, int], int, int]]:
        return {tuple(n.blocks): (n.tenants, n.owner, n.origin) for n in self._nodes()}


def char_tree_state(tree: CharTree) -> dict[tuple[int, ...], tuple[dict[int, int], int, int]]:
    out = {}
    for end in tree.ends:
        run = [end]
        par = tree.parent[end]
        while par is not None and par not in tree.ends:
            run.append(par)
            par = tree.parent[par]
        out[tuple(reversed(run))] = (tree.nodes[end], tree.owner[end], tree.origin[end])
    return out


# A prompt is a path in a small trie of "tokens" 0..2; each prefix has its own block id,
# as the trace's prefix-chained ids do.
prompts = st.lists(st.integers(0, 2), min_size=1, max_size=6).map(tuple)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), prompts, st.integers(0, 3)),
        st.tuples(st.just("lookup"), prompts, st.just(0)),
        st.tuples(st.just("evict"), st.integers(0, 400), st.booleans()),
    ),
    max_size=60,
)


@settings(max_examples=scaled_examples(1.0), deadline=None)
@given(ops, st.integers(0, 7))
def test_char_tree_keeps_smg_nodes(script: list[tuple[str, object, object]], start: int) -> None:
    ids: dict[tuple[int, ...], int] = {}
    chars_of: dict[int, int] = {}

    def blocks_of(path: tuple[int, ...]) -> list[int]:
        out = []
        for k in range(1, len(path) + 1):
            b = ids.setdefault(path[:k], len(ids) + 1)
            chars_of.setdefault(b, 10 * (1 + b % 3))
            out.append(b)
        return out

    policy = SglangCacheAwarePolicy(block_tokens=1)  # its lookup, on this tree
    tree = policy.tree
    ref = NaiveNodeTree(chars_of)
    tree.op = ref.op = start
    for kind, a, b in script:
        if kind == "evict":
            assert isinstance(a, int) and isinstance(b, bool)
            tree.evict(a, per_tenant=b)
            ref.evict(a, per_tenant=b)
        else:
            assert isinstance(a, tuple) and isinstance(b, int)
            blocks = blocks_of(a)
            chars = [chars_of[x] for x in blocks]
            if kind == "insert":
                tree.insert(blocks, chars, b)
                ref.insert(blocks, b)
            else:
                end = policy._lookup(blocks, tree.match(blocks, chars).blocks)
                assert (None if end is None else tree.owner[end]) == ref.lookup(blocks)
        tree._check()
        assert char_tree_state(tree) == ref.state()
        assert {t: c for t, c in tree.chars.items() if c} == {
            t: c for t, c in ref.size.items() if c
        }
        assert tree.op == ref.op
