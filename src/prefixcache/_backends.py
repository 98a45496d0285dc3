"""The node-store backends of :class:`prefixcache.RadixTree`: their names and how to make
one (``datrie`` is an optional extra, imported only when asked for)."""

from __future__ import annotations

from typing import Literal

from clusterrouting import InvalidRecordError
from prefixcache._protocols import NodeStore
from prefixcache._runs import DictStore

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "BackendUnavailableError", "make_store"]

Backend = Literal["dict", "datrie"]
BACKENDS: tuple[Backend, ...] = ("dict", "datrie")
DEFAULT_BACKEND: Backend = "dict"


class BackendUnavailableError(ImportError):
    """A backend's optional dependency is not installed (``backend="datrie"`` needs
    ``pip install 'clusterrouting[datrie]'``)."""


def make_store(backend: str) -> NodeStore:
    """A fresh node store for ``backend``.

    Raises:
        InvalidRecordError: ``backend`` is not one of :data:`BACKENDS`.
        BackendUnavailableError: ``"datrie"`` without the ``datrie`` package.
    """
    if backend == "dict":
        return DictStore()
    if backend == "datrie":
        try:
            from prefixcache._datrie_store import DatrieStore
        except ImportError as exc:  # the C extension is an optional extra
            raise BackendUnavailableError(
                "backend='datrie' needs the datrie package: "
                "pip install 'clusterrouting[datrie]' (a C compiler builds it)"
            ) from exc
        return DatrieStore()
    raise InvalidRecordError("backend", backend, "must be 'dict' or 'datrie'")
