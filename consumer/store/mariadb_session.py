"""The MariaDB store's sessions (PyMySQL): a ``mysql://`` URL's connection parameters, a
connection set up as the store needs it (READ COMMITTED, ``ANSI_QUOTES``, InnoDB's lock wait
and MariaDB's idle-transaction timeouts, matched-row counts), ``context.db``'s connection and
cursor classes, and which PyMySQL errors are transient, refused or the message's own.

While a batch is open (:attr:`MariaDBConnection.guarded`) the connection refuses a handler's
transaction statements: ``COMMIT``, ``ROLLBACK`` (not to a savepoint), ``BEGIN``, ``START
TRANSACTION``, read from a statement's first words, and ``commit()``, ``rollback()`` and
``begin()``. They would commit the batch's keys ahead of its effects, and one followed by a
``BEGIN`` would go unseen. The store's own statements have texts of their own (:data:`START`,
:data:`COMMIT`, :data:`ROLLBACK`). DDL, which MariaDB commits implicitly, is found after the
handler (the store's ``_require_open_batch``). A deadlock rolls the batch's whole transaction
back and leaves the connection in autocommit: from then on, until the store ends the batch,
every statement is refused (:attr:`MariaDBConnection.rolled_back`), so a handler that caught
the error writes nothing outside the batch."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Sequence
from typing import Any

import pymysql
import pymysql.connections
import pymysql.cursors
from pymysql.constants import CLIENT, COMMAND, SERVER_STATUS

from consumer.errors import (
    StoreError,
    StoreSchemaError,
    StoreUnavailable,
    TransactionEndRefused,
)

#: A statement a handler may hit that says nothing about its message: InnoDB's deadlock
#: (1213: the server rolled back the whole transaction) and lock wait timeout (1205).
TRANSIENT_CODES = frozenset({1205, 1213})
#: Errors after which InnoDB may have rolled back the whole transaction, not the statement:
#: a deadlock (always) and a lock wait timeout (with ``innodb_rollback_on_timeout``).
ROLLBACK_CODES = frozenset({1205, 1213})
#: The connection is gone or going: cannot connect (2003), server gone away (2006), lost
#: during a query (2013), killed (1927), server shutting down (1053), ended by
#: idle_transaction_timeout (4031); PyMySQL's own "connection closed" errors carry 0.
LOST_CODES = frozenset({0, 1053, 1927, 2003, 2006, 2013, 2055, 4031})
#: Waiting cannot help: access denied (1044, 1045), unknown database (1049).
REFUSED_CODES = frozenset({1044, 1045, 1049})
NO_SUCH_TABLE = 1146

#: The store's own transaction statements (see the module's docstring).
START = "START TRANSACTION /* checkpoint-consumer */"
COMMIT = "COMMIT /* checkpoint-consumer */"
ROLLBACK = "ROLLBACK /* checkpoint-consumer */"
_OWN = frozenset({START, COMMIT, ROLLBACK})
_OWN_LONGEST = max(map(len, _OWN)) + 1
#: A statement that ends or opens a transaction, by its first words (after any comments).
_TRANSACTION_STATEMENT = re.compile(
    r"(?:\s|/\*.*?\*/|(?:--\s|#)[^\n]*(?:\n|$))*"
    r"(COMMIT|ROLLBACK(?!\s+(?:WORK\s+)?TO\b)|BEGIN(?!\s+NOT\s+ATOMIC)|START\s+TRANSACTION)"
    r"\b", re.IGNORECASE | re.DOTALL)


#: Why a statement is refused after InnoDB rolled the batch's transaction back.
ROLLED_BACK = (
    "the server rolled the batch's transaction back (a deadlock, or a lock wait timeout with "
    "innodb_rollback_on_timeout) under a handler's statement, and the handler went on; this "
    "statement would commit on its own, outside the batch, so it is refused. The batch rolls "
    "back and is retried. Let database errors leave the handler.")


def transaction_statement(sql: str) -> str | None:
    """The transaction statement ``sql`` starts with (``COMMIT``, ``ROLLBACK``, ``BEGIN``,
    ``START TRANSACTION``), if any: a savepoint's ``ROLLBACK TO`` and a compound ``BEGIN NOT
    ATOMIC`` are not; the store's own statements neither."""
    if sql in _OWN:
        return None
    found = _TRANSACTION_STATEMENT.match(sql)
    return " ".join(found.group(1).upper().split()) if found else None


