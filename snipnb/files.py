"""Writing a file so that no reader, and no run killed while writing, ever finds part of it."""

from __future__ import annotations

import os
import pathlib
import threading
from typing import IO, Callable


def write_atomically(path, write: Callable[[IO], None], *, mode: str = "wb") -> pathlib.Path:
    """Call `write(f)` on a temporary file beside `path` (a dot-name ending `.tmp`, which readers of a
    folder skip), flush it to disk, then rename it into place: `path` holds the whole new file or
    whatever it held before. The temporary file is removed if `write` fails."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
