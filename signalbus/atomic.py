"""Transaction management: atomic procedures, retries, and model utilities."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import inspect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from .backoff import Backoff

__all__ = [
    "AtomicProceduresMixin",
    "DBSerializationError",
    "is_retryable_error",
    "retry_on_deadlock",
]

T = TypeVar("T")

#: SQLSTATE codes meaning "the transaction lost a race; run it again".
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})

_ATOMIC_FLAG = "signalbus_atomic"


class DBSerializationError(Exception):
    """The transaction lost a race with another one and should be retried.

    Raise it inside an atomic block to have the whole block run again.
    """


def is_retryable_error(error: BaseException) -> bool:
    """Tell whether *error* is a serialization failure or a deadlock."""
    if isinstance(error, DBSerializationError):
        return True
    if isinstance(error, DBAPIError):
        return getattr(error.orig, "sqlstate", None) in RETRYABLE_SQLSTATES
    return getattr(error, "sqlstate", None) in RETRYABLE_SQLSTATES


def retry_on_deadlock(
    session: Session | None = None,
    retries: int = 6,
    min_wait: float = 0.1,
    max_wait: float = 10.0,
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a function so that it is re-run on a serialization failure or deadlock.

    Before each retry the *session* (when given) is rolled back and a jittered,
    exponentially growing delay is waited. After *retries* retries the error
    propagates.
    """

    def decorator(func: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            backoff = Backoff(min_wait, max_wait)
            while True:
                try:
                    return func(*args, **kwargs)
                except Exception as error:
                    if backoff.attempts >= retries or not is_retryable_error(error):
                        raise
                    if session is not None:
                        session.rollback()
                    time.sleep(backoff.next())

        return wrapper

    return decorator


class _ModelUtilitiesMixin:
    """Class methods available on every model of ``db.Model``."""

    __fsa__: Any

    @classmethod
    def get_pk_values(cls, instance_or_pk: Any) -> tuple[Any, ...]:
        """Return the primary key of *instance_or_pk* as a tuple.

        A pending instance is flushed first, so that its generated key is known.
        """
        if isinstance(instance_or_pk, cls):
            state = inspect(instance_or_pk)
            if state.pending:
                cls.__fsa__.session.flush()
            return tuple(inspect(cls).primary_key_from_instance(instance_or_pk))
        if isinstance(instance_or_pk, tuple):
            return instance_or_pk
        return (instance_or_pk,)

    @classmethod
    def get_instance(cls: type[T], instance_or_pk: Any, *options: Any) -> T | None:
        """Return the instance with this primary key from ``db.session``, or ``None``.

        *instance_or_pk* is an instance or a primary key (a tuple for composite
        keys); *options* are passed to the query's ``options()``.
        """
        session = cls.__fsa__.session  # type: ignore[attr-defined]
        if isinstance(instance_or_pk, cls) and instance_or_pk in session:
            return instance_or_pk
        pk = cls.get_pk_values(instance_or_pk)  # type: ignore[attr-defined]
        instance: T | None = session.get(cls, pk, options=options)
        return instance

    @classmethod
    def lock_instance(cls: type[T], instance_or_pk: Any, *options: Any, **kw: Any) -> T | None:
        """Like :meth:`get_instance`, but load the row with ``SELECT ... FOR UPDATE``.

        Keyword arguments go to ``with_for_update()`` (``nowait=True``,
        ``skip_locked=True``, ``read=True``). Returns ``None`` if there is no
        such row (or it is locked and ``skip_locked`` was given).
        """
        session = cls.__fsa__.session  # type: ignore[attr-defined]
        pk = cls.get_pk_values(instance_or_pk)  # type: ignore[attr-defined]
        instance: T | None = session.get(
            cls, pk, options=options, with_for_update=kw or True, populate_existing=True
        )
        return instance


class AtomicProceduresMixin:
    """Add atomic procedures to :class:`flask_sqlalchemy.SQLAlchemy`.

    Mix it in *before* ``SQLAlchemy``::

        class CustomSQLAlchemy(AtomicProceduresMixin, SQLAlchemy):
            pass

    Unless ``engine_options`` (or ``SQLALCHEMY_ENGINE_OPTIONS``) set
    ``isolation_level``, engines use ``REPEATABLE READ``. Every model of
    ``db.Model`` gains :class:`_ModelUtilitiesMixin`'s class methods.
    """

    session: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_mixin_order(cls, AtomicProceduresMixin)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_mixed_into_sqlalchemy(self, AtomicProceduresMixin)
        super().__init__(*args, **kwargs)

    def _make_declarative_base(self, *args: Any, **kwargs: Any) -> Any:
        model = super()._make_declarative_base(*args, **kwargs)  # type: ignore[misc]
        # Copied rather than mixed in: ``model_class`` may already be a declarative base.
        for name in ("get_pk_values", "get_instance", "lock_instance"):
            if not hasattr(model, name):
                setattr(model, name, _ModelUtilitiesMixin.__dict__[name])
        return model

    def _apply_driver_defaults(self, options: dict[str, Any], app: Any) -> None:
        options.setdefault("isolation_level", "REPEATABLE READ")
        super()._apply_driver_defaults(options, app)  # type: ignore[misc]

    def atomic(self, func: Callable[..., T]) -> Callable[..., T]:
        """Decorate *func* to run in one transaction, re-run on lost races.

        The transaction commits when *func* returns (then every object is
        expunged from the session) and rolls back when it raises. On a
        serialization failure, a deadlock or :class:`DBSerializationError` the
        whole function runs again, a bounded number of times with jittered
        backoff. In nested atomic blocks the outermost one owns the transaction.
        """
        run_with_retries = retry_on_deadlock()(self._commit_or_rollback(func))

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            info = self.session.info
            if info.get(_ATOMIC_FLAG):
                return func(*args, **kwargs)
            info[_ATOMIC_FLAG] = True
            try:
                return run_with_retries(*args, **kwargs)
            finally:
                info[_ATOMIC_FLAG] = False

        return wrapper

    def _commit_or_rollback(self, func: Callable[..., T]) -> Callable[..., T]:
        def attempt(*args: Any, **kwargs: Any) -> T:
            session = self.session
            try:
                result = func(*args, **kwargs)
                session.commit()
            except BaseException:
                session.rollback()
                raise
            session.expunge_all()
            return result

        return attempt

    def execute_atomic(self, func: Callable[..., T]) -> T:
        """Run *func* at once as an atomic block and return its result.

        Used as a decorator, it binds the result to the function's name.
        """
        return self.atomic(func)()

    @contextmanager
    def retry_on_integrity_error(self) -> Iterator[None]:
        """Turn an ``IntegrityError`` into :class:`DBSerializationError`.

        Only valid inside an atomic block. The session is flushed at the end of
        the ``with`` block, so that a unique-constraint race makes the whole
        atomic block run again.
        """
        session = self.session
        if not session.info.get(_ATOMIC_FLAG):
            raise RuntimeError("retry_on_integrity_error() must be used inside an atomic block")
        try:
            yield
            session.flush()
        except IntegrityError as error:
            raise DBSerializationError(str(error.orig)) from error


def check_mixed_into_sqlalchemy(instance: object, mixin: type) -> None:
    """Fail clearly when *mixin* is used on a class that is not ``SQLAlchemy``."""
    from flask_sqlalchemy import SQLAlchemy

    if not isinstance(instance, SQLAlchemy):
        raise TypeError(
            f"{type(instance).__name__} must subclass flask_sqlalchemy.SQLAlchemy: "
            f"class CustomSQLAlchemy({mixin.__name__}, SQLAlchemy)"
        )


def check_mixin_order(cls: type, mixin: type) -> None:
    """Fail at class creation when *mixin* comes after ``SQLAlchemy`` in *cls*'s bases."""
    from flask_sqlalchemy import SQLAlchemy

    mro = cls.__mro__
    if SQLAlchemy in mro and mro.index(SQLAlchemy) < mro.index(mixin):
        raise TypeError(
            f"{mixin.__name__} must come before SQLAlchemy in the bases of {cls.__name__}: "
            f"class {cls.__name__}({mixin.__name__}, SQLAlchemy)"
        )
