"""Every failure checkpoint-consumer raises on purpose derives from one root::

    ConsumerError
    ├── ConfigError            invalid settings or routes; exit code 2, before any connection
    ├── KafkaError             the Kafka client reported a failure
    │   └── KafkaFatalError    the client cannot go on (fenced, fatal librdkafka error)
    ├── HandlerFailed          a handler raised; carries the message's coordinates
    ├── OffsetWentBackwards    a watermark or commit would move a partition backwards
    └── AssignmentFailed       partitions could not be positioned when they were assigned

Each carries its coordinates as attributes, and its message says what happened, where, and what
an operator can do about it.
"""

from __future__ import annotations


class ConsumerError(Exception):
    """Root of checkpoint-consumer's own exceptions."""


class ConfigError(ConsumerError):
    """The configuration cannot run. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


class KafkaError(ConsumerError):
    """The Kafka client reported an error. ``code`` is librdkafka's error name."""

    def __init__(self, code: str, reason: str, *, fatal: bool = False) -> None:
        self.code = code
        self.reason = reason
        self.fatal = fatal
        super().__init__(f"Kafka error {code}: {reason}")


class KafkaFatalError(KafkaError):
    """The Kafka client cannot continue; the process must restart."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(code, reason, fatal=True)


class HandlerFailed(ConsumerError):
    """A handler raised while processing one message; nothing past it was committed."""

    def __init__(self, topic: str, partition: int, offset: int, cause: BaseException) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.cause = cause
        super().__init__(
            f"handler failed on {topic}[{partition}]@{offset}: "
            f"{type(cause).__name__}: {cause}. Offsets were committed up to, not past, this "
            "message; fix the handler or the message and restart to retry it."
        )


class OffsetWentBackwards(ConsumerError):
    """A partition's watermark or committed offset would move backwards."""

    def __init__(self, topic: str, partition: int, old: int, new: int) -> None:
        self.topic = topic
        self.partition = partition
        self.old = old
        self.new = new
        super().__init__(
            f"offset of {topic}[{partition}] would move backwards from {old} to {new}; "
            "refusing, so no message is processed twice. This is a bug or a manual reset: "
            "stop the group and use `consumer replay` to move offsets on purpose."
        )


class AssignmentFailed(ConsumerError):
    """Assigned partitions could not be positioned; consuming would start at the wrong place."""