def error_code(error: BaseException) -> int | None:
    args = getattr(error, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


#: An error the store's own ``SIGNAL`` raised (in its compound statements), told apart by its
#: text.
SIGNALLED = 1644


def signalled(error: BaseException, text: str) -> bool:
    """Whether ``error`` is the store's own ``SIGNAL`` with ``text``."""
    return error_code(error) == SIGNALLED and text in str(error)


def is_lost(error: BaseException) -> bool:
    """Whether the error says the connection is gone (a new one is needed)."""
    return isinstance(error, pymysql.err.InterfaceError) or (
        isinstance(error, pymysql.err.MySQLError) and error_code(error) in LOST_CODES)


def is_transient(error: BaseException) -> bool:
    """Whether an error a handler raised is a deadlock, a lock wait timeout or a lost
    connection, rather than a failure of its message."""
    if isinstance(error, pymysql.err.InterfaceError):
        return True  # the connection was already closed under it
    if not isinstance(error, pymysql.err.MySQLError):
        return False
    code = error_code(error)
    return code in TRANSIENT_CODES or code in LOST_CODES


class MariaDBCursor(pymysql.cursors.Cursor):  # type: ignore[misc]
    """PyMySQL's cursor whose ``fetchall`` gives a list of tuples, as the other stores', and
    that refuses a transaction statement while its connection is guarded."""

    def execute(self, query: str, args: Any = None) -> int:
        conn = self.connection  # None once the cursor is closed: PyMySQL says so below
        if conn is not None and conn.guarded and (statement := transaction_statement(query)):
            raise TransactionEndRefused(f"a {statement} statement")
        return int(super().execute(query, args))

    def fetchall(self) -> list[tuple[Any, ...]]:
        return list(super().fetchall())


class MariaDBConnection(pymysql.connections.Connection):  # type: ignore[misc]
    """PyMySQL's connection (``context.db``) with ``execute`` as sqlite3's and psycopg's
    have: run one statement (``%s`` placeholders) and return its cursor. While
    :attr:`guarded` (a batch is open), transaction statements and methods are refused."""

    #: A batch's transaction is open: a handler may not end it.
    guarded = False
    #: InnoDB rolled the guarded batch's transaction back under a statement (a deadlock),
    #: its claimed keys and every effect written so far with it. The connection is in
    #: autocommit again, so any further statement would commit on its own, outside the
    #: batch: until the store ends the batch, every statement is refused.
    rolled_back = False
    #: Statements :meth:`send` sent whose answers are not read yet.
    unanswered = 0
    #: PyMySQL's: the number the next packet read or written carries.
    _next_seq_id: int

    def query(self, sql: str | bytes, unbuffered: bool = False) -> int:
        """PyMySQL's one way to the server (every cursor's ``execute``, ``executemany`` and
        ``callproc`` come here); while guarded, it notes a rollback of the batch's transaction
        and refuses what would run outside it."""
        if not self.guarded:
            return self._query(sql, unbuffered)
        if len(sql) < _OWN_LONGEST and sql in _OWN:
            # The store's own START, COMMIT or ROLLBACK: it ends the transaction or opens one
            # anew. (The length is compared first: hashing a claim's long statement costs.)
            self.rolled_back = False
            return self._query(sql, unbuffered)
        if self.rolled_back:
            raise StoreUnavailable(ROLLED_BACK)
        try:
            return self._query(sql, unbuffered)
        except pymysql.err.MySQLError as error:
            if error_code(error) in ROLLBACK_CODES and not self._in_transaction():
                self.rolled_back = True
            raise

    def _query(self, sql: str | bytes, unbuffered: bool) -> int:
        """PyMySQL's ``query``; when statements :meth:`send` sent are still owed their
        answers, this one goes out before they are read: the server has it while the client
        reads them, one round trip for all. An error answering one of them is raised (after
        this statement's answer, whatever it was, so the next command finds the connection
        in step)."""
        if not self.unanswered:
            return int(super().query(sql, unbuffered))
        if isinstance(sql, str):
            sql = sql.encode(self.encoding)
        super()._execute_command(COMMAND.COM_QUERY, sql)
        sequence = self._next_seq_id  # this statement's answer numbers its packets from here
        owed = self._read_owed()
        self._next_seq_id = sequence
        try:
            self._affected_rows = self._read_query_result(unbuffered=unbuffered)
        except pymysql.err.MySQLError:
            if owed is None:
                raise
        if owed is not None:
            raise owed
        return int(self._affected_rows)

    def _read_owed(self) -> pymysql.err.MySQLError | None:
        """Read every answer still owed; the first error among them, returned. A connection
        lost on the way raises at once: nothing more comes."""
        first = None
        while self.unanswered:
            try:
                self.read_answer()
            except pymysql.err.MySQLError as error:
                if self._sock is None:
                    self.unanswered = 0
                    raise
                first = first or error
        return first

    def _execute_command(self, command: int, sql: str | bytes) -> None:
        """Every other command (``ping``, ``commit()``, …) is sent once the answers still
        owed are read: PyMySQL reads its answer right after sending it, as one packet or
        a result, not knowing of theirs."""
        if self.unanswered and (owed := self._read_owed()) is not None:
            raise owed
        super()._execute_command(command, sql)

    def in_transaction(self) -> bool:
        """Whether the server has a transaction open, from the status flags of its last
        answer: no round trip, unless a sent statement's answer is still owed (read first,
        an error in it raised)."""
        if self.unanswered and (owed := self._read_owed()) is not None:
            raise owed
        return bool(self.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS)

    def _in_transaction(self) -> bool:
        """Whether the server still has a transaction open: asked with a statement that does
        nothing, whose answer carries the status (an error's answer does not). A connection
        lost meanwhile counts as open: the next statement finds it lost."""
        try:
            super().query("DO 0")
        except pymysql.err.MySQLError:
            return True
        return bool(self.server_status & SERVER_STATUS.SERVER_STATUS_IN_TRANS)

    def commit(self) -> None:
        if self.guarded:
            raise TransactionEndRefused("commit()")
        super().commit()

    def rollback(self) -> None:
        if self.guarded:
            raise TransactionEndRefused("rollback()")
        super().rollback()

    def begin(self) -> None:
        if self.guarded:
            raise TransactionEndRefused("begin()")
        super().begin()

    def send(self, sql: str) -> None:
        """Send the store's own statement without reading its answer. The server answers
        statements in order: the answer is read by :meth:`read_answer`, or by the next
        command sent, after sending it (one round trip for both)."""
        super()._execute_command(COMMAND.COM_QUERY, sql)
        self.unanswered += 1

    def read_answer(self) -> int:
        """The answer to the oldest statement :meth:`send` sent: its affected rows, or its
        error raised. (Every answer numbers its packets from 1; PyMySQL counts on from the
        last command it sent, which may have gone out since.)"""
        self.unanswered -= 1
        self._next_seq_id = 1
        self._affected_rows = self._read_query_result()
        return int(self._affected_rows)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> MariaDBCursor:
        cursor: MariaDBCursor = self.cursor()
        cursor.execute(sql, tuple(params) if params else None)
        return cursor




def parameters(url: str, connect_timeout: float) -> tuple[dict[str, Any], str]:
    """PyMySQL's connection parameters for ``url``, and where it points, without password."""
    address = urllib.parse.urlsplit(url)
    params: dict[str, Any] = {
        "host": address.hostname or "127.0.0.1", "port": address.port or 3306,
        "user": urllib.parse.unquote(address.username or ""),
        "password": urllib.parse.unquote(address.password or ""),
        "database": urllib.parse.unquote(address.path.lstrip("/")) or None,
        "charset": "utf8mb4", "autocommit": True,
        # rowcount counts rows an UPDATE matched, not those it changed: the epoch fence
        "client_flag": CLIENT.FOUND_ROWS,
        "connect_timeout": max(1, int(connect_timeout)), "cursorclass": MariaDBCursor,
    }
    where = f"mysql://{params['user']}@{params['host']}:{params['port']}/" \
            f"{params['database'] or ''}"
    return params, where


def connect(params: dict[str, Any], where: str, *, lock_wait: int,
            idle: int) -> MariaDBConnection:
    """A connection in autocommit, its session READ COMMITTED with ANSI_QUOTES and the waits."""
    try:
        conn = MariaDBConnection(**params)
        conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        conn.execute(
            "SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES'), "
            f"SESSION innodb_lock_wait_timeout = {lock_wait}, "
            f"SESSION idle_transaction_timeout = {idle}")
    except pymysql.err.MySQLError as error:
        if error_code(error) in REFUSED_CODES:  # waiting will not help: the URL is wrong
            raise StoreSchemaError(
                f"MariaDB store {where} refused the connection: {error.args[-1]}. "
                "Check store.url (user, password, database name).") from None
        raise StoreUnavailable(f"cannot reach MariaDB store {where}: {error.args[-1]}") from None
    return conn


def translated(error: pymysql.err.MySQLError, where: str, lock_wait: int) -> StoreError:
    """Our error for a PyMySQL one: lost connections, lock waits and deadlocks are
    StoreUnavailable (retried), missing tables StoreSchemaError, the rest StoreError."""
    code = error_code(error)
    text = error.args[-1] if error.args else str(error)
    if is_lost(error):
        return StoreUnavailable(f"MariaDB store {where}: lost the connection ({code}: {text})")
    if code == 1205:
        return StoreUnavailable(
            f"MariaDB store {where}: waited store.mariadb_lock_wait_timeout_seconds "
            f"({lock_wait} s) for a row another session holds (a previous owner frozen inside "
            "a transaction is ended after store.mariadb_idle_transaction_timeout_seconds); "
            f"the batch rolled back and is retried: {text}")
    if code == 1213:
        return StoreUnavailable(f"MariaDB store {where}: deadlock; the batch rolled back and "
                                f"is retried: {text}")
    if code == NO_SUCH_TABLE:
        return StoreSchemaError(f"MariaDB store {where}: {text}; run `consumer store init`")
    return StoreError(f"MariaDB store {where}: {type(error).__name__} ({code}): {text}")
