"""Crash-safe directory writes shared by checkpoint saving and model merging, and the settings
file that keeps a resumable output folder from mixing results made with different settings.

A directory is built under a hidden temporary sibling (``<parent>/.tmp-<name>``), every file is
fsync'ed, and only then renamed into place, so a reader never sees a half-written folder: either the
old state or the complete new one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def check_settings_file(path: Path, want: dict[str, Any], hint: str) -> None:
    """Write ``want`` to ``path`` (atomically) the first time; later, refuse any other settings.

    Resumable runs (``eval``, ``eval-duplex``, TTS synthesis) keep their results next to this file, so
    a rerun with changed settings would silently mix two experiments.  ``hint`` ends the message
    (e.g. "use a fresh --out").
    """
    if path.is_file():
        have = json.loads(path.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
        if diff:
            details = ", ".join(f"{k}: {have.get(k)!r} -> {want.get(k)!r}" for k in diff)
            raise ValueError(f"{path.parent} holds results made with other settings ({details}); {hint}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(want, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
