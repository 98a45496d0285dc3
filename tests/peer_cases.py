"""Small builders for the peer-policy tests (``test_replay_peers*.py``): a cluster view
with chosen loads, a request of whole trace blocks, and an engine's store event."""

from __future__ import annotations

from prefixcache.kvevents import BlockStored, EventBatch
from prefixcache.replay import ClusterModel, ClusterView, Request

BT = 10  # tokens per trace block: 40 characters per full block


def view(n: int, in_flight: list[int] | None = None, **metrics: list[float]) -> ClusterView:
    """``n`` replicas with these in-flight counts and scraped metrics (``waiting=...``)."""
    v = ClusterView(ClusterModel(replicas=n, block_tokens=BT))
    if in_flight is not None:
        v.in_flight[:] = in_flight
    for k, vals in metrics.items():
        getattr(v, k)[:] = vals
    return v


def rq(blocks: tuple[int, ...], tokens: int | None = None, bt: int = BT) -> Request:
    """A request of ``blocks`` (``bt`` tokens each unless ``tokens`` says otherwise)."""
    return Request(
        arrival=0.0,
        input_tokens=bt * len(blocks) if tokens is None else tokens,
        output_tokens=1,
        blocks=blocks,
    )


def stored(*blocks: int, parent: int | None = None) -> EventBatch:
    """What a simulated engine publishes: one stand-in token per block (its id)."""
    return EventBatch(
        ts=0.0,
        rank=None,
        events=(
            BlockStored(
                block_hashes=blocks, parent_block_hash=parent, token_ids=blocks, block_size=1
            ),
        ),
    )
