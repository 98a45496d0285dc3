"""What the LiteLLM plugin reads from LiteLLM's records: deployment ids, a request's prefix
source, chain, session key and request id, and the reservation a callback belongs to.

Pure functions over LiteLLM's dicts (the request's metadata dict is the one exception:
:func:`request_id` stamps the id it returns into it).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Final, TypeGuard

from clusterrouting import InvalidRecordError
from prefixcache._chain import extract_chain, extract_token_chain, messages_prefix_source
from prefixcache._config import Config
from prefixcache.integrations._litellm_chains import SessionChains

#: An ``isinstance`` target built once (an inline union is built on every call).
_LIST_OR_TUPLE = (list, tuple)

__all__ = [
    "BYTES_PER_TOKEN",
    "REQUEST_ID_METADATA_KEY",
    "Tokenizer",
    "callback_target",
    "deployment_id",
    "deployment_ids",
    "first_token_times",
    "is_mapping",
    "plain_source",
    "prefix_source",
    "request_chain",
    "request_id",
    "request_metadata",
    "session_of",
]

Tokenizer = Callable[[str, str], Sequence[int]]
"""``tokenizer(model_group, text) -> token ids``: when given, chains hash token blocks."""

REQUEST_ID_METADATA_KEY: Final = "prefixcache_request_id"
"""The metadata key the plugin stamps its request id under."""

BYTES_PER_TOKEN: Final = 4
"""Characters taken as one token when there is no tokenizer."""


def is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    """Whether ``value`` is a mapping (LiteLLM's records are dicts: tested first, an ABC
    check costs far more)."""
    return type(value) is dict or isinstance(value, Mapping)


def _model_info_id(record: object) -> str | None:
    """``record["model_info"]["id"]`` when that is a string, else ``None``."""
    info = record.get("model_info") if is_mapping(record) else None
    did = info.get("id") if is_mapping(info) else None
    return did if isinstance(did, str) else None


def deployment_id(deployment: object) -> str:
    """The deployment's ``model_info.id``.

    Raises:
        InvalidRecordError: no ``model_info.id``, or not a non-empty string.
    """
    did = _model_info_id(deployment)
    if not did:
        raise InvalidRecordError("deployment", deployment, "has no model_info.id")
    return did


def deployment_ids(deployments: Sequence[Mapping[str, Any]]) -> list[str]:
    """:func:`deployment_id` of each deployment, in order (raises as it does)."""
    try:  # LiteLLM's records: plain dicts with a string id
        ids = [d["model_info"]["id"] for d in deployments]
    except (KeyError, TypeError, IndexError):
        return [deployment_id(d) for d in deployments]
    for i, did in enumerate(ids):
        if type(did) is not str or not did:
            deployment_id(deployments[i])  # raises, naming the deployment
    return ids


def plain_source(messages: Sequence[Any]) -> tuple[str, int] | None:
    """``(messages_prefix_source(messages), its length)`` for the common case that is cheap
    to build here: every message has exactly the keys ``role`` and ``content``, both strings,
    and the text is ASCII (no case-folded keys, part lists, ``null`` values or lone
    surrogates to normalise); ``None`` otherwise. SPEED: a copy of that rule for plain
    messages (a sixth of the general rule's instructions on benchmarks/bench_litellm.py's
    conversations); tests/integration/test_litellm.py checks it against
    ``messages_prefix_source``."""
    # A plain loop, not map(itemgetter): on CPython 3.11 an itemgetter call builds an
    # argument tuple and a result tuple per message, which costs more than the loop.
    parts: list[str] = []
    append = parts.append
    try:
        for message in messages:
            if len(message) != 2:
                return None
            append(message["role"])
            append(message["content"])
        parts.append("")  # the last message's closing newline
        text = "\n".join(parts)  # a value that is not a string raises TypeError
    except (KeyError, TypeError):
        return None
    return (text, len(text)) if text.isascii() else None


def request_metadata(kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The request's metadata dict (``metadata``, else ``litellm_metadata``), or ``None``."""
    for name in ("metadata", "litellm_metadata"):
        md = kwargs.get(name)
        if isinstance(md, dict):
            return md
    return None


def session_of(kwargs: Mapping[str, Any], metadata_key: str, header: str) -> str | None:
    """The request's session key: metadata ``metadata_key``, else the request header named
    ``header`` (lower case; matched case-insensitively); ``None`` when neither is a
    non-empty string."""
    md = request_metadata(kwargs)
    if md is not None:
        value = md.get(metadata_key)
        if isinstance(value, str) and value:
            return value
    headers: object = None
    if md is not None:
        headers = md.get("headers")
    if not isinstance(headers, Mapping):
        psr = kwargs.get("proxy_server_request")
        headers = psr.get("headers") if isinstance(psr, Mapping) else None
    if isinstance(headers, Mapping):
        for name, value in headers.items():
            if isinstance(name, str) and name.lower() == header:
                return value if isinstance(value, str) and value else None
    return None


def prefix_source(messages: object, kwargs: Mapping[str, Any], *, plain: bool) -> tuple[str, int]:
    """``(source, length)``: the request's prefix source and its length in characters.

    The source is :func:`prefixcache.messages_prefix_source` of ``messages`` (else of a
    message list under ``prompt`` or ``input``); a string ``prompt`` or ``input`` is its own
    source; no prompt at all gives ``("", 0)``. ``plain`` allows :func:`plain_source`.
    """
    if not (isinstance(messages, _LIST_OR_TUPLE) and messages):
        messages = None
        for name in ("prompt", "input"):
            value = kwargs.get(name)
            if isinstance(value, str):
                return value, len(value)
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                messages = value
                break
        if messages is None:
            return "", 0
    if plain:
        fast = plain_source(messages)
        if fast is not None:
            return fast
    text = messages_prefix_source(messages)
    return text, len(text)


