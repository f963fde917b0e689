"""Files written whole or not at all: checkpoint copies (shims/checkpoint_safety.py) and the
prior and directions files (latent_space/prior_file.py) both go through write_atomically."""

import os
from typing import BinaryIO, Callable


def fsync_folder(folder: str):
    """Makes a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder: the rename is still atomic
        pass
    finally:
        os.close(fd)


def write_atomically(path: str, write: Callable[[BinaryIO], None], suffix: str = ".partial"):
    """``write(f)`` into ``path + suffix`` in the same folder (so the rename cannot cross
    filesystems), flushed to disk, then renamed over ``path``: ``path`` is always a whole file,
    and a failed write leaves no temporary file and ``path`` as it was."""
    partial = path + suffix
    try:
        with open(partial, "wb") as f:
            write(f)
            f.flush()
            # the rename must not reach the disk before the data it names
            os.fsync(f.fileno())
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise
    fsync_folder(os.path.dirname(os.path.abspath(path)))
