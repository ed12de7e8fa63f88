"""The store: every trial and its curve in a real database, chosen by URL.

SQLite (a file in the output directory) is the default; any SQLAlchemy URL
works, PostgreSQL included (``postgresql+psycopg://user@host/db``). A trial
and all its records are written in one transaction when the trial ends, so a
study killed at any moment leaves only whole trials behind; the unique trial
key makes re-running a study reuse them instead of duplicating them.

A store is marked as adaptim's, and a database that belongs to another
application is refused before anything is written to it
(:mod:`adaptim.lab.ownership`). Non-finite numbers (a diverged trial's
position or rates) are stored as ``null``, which is how the lab reads a
value that is not finite anywhere. Every database error reaches the user as
one :class:`LabError` line naming the store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    event,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from adaptim.lab.errors import LabError
from adaptim.lab.files import finite_json, finite_or_none
from adaptim.lab.ownership import META_TABLE, check_ownership, is_marked, mark
from adaptim.lab.redact import redact_url
from adaptim.lab.trial import Record, TrialResult, TrialSpec


class _Base(DeclarativeBase):
    pass


class StudyRow(_Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    command: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ClaimRow(_Base):
    """A worker's claim on a trial or on writing a study's files (:mod:`adaptim.lab.claims`)."""

    __tablename__ = "claims"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    #: "trial" (a trial being run), "writing" (a study's files being written) or
    #: "finish" (who completed a study, and when).
    kind: Mapped[str] = mapped_column(String(10))
    owner: Mapped[str] = mapped_column(String(300))
    #: The owner's clock (``time.time()``) at its last sign of life.
    heartbeat: Mapped[float] = mapped_column(Float)
    #: For a finish: where that worker wrote results.json.
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)


class TrialRow(_Base):
    __tablename__ = "trials"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    problem: Mapped[str] = mapped_column(String(300), index=True)
    optimizer: Mapped[str] = mapped_column(String(100))
    hparams: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    phase: Mapped[str] = mapped_column(String(10))
    diverged: Mapped[bool] = mapped_column(Boolean)
    final: Mapped[dict[str, Any]] = mapped_column(JSON)
    wall_time: Mapped[float] = mapped_column(Float)
    steps_done: Mapped[int] = mapped_column(Integer)
    info: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    records: Mapped[list[RecordRow]] = relationship(
        back_populates="trial", order_by="RecordRow.step", cascade="all, delete-orphan"
    )


class MetaRow(_Base):
    """What makes a database an adaptim store: ``schema`` = the layout version."""

    __tablename__ = META_TABLE

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class RecordRow(_Base):
    __tablename__ = "records"

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    wall_time: Mapped[float] = mapped_column(Float)
    effective_lr: Mapped[dict[str, float | None] | None] = mapped_column(JSON, nullable=True)
    position: Mapped[list[float | None] | None] = mapped_column(JSON, nullable=True)
    trial: Mapped[TrialRow] = relationship(back_populates="records")


def default_url(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'adaptim.db').resolve()}"


class Store:
    """Trials by key, in the database at ``url``."""

    def __init__(self, url: str) -> None:
        #: The URL as shown (results.json, the report, messages): its password hidden.
        self.url = redact_url(url)
        self.engine = _connect(url)
        self._writable = False

    @property
    def persistent(self) -> bool:
        """False for an in-memory database (``sqlite://``): it is gone when the process ends."""
        database = self.engine.url.database
        in_memory = not database or database == ":memory:" or "mode=memory" in str(self.engine.url)
        return not (self.engine.dialect.name == "sqlite" and in_memory)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _failing_as(self, doing: str) -> Iterator[None]:
        """A database error (damaged file, read-only, lost connection) as one line."""
        try:
            yield
        except SQLAlchemyError as error:
            raise LabError(f"store {self.url!r} failed {doing}: {_reason(error)}") from None

    def get(self, spec: TrialSpec) -> TrialResult | None:
        """The stored result of ``spec``, or ``None`` if it has not run to the end."""
        with self._failing_as("reading a trial"), self._session() as session:
            row = session.scalars(select(TrialRow).where(TrialRow.key == spec.key())).one_or_none()
            return None if row is None else _to_result(row, spec)

    def check_writable(self) -> None:
        """Raise :class:`LabError` unless trials can be written now; call before computing them.

        It attempts a write that changes nothing (an update matching no row, rolled back):
        a read-only file, directory or database user fails here, not after a trial ran.
        """
        if self._writable:
            return
        with (
            self._failing_as("a write check (trials to run need a writable store)"),
            self.engine.connect() as connection,
            connection.begin() as transaction,
        ):
            connection.execute(
                update(TrialRow).where(TrialRow.id == -1).values(steps=TrialRow.steps)
            )
            transaction.rollback()
        self._writable = True

    def put(self, result: TrialResult) -> None:
        """Store a finished trial with all its records, in one transaction; idempotent."""
        # Another study sharing this store may have finished the same trial first.
        with self._failing_as("storing a trial"), suppress(IntegrityError):
            self._insert(result)

    def _insert(self, result: TrialResult) -> None:
        spec = result.spec
        with self._session() as session:
            if (
                session.scalars(select(TrialRow.id).where(TrialRow.key == spec.key())).first()
                is not None
            ):
                return
            row = TrialRow(
                key=spec.key(),
                problem=spec.problem,
                optimizer=spec.optimizer,
                hparams=_plain(dict(spec.hparams)),
                seed=spec.seed,
                steps=spec.steps,
                phase=spec.phase,
                diverged=result.diverged,
                final=result.final,
                wall_time=result.wall_time if math.isfinite(result.wall_time) else 0.0,
                steps_done=result.steps_done,
                # Validation metrics ride in ``info``: stores made before they existed keep
                # their schema, and their trials still load (validation = final).
                info={**result.info, "validation": result.validation},
                created_at=datetime.now(UTC),
                records=[
                    RecordRow(
                        step=r.step,
                        train_loss=finite_or_none(r.train_loss),
                        metrics=r.metrics,
                        wall_time=r.wall_time,
                        effective_lr=r.effective_lr,
                        position=list(r.position) if r.position is not None else None,
                    )
                    for r in result.records
                ],
            )
            session.add(row)

    def save_study(self, key: str, config: dict[str, Any], command: str) -> None:
        """Record the study and its latest command (a read-only store keeps the command it had)."""
        # IntegrityError: saved concurrently by another run of the study.
        with self._failing_as("saving the study"), suppress(IntegrityError):
            with self._session() as session:
                row = session.scalars(select(StudyRow).where(StudyRow.key == key)).one_or_none()
                if row is None:
                    session.add(
                        StudyRow(
                            key=key, config=config, command=command, created_at=datetime.now(UTC)
                        )
                    )
                    return
                if row.command == command:
                    return
            with suppress(OperationalError), self._session() as session:
                session.execute(update(StudyRow).where(StudyRow.key == key).values(command=command))

    def studies(self) -> list[tuple[str, dict[str, Any], str]]:
        with self._failing_as("listing its studies"), self._session() as session:
            rows = session.scalars(select(StudyRow).order_by(StudyRow.created_at)).all()
            return [(r.key, r.config, r.command) for r in rows]


def _json_dumps(value: Any) -> str:
    # PostgreSQL refuses NaN and Infinity in JSON, and SQLite's JSON functions too: a diverged
    # trial's non-finite values are stored as null, which the lab reads as "not finite".
    return json.dumps(finite_json(value), allow_nan=False)


def _reason(error: BaseException) -> str:
    """The driver's own message, first line: ``file is not a database``."""
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _plain(value: Any) -> Any:
    """JSON round trip: tuples become lists, as they will be when read back."""
    return json.loads(json.dumps(value))


def _to_result(row: TrialRow, spec: TrialSpec) -> TrialResult:
    records = [
        Record(
            step=r.step,
            train_loss=r.train_loss,
            metrics=r.metrics,
            wall_time=r.wall_time,
            effective_lr=r.effective_lr,
            position=_position(r.position),
        )
        for r in row.records
    ]
    info = dict(row.info)
    validation = info.pop("validation", None) or dict(row.final)
    return TrialResult(
        spec=spec,
        records=records,
        final=row.final,
        diverged=row.diverged,
        wall_time=row.wall_time,
        steps_done=row.steps_done,
        info=info,
        validation=validation,
    )


def _position(stored: list[float | None] | None) -> tuple[float, float] | None:
    # A non-finite coordinate was stored as null: the iterate has left the plane.
    if not stored or stored[0] is None or stored[1] is None:
        return None
    return (stored[0], stored[1])


def _connect(url: str) -> Engine:
    shown = redact_url(url)  # every message below names the URL without its password
    try:
        engine = create_engine(url, json_serializer=_json_dumps)
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        raise LabError(
            f"bad store URL {shown!r}: {redact_url(str(error).splitlines()[0])}"
        ) from None
    except ImportError as error:
        raise LabError(
            f"store URL {shown!r} needs a database driver that is not installed: {error}"
        ) from None
    sqlite = engine.dialect.name == "sqlite"
    if sqlite:
        database = engine.url.database
        uri = engine.url.query.get("uri") == "true"  # file:...?mode=ro: SQLite parses the path
        if database and database != ":memory:" and not uri:
            parent = Path(database).parent
            if not parent.exists():
                raise LabError(f"store URL {shown!r}: directory {str(parent)!r} does not exist")
    in_memory = sqlite and (not engine.url.database or engine.url.database == ":memory:")
    if sqlite:  # settings of the connection only: they write nothing to the file
        event.listen(engine, "connect", _sqlite_connection_settings)
    if in_memory:  # a new database each time, so nobody else's; its one connection must stay
        event.listen(engine, "connect", _sqlite_wal)
    _claim(engine, shown, keep=in_memory)
    if sqlite and not in_memory:
        event.listen(engine, "connect", _sqlite_wal)
    return engine


def _claim(engine: Engine, url: str, keep: bool) -> None:
    """Refuse another application's database (reading only), then create and mark the store.

    ``url`` is the URL as shown in messages (its password hidden).

    The ownership check runs before the connection pragmas (WAL mode rewrites the file's
    header), on connections that are closed afterwards (unless ``keep``: in memory).
    """

    def release() -> None:
        if not keep:
            engine.dispose()

    try:
        check_ownership(engine, _Base.metadata, repr(url))
        with engine.connect() as connection:
            complete = set(_Base.metadata.tables) <= set(inspect(connection).get_table_names())
            if complete and is_marked(connection):
                return  # nothing to write, so a read-only store opens too
    except SQLAlchemyError as error:
        raise LabError(f"cannot open store {url!r}: {redact_url(_reason(error))}") from None
    finally:
        release()
    try:
        with engine.begin() as connection:
            _Base.metadata.create_all(connection)
            mark(connection)
    except SQLAlchemyError as error:
        with suppress(SQLAlchemyError), engine.connect() as connection:
            if {"studies", "trials", "records"} <= set(inspect(connection).get_table_names()):
                return  # a store from before the marks, read-only: readable as it is
        raise LabError(f"cannot open store {url!r}: {redact_url(_reason(error))}") from None
    finally:
        release()


def _sqlite_connection_settings(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")  # wait for another process's write
    cursor.close()


def _sqlite_wal(connection: Any, _record: Any) -> None:
    # Set only once the database is known to be adaptim's: WAL mode rewrites the file header.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; crash-safe
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
