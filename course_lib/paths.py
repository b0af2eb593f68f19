"""Files the course writes: one way to write them so that no reader ever sees half a file.

(The address book of every folder rule and environment variable, issue 15 item 2, is to
come here too.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path.

    The text goes to a new temporary file in the same folder (created with the parents it
    needs), which then replaces ``path`` in one ``os.replace``: a reader sees the old file or
    the new one, never a part, and a failure (disk full, an interrupt) leaves ``path`` as it
    was and no temporary file behind.

    Raises:
        OSError: the folder cannot be created or written (the original file is unchanged).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
