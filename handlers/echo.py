"""Logs every message it is given: the smallest useful handler."""

from consumer.message import Context, Message


def handle(message: Message, context: Context) -> None:
    context.logger.info("key=%r value=%s", message.key, message.text()[:200])
