"""Every failure checkpoint-consumer raises on purpose derives from one root::

    ConsumerError
    ├── ConfigError            invalid settings or routes; exit code 2, before any connection
    ├── KafkaError             the Kafka client reported a failure
    │   └── KafkaFatalError    the client cannot go on (fenced, fatal librdkafka error)
    │       └── KafkaAuthenticationFailed  the brokers refused our credentials at start (exit 2)
    ├── HandlerFailed          a handler raised; carries the message's coordinates
    ├── DedupKeyFailed         a route's dedup key function raised: the message is poison
    ├── OffsetWentBackwards    a watermark or commit would move a partition backwards
    ├── AssignmentFailed       partitions could not be positioned when they were assigned
    ├── Fenced                 a newer owner bumped the partition's epoch: this process is a zombie
    ├── OffsetOutOfRange       the store's checkpoint is outside what the partition retains
    ├── ExternalReset          Kafka's committed offset was moved by another tool
    ├── TopicRecreated         the store's checkpoint belongs to a deleted topic of the same name
    ├── DeadLetterFailed       a dead letter could not be produced (retriable or not)
    ├── SchemaRegistryUnavailable  the schema registry did not answer (retried, never poison)
    └── StoreError             the store database failed
        ├── StoreUnavailable   cannot reach or lock the database (consumption pauses and retries)
        ├── StoreSchemaError   our tables are missing or of another version (exit 2)
        ├── StoreConstraintViolated  a deferred constraint failed at COMMIT (the batch reruns)
        ├── StoreTransactionFailed   a handler caught a database error and returned (reruns)
        ├── SwallowedDatabaseError   the same handler again, message by message (exit 1)
        └── HandlerEndedTransaction  a handler committed or rolled back the batch's transaction

Some exceptions stand outside it on purpose, as ``BaseException``, so that a handler's own
``except Exception`` cannot swallow them: :class:`TransactionEndRefused`,
:class:`MessageTransactionEnded`, and :class:`ProcessedKeysAhead` (which the framework handles
itself: the batch runs again).

Each carries its coordinates as attributes, and its message says what happened, where, and what
an operator can do about it. Raise these across a layer's border, never a client's or a
database driver's own exceptions (``consumer.kafka`` and ``consumer.store`` translate them).
The exit codes every ``consumer`` command returns are defined here too, beside the failures
that choose them. Vocabulary: this module imports nothing, and nothing here does I/O.
"""

from __future__ import annotations

#: Exit codes of every ``consumer`` command (``run``, ``check``, ``store``, ``dlq``, ``lag``,
#: ``replay``): done or stopped cleanly; failed while running; cannot run as configured
#: (invalid settings or arguments, a store of another schema), found before anything changed.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2


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


class KafkaAuthenticationFailed(KafkaFatalError):
    """The brokers refused the client's credentials (SASL) while it first connected: the same
    credentials would be refused again, so the consumer stops instead of retrying. A
    configuration problem: exit 2."""

    def __init__(self, bootstrap: str, protocol: str, mechanism: str, username: str | None,
                 reason: str) -> None:
        super().__init__("_AUTHENTICATION", reason)
        self.bootstrap = bootstrap
        self.protocol = protocol
        self.mechanism = mechanism
        self.username = username
        who = f"user {username!r}" if username else "our credentials"
        self.args = (
            f"Kafka at {bootstrap} refused {who} (security.protocol {protocol}, sasl.mechanism "
            f"{mechanism}): {reason}. Check kafka.librdkafka's sasl.username and the password "
            "(kafka.sasl_password_file, or kafka.librdkafka's sasl.password) against the user "
            "the brokers know for that mechanism; not retrying, since the same credentials "
            "would be refused again.",)


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


class DedupKeyFailed(ConsumerError):
    """A ``function:`` dedup key raised for one message: it has no identity, so it cannot be
    applied exactly once. Final, like a value that does not decode: dead-lettered (reason
    ``dedup_key``) or, with ``on_failure: stop``, the consumer stops at it."""

    def __init__(self, function: str, topic: str, partition: int, offset: int,
                 cause: BaseException) -> None:
        self.function = function
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.cause = cause
        super().__init__(
            f"dedup key function {function} raised {type(cause).__name__}: {cause} on "
            f"{topic}[{partition}]@{offset}; the message has no dedup key and is not applied. "
            "Fix the function (or the producer), then redrive the dead letter."
        )


