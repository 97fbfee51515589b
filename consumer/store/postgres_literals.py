"""Values written out as SQL literals, for the query strings the PostgreSQL store sends whole
(``BEGIN`` with a batch's opening, the checkpoint rows with ``COMMIT``): integers, ``bytea``
values in hexadecimal, and names quoted by the connection (a ``literal`` function, so the
quoting follows its settings). Only values of our own making go through here, never a
handler's."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def int_array(values: Iterable[int]) -> str:
    return f"ARRAY[{','.join([str(int(value)) for value in values])}]"


def bytea_array(values: Iterable[bytes]) -> str:
    decoded = ",".join([f"decode('{value.hex()}','hex')" for value in values])
    return f"ARRAY[{decoded}]"


def text_array(values: Iterable[str], literal: Callable[[str], str]) -> str:
    return f"ARRAY[{','.join([literal(value) for value in values])}]"
