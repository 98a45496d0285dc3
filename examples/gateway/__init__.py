"""Example federation gateway built on clusterrouting + prefixcache.

An L7 gateway (aiohttp) in front of several OpenAI-compatible backends that routes each request
by model, true in-flight load, free VRAM and prefix-cache affinity, with a live cluster page,
plus a mock backend that emulates prefix-cache hits. Run it from the repository root::

    python -m examples.gateway --help

Modules:

* :mod:`examples.gateway.app`: :class:`Gateway` (routing, proxying, websocket, status data);
* :mod:`examples.gateway.mock_backend`: :class:`MockBackend`;
* :mod:`examples.gateway.membership`: ``NodeData`` announcements and failure marks;
* :mod:`examples.gateway.cluster_page`: the ``/cluster`` HTML page;
* :mod:`examples.gateway.nats_bridge`: a ``Transport`` over a nats-py connection on the loop;
* :mod:`examples.gateway.serving`: start/stop an aiohttp app on a real socket.

Needs the ``gateway`` extra (``pip install -e '.[gateway]'``: aiohttp, nats-py).
"""

from examples.gateway.app import DEFAULT_BODY_LIMIT, Gateway, GatewaySettings
from examples.gateway.mock_backend import NODE_SUBJECT, MockBackend
from examples.gateway.serving import RunningServer, start_server

__all__ = [
    "DEFAULT_BODY_LIMIT",
    "NODE_SUBJECT",
    "Gateway",
    "GatewaySettings",
    "MockBackend",
    "RunningServer",
    "start_server",
]
