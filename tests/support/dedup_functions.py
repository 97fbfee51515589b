"""A ``function:`` dedup key that raises on some values, and a handler that uses the key.

``json_id`` reads the event id from a JSON value ``{"id": "e-17"}``: a value that is not JSON
makes it raise. ``apply`` asks for ``context.idempotency_key`` and writes one row per handled
message: into the store's ``dedup_effects`` table when the route has a store, else a line
``partition offset key`` in ``$RECORD_FILE``.
"""

from __future__ import annotations

import json
import os

from consumer.message import Context, Message


def json_id(message: Message) -> str:
    return str(json.loads(message.value)["id"])


def apply(message: Message, context: Context) -> None:
    key = context.idempotency_key
    if os.environ.get("EFFECTS_IN_STORE"):
        context.execute("CREATE TABLE IF NOT EXISTS dedup_effects (partition INTEGER NOT NULL, "
                        '"offset" BIGINT NOT NULL, key TEXT NOT NULL)')
        context.execute('INSERT INTO dedup_effects (partition, "offset", key) VALUES (%s, %s, %s)',
                        (message.partition, message.offset, key))
        return
    line = f"{message.partition} {message.offset} {key}\n"
    fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
