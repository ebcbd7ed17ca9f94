"""Atomic file replacement, so a crash while saving never corrupts an existing file.

The new content goes to a temporary file in the destination's own directory
(``os.replace`` is atomic only within one file system), is flushed to disk,
and only then takes the destination's name. Until that last step the old file
is untouched; if writing fails the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import os
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
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
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
