"""`adaptim reproduce`: published claims through the protocol, one table and a JSON file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adaptim.cli import app
from adaptim.lab import reproduce
from adaptim.lab.reproduce import Claim, claims

HERE = Path(__file__).parent
TOY = "toyproblems:quadratic"


@pytest.fixture(autouse=True)
def _toy_problems_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def test_the_lab_carries_every_claim_the_issue_lists() -> None:
    carried = {(c.problem, c.subject) for c in claims()}
    assert {
        ("mnist1d-logreg", "adam"),
        ("mnist1d-mlp", "adam"),
        ("mnist1d-cnn", "adam"),
        ("mnist1d-gru", "adam"),
        ("reddi", "adam"),
        ("reddi", "amsgrad"),
        ("wilson", "sgd"),
        ("wilson", "adam"),
        ("quadratic-deep", "sgd"),
    } <= carried
    published = {c.problem: c.published for c in claims() if c.problem.startswith("mnist1d")}
    assert published == {
        "mnist1d-logreg": 0.32,
        "mnist1d-mlp": 0.68,
        "mnist1d-cnn": 0.94,
        "mnist1d-gru": 0.91,
    }
    assert all(c.source and c.tolerance > 0 for c in claims())


def test_a_claim_holds_within_its_tolerance_only() -> None:
    claim = Claim("c", "s", "p", ("sgd",), "sgd", 1.0, 0.1)
    assert claim.holds(1.05) and claim.holds(0.9)
    assert not claim.holds(1.2) and not claim.holds(None)


def test_reproduce_prints_one_table_and_writes_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toy = [
        Claim("the toy quadratic is solved", "a test", TOY, ("sgd", "adam"), "adam", 0.0, 0.5, quick=True),
        Claim("sgd ends at 100", "a test", TOY, ("sgd", "adam"), "sgd", 100.0, 1.0, quick=True),
        Claim("not in --quick", "a test", TOY, ("sgd",), "sgd", 0.0, 1.0),
    ]  # fmt: skip
    monkeypatch.setattr(reproduce, "claims", lambda: toy)
    args = ["reproduce", "--quick", "--out", str(tmp_path), "--workers", "1"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "the toy quadratic is solved" in result.output and "not in --quick" not in result.output
    assert "holds" in result.output and "does not hold" in result.output
    assert "1 of 2 claims hold." in result.output
    data = json.loads((tmp_path / "reproduce.json").read_text())
    assert data["quick"] is True and (data["holding"], data["total"]) == (1, 2)
    first = data["claims"][0]
    assert first["published"] == 0.0 and first["measured"]["n"] == 2 and first["holds"] is True
    assert set(first) >= {"claim", "source", "problem", "subject", "measured", "hparams", "holds"}
    strict = CliRunner().invoke(app, [*args, "--strict"])
    assert strict.exit_code == 1  # the failing claim; every trial came from the store


@pytest.mark.slow
def test_reproduce_quick_holds_for_the_cheap_claims(tmp_path: Path) -> None:
    """The real --quick run (a minute or two on 2 quiet cores)."""
    args = ["reproduce", "--quick", "--out", str(tmp_path), "--workers", "2"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "reproduce.json").read_text())
    verdicts = {(c["problem"], c["subject"]): c for c in data["claims"]}
    assert verdicts["reddi", "adam"]["measured"]["mean"] > 0.5
    assert verdicts["reddi", "amsgrad"]["holds"]
    assert verdicts["wilson", "sgd"]["holds"] and verdicts["wilson", "adam"]["holds"]
    assert data["holding"] == data["total"], data
