"""Logs each message with fields passed through ``extra=``, the way the logging docs show: once
through ``context.logger`` and once through a module logger."""

from __future__ import annotations

import logging

from consumer.message import Context, Message

log = logging.getLogger("handlers.orders")


def handle(message: Message, context: Context) -> None:
    context.logger.info("order received", extra={"order_id": message.text()})
    log.info("order priced", extra={"order_id": message.text(), "amount_cents": 1250})
