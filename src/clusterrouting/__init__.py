"""clusterrouting: pure replica-selection policies for LLM inference clusters.

The leaf of the library: it depends on the standard library, attrs and typing-extensions only
(never numpy, datrie or prefixcache). Every function here is a pure policy over a snapshot:
time is a parameter, ties break stably, nothing is logged, started or mutated.
"""

from clusterrouting._errors import ClusterRoutingError, InvalidRecordError, NodeDataDecodeError
from clusterrouting._guard import load_limit, within_load_guard
from clusterrouting._records import NODE_ONLINE_WINDOW, NodeData, ReplicaCandidate
from clusterrouting._select import (
    DEFAULT_AFFINITY_SLACK,
    build_candidates,
    pick_best_replica,
    pick_with_affinity,
)

#: The distribution's version; the only place it is written (the build reads it from here).
__version__ = "0.1.0"

__all__ = [
    "ClusterRoutingError",
    "DEFAULT_AFFINITY_SLACK",
    "InvalidRecordError",
    "NODE_ONLINE_WINDOW",
    "NodeData",
    "NodeDataDecodeError",
    "ReplicaCandidate",
    "build_candidates",
    "load_limit",
    "pick_best_replica",
    "pick_with_affinity",
    "within_load_guard",
]
