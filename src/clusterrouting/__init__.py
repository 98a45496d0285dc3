"""clusterrouting: pure replica-selection policies for LLM inference clusters."""

from clusterrouting._errors import ClusterRoutingError, InvalidRecordError, NodeDataDecodeError
from clusterrouting._guard import within_load_guard

__all__ = [
    "ClusterRoutingError",
    "InvalidRecordError",
    "NodeDataDecodeError",
    "within_load_guard",
]
