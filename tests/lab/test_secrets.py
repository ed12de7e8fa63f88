# ruff: noqa: F811  (the store fixtures are imported, then named as arguments)
"""A password in a store URL reaches the database and nothing else: not results.json,
the report, the stored command, the terminal, nor an error message."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine, make_url, text
from stores import postgres_server, postgres_url  # noqa: F401  (fixtures)
from typer.testing import CliRunner

from adaptim.cli import app
from adaptim.lab.redact import redact_command, redact_url

HERE = Path(__file__).parent


@given(
    user=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=8),
    password=st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1),
    host=st.sampled_from(["127.0.0.1", "db.example.org", "[::1]"]),
    port=st.one_of(st.none(), st.integers(1, 65535)),
)
def test_urls_lose_their_password_exactly_as_sqlalchemy_hides_it(
    user: str, password: str, host: str, port: int | None
) -> None:
    url = f"postgresql+psycopg://{user}:{quote_plus(password)}@{host}{'' if port is None else f':{port}'}/lab"
    hidden = redact_url(url)
    assert hidden == make_url(url).render_as_string(hide_password=True)
    assert redact_command(["adaptim", "compare", f"--store={url}"]) == shlex.join(
        ["adaptim", "compare", f"--store={hidden}"]
    )


def test_a_password_with_a_raw_at_sign_is_hidden_whole() -> None:
    assert redact_url("postgresql://u:p@ss@host/db") == "postgresql://u:***@host/db"
    assert redact_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_the_password_reaches_no_output_of_a_study(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = make_url(postgres_url).password
    assert password
    monkeypatch.syspath_prepend(str(HERE))
    args = [
        "compare", "--problem", "toyproblems:quadratic", "--optimizers", "adam", "--budget", "2",
        "--seeds", "1", "--max-seeds", "1", "--workers", "1", "--out", str(tmp_path),
        "--store", postgres_url,
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["adaptim", *args])  # the command results.json records
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    shown = {
        "the terminal": result.output,
        "results.json": (tmp_path / "results.json").read_text(),
        "report.html": (tmp_path / "report.html").read_text(),
    }
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        shown["the stored command"] = "\n".join(
            connection.execute(text("SELECT command FROM studies")).scalars()
        )
    engine.dispose()
    assert "--store 'postgresql+psycopg://adaptim:***@127.0.0.1" in shown["the stored command"]
    assert '"store": "postgresql+psycopg://adaptim:***@' in shown["results.json"]
    for where, content in shown.items():
        assert password not in content, f"the password is in {where}"


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("nosuchdb://user:hunter2secret@host/x", "bad store URL 'nosuchdb://user:***@host/x'"),
        (
            "sqlite://user:hunter2secret@/no/such/dir/x.db",
            "Invalid SQLite URL: sqlite://user:***@/no/such/dir/x.db",
        ),
    ],
)
def test_bad_store_urls_are_named_without_their_password(
    store: str, message: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, ["compare", "--out", str(tmp_path), "--store", store])
    assert result.exit_code == 2
    assert message in result.output
    assert "hunter2secret" not in result.output


def test_a_refused_password_is_not_repeated_in_the_error(
    postgres_server: str, tmp_path: Path
) -> None:
    wrong = make_url(postgres_server).set(password="hunter2secret")
    store = wrong.render_as_string(hide_password=False)
    result = CliRunner().invoke(app, ["compare", "--out", str(tmp_path), "--store", store])
    assert result.exit_code == 2
    assert "cannot open store 'postgresql+psycopg://adaptim:***@127.0.0.1" in result.output
    assert "password authentication failed" in result.output
    assert "hunter2secret" not in result.output
