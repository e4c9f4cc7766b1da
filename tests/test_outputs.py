"""diffvae.outputs: where a command may write a file."""

from __future__ import annotations

import errno
import os
import tempfile

import pytest

from diffvae.errors import DiffvaeError
from diffvae.outputs import can_create_in, check_output


def test_a_folder_where_no_file_can_be_made_is_refused_before_any_work(tmp_path, monkeypatch):
    """Regression (issue 27, hostile pass): os.access says yes to root in /sys (or on a read-only file system), so
    ``eval --out /sys/e.json`` ran the whole evaluation before its write failed; the folder is now tried."""
    assert can_create_in(tmp_path) and list(tmp_path.iterdir()) == []  # the try leaves nothing behind

    def forbidden(*args, **kwargs):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(tempfile, "TemporaryFile", forbidden)
    assert not can_create_in(tmp_path)
    with pytest.raises(DiffvaeError, match=f"cannot write in {tmp_path}"):
        check_output(str(tmp_path / "e.json"), False, (".json",))
