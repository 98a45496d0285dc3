"""Prefix-aware routing and session pins inside LiteLLM (the ``litellm`` extra).

:func:`install` attaches a :class:`PrefixRoutingPlugin` to a ``litellm.Router`` (or to the
proxy's router): every chat request then goes to the deployment where it costs the cluster
least by the library's default policy (``cache-cost``, :func:`prefixcache.pick_lowest_cost`):

* candidates are the deployments LiteLLM offers, keyed by ``model_info.id``;
* the prefix chain is :func:`prefixcache.extract_chain` over
  :func:`prefixcache.messages_prefix_source` of the messages (or
  :func:`prefixcache.extract_token_chain` over the ids of a host-supplied ``tokenizer``),
  salted with the model group name; a session's next turn hashes only the blocks it adds
  to the session's previous prompt (the last ``DEFAULT_SESSION_CHAINS`` sessions are
  remembered);
* what each deployment caches comes from a local :class:`prefixcache.KvCacheMirror` (what
  this router saw succeed there), from the prompts of this router's requests in flight there
  (an engine holds a running request's prompt in its KV cache; the match is found to within
  the 512-token cost margin: every eighth of the default 64-token blocks is tracked) and,
  with ``sync=`` (or a host-supplied ``index=``), from a :class:`prefixcache.Index` shared
  through ``Sync`` (the longest live match, learned from every router); in-flight counts
  and the prefill backlog come from reservations (LiteLLM reports a first token only when
  the request ends, so a deployment's backlog drains from each reservation on at
  ``prefill_tokens_per_s``, ``DEFAULT_PREFILL_TOKENS_PER_S``, or at the rate learned from
  streamed responses' first-token times, ``learn_prefill_rate``); recent shares from a
  :class:`prefixcache.DispatchWindow`;
* the backlog weighs ``DEFAULT_QUEUE_WEIGHT`` (0.1), or ``DEFAULT_ROOM_QUEUE_WEIGHT`` (0.2)
  while every deployment's cache in the mirror is filled below ``DEFAULT_ROOM_KV_FILL``
  (half) of ``mirror_blocks`` and some deployment's backlog is under
  ``DEFAULT_ROOM_BACKLOG_TOKENS`` (as the replay's ``cache-cost``: a copy then evicts
  nothing for a while and uses prefill the cluster has to spare);
* hot prefixes: :meth:`prefixcache.HotPrefixes.credit` over the model group's last ``256 x
  deployments`` dispatches, as in the replay's ``cache-cost`` except for when a holder counts
  as busy: while every deployment holding the request's prefix is beyond the load guard
  (its reservations; the config's balance thresholds), a prefix in demand beyond 0.75 of a
  deployment gets warm copies, and a shared one weighs the backlog at
  ``DEFAULT_SHARED_QUEUE_WEIGHT``. So a prompt keeps its deployment while that deployment is
  not overloaded. A prefix in demand of at least one deployment that some deployment lacks
  (or that is at least three quarters of the request's chain) picks only among the
  deployments within their fair share (:meth:`prefixcache.HotPrefixes.needs_fair_share`,
  the fair-share guard of :func:`prefixcache.pick_lowest_cost` at
  ``DEFAULT_SHARE_FACTOR``). The plugin does not know the engines' KV usage: the shared
  weight and the guard hold only while the distinct prompt blocks of the reservations on
  every deployment fill less than ``DEFAULT_SHARED_KV_USAGE`` (0.8) of ``mirror_blocks``,
  the engine's KV cache as the plugin models it;
* a session pin (:class:`prefixcache.SessionPins`) adds ``DEFAULT_PIN_TOKENS`` to its
  deployment's savings while that deployment is within the library's load guard
  (:func:`clusterrouting.within_load_guard` with the config's balance thresholds): a strong
  preference in the cost, not a hard route.

Reservations: a choice reserves ``(request id, deployment id)`` (the request id is LiteLLM's
``litellm_call_id`` when the request carries one, else an id the plugin stamps into the
request's metadata, which LiteLLM hands back to the callbacks); LiteLLM's success and failure
callbacks (a timeout is a failure) release it, and a reservation no callback released within
``reservation_ttl`` seconds expires (counted). Only a success observes the chain (index,
mirror) and pins the session; a failure clears the session's pin to that deployment.

Never raises into LiteLLM: an internal error returns the input unchanged (filter mode: the
deployment list; strategy mode: the first deployment of the group) and is counted in
:meth:`PrefixRoutingPlugin.stats`.

LiteLLM facts this module relies on (checked against LiteLLM 1.108 and 1.110):

* ``CustomLogger.async_filter_deployments(model, healthy_deployments, messages,
  request_kwargs, parent_otel_span)`` runs for every logger in the process-wide
  ``litellm.callbacks`` after LiteLLM's health, cooldown and pre-call filters; what it raises
  fails the attempt. ``request_kwargs`` carries the request's ``metadata`` dict (the same
  object the callbacks see as ``kwargs["litellm_params"]["metadata"]``) and
  ``litellm_trace_id``; it carries ``litellm_call_id`` only when the caller (the proxy) set
  one.
* A custom strategy (``Router.register_plugin`` on 1.110, ``set_custom_routing_strategy``
  on 1.108) replaces the whole selection, including cooldown and health filtering.
* Because ``litellm.callbacks`` is process-wide, every router of a process runs every
  plugin's filter: :func:`install` wraps the router's async endpoints so that a request is
  decided by its own router's plugin.
* LiteLLM copies ``litellm.callbacks`` into its success/failure lists, skipping a logger when
  one of the same class with equal public ``str``/``bool``/``int`` attributes is there: each
  plugin carries a unique public ``plugin_id`` so that every plugin gets its callbacks.
* A success callback's ``kwargs`` carry ``stream``, ``start_time``,
  ``api_call_start_time``, ``completion_start_time`` and ``end_time`` (datetimes on
  LiteLLM's clock). ``start_time`` is read before LiteLLM's pre-call work (in the proxy,
  before guardrails and routing, and it spans retries); ``api_call_start_time`` is set
  anew when each attempt is handed to the deployment. ``completion_start_time`` is when a
  streamed response's first chunk arrived, and the end for a response not streamed (or a
  retried one that had none). Checked against 1.108; the integration test
  ``test_streamed_responses_teach_the_prefill_rate`` exercises it.
"""

