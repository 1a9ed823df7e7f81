"""Writing a run's files: a failure (a full disk, an I/O error, a read-only volume) names the file.

OSError from a write() often names nothing ("[Errno 28] No space left on device"), and
safetensors reports its own error type; both become RunFilesError with the path, so the
optimizer can stop with a message a user can act on instead of a stack trace in a gRPC handler.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from safetensors import SafetensorError


class RunFilesError(OSError):
    """A run's file could not be written."""


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    try:
        yield
    except RunFilesError:
        raise
    except (OSError, SafetensorError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise RunFilesError(f"cannot write {path}: {reason}") from err


def replace_text(path: Path, text: str) -> None:
    """Writes `path` whole or not at all (a temporary file renamed over it): a crash leaves the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path):
        tmp.write_text(text)
        os.replace(tmp, path)
