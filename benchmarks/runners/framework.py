"""checkpoint-consumer, run exactly as operators run it: ``consumer run --config FILE``.

The runner writes a config file into the run's scratch folder and calls the CLI's ``main`` in
this process, so everything ``consumer run`` composes (store, metrics, purger, logging) is
measured as deployed. The config routes the topic to :func:`handle`, the no-op handler, which
sends this process one SIGTERM at the target: the documented graceful stop (finish the message
in hand, checkpoint synchronously, leave the group).

Options: ``every_messages`` (1000), ``every_seconds`` (1.0), ``synchronous_commits`` (false),
``poll_batch_size`` (500), ``poll_timeout_seconds`` (0.5), ``store`` (``none``; ``sqlite``: a
file in the scratch folder; ``postgres``: ``$CONSUMER_TEST_POSTGRES_DSN``), and ``settings``:
sections merged over the rest (for modes not named here). Sections this checkout has and the
run does not ask for are switched off: no store, no metrics.

``handler``: ``noop`` (the default: :func:`handle`, ``def handle(message)``, as the raw loop's
and the peers' no-op handlers take the message alone); ``noop_context``
(:func:`handle_with_context`, the same taking ``(message, context)``: the framework builds a
context per message, and every checkout accepts it); and for the IO-bound group ``sleep``
(:func:`handle_sleep`, a plain ``def`` that calls ``time.sleep(0.01)``), ``sleep_async``
(:func:`handle_sleep_async`, an ``async def`` that awaits ``asyncio.sleep(0.01)``),
``write_sleep`` (:func:`benchmarks.effects.apply_then_wait`, one row into ``bench_effects``
through ``context.execute`` before the same wait, with a store) and ``write_sleep_async`` (the
same, ``async def``, awaiting both). ``concurrency`` and ``ordering``: the route's settings,
left out of the config when not given, so a checkout without them runs the rest. A config
this checkout refuses (a handler of the message alone before it had them, too) is reported as
*unsupported*, with its problems. With ``write_sleep`` (or its async twin) the runner creates
the table first and, after the graceful stop, reports the group's rows (``effect_rows``, and
``effect_distinct`` messages among them), then deletes them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

from benchmarks.runners.tally import RunSpec, Tally

HANDLER_PATH = "benchmarks.runners.framework:handle"
HANDLERS = {"noop": HANDLER_PATH,
            "noop_context": "benchmarks.runners.framework:handle_with_context",
            "sleep": "benchmarks.runners.framework:handle_sleep",
            "sleep_async": "benchmarks.runners.framework:handle_sleep_async",
            "write_sleep": "benchmarks.effects:apply_then_wait",
            "write_sleep_async": "benchmarks.effects:apply_then_wait_async"}
SLEEP_SECONDS = 0.01  # contenders.SLEEP_SECONDS: this module imports only the standard library
_tally: Tally | None = None
_stop_sent = False
_count_lock = threading.Lock()


def handle(message: Any) -> None:
    """The no-op handler, of the message alone (as the raw loop's and the peers' are): counts,
    and asks for the graceful stop once at the target."""
    global _stop_sent
    if _tally is not None and _tally.add() and not _stop_sent:
        _stop_sent = True  # a second SIGTERM would exit at once, without the final commit
        os.kill(os.getpid(), signal.SIGTERM)


def handle_with_context(message: Any, context: Any) -> None:
    """The no-op handler taking the context too: the framework builds one per message."""
    handle(message)


def handle_sleep(message: Any, context: Any) -> None:
    """The IO-bound handler: waits 10 ms (a database or HTTP round trip), then counts."""
    time.sleep(SLEEP_SECONDS)
    _count_concurrently()


async def handle_sleep_async(message: Any, context: Any) -> None:
    """The IO-bound handler, ``async def``: awaits 10 ms, then counts."""
    await asyncio.sleep(SLEEP_SECONDS)
    _count_concurrently()


def _count_concurrently() -> None:
    """Count under a lock (handlers run on several threads); stop once at the target."""
    global _stop_sent
    with _count_lock:
        stop = _tally is not None and _tally.add() and not _stop_sent
        if stop:
            _stop_sent = True
    if stop:
        os.kill(os.getpid(), signal.SIGTERM)


def baseline_sections(sections: Collection[str]) -> dict[str, Any]:
    """The optional capabilities switched off, for the sections this checkout has."""
    off: dict[str, Any] = {}
    if "store" in sections:
        off["store"] = {"url": "none"}
    if "metrics" in sections:
        off["metrics"] = {"enabled": False}
    return off


def config(spec: RunSpec, sections: Collection[str]) -> dict[str, Any]:
    """The run's config file contents."""
    options = spec.options
    data: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": spec.bootstrap,
            "group_id": spec.group,
            "auto_offset_reset": "earliest",
            "poll_batch_size": int(options.get("poll_batch_size", 500)),
            "poll_timeout_seconds": float(options.get("poll_timeout_seconds", 0.5)),
        },
        "routes": {spec.topic: route(options)},
        "checkpoint": {
            "every_messages": options.get("every_messages", 1000),
            "every_seconds": options.get("every_seconds", 1.0),
            "synchronous_commits": bool(options.get("synchronous_commits", False)),
        },
        "log_level": "WARNING",
        **baseline_sections(sections),
    }
    store = options.get("store", "none")
    if store != "none":
        if "store" not in sections:
            raise RuntimeError("this checkout of checkpoint-consumer has no store setting")
        data["store"] = {"url": store_url(store)}
    for section, values in dict(options.get("settings", {})).items():
        data[section] = {**data.get(section, {}), **values}
    return data


