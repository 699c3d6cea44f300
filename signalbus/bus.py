"""The signal bus: the registry of signal models, and the Flask extension."""

from __future__ import annotations

import contextlib
import logging
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .atomic import check_mixed_into_sqlalchemy, check_mixin_order
from .config import DEFAULT_CONFIG, max_attempts_setting
from .connections import PooledConnections
from .conninfo import connection_defaults
from .errors import NotASignalModelError, one_line
from .flush import BurstObserver, ModelFlusher
from .model import SignalModel, is_signal_model, lacks_single_send, signal_table
from .quarantine import quarantine_table
from .redaction import Redactor
from .triggers import payload_name

if TYPE_CHECKING:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

__all__ = ["SignalBus", "SignalBusMixin", "get_models_to_flush", "table_name"]

logger = logging.getLogger(__name__)


class SignalBus:
    """Sends and deletes the pending rows of signal models.

    A *signal model* is a model of ``db.Model`` with a
    ``send_signalbus_message(cls, obj)`` class method. Usually created by
    :class:`SignalBusMixin` and reached as ``db.signalbus`` or
    ``app.extensions["signalbus"]``.
    """

    def __init__(self, db: SQLAlchemy) -> None:
        self.db = db
        self._flushers: dict[SignalModel, ModelFlusher] = {}
        self._warned: set[type] = set()

    def get_signal_models(self) -> list[SignalModel]:
        """Return every mapped class of ``db.Model`` that is a signal model.

        A class having ``send_signalbus_messages`` but not
        ``send_signalbus_message`` is not one; a warning names it (once).
        """
        registry: sa.orm.registry = self.db.Model.registry  # type: ignore[attr-defined]
        classes = [mapper.class_ for mapper in registry.mappers]
        self._warn_about_missing_single_send(classes)
        signal_models = [cls for cls in classes if is_signal_model(cls)]
        return sorted(signal_models, key=operator.attrgetter("__name__"))

    def _warn_about_missing_single_send(self, classes: Iterable[type]) -> None:
        for cls in classes:
            if lacks_single_send(cls) and cls not in self._warned:
                self._warned.add(cls)
                logger.warning(
                    "%s has send_signalbus_messages but no send_signalbus_message, so it is "
                    "not a signal model: define send_signalbus_message too.",
                    cls.__name__,
                )

    def get_signal_tables(self) -> dict[str, SignalModel]:
        """Map each signal model's table name to the model.

        Names are schema-qualified (``schema.table``) when the table is not in
        the ``public`` schema: the form of the trigger notifications' payload.
        """
        return {table_name(signal_table(model)): model for model in self.get_signal_models()}

    def flushmany(self, models: Iterable[SignalModel] | None = None) -> int:
        """Send and delete every pending row of *models* (all signal models if ``None``).

        Each model is drained in bursts of ``signalbus_burst_count`` rows; every
        burst is picked, locked and deleted in one statement, sent, and then
        committed. A send that raises rolls its burst back (its rows stay) and
        the exception propagates. Returns the number of rows sent.

        Raises :class:`~signalbus.errors.NotASignalModelError` (a
        ``RuntimeError``) if one of *models* is not a signal model.
        """
        selected = self.get_signal_models() if models is None else self._check_models(models)
        return sum(self.flush_model(model) for model in selected)

    def flush_model(
        self,
        model: SignalModel,
        *,
        stop: Callable[[], bool] | None = None,
        observe: BurstObserver | None = None,
    ) -> int:
        """Drain one signal model (see :meth:`flushmany`); return the rows sent.

        *stop*, when given, is asked before each burst; when it returns true the
        flush ends early, between two bursts. *observe*, when given, is called
        after each burst's commit (see :data:`~signalbus.flush.BurstObserver`).
        """
        with PooledConnections(self.engine_for(model)) as connections:
            return self.flusher(model).flush(connections, stop, observe=observe).sent

    def flusher(self, model: SignalModel) -> ModelFlusher:
        """Return the :class:`~signalbus.flush.ModelFlusher` of *model* (made once)."""
        flusher = self._flushers.get(model)
        if flusher is None:
            flusher = ModelFlusher(model, _configured_max_attempts, self._describe_failure)
            self._flushers[model] = flusher
        return flusher

    def models_with_rows(
        self,
        models: Iterable[SignalModel],
        connection_to: Callable[[Engine], Connection] | None = None,
    ) -> list[SignalModel]:
        """Return those of *models* whose table has rows: one statement per database.

        This is how the listener sweeps: one short transaction finds the
        tables to flush, however many models it serves. *connection_to*, when
        given, provides the connection to each database (a listener worker's
        own); otherwise one is taken from the engine's pool.
        """
        found: list[SignalModel] = []
        for group, connection in self.transaction_per_database(models, connection_to):
            tables = _tables_with_rows([signal_table(model) for model in group])
            found += [group[index] for (index,) in connection.execute(tables)]
        return found

    def transaction_per_database(
        self,
        models: Iterable[SignalModel],
        connection_to: Callable[[Engine], Connection] | None = None,
    ) -> Iterator[tuple[list[SignalModel], Connection]]:
        """Yield, for each database of *models*, its models and a connection in a transaction.

        The transaction commits when the next database is asked for (rolls back
        if the caller raises). *connection_to*, when given, provides the
        connection to each database; otherwise one is taken from the engine's
        pool and given back (needs an app context).
        """
        for engine, group in self.models_by_engine(models).items():
            with contextlib.ExitStack() as stack:
                if connection_to is None:
                    connection = stack.enter_context(engine.connect())
                else:
                    connection = connection_to(engine)
                with connection.begin():
                    yield group, connection

    def models_by_engine(self, models: Iterable[SignalModel]) -> dict[Engine, list[SignalModel]]:
        """Group *models* by the engine of their database (needs an app context)."""
        groups: dict[Engine, list[SignalModel]] = {}
        for model in models:
            groups.setdefault(self.engine_for(model), []).append(model)
        return groups

    def pending_count(self, model: SignalModel) -> int:
        """Return how many rows of signal model *model* wait to be sent."""
        with self.engine_for(model).connect() as connection:
            query = sa.select(sa.func.count()).select_from(signal_table(model))
            count: int = connection.execute(query).scalar_one()
            return count

    def _check_models(self, models: Iterable[SignalModel]) -> list[SignalModel]:
        known = set(self.get_signal_models())
        selected = list(models)
        for model in selected:
            if model not in known:
                raise NotASignalModelError(f"{model!r} is not a signal model")
        return selected

    def engine_for(self, model: SignalModel) -> Engine:
        """Return the engine of *model*'s bind (needs an app context)."""
        return self.db.engines[signal_table(model).metadata.info.get("bind_key")]

    def _describe_failure(self, error: BaseException) -> str:
        """*error* on one line, the passwords of the app's databases masked."""
        return self.redactor()(one_line(error))

    def redactor(self) -> Redactor:
        """Return a redactor of the passwords of every database of the app (needs an app context).

        For the texts of database errors: a driver's message may quote a password.
        """
        return Redactor.for_urls(*(engine.url for engine in self.db.engines.values()))


