"""Like ``handlers.record:handle``, but blocks on one value: a stuck handler, on demand.

``$BLOCK_ON_VALUE``: the message value that blocks (each time it is handled);
``$BLOCK_SECONDS``: how long (default 10). The observability tests watch lag in seconds and
checkpoint age grow while it blocks, and fall back after.
"""

from __future__ import annotations

import os
import time

from consumer.message import Context, Message
from handlers.record import handle as record


def handle(message: Message, context: Context) -> None:
    if message.text() == os.environ.get("BLOCK_ON_VALUE"):
        seconds = float(os.environ.get("BLOCK_SECONDS", "10"))
        context.logger.info("blocking for %.0f s", seconds)
        time.sleep(seconds)
    record(message)
