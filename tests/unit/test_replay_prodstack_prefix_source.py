"""``prodstack-prefix`` on hand-made cases read from production-stack's source
(vllm-project/production-stack @a6c01db0: ``src/vllm_router/prefix/hashtrie.py``,
``src/vllm_router/routers/routing_logic.py``, ``src/vllm_router/services/request_service/
request.py``): partial tail chunks, the walk, the endpoint list, the pick and insert, no
load signal and no eviction."""

from __future__ import annotations

import random

from peer_cases import view

from prefixcache.replay import ProdstackPrefixPolicy, Request


def rq(blocks: tuple[int, ...], tokens: int) -> Request:
    return Request(arrival=0.0, input_tokens=tokens, output_tokens=1, blocks=blocks)


BT32 = 32  # 32 tokens x 4 characters: one 128-character chunk per full trace block


def test_prodstack_prefix_partial_tail_matches_only_the_same_text() -> None:
    # hashtrie.py:56-57 hashes text[i:i+128] for every i, so a 32-character tail is its own
    # node; a text that runs on past it has a 64-character chunk there instead.
    p = ProdstackPrefixPolicy(block_tokens=BT32)
    p.choose(0, rq((1, 2), 40), 0.0, view(3))  # 128 + 32 characters
    r = p.candidates(rq((1, 2), 40), 3)
    assert len(r) == 1 and p.trie == {(1, 128): 1 << r[0], (2, 32): 1 << r[0]}
    # 128 + 64 characters: only the first chunk is shared, the survivors are the same
    # endpoint, but not through the tail (a text of 128 + 16 shares only chunk 0 too).
    assert p.candidates(rq((1, 2), 48), 3) == r
    p.trie[(1, 128)] |= 0b111  # others also went through chunk 0 (e.g. with other tails)
    assert p.candidates(rq((1, 2), 48), 3) == [0, 1, 2]  # the tail is not credited
    assert p.candidates(rq((1, 2), 40), 3) == r  # the same text is


def test_prodstack_prefix_walk_ends_at_the_deepest_stored_chunk() -> None:
    # An insert writes the endpoint on every node of its path (hashtrie.py:66-75) and nothing
    # is ever removed, so a node's endpoints are a subset of its parent's: with a fixed
    # endpoint list the intersection (l.97-100) is never empty and the survivors are the
    # endpoints of the deepest stored chunk.
    rng = random.Random(7)
    p = ProdstackPrefixPolicy(block_tokens=10, seed=3)
    v = view(4)
    for i in range(400):
        q = rq((rng.randrange(3), 10 + rng.randrange(5), 100 + rng.randrange(40)), 30)
        deepest = 0b1111  # all four replicas while no chunk is stored
        for c in p._chunks(q):
            if c not in p.trie:
                break
            deepest = p.trie[c]
        want = [r for r in range(4) if deepest >> r & 1]
        assert p.candidates(q, 4) == want
        p.choose(i, q, 0.0, v)


def test_prodstack_prefix_first_chunk_held_only_by_a_departed_endpoint() -> None:
    # routing_logic.py:502 starts from the current endpoint list; hashtrie.py:99-100 stops
    # on an empty intersection with match_length 0, so every listed endpoint survives.
    p = ProdstackPrefixPolicy(block_tokens=BT32)
    q = rq((1, 2, 3), 96)
    p.trie = {c: 0b100 for c in p._chunks(q)}  # only replica 2, now gone
    assert p.candidates(q, 2) == [0, 1]


def test_prodstack_prefix_pick_is_one_uniform_draw_and_inserts_the_whole_text() -> None:
    # routing_logic.py:518-520: random.choice over the survivors, then insert the whole
    # prompt for that endpoint only, before the request is proxied (request.py:578, 642).
    for seed in range(30):
        p = ProdstackPrefixPolicy(block_tokens=BT32, seed=seed)
        q = rq((1, 2, 3), 80)  # 128 + 128 + 64 characters: three chunks
        r = p.choose(0, q, 0.0, view(5))
        assert r == random.Random(seed).choice(range(5))
        assert p.trie == {(1, 128): 1 << r, (2, 128): 1 << r, (3, 64): 1 << r}


def test_prodstack_prefix_ignores_load_and_never_evicts() -> None:
    # No load signal (prefix_min_match_length defaults to 0, routing_logic.py:441, 507;
    # parser.py:450-461; helm values.yaml:557) and no eviction (hashtrie.py has no delete).
    p = ProdstackPrefixPolicy(block_tokens=BT32)
    first = p.choose(0, rq((1,), 32), 0.0, view(3))
    busy = view(3, [0, 0, 0])
    busy.in_flight[first] = 10**6
    busy.waiting[first] = 10**6
    assert all(p.choose(i, rq((1,), 32), 0.0, busy) == first for i in range(1, 50))
    for i in range(2000):
        p.choose(100 + i, rq((10_000 + i, 20_000 + i), 64), 0.0, view(3))
    assert len(p.trie) == 1 + 2 * 2000
