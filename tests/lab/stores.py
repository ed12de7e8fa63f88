"""The store fixtures: one test body, run against SQLite and a real PostgreSQL server.

PostgreSQL comes from ``ADAPTIM_TEST_POSTGRES_URL`` (``.ci/run`` and ``make test``
start a server with ``scripts/start-postgres.sh`` and set it), or else from that
script here. A test that needs PostgreSQL fails, loudly, when no server can be
had: it is never skipped. Each test gets a database of its own, dropped after.

Import the fixtures into a test module: ``from stores import store_url  # noqa: F401``.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

ROOT = Path(__file__).resolve().parents[2]
START = ROOT / "scripts" / "start-postgres.sh"


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of a running PostgreSQL server (its ``adaptim`` database)."""
    url = os.environ.get("ADAPTIM_TEST_POSTGRES_URL")
    if not url:
        started = subprocess.run(
            ["bash", str(START)], capture_output=True, text=True, timeout=120, check=False
        )
        if started.returncode != 0:
            pytest.fail(
                "the PostgreSQL tests need a server: `bash scripts/start-postgres.sh --install` "
                f"(as root) or set ADAPTIM_TEST_POSTGRES_URL. The script said:\n{started.stderr}"
            )
        url = started.stdout.strip().splitlines()[-1]
    try:
        with create_engine(url).connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:
        pytest.fail(f"cannot reach the PostgreSQL server of the tests: {type(error).__name__}")
    return url


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on the test server; dropped after the test."""
    name = f"adaptim_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(
        make_url(postgres_server).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against the embedded default and a PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("postgres_url"))
