"""Reading a file a person points the agent at (--from-topo-file, --from-capture), bounded."""

from __future__ import annotations

import os
import stat


def read_bounded(path: str, limit: int, what: str) -> bytes:
    """At most `limit` bytes of a regular file; ValueError with a message a person can act on otherwise.

    Opened non-blocking and checked with fstat before any read: a FIFO (which would block until a writer
    comes) or a device such as /dev/zero (endless) is refused, and a huge file is never read into memory.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path}: not a regular file, so not {what}")
        if st.st_size > limit:
            raise ValueError(f"{path}: {st.st_size} bytes, larger than {limit}: not {what}")
        try:
            raw = f.read(limit + 1)  # the file may have grown since fstat
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > limit:
        raise ValueError(f"{path}: larger than {limit} bytes, not {what}")
    return raw
