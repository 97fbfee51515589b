"""consumer.routing: handlers imported from handler_path, every problem collected at once."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from consumer.errors import ConfigError
from consumer.message import Context, Message, Scope
from consumer.routing import Route, Router, is_async, load_handler

HANDLER_SOURCE = """\
def handle(message, context):
    return ("handled", message, context)

def one_argument(message):
    return ("alone", message)

def no_arguments():
    return None

def three_arguments(message, context, extra):
    return None

def variadic(*args):
    return args

class ByClass:
    def __init__(self, message, context):
        self.message = message

not_callable = 42
"""


@pytest.fixture
def isolated_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Restores sys.path afterwards and forgets the handler modules the test created."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    created: list[str] = []
    yield created
    for name in created:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[loaded]


@pytest.fixture
def handler_module(tmp_path: Path, isolated_imports: list[str]) -> Callable[..., str]:
    """Writes a uniquely named handler module into tmp_path; returns its name."""

    def make(source: str = HANDLER_SOURCE) -> str:
        name = f"unit_handlers_{uuid.uuid4().hex}"
        (tmp_path / f"{name}.py").write_text(source)
        isolated_imports.append(name)
        return name

    return make


def test_from_config_imports_handlers_from_the_search_path(
    tmp_path: Path, handler_module: Callable[..., str]
) -> None:
    module = handler_module()
    router = Router.from_config(
        {"orders": f"{module}:handle", "payments": f"{module}:variadic"},
        search_path=[str(tmp_path)],
    )
    assert router.topics == ["orders", "payments"]
    route = router.route_for("orders")
    assert route.topic == "orders"
    assert route.handler_path == f"{module}:handle"
    message = Message("orders", 0, 0, b"x")
    context = Context(Scope("g"), message)
    assert route.handler(message, context) == ("handled", message, context)
    assert sys.modules[module].__file__ == str(tmp_path / f"{module}.py")


def test_search_path_is_searched_before_the_rest_of_sys_path(
    tmp_path: Path, isolated_imports: list[str]
) -> None:
    assert str(tmp_path.resolve()) not in sys.path
    name = f"unit_handlers_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(HANDLER_SOURCE)
    isolated_imports.append(name)
    Router.from_config({"t": f"{name}:handle"}, search_path=[str(tmp_path)])
    assert sys.path[0] == str(tmp_path.resolve())


def test_handler_in_a_package_is_imported(tmp_path: Path, isolated_imports: list[str]) -> None:
    package = f"unit_pkg_{uuid.uuid4().hex}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "mod.py").write_text(HANDLER_SOURCE)
    isolated_imports.append(package)
    router = Router.from_config({"t": f"{package}.mod:handle"}, search_path=[str(tmp_path)])
    assert router.route_for("t").handler.__module__ == f"{package}.mod"


def test_a_class_taking_message_and_context_is_an_acceptable_handler(
    tmp_path: Path, handler_module: Callable[..., str]
) -> None:
    module = handler_module()
    router = Router.from_config({"t": f"{module}:ByClass"}, search_path=[str(tmp_path)])
    assert router.route_for("t").handler is sys.modules[module].ByClass


def test_all_problems_are_collected_at_once_one_per_route(
    tmp_path: Path, handler_module: Callable[..., str]
) -> None:
    module = handler_module()
    missing = f"unit_missing_{uuid.uuid4().hex}"
    with pytest.raises(ConfigError) as caught:
        Router.from_config(
            {
                "good": f"{module}:handle",
                "no-module": f"{missing}:handle",
                "no-attribute": f"{module}:absent",
                "not-callable": f"{module}:not_callable",
                "no-args": f"{module}:no_arguments",
                "three-args": f"{module}:three_arguments",
            },
            search_path=[str(tmp_path)],
        )
    problems = caught.value.problems
    assert len(problems) == 5, problems
    by_topic = {p.split(".handler: ", 1)[0].removeprefix("routes."): p for p in problems}
    assert set(by_topic) == {"no-module", "no-attribute", "not-callable", "no-args", "three-args"}
    assert f"cannot import module {missing!r}" in by_topic["no-module"]
    assert f"module {module!r} has no attribute 'absent'" in by_topic["no-attribute"]
    assert "is a int, not a callable" in by_topic["not-callable"]
    wanted = "must accept 2 argument(s): (message, context) or 1 argument(s): (message)"
    assert wanted in by_topic["no-args"]
    assert wanted in by_topic["three-args"]


def test_a_handler_of_the_message_alone_is_called_without_a_context(
    tmp_path: Path, handler_module: Callable[..., str]
) -> None:
    """``def handle(message)``: the route keeps the function as ``message_only`` for the modes
    that would build a context only to drop it, and ``handler`` calls it for the others."""
    module = handler_module()
    router = Router.from_config({"t": f"{module}:one_argument", "u": f"{module}:handle"},
                                search_path=[str(tmp_path)])
    alone, both = router.route_for("t"), router.route_for("u")
    assert alone.message_only is sys.modules[module].one_argument
    assert both.message_only is None, "a handler taking the context gets it"
    message = Message("t", 0, 0, b"x")
    assert alone.handler(message, Context(Scope("g"), message)) == ("alone", message)


def test_a_handler_that_may_take_the_context_is_given_it() -> None:
    def optional(message: Message, context: Context | None = None) -> object:
        return context

    def variadic(*args: object) -> object:
        return args

    for function in (optional, variadic):
        route = Route.of("t", function, "x:f")
        assert (route.handler, route.message_only) == (function, None)


def test_an_async_handler_of_the_message_alone_is_still_async() -> None:
    async def handle(message: Message) -> object:
        return message.offset

    route = Route.of("t", handle, "x:handle")
    assert route.message_only is handle
    assert is_async(route.handler)
    message = Message("t", 0, 7, b"x")
    assert asyncio.run(route.handler(message, Context(Scope("g"), message))) == 7  # type: ignore[arg-type]


def test_a_module_that_raises_on_import_is_reported_with_the_exception(
    tmp_path: Path, handler_module: Callable[..., str]
) -> None:
    module = handler_module("raise RuntimeError('boom at import')\n")
    with pytest.raises(ConfigError) as caught:
        Router.from_config({"t": f"{module}:handle"}, search_path=[str(tmp_path)])
    assert caught.value.problems == [
        f"routes.t.handler: importing {module!r} raised RuntimeError: boom at import"
    ]


def test_a_missing_dependency_of_the_handler_module_names_that_dependency(
    tmp_path: Path, handler_module: Callable[..., str]
) -> None:
    dependency = f"unit_dep_{uuid.uuid4().hex}"
    module = handler_module(f"import {dependency}\n" + HANDLER_SOURCE)
    with pytest.raises(ConfigError) as caught:
        Router.from_config({"t": f"{module}:handle"}, search_path=[str(tmp_path)])
    assert len(caught.value.problems) == 1
    assert dependency in caught.value.problems[0]


def test_load_handler_returns_the_function_itself(
    tmp_path: Path, handler_module: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    module = handler_module()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_handler(f"{module}:handle") is sys.modules[module].handle


def test_router_built_from_routes_maps_each_topic_to_its_route() -> None:
    def a(message: Message, context: Context) -> None: ...

    def b(message: Message, context: Context) -> None: ...

    router = Router([Route("ta", a, "x:a"), Route("tb", b, "x:b")])
    assert router.topics == ["ta", "tb"]
    assert router.route_for("ta").handler is a
    assert router.route_for("tb").handler is b
    with pytest.raises(KeyError):
        router.route_for("unrouted")
