"""The ``flask signalbus`` command group: parsing and printing only."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click
from flask import current_app
from flask.cli import ScriptInfo, with_appcontext
from sqlalchemy.exc import DBAPIError

from .bus import SignalBus
from .config import (
    DEFAULT_CONFIG,
    MAX_WORKERS,
    METRICS_PORT,
    SWEEP_INTERVAL,
    WORKERS,
    channel_setting,
    effective_settings,
    max_attempts_setting,
)
from .errors import ConfigurationError, OutageError, failure_details, one_line
from .model import SignalModel, get_burst_count, get_max_attempts, get_timestamp_column
from .quarantine import table_key
from .quarantine_admin import (
    NotQuarantinedError,
    QuarantineMissingError,
    count_by_model,
    purge_selected,
    quarantined_by_model,
    requeue_selected,
)
from .redaction import Redactor

if TYPE_CHECKING:
    from .backlog import SignalStatus
    from .quarantine import QuarantinedRow

logger = logging.getLogger(__name__)


class SignalBusGroup(click.Group):
    """A command group that reports database errors on one line, without a traceback.

    The driver's message is redacted: it may quote a password of the app's databases.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DBAPIError as error:
            # The command's app context has ended by now; the app's engines need one.
            with ctx.ensure_object(ScriptInfo).load_app().app_context():
                redact = get_signalbus().redactor()
            raise click.ClickException(f"Database error: {redact(one_line(error))}") from None


