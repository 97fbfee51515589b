"""A ledger handler whose ``"flaky"`` event raises on its first two calls (the batch's first
run and its message-by-message run), and a PostgreSQL trigger that kills the store connection
at COMMIT, once, right after that second failure: a real store outage that rolls back a batch
in which a retry was already decided.

``install(dsn)`` creates ``commit_bomb`` (one boolean, ``armed``) and a deferred constraint
trigger on ``consumer_checkpoints`` that, at COMMIT, terminates its own backend while armed.
The handler arms it through a connection of its own (``$BOMB_DSN``, so the arming survives the
rollback) at the event's second failure, and disarms it at the third call, which succeeds.
Every committed change of a checkpoint row is also copied into ``checkpoint_audit``.
"""

from __future__ import annotations

import os
from collections import Counter

import psycopg

from consumer.message import Context, Message

_calls: Counter[str] = Counter()


class NotYet(RuntimeError):
    pass


def install(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute("CREATE TABLE commit_bomb (armed boolean NOT NULL)")
        db.execute("INSERT INTO commit_bomb VALUES (false)")
        db.execute("CREATE TABLE checkpoint_audit (partition integer, old bigint, new bigint)")
        db.execute("""CREATE FUNCTION commit_bomb_fire() RETURNS trigger AS $$
            BEGIN
                IF (SELECT armed FROM commit_bomb) THEN
                    PERFORM pg_terminate_backend(pg_backend_pid());
                END IF;
                RETURN NULL;
            END $$ LANGUAGE plpgsql""")
        db.execute("""CREATE FUNCTION checkpoint_audit_copy() RETURNS trigger AS $$
            BEGIN
                INSERT INTO checkpoint_audit VALUES (NEW.partition, OLD.next_offset,
                                                     NEW.next_offset);
                RETURN NULL;
            END $$ LANGUAGE plpgsql""")
        db.execute("""CREATE CONSTRAINT TRIGGER commit_bomb AFTER UPDATE ON consumer_checkpoints
                      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                      EXECUTE FUNCTION commit_bomb_fire()""")
        db.execute("""CREATE TRIGGER checkpoint_audit AFTER UPDATE OF next_offset
                      ON consumer_checkpoints FOR EACH ROW
                      WHEN (OLD.next_offset IS DISTINCT FROM NEW.next_offset)
                      EXECUTE FUNCTION checkpoint_audit_copy()""")


def _arm(armed: bool) -> None:
    with psycopg.connect(os.environ["BOMB_DSN"], autocommit=True) as db:
        db.execute("UPDATE commit_bomb SET armed = %s", (armed,))


def apply(message: Message, context: Context) -> None:
    from handlers import ledger

    event = str(message.json()["event"])
    if event == "flaky":
        _calls[event] += 1
        if _calls[event] == 2:
            _arm(True)
        if _calls[event] <= 2:
            raise NotYet(f"event {event} fails on call {_calls[event]}")
        if _calls[event] == 3:
            _arm(False)
    ledger.apply(message, context)
