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

from consumer.errors import ConfigError
from consumer.message import Context, Message

#: ``def handle(message, context) -> None``
Handler = Callable[[Message, Context], object]


@dataclass(frozen=True)
class Route:
    topic: str
    handler: Handler
    handler_path: str


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
                routes.append(Route(topic, load_handler(path), path))
            except ConfigError as error:
                problems.extend(f"routes.{topic}.handler: {p}" for p in error.problems)
        if problems:
            raise ConfigError(problems)
        return cls(routes)


def load_handler(path: str) -> Handler:
    """Import ``module:function`` and check it can be called as ``handler(message, context)``."""
    return load_callable(path, ("message", "context"))


def load_callable(path: str, arguments: tuple[str, ...]) -> Callable[..., object]:
    """Import ``module:function`` and check it accepts ``arguments`` positionally."""
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
    try:
        inspect.signature(handler).bind(*[None] * len(arguments))
    except TypeError:
        raise ConfigError(
            [f"{path} must accept {len(arguments)} argument(s): ({', '.join(arguments)})"]
        ) from None
    except ValueError:  # Builtins without a signature: trust them.
        pass
    return handler  # type: ignore[no-any-return]


def _extend_sys_path(search_path: Iterable[str]) -> None:
    for folder in reversed(list(search_path)):
        resolved = str(Path(folder).resolve())
        if resolved not in sys.path:
            sys.path.insert(0, resolved)