def _configured_max_attempts() -> int:
    """The app's ``SIGNALBUS_MAX_ATTEMPTS`` (needs an app context)."""
    from flask import current_app

    return max_attempts_setting(current_app.config)


def table_name(table: sa.Table) -> str:
    """Return *table*'s name as its trigger's notifications carry it (see :func:`payload_name`)."""
    return payload_name(table.name, table.schema)


def _tables_with_rows(tables: Sequence[sa.Table]) -> sa.CompoundSelect[Any]:
    """``SELECT 0 WHERE EXISTS (SELECT FROM t0) UNION ALL SELECT 1 WHERE EXISTS …``."""
    return sa.union_all(
        *(
            sa.select(sa.literal(index)).where(sa.exists().select_from(table))
            for index, table in enumerate(tables)
        )
    )


def get_models_to_flush(signalbus: SignalBus, model_names: Sequence[str]) -> list[SignalModel]:
    """Return the signal models named in *model_names*, or all of them if it is empty.

    Unknown names are ignored with a logged warning.
    """
    signal_models = signalbus.get_signal_models()
    if not model_names:
        return signal_models
    by_name = {model.__name__: model for model in signal_models}
    models = []
    for name in model_names:
        if name in by_name:
            models.append(by_name[name])
        else:
            logger.warning("A signal with name %r does not exist.", name)
    return models


class SignalBusMixin:
    """Add a :class:`SignalBus` to :class:`flask_sqlalchemy.SQLAlchemy`.

    Mix it in *before* ``SQLAlchemy``::

        class CustomSQLAlchemy(SignalBusMixin, SQLAlchemy):
            pass

        db = CustomSQLAlchemy(app)  # or: db = CustomSQLAlchemy(); db.init_app(app)

    After ``init_app(app)``, ``db.signalbus`` and ``app.extensions["signalbus"]``
    hold the bus and the ``flask signalbus`` commands are registered on
    ``app.cli``. The quarantine table (:mod:`signalbus.quarantine`) is part of
    ``db.metadata``.
    """

    signalbus: SignalBus

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_mixin_order(cls, SignalBusMixin)

    def __init__(self, app: Flask | None = None, **kwargs: Any) -> None:
        check_mixed_into_sqlalchemy(self, SignalBusMixin)
        self.signalbus = SignalBus(cast("SQLAlchemy", self))
        super().__init__(app, **kwargs)  # type: ignore[call-arg]  # SQLAlchemy's, after the mixin
        # In the default metadata: create_all() and flask db migrate make it.
        quarantine_table(cast("SQLAlchemy", self).metadata)

    def _apply_driver_defaults(self, options: dict[str, Any], app: Flask) -> None:
        # A flush stuck on a dead connection would stall its model for hours with
        # libpq's defaults; these give up within about 30 s.
        url = sa.make_url(options["url"])
        if url.get_driver_name() == "psycopg":
            defaults = connection_defaults(url)
            options["connect_args"] = {**defaults, **options.get("connect_args", {})}
        super()._apply_driver_defaults(options, app)  # type: ignore[misc]

    def init_app(self, app: Flask, *args: Any, **kwargs: Any) -> None:
        """Initialise *app* for SQLAlchemy, then register the signal bus on it."""
        super().init_app(app, *args, **kwargs)  # type: ignore[misc]
        from .cli import signalbus_cli

        for key, value in DEFAULT_CONFIG.items():
            app.config.setdefault(key, value)
        app.extensions["signalbus"] = self.signalbus
        app.cli.add_command(signalbus_cli)
