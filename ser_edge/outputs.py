"""Can a path be written later? Asked before minutes or hours of work, not after them."""

from __future__ import annotations

import os
from pathlib import Path


def why_unwritable(path: str | os.PathLike, *, folder: bool = False) -> str | None:
    """Why ``path`` (a file, or a folder with ``folder``) could not be created, or None.

    Missing folders on the way count as creatable: the nearest part of the path that exists
    must be a folder this process may write in.
    """
    existing = Path(path).absolute()
    if not folder:
        if existing.is_dir():
            return f"{existing} is a folder, not a file"
        if existing.exists() and not os.access(existing, os.W_OK):
            return f"no permission to write {existing}"
        existing = existing.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"no permission to write in {existing}"
    return None
