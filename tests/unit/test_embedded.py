"""The parts of signalbus.embedded that need no server: where it lives, its password file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import platformdirs
import pytest

from signalbus import embedded


def test_default_data_dir() -> None:
    assert embedded.default_data_dir() == Path(platformdirs.user_data_dir("signalbus")) / "postgres"


def test_password_file_is_written_private_and_read_back(tmp_path: Path) -> None:
    embedded._write_password(tmp_path, "first")
    embedded._write_password(tmp_path, "s3cret")  # replaced whole
    st = (tmp_path / "password").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, os.geteuid())
    assert embedded._read_password(tmp_path) == "s3cret"
    assert [path.name for path in tmp_path.iterdir()] == ["password"]  # no temporary file left


def test_password_file_readable_by_others_is_made_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "password"
    path.write_text("s3cret\n")
    path.chmod(0o644)
    assert embedded._read_password(tmp_path) == "s3cret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "readable by others" in caplog.text and "s3cret" not in caplog.text


@pytest.mark.parametrize("content", [None, "\n"], ids=["missing", "empty"])
def test_lost_password_is_a_clear_error(tmp_path: Path, content: str | None) -> None:
    if content is not None:
        (tmp_path / "password").write_text(content)
    with pytest.raises(embedded.EmbeddedPostgresError, match=r"password is missing.*delete"):
        embedded._read_password(tmp_path)


def test_password_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("s3cret\n")
    (tmp_path / "password").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(embedded.EmbeddedPostgresError, match="cannot read"):
        embedded._read_password(tmp_path)
