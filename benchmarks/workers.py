"""Many workers on one study: the speed-up, and a kill -9 campaign.

    python benchmarks/workers.py speedup --store postgresql+psycopg://... --workers 1,2,4
    python benchmarks/workers.py kill --store sqlite:////tmp/k.db --kills 6

``speedup`` starts N ``adaptim compare`` processes at once on a fresh database
and the same study, times them until the last exits, and checks that the study
gives the results of one worker (wall time aside). ``kill`` runs 3 workers and
every few seconds ``kill -9``s a random one and starts a replacement, until the
study is done; then it counts the trials stored against those the study plans
(lost) and the keys stored twice (duplicated). A PostgreSQL ``--store`` is the
server's URL; each run gets a fresh database on it. Prints ratios and counts;
asserts nothing on time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, make_url, text

STUDY = [
    "--problem", "quadratic-deep", "--steps", "150", "--optimizers", "sgd,adam,rmsprop",
    "--budget", "4", "--seeds", "2", "--max-seeds", "2",
]  # fmt: skip


def fresh_store(url: str, work: Path) -> str:
    if url.startswith("sqlite"):
        return f"sqlite:///{work / f'{uuid.uuid4().hex[:8]}.db'}"
    name = f"adaptim_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def worker(store: str, out: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "adaptim.cli", "compare", *STUDY, "--workers", "1"]
    return subprocess.Popen(
        [*command, "--out", str(out), "--store", store],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Its own session, as a worker started from its own terminal or machine: with Linux's
        # autogroup scheduling, workers of one session share one session's CPU share.
        start_new_session=True,
    )


def results(outs: list[Path]) -> tuple[int, list[Any]]:
    """How many workers wrote results.json, and the runs (wall time aside) of one of them."""
    written = [o for o in outs if (o / "results.json").exists()]
    data = json.loads((written[0] / "results.json").read_text())
    return len(written), [
        (o["name"], o["hparams"], [{**r, "wall_time": 0} for r in o["runs"]], o["tuning"])
        for p in data["problems"]
        for o in p["optimizers"]
    ]


def counts(store: str) -> tuple[int, int]:
    engine = create_engine(store)
    with engine.connect() as connection:
        total, unique = connection.execute(
            text("SELECT COUNT(*), COUNT(DISTINCT key) FROM trials")
        ).one()
    engine.dispose()
    return int(total), int(unique)


def speedup(url: str, workers: list[int], work: Path, repeat: int = 1) -> None:
    """Each count of workers in turn, ``repeat`` rounds; speed-up against the round's first row.

    The load average (1 min, at the start and the end of each row) says how much of the
    machine other work took meanwhile.
    """
    reference: list[Any] | None = None
    print(
        "round  workers  wall s  speed-up  CPU s  trials  distinct  wrote results.json  "
        "identical  load avg (start-end)"
    )
    for round_ in range(1, repeat + 1):
        base = 0.0
        for n in workers:
            reference, base = _speedup_row(url, n, work, reference, base, round_)


def _speedup_row(
    url: str, n: int, work: Path, reference: list[Any] | None, base: float, round_: int
) -> tuple[list[Any], float]:
    load = os.getloadavg()[0]
    store = fresh_store(url, work)
    outs = [work / f"n{n}-{i}-{uuid.uuid4().hex[:4]}" for i in range(n)]
    start = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [worker(store, out) for out in outs]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - start
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    assert codes == [0] * n, codes
    wrote, runs = results(outs)
    reference = reference or runs
    base = base or wall
    total, unique = counts(store)
    print(
        f"{round_:5d}  {n:7d}  {wall:6.1f}  {base / wall:8.2f}  {cpu_s:5.1f}  {total:6d}  "
        f"{unique:8d}  {wrote:18d}  {runs == reference!s:9}  "
        f"{load:.1f}-{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return reference, base


def kill_campaign(url: str, kills: int, work: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = fresh_store(url, work)
    outs: list[Path] = []

    def start() -> subprocess.Popen[bytes]:
        outs.append(work / f"k{len(outs)}")
        return worker(store, outs[-1])

    live = [start() for _ in range(3)]
    done = 0
    while done < kills:
        time.sleep(rng.uniform(2.0, 6.0))
        running = [p for p in live if p.poll() is None]
        if not running:
            break
        victim = rng.choice(running)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        live.remove(victim)
        live.append(start())
        done += 1
    codes = [p.wait() for p in live]
    wrote, runs = results(outs)
    total, unique = counts(store)
    # The reference: one undisturbed worker on a fresh store.
    clean = fresh_store(url, work)
    ref_out = work / "reference"
    assert worker(clean, ref_out).wait() == 0
    _, reference = results([ref_out])
    planned, _ = counts(clean)
    print(
        f"kills {done}, workers exited {codes}, trials stored {total} of {planned} planned "
        f"(lost {planned - unique}), duplicated {total - unique}, workers that wrote "
        f"results.json {wrote}, "
        f"results identical to one undisturbed worker: {runs == reference}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["speedup", "kill"])
    parser.add_argument("--store", required=True, help="sqlite:///... or a PostgreSQL server URL")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=1, help="speedup: rounds of --workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--study", help="the study's options instead of the default ones")
    args = parser.parse_args()
    if args.study:
        STUDY[:] = shlex.split(args.study)
    with tempfile.TemporaryDirectory() as work:
        if args.mode == "speedup":
            speedup(args.store, [int(n) for n in args.workers.split(",")], Path(work), args.repeat)
        else:
            kill_campaign(args.store, args.kills, Path(work), args.seed)


if __name__ == "__main__":
    main()