class SchemaRegistryUnavailable(ConsumerError):
    """The schema registry could not tell a message's schema: unreachable, timed out, refused
    our credentials or failed itself (HTTP 5xx). Not the message's fault, so never a dead
    letter: the message is retried with the route's backoff for as long as it lasts."""

    def __init__(self, url: str, topic: str, partition: int, offset: int, detail: str) -> None:
        self.url = url
        self.topic = topic
        self.partition = partition
        self.offset = offset
        super().__init__(
            f"schema registry {url} did not answer for {topic}[{partition}]@{offset}: {detail}; "
            "the message waits and is retried. Check that the registry is up and reachable, "
            "and schema_registry's url and credentials."
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


class Fenced(ConsumerError):
    """The partition's epoch moved on: another consumer owns it now; this batch rolled back."""

    def __init__(self, group: str, partitions: list[tuple[str, int]]) -> None:
        self.group = group
        self.partitions = partitions
        super().__init__(
            f"fenced on {_named(partitions)} (group {group}): a newer member owns these "
            "partitions, so this process's batch was rolled back and nothing was committed. It "
            "was probably frozen past max.poll.interval.ms; it stops so a fresh process can "
            "rejoin the group."
        )


class OffsetOutOfRange(ConsumerError):
    """The store's checkpoint lies outside the partition's retained offsets."""

    def __init__(self, topic: str, partition: int, offset: int, low: int, high: int) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.low = low
        self.high = high
        super().__init__(
            f"the store's checkpoint for {topic}[{partition}] is offset {offset}, but the "
            f"partition holds offsets {low} to {high}. Messages were deleted by retention "
            "before they were processed, or the topic was recreated. Decide where to resume "
            "with `consumer replay`; nothing was consumed."
        )


class ExternalReset(ConsumerError):
    """Kafka's committed offset differs from the store's and was not written by us."""

    def __init__(self, topic: str, partition: int, kafka_offset: int, store_offset: int) -> None:
        self.topic = topic
        self.partition = partition
        self.kafka_offset = kafka_offset
        self.store_offset = store_offset
        super().__init__(
            f"{topic}[{partition}]: Kafka's committed offset is {kafka_offset} but the store's "
            f"checkpoint is {store_offset}, and the commit carries no checkpoint-consumer marker: "
            "someone moved it with another tool (kafka-consumer-groups --reset-offsets?). Use "
            "`consumer replay` to move both, or set store.on_external_reset to 'follow' (take "
            "Kafka's offset) or 'ignore' (keep the store's)."
        )


class TopicRecreated(ConsumerError):
    """The checkpoint row was written for another topic id: the topic was deleted and
    recreated, so the row's offset means nothing in the new log."""

    def __init__(self, topic: str, partition: int, stored_id: str, current_id: str,
                 store_offset: int | None) -> None:
        self.topic = topic
        self.partition = partition
        self.stored_id = stored_id
        self.current_id = current_id
        self.store_offset = store_offset
        super().__init__(
            f"{topic}[{partition}]: the store's checkpoint (offset {store_offset}) was written "
            f"for topic id {stored_id}, but {topic} now has topic id {current_id}: the topic "
            "was deleted and recreated. Resuming at that offset would skip the new log's "
            "first messages, so nothing was consumed. Set store.on_external_reset to 'follow' "
            "to start the new topic from Kafka's committed offset (else auto.offset.reset), "
            "or 'ignore' to keep the old offset."
        )


class DeadLetterFailed(ConsumerError):
    """The broker did not take a dead letter. ``retriable``: try again later (topic or broker
    unavailable); otherwise (too large, not authorised) the consumer stops."""

    def __init__(self, topic: str, partition: int, offset: int, dead_letter_topic: str,
                 reason: str, *, retriable: bool) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.dead_letter_topic = dead_letter_topic
        self.reason = reason
        self.retriable = retriable
        advice = ("retrying with backoff; the partition stays paused meanwhile" if retriable
                  else "stopping without committing past it; fix the dead-letter topic (or "
                  "the message size limits) and restart")
        super().__init__(
            f"could not dead-letter {topic}[{partition}]@{offset} to {dead_letter_topic}: "
            f"{reason}; {advice}"
        )


class StoreError(ConsumerError):
    """The store database failed."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or locked right now; the consumer pauses and retries."""


class StoreConstraintViolated(StoreError):
    """A constraint checked only at COMMIT (``DEFERRABLE INITIALLY DEFERRED``) failed: the
    batch rolled back. It runs again with every constraint checked at its statement, so the
    message that violates it fails alone (its route's retries and dead letters)."""


class StoreTransactionFailed(StoreError):
    """The batch's transaction failed under a handler that caught the database error and
    returned (PostgreSQL: nothing more runs in a failed transaction), so it could not commit:
    the batch rolled back. It runs again message by message, where a handler doing it again is
    named, and a transient error (a deadlock) that does not come back lets the batch through.
    """


class SwallowedDatabaseError(StoreError):
    """A handler caught a database error and returned, and its message's transaction had
    failed (PostgreSQL): nothing of it can commit. Let database errors leave the handler."""

    def __init__(self, handler: str, topic: str, partition: int, offset: int) -> None:
        self.handler = handler
        self.topic = topic
        self.partition = partition
        self.offset = offset
        super().__init__(
            f"handler {handler} caught a database error and returned at {topic}[{partition}] "
            f"offset {offset}, and PostgreSQL had failed its transaction: nothing of the batch "
            "committed. Let database errors leave the handler (the store retries transient "
            "ones: deadlocks, lock and statement timeouts, a lost connection), then restart."
        )


class StoreSchemaError(StoreError):
    """The store's tables are of another schema version, or the credentials are refused."""


class HandlerEndedTransaction(StoreError):
    """A handler ended the batch's transaction (``context.db.commit()``, ``with context.db:``
    on SQLite, a COMMIT statement, DDL on MariaDB): the batch's keys committed ahead of the
    effects of the messages after it. Those keys were forgotten again; the consumer stops."""

    def __init__(self, handler: str, topic: str, partition: int, offset: int, *,
                 forgotten: int, unforgotten: BaseException | None = None) -> None:
        self.handler = handler
        self.topic = topic
        self.partition = partition
        self.offset = offset
        if unforgotten is None:
            after = (f"the {forgotten} keys claimed for messages it had not applied yet were "
                     "forgotten again, so they run after a restart; what was applied up to "
                     "here stays, once")
        else:
            after = (f"forgetting the {forgotten} keys claimed for messages it had not applied "
                     f"yet failed too ({type(unforgotten).__name__}: {unforgotten}): those "
                     "messages would be skipped as duplicates; apply them again with `consumer "
                     f"replay --forget-keys` from {topic}[{partition}] offset {offset + 1} "
                     "(and the same batch's other partitions)")
        super().__init__(
            f"handler {handler} ended the store's transaction while handling {topic}[{partition}] "
            f"at offset {offset} (a commit or rollback on context.db, `with context.db:` on "
            "SQLite, a COMMIT statement, or DDL on MariaDB). The framework commits the "
            "handler's writes together with the processed keys and the checkpoint; a handler "
            f"must never end that transaction. Stopping: {after}. Fix the handler (create "
            "tables before the consumer starts) and restart."
        )


class TransactionEndRefused(BaseException):
    """A handler asked to end the store's transaction and its connection refused: with
    ``concurrency`` above 1, ``commit()``, ``rollback()`` or ``with context.db:`` on its
    message's connection; on SQLite, any ``COMMIT``, ``ROLLBACK`` or ``BEGIN`` during a batch.
    Not an Exception, on purpose: a handler's own ``except Exception`` must not swallow it.
    The consumer stops with it (nothing of the message, nor of its batch, committed)."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"a handler called {what} on context.db: the framework commits the message's "
            "writes together with its processed key, so a handler must never end that "
            "transaction. Refused: nothing of the message was committed, and the consumer "
            "stops. Remove the call (use the writes alone, or a savepoint: `with "
            "context.db.transaction():` on PostgreSQL, SAVEPOINT and RELEASE statements on "
            "SQLite) and restart."
        )


class MessageTransactionEnded(BaseException):
    """A handler ended its message's own transaction with a statement (``COMMIT``,
    ``ROLLBACK``, ``END``) with ``concurrency`` above 1, found when the handler returned or
    raised. The keys claimed in that transaction for messages not applied by then were
    forgotten again. Not an Exception, as :class:`TransactionEndRefused`: the dispatcher stops
    the consumer with it."""

    def __init__(self, topic: str, partition: int, offset: int, *, forgotten: int,
                 unforgotten: BaseException | None = None, ddl: bool = False) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        if unforgotten is None and not forgotten:
            after = ("no key was left to forget: a key that transaction still holds is a "
                     "message it applied")
        elif unforgotten is None:
            after = (f"the {forgotten} keys claimed for messages of that transaction not applied "
                     "by then were forgotten again, so those messages run after a restart")
        else:
            after = (f"forgetting the {forgotten} keys claimed for messages of that transaction "
                     f"not applied by then failed too ({type(unforgotten).__name__}: "
                     f"{unforgotten}): those messages would be skipped as duplicates; apply "
                     "them again with `consumer replay --forget-keys` from "
                     f"{topic}[{partition}] offset {offset}")
        if ddl:  # MariaDB commits the open transaction on DDL
            super().__init__(
                f"the handler of {topic}[{partition}] at offset {offset} ran DDL (CREATE, "
                "ALTER, DROP, TRUNCATE...) through context.db, which MariaDB commits together "
                "with the open transaction: the message's processed key and its writes before "
                "the DDL committed, those after it committed one by one; "
                f"{after}. The consumer stops. Create tables before the consumer starts, and "
                "restart."
            )
            return
        super().__init__(
            f"the handler of {topic}[{partition}] at offset {offset} ended its message's "
            "transaction with a statement (COMMIT, ROLLBACK or END sent through context.db): "
            "the framework commits the message's writes together with its processed key, so a "
            "handler must never end that transaction. Its writes before the statement "
            "committed or rolled back with the transaction, those after it committed one by "
            "one (in a transaction it opened: committed if it returned, rolled back if it "
            f"raised); {after}. The consumer stops. Remove the statement (`with "
            "context.db.transaction():` makes a savepoint) and restart."
        )


def exit_code(error: ConsumerError) -> int:
    """The exit code for a command that stops on ``error``: a store that can never work and
    credentials the brokers refuse are configuration problems (2); anything else failed (1)."""
    if isinstance(error, StoreSchemaError | KafkaAuthenticationFailed):
        return EXIT_CONFIG
    return EXIT_FAILED


class ProcessedKeysAhead(BaseException):
    """The store found processed keys among a batch's coordinates keys that the consumer held
    to be new: above every key the store held for their partitions when they were assigned,
    and above every batch claimed since (:meth:`consumer.store.base.Store.open_batch_unanswered`).
    The batch's transaction is rolled back and the batch runs again at once, the store asked
    about each key before any handler runs; the partitions are no longer held to be known
    until they are assigned again. Not an Exception: raised where a handler reads
    ``context.db``, it must reach the framework. Something other than this consumer wrote the
    group's keys while it held the partitions without moving their epochs (the workers of a
    frozen member with ``concurrency`` above 1, whose message transactions commit keys without
    the rows, finishing after its partitions moved; another deployment sharing the group id
    and the store; a hand-made insert); the handlers of the batch's first run may have run
    for messages processed before (their writes were rolled back)."""

    def __init__(self, where: str, partitions: list[tuple[str, int]]) -> None:
        self.partitions = partitions
        super().__init__(
            f"{where}: processed keys were found among the batch's keys of "
            f"{_named(partitions)}, at offsets "
            "above every key the store held for them when they were assigned: something other "
            "than this consumer wrote this group's keys meanwhile (the concurrent workers of a "
            "member frozen while it held them, another deployment sharing the group id and "
            "the store?). The batch rolled back and runs again, the store "
            "asked about each key first; its handlers may have run once already for messages "
            "processed before, with their writes rolled back"
        )


def _named(partitions: list[tuple[str, int]]) -> str:
    """Partitions as an operator reads them: ``topic[0], topic[3]``."""
    return ", ".join(f"{topic}[{partition}]" for topic, partition in partitions)
