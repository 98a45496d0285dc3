"""The plugin instance the LiteLLM proxy loads from ``config.yaml``
(``litellm_settings.callbacks: prefix_routing.plugin``).

Filter mode: LiteLLM keeps its health checks and cooldowns and the plugin narrows the healthy
deployments of each request to the one where its prefix is cached (sessions named by the
``x-session-id`` header or the ``session_id`` metadata key stay on their deployment while it
is within the load guard).

With ``PREFIXCACHE_REDIS_URL`` set, affinity and session pins are shared with every other
proxy worker or replica connected to the same Redis.
"""

from __future__ import annotations

import os

from prefixcache import SessionPins
from prefixcache.integrations.litellm import PrefixRoutingPlugin

_redis = os.environ.get("PREFIXCACHE_REDIS_URL")
_transport = None
if _redis:
    from prefixcache.transports.redis import RedisTransport

    _transport = RedisTransport.connect(_redis)

pins = SessionPins(ttl=1800.0, max_entries=100_000)
plugin = PrefixRoutingPlugin(None, pins=pins, sync=_transport)
plugin.attach()
