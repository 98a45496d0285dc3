"""The LiteLLM plugin's memory of each session's last chain: a conversation's next turn
repeats the previous prompt and adds to it, so only the blocks it adds are hashed."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Final

from clusterrouting import InvalidRecordError
from prefixcache._chain import chain_of_bytes, extract_chain
from prefixcache._config import Config

__all__ = ["DEFAULT_SESSION_CHAINS", "SessionChains"]

DEFAULT_SESSION_CHAINS: Final = 1024
"""Sessions whose last chain the plugin keeps (least recently used go first)."""


class SessionChains:
    """:func:`prefixcache.extract_chain` of a session's prompts, continued from the
    session's previous prompt where this one repeats it.

    For each ``(model group, session)`` it keeps the previous prompt (as far as the chain
    reaches) and the chain of its full blocks. A prompt that starts with that prompt shares
    those chain elements (element ``i`` hashes the prefix up to the end of block ``i``), so
    only the blocks after them are hashed, chained on from the last shared element:
    ``extract_chain``'s step 5 from that block on. (A conversation's next turn starts with
    the previous one; keeping the whole prompt instead of a copy of its full blocks saves
    copying it.) SPEED: a continuation of ``extract_chain`` (a conversation's turn
    hashes one or two new blocks instead of all of them, up to ``max_depth``);
    tests/integration/test_litellm.py checks every chain against ``extract_chain``.

    Only ASCII prompts are continued (a block is then as many characters as bytes); any
    other prompt, and a request without a session, is hashed whole.

    Memory: at most ``capacity`` sessions, each at most ``window_bytes * max_depth``
    characters and ``max_depth`` hashes. Thread-safe without a lock (taking one costs more
    than the rest of a continued chain): each entry is an immutable value that is checked
    against the prompt before it is used, and each access to the table is one operation on
    it, atomic under the GIL; concurrent turns of one session at worst hash in full.

    Raises (constructor):
        InvalidRecordError: ``capacity`` is not an ``int >= 1``.

    >>> config = Config(window_bytes=4)
    >>> chains = SessionChains(config, capacity=8)
    >>> chains.chain("m", "s", "abcdefgh") == extract_chain("m", "abcdefgh", config)
    True
    >>> chains.chain("m", "s", "abcdefghij") == extract_chain("m", "abcdefghij", config)
    True
    """

    __slots__ = ("_capacity", "_config", "_last", "_limit", "_width")

    def __init__(self, config: Config, *, capacity: int = DEFAULT_SESSION_CHAINS) -> None:
        if type(capacity) is not int or capacity < 1:
            raise InvalidRecordError("capacity", capacity, "must be an int >= 1")
        self._config = config
        self._capacity = capacity
        self._width = config.window_bytes
        self._limit = config.window_bytes * config.max_depth
        self._last: OrderedDict[tuple[str, str], tuple[str, tuple[int, ...]]] = OrderedDict()

    def __len__(self) -> int:
        """Sessions held."""
        return len(self._last)

    def chain(self, group: str, session: str | None, source: str) -> tuple[int, ...]:
        """``extract_chain(group, source, config)``, continued from ``session``'s previous
        prompt in ``group`` when ``source`` starts with it; remembered as that session's
        previous prompt. O(new blocks + len(source)) for a continued prompt."""
        if session is None or not source.isascii():
            return extract_chain(group, source, self._config)
        width = self._width
        head = source[: self._limit]
        key = (group, session)
        table = self._last
        last = table.get(key)
        if last is not None and head.startswith(last[0]):
            shared = last[1]
            done = len(shared)
            depth = -(-len(head) // width) - done
            chain = shared
            if depth:
                data = head[done * width :].encode()
                chain += chain_of_bytes(shared[-1], data, width, depth)
        else:
            chain = extract_chain(group, head, self._config)
        full = len(head) // width
        if full:
            table.pop(key, None)  # re-inserted last: the most recently used
            table[key] = (head, chain[:full])
            while len(table) > self._capacity:
                with contextlib.suppress(KeyError):  # another thread emptied it meanwhile
                    table.popitem(last=False)
        return chain
