"""The signal models the tests send, bound to one module-level ``db``."""

from __future__ import annotations

import collections
import threading
from typing import Any, ClassVar

from flask_sqlalchemy import SQLAlchemy

from signalbus import AtomicProceduresMixin, SignalBusMixin


class CustomSQLAlchemy(SignalBusMixin, AtomicProceduresMixin, SQLAlchemy):
    pass


db = CustomSQLAlchemy()


class Recorder:
    """A fake send function: it records what it was given, or raises on demand."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.batches: list[int] = []
        self.error: Exception | None = None
        #: Ids whose sends fail, each time, with a ValueError; and how often it was tried.
        self.bad: set[int] = set()
        self.tried_bad: collections.Counter[int] = collections.Counter()
        self.tried_alone: collections.Counter[int] = collections.Counter()
        self._lock = threading.Lock()

    def send_one(self, obj: Any) -> None:
        self.send_many([obj], batch=False)

    def send_many(self, objs: Any, batch: bool = True) -> None:
        if self.error is not None:
            raise self.error
        bad = [obj.id for obj in objs if getattr(obj, "id", None) in self.bad]
        if bad:
            self.tried_bad.update(bad)
            if len(objs) == 1:
                self.tried_alone.update(bad)
            raise ValueError(f"cannot build the message of row {bad[0]}")
        with self._lock:
            self.sent.extend(objs)
            if batch:
                self.batches.append(len(objs))

    def reset(self) -> None:
        self.sent.clear()
        self.batches.clear()
        self.error = None
        self.bad.clear()
        self.tried_bad.clear()
        self.tried_alone.clear()


recorder = Recorder()


class Item(db.Model):
    """An ordinary model (not a signal)."""

    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(50), nullable=False, unique=True)


class SingleSignal(db.Model):
    """Sent one by one: no batch method, default burst count."""

    id = db.Column(db.Integer, primary_key=True)
    text = db.Column("message_text", db.Text, nullable=False)

    @classmethod
    def send_signalbus_message(cls, obj: Any) -> None:
        recorder.send_one(obj)


class BatchSignal(db.Model):
    """Sent in batches of up to 100; its rows say when they were recorded."""

    signalbus_burst_count: ClassVar[int] = 100
    signalbus_timestamp_column: ClassVar[str] = "inserted_at"

    id = db.Column(db.BigInteger, primary_key=True)
    payload = db.Column(db.Text, nullable=False)
    inserted_at = db.Column(
        db.DateTime(timezone=True), nullable=False, server_default=db.func.clock_timestamp()
    )

    @classmethod
    def send_signalbus_message(cls, obj: Any) -> None:
        recorder.send_one(obj)

    @classmethod
    def send_signalbus_messages(cls, objs: Any) -> None:
        recorder.send_many(objs)


class CompositeSignal(db.Model):
    """A signal with a composite primary key."""

    signalbus_burst_count: ClassVar[int] = 7

    shard = db.Column(db.Integer, primary_key=True)
    seqnum = db.Column(db.Integer, primary_key=True)
    value = db.Column(db.Text)

    @classmethod
    def send_signalbus_message(cls, obj: Any) -> None:
        recorder.send_one(obj)

    @classmethod
    def send_signalbus_messages(cls, objs: Any) -> None:
        recorder.send_many(objs)
