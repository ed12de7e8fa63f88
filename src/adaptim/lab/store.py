"""The store: every trial and its curve in a real database, chosen by URL.

SQLite (a file in the output directory) is the default; any SQLAlchemy URL
works, PostgreSQL included (``postgresql+psycopg://user@host/db``). A trial
and all its records are written in one transaction when the trial ends, so a
study killed at any moment leaves only whole trials behind; the unique trial
key makes re-running a study reuse them instead of duplicating them.
"""

from __future__ import annotations

import functools
import json
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
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from adaptim.lab.errors import LabError
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
    position: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    trial: Mapped[TrialRow] = relationship(back_populates="records")


def default_url(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'adaptim.db').resolve()}"


class Store:
    """Trials by key, in the database at ``url``."""

    def __init__(self, url: str) -> None:
        #: The URL as shown (results.json, the report, messages): its password hidden.
        self.url = redact_url(url)
        self.engine = _connect(url)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def get(self, spec: TrialSpec) -> TrialResult | None:
        """The stored result of ``spec``, or ``None`` if it has not run to the end."""
        with self._session() as session:
            row = session.scalars(select(TrialRow).where(TrialRow.key == spec.key())).one_or_none()
            return None if row is None else _to_result(row, spec)

    def put(self, result: TrialResult) -> None:
        """Store a finished trial with all its records, in one transaction; idempotent."""
        # Another study sharing this store may have finished the same trial first.
        with suppress(IntegrityError):
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
                wall_time=result.wall_time,
                steps_done=result.steps_done,
                # Validation metrics ride in ``info``: stores made before they existed keep
                # their schema, and their trials still load (validation = final).
                info={**result.info, "validation": result.validation},
                created_at=datetime.now(UTC),
                records=[
                    RecordRow(
                        step=r.step,
                        train_loss=r.train_loss,
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
        with suppress(IntegrityError):  # saved concurrently by another run of the study
            self._save_study(key, config, command)

    def _save_study(self, key: str, config: dict[str, Any], command: str) -> None:
        with self._session() as session:
            row = session.scalars(select(StudyRow).where(StudyRow.key == key)).one_or_none()
            if row is None:
                session.add(
                    StudyRow(key=key, config=config, command=command, created_at=datetime.now(UTC))
                )
            else:
                row.command = command

    def studies(self) -> list[tuple[str, dict[str, Any], str]]:
        with self._session() as session:
            rows = session.scalars(select(StudyRow).order_by(StudyRow.created_at)).all()
            return [(r.key, r.config, r.command) for r in rows]


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
            position=(r.position[0], r.position[1]) if r.position else None,
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


def _connect(url: str) -> Engine:
    shown = redact_url(url)  # every message below names the URL without its password
    try:
        # NaN and Infinity are not JSON (PostgreSQL refuses them): fail at the source instead.
        engine = create_engine(url, json_serializer=functools.partial(json.dumps, allow_nan=False))
    except (ArgumentError, NoSuchModuleError, ValueError) as error:
        raise LabError(
            f"bad store URL {shown!r}: {redact_url(str(error).splitlines()[0])}"
        ) from None
    except ImportError as error:
        raise LabError(
            f"store URL {shown!r} needs a database driver that is not installed: {error}"
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
        database = engine.url.database
        if database and database != ":memory:":
            parent = Path(database).parent
            if not parent.exists():
                raise LabError(f"store URL {shown!r}: directory {str(parent)!r} does not exist")
    try:
        _Base.metadata.create_all(engine)
    except SQLAlchemyError as error:
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        raise LabError(f"cannot open store {shown!r}: {redact_url(reason)}") from None
    return engine


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; crash-safe
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
