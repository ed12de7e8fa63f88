"""Which databases are adaptim's: stores are marked, and another application's is refused.

A store is marked in two ways: SQLite's ``PRAGMA application_id`` holds
:data:`APPLICATION_ID` (the header field SQLite reserves for the application
that owns a file), and the table ``adaptim_meta`` holds the schema version
(every dialect; PostgreSQL has no application id).

Before adaptim creates anything, :func:`check_ownership` reads, and only
reads, what the database holds. It refuses

* a SQLite file whose application id is another application's;
* a SQLite file without adaptim's id that holds tables adaptim does not make
  (a file is one application's database);
* in any dialect, a table with one of adaptim's names but not its columns
  (another application's ``trials``).

A store made before the marks existed (adaptim's tables only, unmarked) is
adaptim's and gets marked when it is next opened writable.
"""

from __future__ import annotations

from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection, Engine

from adaptim.lab.errors import LabError

#: ``PRAGMA application_id`` of an adaptim store: "adap" in ASCII.
APPLICATION_ID = 0x61646170
#: The store's layout version, in ``adaptim_meta``; bumped when the layout changes.
SCHEMA_VERSION = 1
META_TABLE = "adaptim_meta"


def check_ownership(engine: Engine, metadata: MetaData, shown: str) -> None:
    """Raise :class:`LabError` unless the database is empty or adaptim's. Writes nothing."""
    with engine.connect() as connection:
        found = set(inspect(connection).get_table_names())
        ours = set(metadata.tables)
        if engine.dialect.name == "sqlite":
            application_id = int(connection.exec_driver_sql("PRAGMA application_id").scalar() or 0)
            if application_id not in (0, APPLICATION_ID):
                raise _foreign(shown, f"its application_id is {application_id:#x}, not adaptim's")
            others = sorted(found - ours)
            if application_id == 0 and others:
                listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
                raise _foreign(shown, f"it holds tables adaptim does not make ({listed})")
        for name in sorted(found & ours):
            columns = {column["name"] for column in inspect(connection).get_columns(name)}
            expected = set(metadata.tables[name].columns.keys())
            if not expected <= columns:
                missing = sorted(expected - columns)[0]
                raise _foreign(shown, f"its table {name!r} is not adaptim's: no column {missing!r}")


def mark(connection: Connection) -> None:
    """Write the marks (inside the caller's transaction, after the tables exist)."""
    if connection.dialect.name == "sqlite":
        current = connection.exec_driver_sql("PRAGMA application_id").scalar()
        if current != APPLICATION_ID:
            connection.exec_driver_sql(f"PRAGMA application_id = {APPLICATION_ID}")
    present = connection.execute(
        text(f"SELECT value FROM {META_TABLE} WHERE key = 'schema'")
    ).scalar()
    if present is None:
        connection.execute(
            text(f"INSERT INTO {META_TABLE} (key, value) VALUES ('schema', :version)"),
            {"version": str(SCHEMA_VERSION)},
        )


def is_marked(connection: Connection) -> bool:
    """Whether the store already carries every mark (then opening it writes nothing)."""
    sqlite = connection.dialect.name == "sqlite"
    if sqlite and connection.exec_driver_sql("PRAGMA application_id").scalar() != APPLICATION_ID:
        return False
    if META_TABLE not in inspect(connection).get_table_names():
        return False
    return (
        connection.execute(text(f"SELECT value FROM {META_TABLE} WHERE key = 'schema'")).scalar()
        is not None
    )


def _foreign(shown: str, why: str) -> LabError:
    return LabError(
        f"store {shown} belongs to another application ({why}); adaptim leaves it untouched: "
        "point --store or --out elsewhere"
    )
