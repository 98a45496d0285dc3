"""prefixcache: prefix chains, the radix index, affinity decisions and cross-router sync."""

__all__: list[str] = []