def request_chain(
    group: str,
    source: str,
    length: int,
    *,
    tokenizer: Tokenizer | None,
    block_tokens: int,
    config: Config,
    chains: SessionChains | None = None,
    session: str | None = None,
) -> tuple[tuple[int, ...], int, int]:
    """``(chain, prompt_tokens, tokens per block)`` of a prefix source salted with
    ``group``: with ``tokenizer(group, source) -> ids``, blocks of ``block_tokens`` ids;
    without, :func:`prefixcache.extract_chain` (continued from the session's previous
    prompt by ``chains``, when given) and a token taken as 4 characters."""
    if tokenizer is not None:
        ids = tokenizer(group, source)
        chain = extract_token_chain(
            group, ids, block_tokens=block_tokens, max_depth=config.max_depth
        )
        return chain, len(ids), block_tokens
    if chains is not None:
        chain = chains.chain(group, session, source)
    else:
        chain = extract_chain(group, source, config)
    return chain, -(-length // BYTES_PER_TOKEN), block_tokens


def request_id(kwargs: Mapping[str, Any], uid: str, counter: Iterator[int]) -> str:
    """The request's id: the one stamped in its metadata, else ``litellm_call_id``, else
    ``f"{uid}-{next(counter)}"``; stamped into the metadata (when there is one)."""
    md = request_metadata(kwargs)
    if md is not None:
        rid = md.get(REQUEST_ID_METADATA_KEY)
        if isinstance(rid, str) and rid:
            return rid
    call_id = kwargs.get("litellm_call_id")
    rid = call_id if isinstance(call_id, str) and call_id else f"{uid}-{next(counter)}"
    if md is not None:
        md[REQUEST_ID_METADATA_KEY] = rid
    return rid


def callback_target(kwargs: Mapping[str, Any]) -> tuple[str, list[str]]:
    """``(deployment id, request ids to try)`` of a LiteLLM success/failure callback's
    ``kwargs`` (the deployment is ``""`` when they name none)."""
    try:  # LiteLLM's shape: the deployment and the stamped id under litellm_params
        params = kwargs["litellm_params"]
        deployment = params["model_info"]["id"]
        rid = params["metadata"][REQUEST_ID_METADATA_KEY]
        if type(deployment) is str and type(rid) is str:
            return deployment, [rid]
    except (KeyError, TypeError):
        pass
    return _callback_deployment(kwargs), _callback_request_ids(kwargs)


def first_token_times(kwargs: Mapping[str, Any]) -> tuple[float, float | None] | None:
    """``(sent, first token)`` in seconds on LiteLLM's clock from a success callback's
    ``kwargs``: when the attempt was handed to the deployment (``api_call_start_time``, set
    anew for each retry; else ``start_time``, which also spans LiteLLM's own pre-call work)
    and, for a streamed response (``stream`` is ``True``), when its first chunk came
    (``completion_start_time``; ``None`` for a response not streamed, or one whose
    first-chunk time is missing, not after the hand-off or not before its end, as LiteLLM
    leaves it after a retry). ``None`` when no finite hand-off time is there. Never raises:
    these are values from LiteLLM, read as given."""
    try:
        sent = _seconds(kwargs.get("api_call_start_time"))
        start = _seconds(kwargs.get("start_time"))
        if sent is None or (start is not None and sent < start):
            sent = start
        if sent is None:
            return None
        if kwargs.get("stream") is not True:
            return sent, None
        first = _seconds(kwargs.get("completion_start_time"))
        end = _seconds(kwargs.get("end_time"))
        if (
            first is None
            or first <= sent
            or (end is not None and first >= end)
            or not math.isfinite(first - sent)
        ):
            return sent, None
        return sent, first
    except Exception:  # a datetime whose timestamp() or tzinfo raises
        return None


def _seconds(value: object) -> float | None:
    """A LiteLLM time (a datetime, or seconds) as finite float seconds, else ``None``."""
    if isinstance(value, datetime.datetime):
        t = value.timestamp()
    elif type(value) is float or type(value) is int:
        t = float(value)
    else:
        return None
    return t if type(t) is float and math.isfinite(t) else None


def _callback_deployment(kwargs: Mapping[str, Any]) -> str:
    lp = kwargs.get("litellm_params")
    if is_mapping(lp):
        did = _model_info_id(lp)
        if did is None:
            did = _model_info_id(lp.get("metadata"))
        if did is not None:
            return str(did)
    mid = kwargs.get("model_id")
    return mid if isinstance(mid, str) else ""


def _callback_request_ids(kwargs: Mapping[str, Any]) -> list[str]:
    ids: list[str] = []
    lp = kwargs.get("litellm_params")
    if is_mapping(lp):
        for name in ("metadata", "litellm_metadata"):
            md = lp.get(name)
            if is_mapping(md):
                rid = md.get(REQUEST_ID_METADATA_KEY)
                if isinstance(rid, str) and rid not in ids:
                    ids.append(rid)
    call_id = kwargs.get("litellm_call_id")
    if isinstance(call_id, str) and call_id not in ids:
        ids.append(call_id)
    return ids
