"""Atomic file replacement, so a crash while saving never corrupts an existing file.

The new content goes to a temporary file in the destination's own directory
(``os.replace`` is atomic only within one file system), is flushed to disk,
and only then takes the destination's name. Until that last step the old file
is untouched; if writing fails the temporary file is removed. A process
killed mid-save cannot remove its temporary file: the next save to the same
path removes every such file whose writer (the process id in its name) is
no longer running.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a binary file that replaces ``path`` when the ``with`` block ends without error.

    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "x.bin")
    >>> with atomic_write(target) as f:
    ...     _ = f.write(b"new")
    >>> open(target, "rb").read()
    b'new'
    """
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    _remove_orphans(directory, name)
    while True:
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
        try:
            # os.open with mode 0o666 lets the umask decide the permissions, as
            # for any new file (tempfile.mkstemp would force 0o600).
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def _remove_orphans(directory: str, name: str) -> None:
    """Delete temporary files of earlier saves to ``name`` whose process has died."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[0-9a-f]{{12}}\.tmp$")
    for tmp in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.*.tmp")):
        match = pattern.match(os.path.basename(tmp))
        if match and not _running(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.remove(tmp)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else (PermissionError), or no way to tell
        return True
    return True
