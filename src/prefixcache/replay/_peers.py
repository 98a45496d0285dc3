"""Peer routers' default policies, re-implemented for the replay from their sources.

Each class follows one section of the peer fact sheet (the project's
``peer-policies.md``), which pins every router to a source snapshot; the docstrings name
the snapshot and the source files. Every policy runs at its documented defaults, keeps
its own state (what it inserts, when, and how it evicts) and its own notion of load.
Every random choice draws from one ``random.Random(seed)`` per policy; "arbitrary"
choices go to the lowest replica index, except SMG's "first 8 tenants in map order", a
fixed pseudo-random order per node drawn from the seed (``_peer_radix.map_rank``).

The policies live in one module per peer family (``_peer_radix``: SGLang / SMG;
``_peer_llmd`` and ``_peer_llmd_precise``: llm-d; ``_peer_dynamo``: Dynamo;
``_peer_prodstack``: production-stack; ``_peer_gateways``: AIBrix, Ray) over the pieces
they share in ``_peer_base`` (the mapping of trace blocks onto characters, the engines'
event index, the character tree); this
module gathers them.
"""

from __future__ import annotations

from prefixcache.replay._peer_base import EngineIndex
from prefixcache.replay._peer_dynamo import DynamoKvPolicy
from prefixcache.replay._peer_gateways import (
    AibrixPrefixCacheCurrentPolicy,
    AibrixPrefixCachePolicy,
    RayPrefixAffinityPolicy,
)
from prefixcache.replay._peer_llmd import LlmdCurrentPolicy, LlmdDefaultPolicy, TieRotation
from prefixcache.replay._peer_llmd_precise import LlmdPreciseCurrentPolicy, LlmdPrecisePolicy
from prefixcache.replay._peer_prodstack import ProdstackLoadAwarePolicy, ProdstackPrefixPolicy
from prefixcache.replay._peer_radix import (
    SglangCacheAwarePolicy,
    SmgCacheAwareCurrentPolicy,
    SmgCacheAwarePolicy,
    SmgLoadReport,
)

__all__ = [
    "AibrixPrefixCacheCurrentPolicy",
    "AibrixPrefixCachePolicy",
    "DynamoKvPolicy",
    "EngineIndex",
    "LlmdCurrentPolicy",
    "LlmdDefaultPolicy",
    "LlmdPreciseCurrentPolicy",
    "LlmdPrecisePolicy",
    "ProdstackLoadAwarePolicy",
    "ProdstackPrefixPolicy",
    "RayPrefixAffinityPolicy",
    "SglangCacheAwarePolicy",
    "SmgCacheAwareCurrentPolicy",
    "SmgCacheAwarePolicy",
    "SmgLoadReport",
    "TieRotation",
]