def route(options: dict[str, Any]) -> str | dict[str, Any]:
    """The route: the handler's import path, or a mapping when concurrency is asked for."""
    handler = HANDLERS[str(options.get("handler", "noop"))]
    extra: dict[str, Any] = {name: options[name]
                             for name in ("concurrency", "ordering", "dedup_key")
                             if name in options}
    return {"handler": handler, **extra} if extra else handler


def store_url(store: str) -> str:
    if store == "sqlite":
        return "sqlite:///checkpoint-store.db"  # relative: the child runs in a scratch folder
    if store == "postgres":
        dsn = os.environ.get("CONSUMER_TEST_POSTGRES_DSN")
        if not dsn:
            raise RuntimeError("store=postgres needs CONSUMER_TEST_POSTGRES_DSN")
        return dsn
    if store == "mariadb":
        url = os.environ.get("CONSUMER_TEST_MARIADB_URL")
        if not url:
            raise RuntimeError("store=mariadb needs CONSUMER_TEST_MARIADB_URL")
        return url
    raise ValueError(f"unknown store {store!r}")


def run(spec: RunSpec, tally: Tally) -> dict[str, Any]:
    global _tally, _stop_sent
    import confluent_kafka

    from consumer import __version__
    from consumer.cli import main
    from consumer.settings import Settings

    path = Path("consumer.yaml")  # JSON is YAML
    data = config(spec, set(Settings.model_fields))
    path.write_text(json.dumps(data))
    _refuse_unsupported(path)
    writes = spec.options.get("handler") in ("write_sleep", "write_sleep_async")
    if writes:
        _prepare_effects(data["store"]["url"])
    _tally, _stop_sent = tally, False
    tally.subscribing()  # also counts reading the config and building the loop (milliseconds)
    code = main(["run", "--config", str(path)])
    if code != 0:
        raise RuntimeError(f"consumer run exited with {code}")
    report: dict[str, Any] = {"client": f"checkpoint-consumer {__version__}",
                              "librdkafka": confluent_kafka.libversion()[0]}
    if writes:
        report.update(_count_effects(data["store"]["url"], spec))
    return report


def _prepare_effects(url: str) -> None:
    """Create ``bench_effects`` (the benchmark's own connection to the consumer's store)."""
    from benchmarks.effects import EffectsStore

    with EffectsStore(url) as store:
        store.prepare()


def _count_effects(url: str, spec: RunSpec) -> dict[str, int]:
    """The group's effect rows, and the messages among them; then the rows go."""
    from benchmarks.effects import EffectsStore

    with EffectsStore(url) as store:
        counted = store.count(spec.group, spec.topic)
        store.forget(spec.group)
    return {"effect_rows": counted.rows, "effect_distinct": counted.distinct}


class Unsupported(RuntimeError):
    """This checkout refuses the contender's config: a feature it does not have yet."""


def _refuse_unsupported(path: Path) -> None:
    from consumer.errors import ConfigError
    from consumer.settings import load_settings

    try:
        load_settings(path)
    except ConfigError as error:
        raise Unsupported("unsupported by this checkout: consumer run refuses the config: "
                          + "; ".join(error.problems)) from None
