"""Integrations of prefixcache with other software, one module each, behind an extra.

* :mod:`prefixcache.integrations.litellm` (extra ``litellm``): prefix-aware routing and
  session pins inside a ``litellm.Router`` or the LiteLLM proxy.

Nothing here is imported by ``import prefixcache``.
"""

__all__: list[str] = []
