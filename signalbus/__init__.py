"""Send messages recorded in PostgreSQL over a message bus the moment they commit."""

from . import alembic as _alembic  # noqa: F401  (registers op.*_signal_trigger)
from .atomic import AtomicProceduresMixin, DBSerializationError, retry_on_deadlock
from .bus import SignalBus, SignalBusMixin, get_models_to_flush
from .errors import ConfigurationError, NotASignalModelError, OutageError, SignalBusError
from .model import SignalModel

__all__ = [
    "AtomicProceduresMixin",
    "ConfigurationError",
    "DBSerializationError",
    "NotASignalModelError",
    "OutageError",
    "SignalBus",
    "SignalBusError",
    "SignalBusMixin",
    "SignalModel",
    "get_models_to_flush",
    "retry_on_deadlock",
]