from __future__ import annotations

from prefixcache.integrations._litellm_chains import DEFAULT_SESSION_CHAINS
from prefixcache.integrations._litellm_plugin import (
    DEFAULT_MIRROR_BLOCKS,
    DEFAULT_PREFILL_TOKENS_PER_S,
    DEFAULT_RESERVATION_TTL,
    DEFAULT_SESSION_HEADER,
    DEFAULT_SESSION_METADATA_KEY,
    Mode,
    PluginStats,
    PrefixRoutingPlugin,
    install,
)
from prefixcache.integrations._litellm_requests import (
    REQUEST_ID_METADATA_KEY,
    Tokenizer,
    plain_source,
)

__all__ = [
    "DEFAULT_MIRROR_BLOCKS",
    "DEFAULT_PREFILL_TOKENS_PER_S",
    "DEFAULT_RESERVATION_TTL",
    "DEFAULT_SESSION_CHAINS",
    "DEFAULT_SESSION_HEADER",
    "DEFAULT_SESSION_METADATA_KEY",
    "Mode",
    "PluginStats",
    "PrefixRoutingPlugin",
    "REQUEST_ID_METADATA_KEY",
    "Tokenizer",
    "install",
]

_plain_source = plain_source
"""The plain-message fast path of the prefix source (checked against
:func:`prefixcache.messages_prefix_source` by the tests)."""
