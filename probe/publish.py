"""Stage, then publish: how every output appears whole or not at all.

This module owns the one way whisper-probe writes something another reader may look at (a trace
in the store, an imported trace, a converted model, an exported file): build it under a temporary
name beside its destination, then :func:`publish` it with one rename, which is atomic on one
filesystem, so a reader sees the old state or the finished output and never a half-written one.
:func:`staged` is the context manager for outputs written in one go: it yields the staging path,
publishes on a clean exit and removes the stage on any exception, ``KeyboardInterrupt`` included.
``durable=True`` also fsyncs the staged files before the rename and the destination's folder after
it (:func:`fsync_tree`, :func:`fsync_dir`), for outputs that must survive a power cut.  A failed
rename raises :class:`PublishError`, so callers can tell "the destination was taken" from a write
error.  Error messages are the callers': this module raises plain ``OSError`` subclasses.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


class PublishError(OSError):
    """The rename that publishes a stage failed (most often: the destination appeared meanwhile,
    or is a folder that is not empty).  ``strerror`` is the operating system's reason."""


@contextlib.contextmanager
def staged(dest: str | os.PathLike, *, is_dir: bool, stage_in: str | os.PathLike | None = None,
           durable: bool = False) -> Iterator[Path]:
    """Yield a staging path for ``dest``; publish it there on a clean exit, remove it otherwise.

    ``is_dir=True``: the stage is a new empty folder named like ``dest`` (so what reads it names
    it right) inside a private ``.<name>.*.partial`` folder; the destination must be absent or an
    empty folder.  ``is_dir=False``: the stage is a file name ``.<stem>.<hex>.part<suffix>``
    (the suffix kept for writers that choose a format by it) that the body creates; an existing
    file at ``dest`` is replaced.  The stage lives in ``stage_in`` if given (it must be on
    ``dest``'s filesystem, e.g. the store's ``.tmp``), else beside ``dest``; missing parent
    folders are made.
    """
    dest = Path(dest)
    where = Path(stage_in) if stage_in is not None else dest.parent
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not is_dir:
        where.mkdir(parents=True, exist_ok=True)
        stage = where / f".{dest.stem}.{secrets.token_hex(4)}.part{dest.suffix}"
        try:
            yield stage
            publish(stage, dest, durable=durable)
        finally:
            with contextlib.suppress(FileNotFoundError):
                stage.unlink()
        return
    holder = _private_folder(where, f".{dest.name}.")
    try:
        stage = holder / dest.name
        stage.mkdir()  # with the umask's permissions, unlike mkdtemp's 0700: it becomes the output
        yield stage
        publish(stage, dest, durable=durable)
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def publish(stage: Path, dest: Path, *, durable: bool = False) -> None:
    """Rename the finished ``stage`` (a file or folder) to ``dest`` in one atomic step.

    A folder replaces only an absent or empty folder; a file replaces an existing file.
    ``durable``: fsync every staged file and folder first (the rename must never publish data
    still in a cache) and ``dest``'s folder after (so the rename itself is on disk).
    Raises :class:`PublishError` when the rename fails; ``stage`` is then left for the caller.
    """
    stage, dest = Path(stage), Path(dest)
    if durable:
        fsync_tree(stage)
    try:
        if stage.is_dir():
            if dest.is_dir() and not dest.is_symlink():
                dest.rmdir()  # an empty placeholder; fails if someone filled it meanwhile
            os.rename(stage, dest)
        else:
            os.replace(stage, dest)
    except OSError as err:
        raise PublishError(err.errno, err.strerror or str(err), os.fspath(dest)) from err
    if durable:
        fsync_dir(dest.parent)


def fsync_tree(root: Path) -> None:
    """fsync a file, or every file and folder under a folder (new entries included)."""
    root = Path(root)
    if not root.is_dir():
        _fsync_file(root)
        return
    for folder, _, files in os.walk(root):
        for file in files:
            _fsync_file(Path(folder, file))
        fsync_dir(Path(folder))


def fsync_dir(path: Path) -> None:
    """Make a folder's new entries and renames durable.  Best effort: folders cannot be opened
    off POSIX, and some network filesystems refuse to fsync them."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _private_folder(where: Path, prefix: str) -> Path:
    # `where` may be a shared temp area that another writer removes the moment it is empty
    # (the store's .tmp), so it is made again if it vanished between the mkdir and the mkdtemp.
    attempts = 3
    while True:
        where.mkdir(parents=True, exist_ok=True)
        try:
            return Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=where))
        except FileNotFoundError:
            attempts -= 1
            if not attempts:
                raise
