"""Like ``handlers.record:handle``, but freezes or kills its own process on chosen values.

``$FREEZE_ON_VALUE``: after recording this value the first time, the process stops itself with
SIGSTOP (every thread, heartbeats included) and creates ``$FREEZE_FLAG`` just before, so a test
knows; the test lets the group drop the member, then sends SIGCONT.
``$KILL_ON_VALUE``: after recording this value the first time after the freeze, the process
kills itself with SIGKILL: a crash at a moment the test chose, whatever the loop's state.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from consumer.message import Context, Message
from handlers.record import handle as record


def handle(message: Message, context: Context) -> None:
    record(message)
    value = message.text()
    flag = Path(os.environ["FREEZE_FLAG"])
    if value == os.environ.get("FREEZE_ON_VALUE") and not flag.exists():
        flag.touch()
        os.kill(os.getpid(), signal.SIGSTOP)
    elif value == os.environ.get("KILL_ON_VALUE") and flag.exists():
        os.kill(os.getpid(), signal.SIGKILL)
