"""Routes: which handler processes each topic. Handlers are imported and their signatures
checked once, at wiring time, before anything connects; every problem is collected into one
:class:`~consumer.errors.ConfigError`.

Importing a handler runs its module's top level (``handler_path`` goes first on ``sys.path``);
after that a :class:`Router` is a plain lookup, read on the poll thread, that never raises
for a routed topic.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from consumer.errors import ConfigError
from consumer.message import Context, Message

#: ``def handle(message, context) -> None``
Handler = Callable[[Message, Context], object]
#: ``def handle(message) -> None``: a handler that needs nothing beside the message.
MessageHandler = Callable[[Message], object]


@dataclass(frozen=True)
class Route:
    topic: str
    #: Called as ``handler(message, context)``, whatever the function configured takes.
    handler: Handler
    handler_path: str
    #: The function configured, when it takes the message alone (``def handle(message)``);
    #: ``handler`` is then that function behind an adapter. A mode whose context would only be
    #: dropped calls this instead, and builds none.
    message_only: MessageHandler | None = None

    @classmethod
    def of(cls, topic: str, function: Handler | MessageHandler, handler_path: str) -> Route:
        """The route to ``function``, which takes ``(message, context)`` or ``(message)``."""
        if _takes_context(function):
            return cls(topic, cast(Handler, function), handler_path)
        alone = cast(MessageHandler, function)
        return cls(topic, _given_context(alone), handler_path, message_only=alone)


class Router:
    """Maps each subscribed topic to its route."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes = {route.topic: route for route in routes}

    @property
    def topics(self) -> list[str]:
        return list(self._routes)

    def route_for(self, topic: str) -> Route:
        return self._routes[topic]

    @classmethod
    def from_config(cls, handlers: Mapping[str, str], *, search_path: Iterable[str]) -> Router:
        """Import every handler (``topic -> 'module:function'``), collecting all problems."""
        _extend_sys_path(search_path)
        routes: list[Route] = []
        problems: list[str] = []
        for topic, path in handlers.items():
            try:
                routes.append(Route.of(topic, load_handler(path), path))
            except ConfigError as error:
                problems.extend(f"routes.{topic}.handler: {p}" for p in error.problems)
        if problems:
            raise ConfigError(problems)
        return cls(routes)


def load_handler(path: str) -> Handler | MessageHandler:
    """Import ``module:function`` and check it can be called as ``handler(message, context)``
    or as ``handler(message)``."""
    return load_callable(path, ("message", "context"), ("message",))


def is_async(handler: Callable[..., object]) -> bool:
    """Whether the handler is an ``async def`` function, or an object with an ``async def``
    ``__call__`` (checked once, at wiring)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None))  # noqa: B004 (a callable object's async __call__)


def load_callable(path: str, *shapes: tuple[str, ...]) -> Callable[..., object]:
    """Import ``module:function`` and check it accepts one of ``shapes`` (argument names)
    positionally."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ConfigError(
            [f"cannot import module {module_name!r} ({error}); is it on handler_path "
             f"(now {sys.path[:3]}...)?"]
        ) from None
    except Exception as error:
        raise ConfigError(
            [f"importing {module_name!r} raised {type(error).__name__}: {error}"]
        ) from None
    handler = getattr(module, attribute, None)
    if handler is None:
        raise ConfigError([f"module {module_name!r} has no attribute {attribute!r}"])
    if not callable(handler):
        raise ConfigError([f"{path} is a {type(handler).__name__}, not a callable"])
    if not any(_accepts(handler, len(arguments)) for arguments in shapes):
        wanted = " or ".join(f"{len(arguments)} argument(s): ({', '.join(arguments)})"
                             for arguments in shapes)
        raise ConfigError([f"{path} must accept {wanted}"])
    return handler  # type: ignore[no-any-return]


def _accepts(function: Callable[..., object], count: int) -> bool:
    """Whether ``function`` can be called with ``count`` positional arguments; builtins
    without a signature are trusted."""
    try:
        inspect.signature(function).bind(*[None] * count)
    except TypeError:
        return False
    except ValueError:
        return True
    return True


def _takes_context(function: Callable[..., object]) -> bool:
    """Whether a handler is called with the context: it can be (two arguments), or nothing
    says it cannot (no signature)."""
    return _accepts(function, 2)


def _given_context(function: MessageHandler) -> Handler:
    """``function(message)`` callable as ``handler(message, context)``; ``async def`` stays
    ``async def``."""
    if is_async(function):
        async def awaited(message: Message, context: Context) -> object:
            return await function(message)  # type: ignore[misc]

        return awaited

    def called(message: Message, context: Context) -> object:
        return function(message)

    return called


def _extend_sys_path(search_path: Iterable[str]) -> None:
    for folder in reversed(list(search_path)):
        resolved = str(Path(folder).resolve())
        if resolved not in sys.path:
            sys.path.insert(0, resolved)
