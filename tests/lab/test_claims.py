# ruff: noqa: F811  (the store fixtures are imported, then named as arguments)
"""Claims on SQLite and PostgreSQL: one winner per trial, stale claims taken over once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import update
from sqlalchemy.orm import Session
from stores import postgres_server, postgres_url, store_url  # noqa: F401  (fixtures)

from adaptim.lab.claims import ClaimRow, Claims
from adaptim.lab.store import Store


def race(store_url: str, workers: int, keys: list[str]) -> dict[str, list[str]]:
    """``workers`` threads, each a worker of its own, claim every key at once: who won what."""
    claims = [Claims(Store(store_url)) for _ in range(workers)]
    won: dict[str, list[str]] = {c.owner: [] for c in claims}
    start = threading.Barrier(workers)

    def work(claim: Claims) -> None:
        start.wait()
        won[claim.owner] = [k for k in keys if claim.claim(k)]

    threads = [threading.Thread(target=work, args=(c,)) for c in claims]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in claims:
        c.close()
    return won


# Fresh keys per example: the shared database does not carry one example into the next.
@hsettings(max_examples=4, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workers=st.integers(2, 6), count=st.integers(1, 12))
def test_each_trial_is_claimed_by_exactly_one_worker(
    store_url: str, workers: int, count: int
) -> None:
    keys = [f"{os.urandom(8).hex()}-{i}" for i in range(count)]
    won = race(store_url, workers, keys)
    assert Counter(k for keys_won in won.values() for k in keys_won) == Counter(keys)


def age(store_url: str, key: str, seconds: float) -> None:
    """Make the claim of ``key`` look ``seconds`` older, as if its owner stopped beating."""
    engine = Store(store_url).engine
    with Session(engine) as session, session.begin():
        session.execute(
            update(ClaimRow)
            .where(ClaimRow.key == key)
            .values(heartbeat=ClaimRow.heartbeat - seconds)
        )


def test_a_live_claim_is_kept_and_a_stale_one_taken_over_by_one_worker(store_url: str) -> None:
    holder = Claims(Store(store_url), timeout=30)
    assert holder.claim("trial")
    others = [Claims(Store(store_url), timeout=30) for _ in range(4)]
    assert not any(o.claim("trial") for o in others)  # alive and beating: kept
    holder._stop.set()  # the holder hangs: no more heartbeats
    age(store_url, "trial", 31)
    won = race_for(others, "trial")
    assert won == 1
    for c in (holder, *others):
        c.close()


def race_for(claims: list[Claims], key: str) -> int:
    start = threading.Barrier(len(claims))
    wins: list[bool] = []

    def work(claim: Claims) -> None:
        start.wait()
        wins.append(claim.claim(key))

    threads = [threading.Thread(target=work, args=(c,)) for c in claims]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(wins)


def test_heartbeats_keep_a_long_trial_claimed(store_url: str) -> None:
    holder = Claims(Store(store_url), timeout=0.6)  # beats every 0.1 s
    other = Claims(Store(store_url), timeout=0.6)
    assert holder.claim("long")
    deadline = time.monotonic() + 1.5  # well past the timeout
    while time.monotonic() < deadline:
        assert not other.claim("long")
        time.sleep(0.1)
    holder.close()  # released: free at once
    assert other.claim("long")
    other.close()


@pytest.mark.slow
def test_a_dead_process_on_this_machine_loses_its_claim_at_once(store_url: str) -> None:
    code = (
        "import sys; from adaptim.lab.claims import Claims; from adaptim.lab.store import Store;"
        "c = Claims(Store(sys.argv[1])); assert c.claim('dead'); print(c.owner, flush=True);"
        "import time; time.sleep(600)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code, store_url], stdout=subprocess.PIPE, text=True
    )
    owner = process.stdout.readline().strip() if process.stdout else ""
    assert owner.startswith(f"{socket.gethostname()}:{process.pid}:")
    alive = Claims(Store(store_url), timeout=600)
    assert not alive.claim("dead")
    process.kill()
    process.wait()
    assert alive.claim("dead")  # no 600 s wait: its owner's pid is gone
    alive.close()


def test_the_study_ends_once_per_run_and_again_for_a_later_run(store_url: str) -> None:
    started = time.time()
    first, second = Claims(Store(store_url)), Claims(Store(store_url))
    written: list[str] = []
    assert first.finish("study", started, "/out/a", lambda: written.append("a")) is None
    assert second.finish("study", started, "/out/b", lambda: written.append("b")) == (
        first.owner,
        "/out/a",
    )
    later = Claims(Store(store_url))
    assert later.finish("study", time.time() + 1, "/out/c", lambda: written.append("c")) is None
    assert written == ["a", "c"]  # a re-run writes again
    for c in (first, second, later):
        c.close()


def test_a_worker_that_dies_while_writing_leaves_the_files_to_the_next(store_url: str) -> None:
    started = time.time()
    dying, next_ = Claims(Store(store_url), timeout=30), Claims(Store(store_url), timeout=30)
    written: list[str] = []

    def hang_then_die() -> None:
        dying._stop.set()  # mid-write, its heartbeats stop ...
        age(store_url, "finish:study", 31)  # ... long enough to count as dead
        # Meanwhile the next worker to finish the study writes it instead.
        assert next_.finish("study", started, "/out/b", lambda: written.append("b")) is None
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dying.finish("study", started, "/out/a", hang_then_die)
    assert written == ["b"]
    third = Claims(Store(store_url))
    assert third.finish("study", started, "/out/c", lambda: written.append("c")) == (
        next_.owner,
        "/out/b",
    )
    for c in (dying, next_, third):
        c.close()


def test_a_bad_timeout_is_refused(store_url: str) -> None:
    with pytest.raises(ValueError, match="claim timeout must be positive, got 0"):
        Claims(Store(store_url), timeout=0)
