"""The ledger handler of the shared-database chaos run (a route names it by path).

- ``$LEDGER_TABLES``: prefix of this group's tables (``g1_accounts``, ``g1_ledger_entries``), so
  two groups keep their own ledgers in one database.
- ``$LEDGER_GATE_FILE``: until this file exists, a change marked ``"gate": true`` raises
  :class:`GateClosed` (it is dead-lettered); once it exists, the redriven copy applies.
"""

from __future__ import annotations

import os
from pathlib import Path

from consumer.message import Context, Message
from handlers.ledger import record


class GateClosed(RuntimeError):
    """A gated change arrived before the gate file exists."""


def apply(message: Message, context: Context) -> None:
    change = message.json()
    gate = Path(os.environ["LEDGER_GATE_FILE"])
    if change.get("gate") and not gate.exists():
        raise GateClosed(f"{change['event']} waits for {gate}")
    record(message, context, prefix=os.environ.get("LEDGER_TABLES", ""))
