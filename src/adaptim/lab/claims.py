"""Many workers, one study: each trial claimed atomically in the store's database.

Any number of ``adaptim compare`` processes, on one machine or several, may run
the same study on the same store. Every process walks the study's protocol in
the same order (it is deterministic), and before running a trial it *claims*
it: it inserts a row keyed by the trial's key into the ``claims`` table. The
primary key makes the insert atomic on SQLite and PostgreSQL alike: of any
number of workers inserting the same key, one succeeds. The others wait for
the trial to appear in the store and read it from there.

A claim carries its owner and a heartbeat, which a background thread of the
owner refreshes every ``timeout / 6`` seconds (the shape of Optuna's RDB
storage: a running trial with a heartbeat, a stale one failed over). A claim
whose heartbeat is older than ``timeout``, or whose owner runs on this machine
and no longer exists (``kill -9``), is *stale*: another worker takes it over
with a compare-and-swap on (owner, heartbeat), so two workers never both win
it. A trial is stored in one transaction before its claim is released, and the
store's unique trial key makes a second store of the same trial a no-op, so a
worker that dies at any point leaves either nothing or the whole trial.

Heartbeats use each worker's own clock: machines sharing a study need clocks
that agree to well within ``timeout`` (NTP does).

The study's end is claimed too: the first worker to finish claims the
study's ``finish`` row, writes ``results.json`` and ``report.html``, then marks
the row finished; a worker that finishes later in the same run finds that row
newer than its own start and leaves the files to it (see :meth:`Claims.finish`).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from adaptim.lab.errors import LabError
from adaptim.lab.store import ClaimRow, Store, TrialRow
from adaptim.lab.trial import TrialResult, TrialSpec

#: Seconds without a heartbeat after which a claim counts as abandoned.
DEFAULT_TIMEOUT = 60.0
#: Seconds between looks at the store while other workers run the remaining trials.
POLL_INTERVAL = 0.25

RunBatch = Callable[[Sequence[TrialSpec]], Iterable[TrialResult]]


def worker_id() -> str:
    """This process, as a claim's owner: host, pid, and a nonce against pid reuse."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _gone(owner: str) -> bool:
    """Whether ``owner`` ran on this machine and its process no longer exists."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


class Claims:
    """The claims of one worker (this process) on the database of ``store``."""

    def __init__(self, store: Store, timeout: float = DEFAULT_TIMEOUT) -> None:
        if timeout <= 0:
            raise ValueError(f"claim timeout must be positive, got {timeout}")
        self.store = store
        self.engine = store.engine
        self.owner = worker_id()
        self.timeout = timeout
        self._create_table()
        self._stop = threading.Event()
        self._beating = threading.Thread(target=self._beat_loop, name="adaptim-heartbeat")
        self._beating.daemon = True  # a worker that dies stops beating; that is the point
        self._beating.start()

    def _create_table(self) -> None:
        # The table is the store's (created when it opens); a store opened read-only before
        # it existed gets it here. Workers started together may race: one wins, the rest find it.
        for attempt in range(3):
            try:
                ClaimRow.metadata.create_all(self.engine)
                return
            except SQLAlchemyError:
                if attempt == 2:
                    try:
                        self.store.check_writable()
                    except LabError:
                        # A read-only store from before claims: nothing can be claimed in
                        # it, and the study refuses to run trials there (check_writable).
                        return
                    raise
                time.sleep(0.2 * (attempt + 1))

    def close(self) -> None:
        self._stop.set()
        self._beating.join(timeout=5)
        with suppress(SQLAlchemyError), Session(self.engine) as session, session.begin():
            session.execute(
                delete(ClaimRow).where(ClaimRow.owner == self.owner, ClaimRow.kind == "trial")
            )

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.timeout / 6):
            with suppress(SQLAlchemyError):  # a database hiccup: the next beat tries again
                self.beat()

    def beat(self) -> None:
        """Refresh the heartbeat of every trial this worker holds."""
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(ClaimRow)
                .where(ClaimRow.owner == self.owner, ClaimRow.kind.in_(("trial", "writing")))
                .values(heartbeat=time.time())
            )

    def _stale(self, row: ClaimRow, now: float) -> bool:
        return now - row.heartbeat > self.timeout or _gone(row.owner)

    def claim(self, key: str) -> bool:
        """Take trial ``key`` for this worker; ``False`` while another live worker holds it."""
        while True:
            if self._insert(key, "trial", None):
                return True
            with Session(self.engine) as session:
                row = session.get(ClaimRow, key)
            if row is None:  # released meanwhile: try the insert again
                continue
            if row.owner == self.owner:
                return True
            if not self._stale(row, time.time()):
                return False
            return self._swap(row, "trial", None)

    def release(self, key: str) -> None:
        with Session(self.engine) as session, session.begin():
            session.execute(
                delete(ClaimRow).where(ClaimRow.key == key, ClaimRow.owner == self.owner)
            )

    def _held_elsewhere(self, keys: Iterable[str]) -> set[str]:
        """Of ``keys``, those held by another worker that is alive."""
        now = time.time()
        with Session(self.engine) as session:
            rows = session.scalars(select(ClaimRow).where(ClaimRow.key.in_(list(keys)))).all()
            return {r.key for r in rows if r.owner != self.owner and not self._stale(r, now)}

    def _stored(self, keys: Iterable[str]) -> set[str]:
        with Session(self.engine) as session:
            return set(session.scalars(select(TrialRow.key).where(TrialRow.key.in_(list(keys)))))

    def share(
        self, specs: Sequence[TrialSpec], run: RunBatch, store: Store, capacity: int = 1
    ) -> Iterator[tuple[TrialResult, bool]]:
        """Every trial of ``specs``, run here or by another worker: ``(result, reused)``.

        Up to ``capacity`` trials are claimed and run here at a time (the executor's
        parallelism), so workers that start together split the trials instead of one
        taking them all. The caller stores each result run here (``reused`` false)
        before asking for the next; the claim is released after that.
        """
        pending = {s.key(): s for s in specs}
        while pending:
            for key in self._stored(pending):
                found = store.get(pending[key])
                if found is not None:
                    del pending[key]
                    yield found, True
            busy = self._held_elsewhere(pending)
            batch: list[TrialSpec] = []
            for key, spec in pending.items():
                if len(batch) >= capacity:
                    break
                if key not in busy and self.claim(key):
                    batch.append(spec)
            # Stored and released by another worker between the look above and the claim.
            for key in self._stored(s.key() for s in batch):
                self.release(key)
                batch = [s for s in batch if s.key() != key]
            if not batch:
                if pending:
                    time.sleep(POLL_INTERVAL)
                continue
            held = {s.key() for s in batch}
            try:
                for result in run(batch):
                    key = result.spec.key()
                    yield result, False
                    self.release(key)
                    held.discard(key)
                    pending.pop(key, None)
            finally:  # a failed trial: leave the rest to whoever tries next
                for key in held:
                    with suppress(SQLAlchemyError):
                        self.release(key)

    def finish(
        self, study_key: str, started: float, where: str, write: Callable[[], object]
    ) -> tuple[str, str] | None:
        """End the study once: call ``write`` unless another worker completed it.

        Returns ``None`` when this worker wrote the study's files, else the
        ``(owner, where it wrote results.json)`` of the worker that completed the
        study after this one started. While a worker writes, its row is a live
        claim ("writing", kept alive by the heartbeat); one that dies mid-write
        leaves a stale claim, and the next worker to finish writes instead.
        """
        key = f"finish:{study_key}"
        try:
            self.store.check_writable()
        except LabError:
            # A read-only store: every trial was found stored (else the study would have
            # failed before running one), nobody can claim anything, and the files are ours.
            write()
            return None
        while True:
            with Session(self.engine) as session:
                row = session.get(ClaimRow, key)
            if row is not None and row.owner != self.owner:
                if row.kind == "finish" and row.heartbeat >= started:
                    return row.owner, row.detail or ""
                if row.kind == "writing" and not self._stale(row, time.time()):
                    time.sleep(POLL_INTERVAL)  # see whether it completes the study
                    continue
            # No row, a finish of an earlier run, or a writer that died: this worker writes.
            if not (
                self._insert(key, "writing", where)
                if row is None
                else self._swap(row, "writing", where)
            ):
                continue
            try:
                write()
            except BaseException:
                self.release(key)
                raise
            with Session(self.engine) as session, session.begin():
                session.execute(
                    update(ClaimRow)
                    .where(ClaimRow.key == key, ClaimRow.owner == self.owner)
                    .values(kind="finish", heartbeat=time.time())
                )
            return None

    def _insert(self, key: str, kind: str, detail: str | None) -> bool:
        try:
            with Session(self.engine) as session, session.begin():
                session.add(
                    ClaimRow(
                        key=key, kind=kind, owner=self.owner, heartbeat=time.time(), detail=detail
                    )
                )
        except IntegrityError:
            return False
        return True

    def _swap(self, row: ClaimRow, kind: str, detail: str | None) -> bool:
        """Take over ``row`` if it still has the owner and heartbeat read (compare-and-swap):
        of several workers taking over the same stale claim, exactly one wins."""
        with Session(self.engine) as session, session.begin():
            taken = session.execute(
                update(ClaimRow)
                .where(
                    ClaimRow.key == row.key,
                    ClaimRow.owner == row.owner,
                    ClaimRow.heartbeat == row.heartbeat,
                )
                .values(owner=self.owner, heartbeat=time.time(), kind=kind, detail=detail)
            )
            return bool(getattr(taken, "rowcount", 0) == 1)
