"""One explicit transaction helper, because sqlite-utils' own writes commit as they go.

A dataset or model version is written as one unit: either every row lands or none does, so a
crash or Ctrl-C never leaves a half-registered record behind.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import sqlite_utils

from cloud.registry.errors import RegistryError


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite3.Connection]:
    conn = db.conn
    if conn.in_transaction:
        conn.commit()
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as e:
        raise RegistryError(f"registry is busy or read-only: {e}") from e
    try:
        yield conn
    except BaseException:
        conn.rollback()
        raise
    else:
        conn.commit()
