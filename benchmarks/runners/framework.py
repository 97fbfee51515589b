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
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Collection
from pathlib import Path
from typing import Any

from benchmarks.runners.tally import RunSpec, Tally

HANDLER_PATH = "benchmarks.runners.framework:handle"
_tally: Tally | None = None
_stop_sent = False


def handle(message: Any, context: Any) -> None:
    """The no-op handler: counts, and asks for the graceful stop once at the target."""
    global _stop_sent
    if _tally is not None and _tally.add() and not _stop_sent:
        _stop_sent = True  # a second SIGTERM would exit at once, without the final commit
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
        "routes": {spec.topic: HANDLER_PATH},
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


def store_url(store: str) -> str:
    if store == "sqlite":
        return "sqlite:///checkpoint-store.db"  # relative: the child runs in a scratch folder
    if store == "postgres":
        dsn = os.environ.get("CONSUMER_TEST_POSTGRES_DSN")
        if not dsn:
            raise RuntimeError("store=postgres needs CONSUMER_TEST_POSTGRES_DSN")
        return dsn
    raise ValueError(f"unknown store {store!r}")


def run(spec: RunSpec, tally: Tally) -> dict[str, Any]:
    global _tally, _stop_sent
    import confluent_kafka

    from consumer import __version__
    from consumer.cli import main
    from consumer.settings import Settings

    path = Path("consumer.yaml")  # JSON is YAML
    path.write_text(json.dumps(config(spec, set(Settings.model_fields))))
    _tally, _stop_sent = tally, False
    tally.subscribing()  # also counts reading the config and building the loop (milliseconds)
    code = main(["run", "--config", str(path)])
    if code != 0:
        raise RuntimeError(f"consumer run exited with {code}")
    return {"client": f"checkpoint-consumer {__version__}",
            "librdkafka": confluent_kafka.libversion()[0]}