@click.group("signalbus", cls=SignalBusGroup)
def signalbus_cli() -> None:
    """Send the signals recorded in the database over the message bus."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        # pika narrates every connection attempt, and logs each failed one as an error
        # with a traceback; the publisher's own errors say what matters, on one line.
        logging.getLogger("pika").setLevel(logging.CRITICAL)


LOG_LEVELS = ("debug", "info", "warning", "error")

log_level_option = click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    help="Log signalbus's messages from this level on  [default: info].",
    callback=lambda _ctx, _param, value: _set_log_level(value),
    expose_value=False,
)


def _set_log_level(level: str | None) -> None:
    if level is not None:
        logging.getLogger("signalbus").setLevel(level.upper())


def get_signalbus() -> SignalBus:
    """Return the signal bus of the current app."""
    signalbus: SignalBus = current_app.extensions["signalbus"]
    return signalbus


def resolve_signal_models(names: Sequence[str]) -> list[SignalModel]:
    """Map signal names to models; an unknown name is a usage error (exit status 2)."""
    models = get_signalbus().get_signal_models()
    if not names:
        return models
    by_name = {model.__name__: model for model in models}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        known = ", ".join(by_name) or "(none)"
        raise click.UsageError(f"Unknown signal {', '.join(unknown)}. Known signals: {known}.")
    return [by_name[name] for name in dict.fromkeys(names)]


@contextmanager
def reporting_bad_configuration() -> Iterator[None]:
    """Report a :class:`ConfigurationError` as a one-line error (exit status 1)."""
    try:
        yield
    except ConfigurationError as error:
        raise click.ClickException(f"Bad configuration: {error}") from None


def check_model_settings(models: Sequence[SignalModel]) -> None:
    """Report a bad ``signalbus_burst_count``, ``signalbus_max_attempts`` or
    ``signalbus_timestamp_column`` of *models*, or a bad ``SIGNALBUS_MAX_ATTEMPTS``, as
    a one-line error (exit status 1): before anything is sent, not at the first bad row."""
    try:
        max_attempts = max_attempts_setting(current_app.config)
        for model in models:
            get_burst_count(model)
            get_max_attempts(model, max_attempts)
            get_timestamp_column(model)
    except ConfigurationError as error:
        raise click.ClickException(str(error)) from None


def flush_each(
    signalbus: SignalBus, models: Sequence[SignalModel], idle_lines: bool = True
) -> tuple[int, list[SignalModel]]:
    """Flush every model, logging (not raising) a failing send; return (sent, failed).

    Each model's flush ends with a line saying what it sent (unless it sent
    nothing and not *idle_lines*); on a terminal, a progress bar shows it going.
    An outage (the broker unavailable) ends the round on one line: the models
    after it would fail the same way. An unexpected error shows its traceback.
    """
    redact = signalbus.redactor()
    sent, failed = 0, list[SignalModel]()
    for index, model in enumerate(models):
        started = time.monotonic()
        try:
            count = _flush_model(signalbus, model)
        except OutageError as error:
            logger.error("Sending stopped at %s signals, %s; every row is kept.",
                         model.__name__, redact(one_line(error)))  # fmt: skip
            return sent, [*failed, *models[index:]]
        except Exception as error:
            details = failure_details(error, with_traceback=not isinstance(error, DBAPIError))
            logger.error("Sending %s signals failed; its rows are kept%s", model.__name__,
                         redact(details))  # fmt: skip
            failed.append(model)
        else:
            sent += count
            if count or idle_lines:
                logger.info("Sent %d %s signals in %.1f s.", count, model.__name__,
                            time.monotonic() - started)  # fmt: skip
    return sent, failed


def _flush_model(signalbus: SignalBus, model: SignalModel) -> int:
    """Flush *model*, with a progress bar of its backlog on a terminal."""
    if not sys.stderr.isatty():
        return signalbus.flush_model(model)
    from .backlog import measure_backlogs

    backlog = measure_backlogs(signalbus, [model])[model]
    bar = click.progressbar(
        length=backlog.pending, label=model.__name__, file=sys.stderr, show_pos=True
    )
    with bar:
        return signalbus.flush_model(model, observe=lambda _model, rows, _: bar.update(len(rows)))


@signalbus_cli.command("flushmany")
@click.argument("signal_names", nargs=-1)
@click.option(
    "-r",
    "--repeat",
    type=click.FloatRange(min=0, min_open=True),
    help="Flush again every SECONDS, until interrupted.",
    metavar="SECONDS",
)
@log_level_option
@with_appcontext
def flushmany_command(signal_names: tuple[str, ...], repeat: float | None) -> None:
    """Send the pending signals of SIGNAL_NAMES (all signals if none are given)."""
    models = resolve_signal_models(signal_names)
    check_model_settings(models)
    signalbus = get_signalbus()
    while True:
        started = time.monotonic()
        sent, failed = flush_each(signalbus, models, idle_lines=repeat is None)
        if sent or not (repeat or failed):  # an idle or failed round is not news
            logger.info("Sent %d signals.", sent)
        if repeat is None:
            if failed:
                raise SystemExit(1)
            return
        try:
            time.sleep(max(0.0, repeat - (time.monotonic() - started)))
        except KeyboardInterrupt:
            return


@signalbus_cli.command("signals")
@with_appcontext
def signals_command() -> None:
    """List the names of the signal models."""
    for model in get_signalbus().get_signal_models():
        click.echo(model.__name__)


@signalbus_cli.command("pending")
@with_appcontext
def pending_command() -> None:
    """Show how many signals of each type wait to be sent, and the total.

    A signal with rows in quarantine shows how many too: "BatchSignal: 3 (2 quarantined)".
    """
    signalbus = get_signalbus()
    models = signalbus.get_signal_models()
    counts = [signalbus.pending_count(model) for model in models]
    quarantined = count_by_model(signalbus, models)
    for model, count in zip(models, counts, strict=True):
        in_quarantine = quarantined[model]
        aside = f" ({in_quarantine} quarantined)" if in_quarantine else ""
        click.echo(f"{model.__name__}: {count}{aside}")
    click.echo(f"Total pending: {sum(counts)}")


@signalbus_cli.command("config")
@with_appcontext
def config_command() -> None:
    """Show every SIGNALBUS_* setting: its value and where it came from, passwords masked."""
    settings = effective_settings(current_app.config)
    redact = Redactor.for_urls(*(value for _, value, _ in settings if _is_url(value)))
    database_passwords = get_signalbus().redactor()
    for key, value, source in settings:
        shown = database_passwords(redact(repr(value)))
        click.echo(f"{key} = {shown}  ({source})")


def _is_url(value: object) -> bool:
    return isinstance(value, str) and "://" in value


@signalbus_cli.command("listen")
@click.argument("signal_names", nargs=-1)
@click.option(
    "--sweep-interval",
    type=click.FloatRange(min=0, min_open=True),
    help=f"Also flush every signal whose table has rows every SECONDS  "
    f"[default: {SWEEP_INTERVAL}, {DEFAULT_CONFIG[SWEEP_INTERVAL]:g}].",
    metavar="SECONDS",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=MAX_WORKERS),
    help=f"Flush with N threads  [default: {WORKERS}, {DEFAULT_CONFIG[WORKERS]}].",
    metavar="N",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    help=f"Serve metrics, probes and the status page on PORT (0: any free one)  "
    f"[default: {METRICS_PORT}, none].",
    metavar="PORT",
)
@log_level_option
@with_appcontext
def listen_command(
    signal_names: tuple[str, ...],
    sweep_interval: float | None,
    workers: int | None,
    metrics_port: int | None,
) -> None:
    """Send the signals of SIGNAL_NAMES (all signals if none are given) as they commit.

    Runs until SIGTERM or SIGINT, then exits once the burst in flight is done.
    """
    from .listener import listener_from_config
    from .preflight import StartupError

    models = resolve_signal_models(signal_names)
    if not models:
        raise click.ClickException("There are no signals to listen for.")
    check_model_settings(models)
    with reporting_bad_configuration():
        listener = listener_from_config(
            get_signalbus(),
            current_app.config,
            models,
            sweep_interval=sweep_interval,
            workers=workers,
            metrics_port=metrics_port,
        )
    try:
        listener.run()
    except StartupError as error:
        raise click.ClickException(str(error)) from None


@signalbus_cli.command("triggers")
@click.option("--install", is_flag=True, help="Create the missing triggers (idempotent).")
@with_appcontext
def triggers_command(install: bool) -> None:
    """Show whether each signal table has its notification trigger.

    Exits with status 1 unless every trigger is installed on SIGNALBUS_CHANNEL:
    a table is missing (run flask db upgrade; --install leaves it missing), or
    a trigger is missing or on another channel and --install was not given.
    """
    from .triggers import check_signal_triggers

    signalbus = get_signalbus()
    with reporting_bad_configuration():
        channel = channel_setting(current_app.config)
        statuses = check_signal_triggers(
            signalbus.db, signalbus.get_signal_tables(), channel, install=install
        )
    for status in statuses:
        click.echo(f"{status.table} ({status.model.__name__}): {status.describe()}")
    if not all(status.ok for status in statuses):
        raise SystemExit(1)


@signalbus_cli.command("status")
@click.argument("signal_names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
@with_appcontext
def status_command(signal_names: tuple[str, ...], as_json: bool) -> None:
    """Show the backlog and the trigger of SIGNAL_NAMES (all signals if none are given).

    One line per signal: its pending rows (counted up to 100,000: "100000+"),
    its rows in quarantine (when it has some), the age of its oldest row ("-"
    without a signalbus_timestamp_column, rows, or table), and its trigger, in
    the words of `flask signalbus triggers`; then the total. A missing table's
    pending rows are "-".

    --json prints {"signals": [...]} instead, an object per signal: "name",
    "table", "table_exists", "pending" (null when the table is missing),
    "pending_capped" (null likewise), "oldest_age_seconds" (null when unknown),
    "trigger" (what `flask signalbus triggers` says), "trigger_ok" and
    "quarantined" (null when the database has no quarantine table).

    Exits with status 1 unless every trigger is installed (as for `triggers`).
    """
    from .backlog import signal_statuses

    models = resolve_signal_models(signal_names)
    with reporting_bad_configuration():
        channel = channel_setting(current_app.config)
        statuses = signal_statuses(get_signalbus(), models, channel)
    if as_json:
        click.echo(json.dumps({"signals": [_status_json(s) for s in statuses]}, indent=2))
    else:
        for status in statuses:
            click.echo(_status_line(status))
        click.echo(_total_line(statuses))
    if not all(status.trigger.ok for status in statuses):
        raise SystemExit(1)


def _status_line(status: SignalStatus) -> str:
    backlog = status.backlog
    pending = "-" if backlog is None else backlog.describe_pending()
    age = "-" if backlog is None or backlog.oldest_age is None else f"{backlog.oldest_age:.1f} s"
    trigger = status.trigger.describe_trigger()
    quarantined = f", {status.quarantined} quarantined" if status.quarantined else ""
    return f"{status.model.__name__}: {pending} pending{quarantined}, oldest {age}, {trigger}"


def _total_line(statuses: Sequence[SignalStatus]) -> str:
    backlogs = [status.backlog for status in statuses if status.backlog is not None]
    total = sum(backlog.pending for backlog in backlogs)
    capped = "+" if any(backlog.capped for backlog in backlogs) else ""
    missing = len(statuses) - len(backlogs)
    uncounted = f" (not counting {missing} missing table{'s' * (missing > 1)})" if missing else ""
    return f"Total pending: {total}{capped}{uncounted}"


def _status_json(status: SignalStatus) -> dict[str, Any]:
    backlog = status.backlog
    age = None if backlog is None else backlog.oldest_age
    return {
        "name": status.model.__name__,
        "table": status.trigger.table,
        "table_exists": status.trigger.table_exists,
        "pending": None if backlog is None else backlog.pending,
        "pending_capped": None if backlog is None else backlog.capped,
        "oldest_age_seconds": None if age is None else round(age, 3),
        "trigger": status.trigger.describe(),
        "trigger_ok": status.trigger.ok,
        "quarantined": status.quarantined,
    }


# The quarantine: the rows whose send kept failing on its own (see signalbus.quarantine).

quarantine_ids_option = click.option(
    "--id",
    "ids",
    type=int,
    multiple=True,
    metavar="ID",
    help="Only the quarantined row #ID (as `flask signalbus quarantine` shows it); repeatable.",
)
all_quarantined_option = click.option(
    "--all", "select_all", is_flag=True, help="Every quarantined row (of SIGNAL_NAMES, if given)."
)


@signalbus_cli.command("quarantine")
@click.argument("signal_names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead.")
@with_appcontext
def quarantine_command(signal_names: tuple[str, ...], as_json: bool) -> None:
    """Show the rows of SIGNAL_NAMES (all signals if none are given) in quarantine.

    A row goes to quarantine when its send has failed on its own as many times
    as SIGNALBUS_MAX_ATTEMPTS says. A line per row, under a line per signal
    that has some: its quarantine id (#ID, for --id of requeue and purge), its
    primary key, its attempts, when they failed first and last, when it was
    quarantined, and the last error. The row's values are never shown.

    --json prints {"signals": [...]} instead, an object per signal: "name",
    "table" and "rows", each with "id", "row_key", "attempts", "last_error",
    "first_failed_at", "last_failed_at" and "quarantined_at" (ISO 8601, UTC).
    """
    models = resolve_signal_models(signal_names)
    with reporting_quarantine_errors(signal_names, "shown"):
        found = quarantined_by_model(get_signalbus(), models)
    if as_json:
        signals = [_quarantined_json(model, rows) for model, rows in found.items()]
        click.echo(json.dumps({"signals": signals}, indent=2))
        return
    for model, rows in found.items():
        if rows:
            click.echo(f"{model.__name__} ({table_key(model)}): {len(rows)} quarantined")
        for row in rows:
            click.echo(f"  {_quarantined_line(row)}")
    if not any(found.values()):
        click.echo("No rows in quarantine.")


@signalbus_cli.command("requeue")
@click.argument("signal_names", nargs=-1)
@quarantine_ids_option
@all_quarantined_option
@with_appcontext
def requeue_command(signal_names: tuple[str, ...], ids: tuple[int, ...], select_all: bool) -> None:
    """Put quarantined rows back into their tables, to be sent again.

    The rows of SIGNAL_NAMES, those given with --id, or --all. Each goes back
    exactly as it was, its primary key included, so its message keeps its
    message_id: remove what made it fail first. One transaction per database.
    A row whose key is taken again stays in quarantine, named on a line of its
    own; the exit status is 1 then.
    """
    models, wanted = _quarantine_selection(signal_names, ids, select_all)
    with reporting_quarantine_errors(signal_names, "requeued"):
        requeued, conflicts = requeue_selected(get_signalbus(), models, wanted)
    click.echo(f"Requeued {_rows(requeued)}.")
    for conflict in conflicts:
        row = conflict.row
        click.echo(
            f"#{row.id} {conflict.model.__name__} {_row_key(row)}:"
            " its key is taken; it stays in quarantine",
            err=True,
        )
    if conflicts:
        raise SystemExit(1)


@signalbus_cli.command("purge")
@click.argument("signal_names", nargs=-1)
@quarantine_ids_option
@all_quarantined_option
@click.option("--yes", is_flag=True, help="Delete them: there is no undoing it.")
@with_appcontext
def purge_command(
    signal_names: tuple[str, ...], ids: tuple[int, ...], select_all: bool, yes: bool
) -> None:
    """Delete quarantined rows for good (they are not sent).

    The rows of SIGNAL_NAMES, those given with --id, or --all; only with --yes.
    One transaction per database.
    """
    models, wanted = _quarantine_selection(signal_names, ids, select_all)
    if not yes:
        raise click.UsageError("purge deletes rows for good; add --yes")
    with reporting_quarantine_errors(signal_names, "purged"):
        purged = purge_selected(get_signalbus(), models, wanted)
    click.echo(f"Purged {_rows(purged)}.")


def _quarantine_selection(
    signal_names: Sequence[str], ids: Sequence[int], select_all: bool
) -> tuple[list[SignalModel], list[int] | None]:
    """The models and ids (``None``: every row of the models) requeue or purge acts on."""
    if not (signal_names or ids or select_all):
        raise click.UsageError("give signal names, --id or --all")
    if ids and select_all:
        raise click.UsageError("give --id or --all, not both")
    return resolve_signal_models(signal_names), list(ids) or None


@contextmanager
def reporting_quarantine_errors(signal_names: Sequence[str], undone: str) -> Iterator[None]:
    """Report a missing quarantine table (exit status 1) or bad ids (a usage error) on one line.

    *undone* says what was not done to any row then: "requeued", "purged".
    """
    try:
        yield
    except QuarantineMissingError as error:
        raise click.ClickException(str(error)) from None
    except NotQuarantinedError as error:
        problems = []
        if error.missing:
            of = f" of {', '.join(signal_names)}" if signal_names else ""
            problems.append(f"No quarantined row {_ids(error.missing)}{of}")
        if error.ambiguous:
            problems.append(
                f"{_ids(error.ambiguous)}: a quarantined row in more than one database"
                " (name its signal)"
            )
        raise click.UsageError(f"{'; '.join(problems)}; nothing was {undone}.") from None


def _ids(ids: Sequence[int]) -> str:
    return ", ".join(f"#{record_id}" for record_id in ids)


def _rows(count: int) -> str:
    return f"{count} row{'s' * (count != 1)}"


def _row_key(row: QuarantinedRow) -> str:
    """``id=150``; ``shard=1 seqnum=2`` (strings in double quotes)."""
    return " ".join(
        f"{name}={json.dumps(value, ensure_ascii=False)}" for name, value in row.row_key.items()
    )


def _quarantined_line(row: QuarantinedRow) -> str:
    attempts = f"{row.attempts} attempt{'s' * (row.attempts != 1)}"
    first, last = _seconds(row.first_failed_at), _seconds(row.last_failed_at)
    return (
        f"#{row.id} {_row_key(row)}, {attempts} (first failed {first}, last {last}),"
        f" quarantined {_seconds(row.quarantined_at)}: {row.last_error}"
    )


def _seconds(moment: datetime) -> str:
    """``2026-12-01 07:01:02+00:00``: UTC, to the second."""
    return moment.astimezone(UTC).replace(microsecond=0).isoformat(sep=" ")


def _quarantined_json(model: SignalModel, rows: Sequence[QuarantinedRow]) -> dict[str, Any]:
    return {
        "name": model.__name__,
        "table": table_key(model),
        "rows": [
            {
                "id": row.id,
                "row_key": row.row_key,
                "attempts": row.attempts,
                "last_error": row.last_error,
                "first_failed_at": row.first_failed_at.astimezone(UTC).isoformat(),
                "last_failed_at": row.last_failed_at.astimezone(UTC).isoformat(),
                "quarantined_at": row.quarantined_at.astimezone(UTC).isoformat(),
            }
            for row in rows
        ],
    }
