"""Our chain of a KV block: token ids re-hashed from a namespace root, never the engine's hash.

:func:`extract_kv_chain` gives a request's chain; the helpers below give the namespace root of
a stored block at the root of a chain and the hashes of blocks whose extra keys (multimodal
ids) are mixed in, so that stored blocks and requests hash alike.
"""

from __future__ import annotations

from typing import Final

from xxhash import xxh64_intdigest

from clusterrouting import InvalidRecordError
from prefixcache._chain import TokenIds, chain_of_tokens, model_salt

__all__ = [
    "chain_with_extra",
    "extra_keys_of",
    "extract_kv_chain",
    "has_foreign_keys",
    "namespace_root",
]

_NS_TAG: Final = b"\x00prefixcache.kvevents.namespace\x00"
_EXTRA_TAG: Final = b"\x00prefixcache.kvevents.extra\x00"


def namespace_root(model: str, lora_name: str | None, keys: tuple[object, ...]) -> int:
    """The hash a chain starts from: the model salt, namespaced by adapter and extra keys.

    With no adapter and no keys it is ``XXH64(model)``, the salt of
    :func:`prefixcache.extract_token_chain`, so such chains equal today's chains.
    """
    salt = model_salt(model)
    if lora_name is None and not keys:
        return salt
    tag = repr((lora_name, keys)).encode("utf-8", "surrogatepass")
    return xxh64_intdigest(salt.to_bytes(8, "little") + _NS_TAG + tag)


def _mix_extra(h: int, keys: tuple[object, ...]) -> int:
    return xxh64_intdigest(
        h.to_bytes(8, "little") + _EXTRA_TAG + repr(keys).encode("utf-8", "surrogatepass")
    )


def extract_kv_chain(
    model: str,
    token_ids: TokenIds,
    *,
    block_tokens: int,
    lora_name: str | None = None,
    cache_salt: str | None = None,
    max_depth: int | None = None,
) -> tuple[int, ...]:
    """The chain :class:`KvResidency` identifies a request's blocks by.

    :func:`prefixcache.extract_token_chain`'s scheme started from a namespace root instead of
    the bare model salt: ``root = XXH64(model)`` when neither ``lora_name`` nor ``cache_salt``
    is given (so the chain **equals** ``extract_token_chain(model, token_ids, ...)``), else
    ``root = XXH64(XXH64(model).to_bytes(8, "little") + TAG + repr((lora_name, keys)))``
    with ``keys = (cache_salt,)`` (or ``()`` for no salt). Adapters and tenants therefore
    never share blocks. A trailing partial block is hashed as in ``extract_token_chain``
    (it never matches a stored full block).

    Args:
        model: the model name.
        token_ids: the prompt's token ids (ints in ``[0, 2**32)`` or an integer array).
        block_tokens: tokens per block (> 0).
        lora_name: the LoRA adapter the request uses, ``None`` for the base model.
        cache_salt: the request's ``cache_salt`` (vLLM), ``None`` or ``""`` for none.
        max_depth: hash at most this many blocks (> 0); ``None`` for all.

    Returns:
        The chain, shallow to deep; ``()`` for no tokens.

    Raises:
        InvalidRecordError: as ``extract_token_chain``; ``lora_name`` or ``cache_salt`` not a
            str or ``None``.

    >>> from prefixcache import extract_token_chain
    >>> extract_kv_chain("m", [1, 2, 3, 4], block_tokens=2) == extract_token_chain(
    ...     "m", [1, 2, 3, 4], block_tokens=2)
    True
    >>> extract_kv_chain("m", [1, 2], block_tokens=2, cache_salt="t1") == extract_kv_chain(
    ...     "m", [1, 2], block_tokens=2)
    False
    """
    if type(model) is not str:
        raise InvalidRecordError("model", model, "must be a str")
    if lora_name is not None and type(lora_name) is not str:
        raise InvalidRecordError("lora_name", lora_name, "must be a str or None")
    if cache_salt is not None and type(cache_salt) is not str:
        raise InvalidRecordError("cache_salt", cache_salt, "must be a str or None")
    root = namespace_root(model, lora_name, (cache_salt,) if cache_salt else ())
    return chain_of_tokens(root, token_ids, block_tokens, max_depth)


def extra_keys_of(entry: object, lora: str | None) -> tuple[object, ...]:
    """A block's extra keys without the adapter's name (vLLM lists it first, once); a
    ``cache_salt`` equal to the adapter's name stays, as the request's salt."""
    if not isinstance(entry, tuple):
        return (entry,)
    if lora is None or lora not in entry:
        return entry
    i = entry.index(lora)
    return entry[:i] + entry[i + 1 :]


def has_foreign_keys(extra: tuple[object, ...], lora: str | None, at_root: bool) -> bool:
    for i, entry in enumerate(extra):
        if not entry or (i == 0 and at_root):
            continue
        if extra_keys_of(entry, lora):
            return True
    return False


def chain_with_extra(
    prev: int,
    data: bytes,
    width: int,
    per: int,
    extra: tuple[object, ...],
    lora: str | None,
    at_root: bool,
) -> tuple[int, ...]:
    """Our hashes of a store whose blocks carry extra keys beyond the adapter name (and the
    root block's salt): those keys are mixed into the block's first sub-block hash."""
    out: list[int] = []
    n = len(data) // (width * per)
    for i in range(n):
        for j in range(per):
            start = (i * per + j) * width
            prev = xxh64_intdigest(prev.to_bytes(8, "little") + data[start : start + width])
            if j == 0 and i < len(extra) and extra[i] and not (i == 0 and at_root):
                keys = extra_keys_of(extra[i], lora)
                if keys:
                    prev = _mix_extra(prev, keys)
            out.append(prev)
    return tuple(out)
