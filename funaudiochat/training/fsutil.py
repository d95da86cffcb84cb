"""Crash-safe directory writes shared by checkpoint saving and model merging.

A directory is built under a hidden temporary sibling (``<parent>/.tmp-<name>``), every file is
fsync'ed, and only then renamed into place, so a reader never sees a half-written folder: either the
old state or the complete new one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"


def tmp_path_for(final: Path) -> Path:
    """Temporary sibling used while ``final`` is being written."""
    return final.parent / f"{TMP_PREFIX}{final.name}"


def fsync_path(path: Path) -> None:
    """Flush one file or directory entry to disk (directories: best effort, not on Windows)."""
    if path.is_dir():
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # pragma: no cover - platform without directory fds
            return
        try:
            os.fsync(fd)
        except OSError:  # pragma: no cover
            pass
        finally:
            os.close(fd)
    else:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def fsync_tree(root: Path) -> None:
    """fsync every file below ``root`` and then the directories themselves."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


@contextlib.contextmanager
def atomic_directory(final: str | os.PathLike[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``final`` only if the block finishes without error.

    On error the temporary folder is removed and ``final`` is untouched. A stale temporary folder
    left by a killed process is deleted first. With ``overwrite`` an existing ``final`` is replaced
    (it is moved aside, the new folder renamed in, then the old one deleted).
    """
    final = Path(final)
    if final.exists() and not overwrite:
        raise FileExistsError(f"output folder already exists: {final} (pass overwrite=True to replace it)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(final)
    if tmp.exists():
        logger.warning("removing stale temporary folder %s", tmp)
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        old: Path | None = None
        if final.exists():
            old = final.parent / f"{TMP_PREFIX}old-{final.name}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
        os.replace(tmp, final)
        fsync_path(final.parent)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
