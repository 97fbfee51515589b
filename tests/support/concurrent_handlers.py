"""Handlers for the concurrency tests: each call records when it ran, so a checker can tell
whether two calls of one key (or partition) overlapped or ran out of order.

Messages carry the key's sequence number as their value (``b"17"``: the key's 18th message)
and the key as their Kafka key. Routes name ``tests.support.concurrent_handlers:handle`` (a
plain ``def``: the thread pool) or ``:handle_async`` (an ``async def``: the event loop).

Every call appends one line to ``$RECORD_FILE`` (set by ``ConsumerProcess``) when it ends:

    pid key partition offset seq start_ns end_ns worker outcome

``pid`` tells the runs of a crash test apart; ``start_ns``/``end_ns`` are ``time.time_ns()``
(comparable with the broker's timestamps and across processes); ``worker`` is ``t<thread id>``
or ``a<task id>``; ``outcome`` is ``ok`` or ``raised``. With ``$CONC_RECORD_STARTS`` set, a call
also appends ``pid key partition offset seq start_ns - worker start`` as it begins, so a test
can see calls that began and never ended (abandoned work). Each line is one ``os.write`` on a
file opened with ``O_APPEND``: lines from many threads never interleave, and a SIGKILL loses
only calls that had not ended.

Each call sleeps a random delay, ``$CONC_DELAY_MIN_MS`` to ``$CONC_DELAY_MAX_MS`` (default 0 to
5), drawn from a generator seeded with ``$CONC_DELAY_SEED`` and the message's coordinates, so a
run's delays are the same every time. ``$CONC_FAIL`` = ``key:seq`` makes that message's calls
raise every time (:class:`KeyFailure`): retried, then dead-lettered. ``$CONC_BLOCK`` = ``key:seq``
(several, comma-separated) makes those messages' calls (plain ``def`` only) wait
``$CONC_BLOCK_SECONDS`` (default 120) before they record: stuck messages holding their
partitions' watermarks.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time

from consumer.message import Context, Message

_MIN_S = float(os.environ.get("CONC_DELAY_MIN_MS", "0")) / 1000
_MAX_S = float(os.environ.get("CONC_DELAY_MAX_MS", "5")) / 1000
_SEED = os.environ.get("CONC_DELAY_SEED", "13")
_FAIL = os.environ.get("CONC_FAIL", "")
_BLOCK = set(filter(None, os.environ.get("CONC_BLOCK", "").split(",")))
_BLOCK_S = float(os.environ.get("CONC_BLOCK_SECONDS", "120"))
_STARTS = bool(os.environ.get("CONC_RECORD_STARTS"))
_PID = os.getpid()

_fd: int | None = None
_open_lock = threading.Lock()


class KeyFailure(RuntimeError):
    """Raised for the message ``$CONC_FAIL`` names, on every attempt."""


def _file() -> int:
    global _fd
    if _fd is None:
        with _open_lock:
            if _fd is None:
                path = os.environ.get("RECORD_FILE")
                if not path:
                    raise RuntimeError("concurrent_handlers needs RECORD_FILE set to a file path")
                _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _fd


def _delay(message: Message) -> float:
    if _MAX_S <= 0:
        return 0.0
    rng = random.Random(f"{_SEED}:{message.partition}:{message.offset}")
    return rng.uniform(_MIN_S, _MAX_S)


def _head(message: Message) -> tuple[str, str]:
    key = (message.key or b"-").decode()
    return key, message.text()


def _write(key: str, message: Message, seq: str, start: int, end: int | str, worker: str,
           outcome: str) -> None:
    line = (f"{_PID} {key} {message.partition} {message.offset} {seq} {start} {end} "
            f"{worker} {outcome}\n")
    os.write(_file(), line.encode())


def _fails(key: str, seq: str) -> bool:
    return bool(_FAIL) and f"{key}:{seq}" == _FAIL


def handle(message: Message, context: Context) -> None:
    """A plain handler: sleeps its delay on the calling thread, then records the call."""
    start = time.time_ns()
    key, seq = _head(message)
    worker = f"t{threading.get_ident()}"
    if _STARTS:
        _write(key, message, seq, start, "-", worker, "start")
    delay = _BLOCK_S if _BLOCK and f"{key}:{seq}" in _BLOCK else _delay(message)
    if delay:
        time.sleep(delay)
    if _fails(key, seq):
        _write(key, message, seq, start, time.time_ns(), worker, "raised")
        raise KeyFailure(f"message {seq} of key {key} always fails")
    _write(key, message, seq, start, time.time_ns(), worker, "ok")


async def handle_async(message: Message, context: Context) -> None:
    """An ``async def`` handler: awaits its delay on the event loop, then records the call."""
    start = time.time_ns()
    key, seq = _head(message)
    worker = f"a{id(asyncio.current_task())}"
    if _STARTS:
        _write(key, message, seq, start, "-", worker, "start")
    delay = _delay(message)
    if delay:
        await asyncio.sleep(delay)
    if _fails(key, seq):
        _write(key, message, seq, start, time.time_ns(), worker, "raised")
        raise KeyFailure(f"message {seq} of key {key} always fails")
    _write(key, message, seq, start, time.time_ns(), worker, "ok")
