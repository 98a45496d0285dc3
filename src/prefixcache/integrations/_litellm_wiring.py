"""How a LiteLLM plugin is wired in: the router endpoints scoped to their plugin, the
strategy-mode face, LiteLLM's process-wide callback lists, and the subscription of the index
and pins to a sync transport."""

from __future__ import annotations

import contextlib
import contextvars
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from litellm.types.router import CustomRoutingStrategyBase

from clusterrouting import InvalidRecordError
from prefixcache._pins import SessionPins
from prefixcache._protocols import AsyncTransport, Transport
from prefixcache._sync import Sync

__all__ = [
    "ACTIVE",
    "Picker",
    "Strategy",
    "Subscription",
    "leave_callbacks",
    "reset_strategy",
    "restore_endpoints",
    "set_strategy",
    "wrap_endpoints",
]

_CALLBACK_LISTS: Final = (
    "callbacks",
    "input_callback",
    "success_callback",
    "failure_callback",
    "_async_success_callback",
    "_async_failure_callback",
)
_ENDPOINTS: Final = ("acompletion", "atext_completion", "aresponses", "aanthropic_messages")

ACTIVE: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "prefixcache_litellm_plugin", default=None
)
"""The plugin deciding the current request (set by the endpoints :func:`wrap_endpoints`
wraps)."""


def _scoped(plugin: object, endpoint: Any) -> Any:
    """``endpoint`` running with ``plugin`` as the deciding plugin."""

    async def scoped(*args: Any, **kwargs: Any) -> Any:
        token = ACTIVE.set(plugin)
        try:
            return await endpoint(*args, **kwargs)
        finally:
            ACTIVE.reset(token)

    scoped.__name__ = getattr(endpoint, "__name__", "endpoint")
    scoped.__doc__ = getattr(endpoint, "__doc__", None)
    return scoped


def wrap_endpoints(router: Any, plugin: object) -> dict[str, Any]:
    """Replace the router's async endpoints by ones that run with ``plugin`` in
    :data:`ACTIVE`; returns the originals by name (for :func:`restore_endpoints`)."""
    wrapped: dict[str, Any] = {}
    for name in _ENDPOINTS:
        original = getattr(router, name, None)
        if original is None or not callable(original):
            continue
        wrapped[name] = original
        setattr(router, name, _scoped(plugin, original))
    return wrapped


def restore_endpoints(router: Any, wrapped: Mapping[str, Any]) -> None:
    """Put back the endpoints :func:`wrap_endpoints` replaced."""
    for name, original in wrapped.items():
        with contextlib.suppress(Exception):  # a router that refuses keeps a harmless wrapper
            setattr(router, name, original)


def leave_callbacks(logger: object) -> None:
    """Remove ``logger`` from every LiteLLM callback list it is in."""
    import litellm

    for name in _CALLBACK_LISTS:
        registered = getattr(litellm, name, None)
        while isinstance(registered, list) and logger in registered:
            registered.remove(logger)


class Picker(Protocol):
    """What :class:`Strategy` asks: the strategy-mode choice of a plugin."""

    def pick(
        self,
        model: str,
        messages: Any = None,
        input: Any = None,
        specific_deployment: bool | None = False,
        request_kwargs: Mapping[str, Any] | None = None,
    ) -> Any: ...


class Strategy(CustomRoutingStrategyBase):  # type: ignore[misc]  # LiteLLM is untyped to mypy
    """The strategy-mode face of a plugin (LiteLLM calls these by keyword)."""

    def __init__(self, plugin: Picker) -> None:
        self.plugin = plugin

    async def async_get_available_deployment(
        self,
        model: str,
        messages: Any = None,
        input: Any = None,
        specific_deployment: bool | None = False,
        request_kwargs: Any = None,
    ) -> Any:
        return self.plugin.pick(model, messages, input, specific_deployment, request_kwargs)

    def get_available_deployment(
        self,
        model: str,
        messages: Any = None,
        input: Any = None,
        specific_deployment: bool | None = False,
        request_kwargs: Any = None,
    ) -> Any:
        return self.plugin.pick(model, messages, input, specific_deployment, request_kwargs)


def set_strategy(router: Any, strategy: Strategy) -> None:
    """Make ``strategy`` the router's routing strategy (``register_plugin`` on LiteLLM
    1.110, ``set_custom_routing_strategy`` before)."""
    register = getattr(router, "register_plugin", None)
    if callable(register):
        register(strategy)
    else:
        router.set_custom_routing_strategy(strategy)


def reset_strategy(router: Any) -> None:
    """Give the router back its default routing strategy (when it can):
    ``_reset_custom_routing_strategy`` up to LiteLLM 1.109; 1.110's Rust core has none, and
    ``routing_strategy_init`` (which re-inits the default selector) drops a custom strategy."""
    reset = getattr(router, "_reset_custom_routing_strategy", None)
    if callable(reset):
        reset()
        return
    init = getattr(router, "routing_strategy_init", None)
    settings = getattr(router, "settings", None)
    if callable(init) and callable(settings):
        args = getattr(router, "routing_strategy_args", None)
        init(settings().routing_strategy, dict(args) if isinstance(args, Mapping) else {})


class Subscription:
    """The subscription of an index (through ``Sync``) and of session pins to a transport.

    Not thread-safe: started and stopped from the host's setup code.
    """

    def __init__(
        self,
        provider: object,
        pins: SessionPins | None,
        transport: Transport | AsyncTransport | None,
    ) -> None:
        self.provider = provider
        self.pins = pins
        self.transport = transport
        self._detach: list[Callable[[], object]] = []
        self._task: Any = None
        self._closing: set[Any] = set()

    def start(self) -> None:
        """Subscribe (a no-op without a transport or when subscribed): a synchronous
        transport before this returns, an asynchronous one from a task on the running loop
        (``await ready()``).

        Raises:
            InvalidRecordError: an asynchronous transport and no running event loop.
        """
        transport = self.transport
        if transport is None or self._detach or self._task is not None:
            return
        if inspect.iscoroutinefunction(transport.subscribe):
            import asyncio

            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise InvalidRecordError(
                    "sync", transport, "an AsyncTransport needs install() in a running loop"
                ) from None
            self._task = loop.create_task(self._start_async(transport))  # type: ignore[arg-type]
            return
        assert isinstance(self.provider, Sync)
        self._detach.append(self.provider.attach(transport))  # type: ignore[arg-type]
        if self.pins is not None:
            self._detach.append(self.pins.attach(transport))  # type: ignore[arg-type]

    async def _start_async(self, transport: AsyncTransport) -> None:
        assert isinstance(self.provider, Sync)
        detach = await self.provider.attach_async(transport)
        self._detach.append(detach)
        if self.pins is not None:
            self._detach.append(await self.pins.attach_async(transport))

    async def ready(self) -> None:
        """Wait until an asynchronous transport is subscribed (a no-op otherwise)."""
        task = self._task
        if task is not None:
            await task

    def stop(self) -> None:
        """Unsubscribe (an asynchronous transport's unsubscribe is scheduled on the running
        loop). Idempotent."""
        detachers, self._detach = self._detach, []
        for detach in detachers:
            result = detach()
            if inspect.isawaitable(result):
                import asyncio

                self._closing.add(asyncio.ensure_future(result))
