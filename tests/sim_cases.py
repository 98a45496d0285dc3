"""Small builders for the simulator's tests: a cluster whose step times are round numbers."""

from __future__ import annotations

from prefixcache.replay import ClusterModel


def flat(**kw: object) -> ClusterModel:
    """One replica (unless ``replicas=``), a bare step of 0.1 s, prefill at 100 tokens/s,
    10-token blocks, an infinite cache, no per-request or per-context decode cost."""
    base: dict[str, object] = {
        "replicas": 1,
        "cache_blocks": None,
        "block_tokens": 10,
        "prefill_tokens_per_s": 100.0,
        "decode_tokens_per_s": 10.0,
        "decode_s_per_request": 0.0,
        "decode_s_per_context_token": 0.0,
    }
    base.update(kw)
    return ClusterModel(**base)  # type: ignore[arg-type]
