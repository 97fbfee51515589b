"""A handler that records what it sees decoded, and a custom decoder, for the format tests.

Each handled message appends one JSON line to ``$RECORD_FILE``: topic, offset, the decoded
value (a protobuf message as a dict) and the decoded key (null when the route decodes none).
"""

from __future__ import annotations

import json
import os
from typing import Any

from google.protobuf.json_format import MessageToDict

from consumer.message import Context, Message


def _plain(value: Any) -> Any:
    return MessageToDict(value) if hasattr(value, "DESCRIPTOR") else value


def record(message: Message, context: Context) -> None:
    try:
        key = _plain(message.key_decoded)
    except AttributeError:
        key = None
    line = json.dumps({"topic": message.topic, "offset": message.offset,
                       "value": _plain(message.value_decoded), "key": key}) + "\n"
    fd = os.open(os.environ["RECORD_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def semicolons(data: bytes | None, message: Message) -> dict[str, str]:
    """``a=1;b=2`` -> {"a": "1", "b": "2"}; anything else raises (a poison message)."""
    text = (data or b"").decode("ascii")
    pairs = [part.split("=", 1) for part in text.split(";")]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"not key=value pairs: {text!r}")
    return {k: v for k, v in pairs}
