"""Settings for loops that tests build through the app's wiring (``consumer.app.build_loop``)
over in-memory parts: no broker is contacted, no configuration file or environment is read."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from consumer.settings import Settings

#: Routes that stop at a handler's first failure, as the engine does without a retry policy.
STOP_AT_FAILURE: Mapping[str, object] = {"on_failure": "stop", "retry": {"attempts": 1}}

#: Seconds no ManualClock in a test reaches: a checkpoint only on revoke and shutdown.
NEVER = 1e12


def loop_settings(
    topics: Iterable[str],
    *,
    group: str = "g",
    every_messages: int | None = None,
    every_seconds: float | None = None,
    batch_size: int = 500,
    synchronous_commits: bool = False,
    max_unconfirmed: int | None = None,
    route: Mapping[str, object] = STOP_AT_FAILURE,
    store: Mapping[str, object] | None = None,
) -> Settings:
    """Settings for these topics; each route gets ``route`` (handler path unused: the test's
    router holds the handlers). ``store``: the store section (default: none, direct mode).
    Both triggers off (which the settings refuse) means an interval no test clock reaches."""
    if every_messages is None and every_seconds is None:
        every_seconds = NEVER
    return Settings.model_validate({
        "kafka": {"bootstrap_servers": "127.0.0.1:1", "group_id": group,
                  "poll_batch_size": batch_size},
        "routes": {topic: {"handler": "tests:handler", **route} for topic in topics},
        "checkpoint": {"every_messages": every_messages, "every_seconds": every_seconds,
                       "synchronous_commits": synchronous_commits,
                       "max_unconfirmed_messages": max_unconfirmed},
        "store": store or {"url": "none"},
    })
