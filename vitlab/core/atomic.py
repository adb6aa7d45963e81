"""Atomic, durable outputs: write beside the target, fsync, rename over it, fsync the folder.

A crash mid-write leaves at most a hidden temporary file (removed by the next write of the same
target), never a truncated output that a later stage or DVC would trust; after the rename
returns, a power cut cannot bring back an empty "complete" file. A full disk is one line naming
the file, with the previous output left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vitlab.core.errors import VitlabError

_TMP = ".tmp"


def _temporaries(path: Path) -> list[Path]:
    return list(path.parent.glob(f".{path.name}.*{_TMP}"))


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporaries a killed writer left in `folder` (one writer per workspace)."""
    for tmp in Path(folder).glob(f".*{_TMP}"):
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(tmp: Path) -> int:
    if tmp.is_file():
        return tmp.stat().st_size
    return sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())


@contextlib.contextmanager
def _space_checked(path: Path, tmp: Path) -> Iterator[None]:
    """A full disk (or a file-size limit) as one line naming the output and the space."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        free = shutil.disk_usage(path.parent).free / 2**20
        raise VitlabError(
            f"{path}: {os.strerror(e.errno)}: it needs more than the {_size(tmp):,} bytes written "
            f"before the write failed ({free:,.0f} MiB free there, or a file-size limit); the "
            "previous version is kept. Free space and rerun"
        ) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in _temporaries(path):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with _space_checked(path, tmp_path):
            yield tmp_path
            _fsync(tmp_path)
        os.replace(tmp_path, path)
        _fsync(path.parent)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `path` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in _temporaries(path):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=_TMP, dir=path.parent))
    try:
        with _space_checked(path, tmp):
            yield tmp
            # the whole tree on disk: one sync() rather than an fsync a file (fetch writes
            # ~9,000 small images, whose fsyncs took 4.6 s of its 17 s on a 2-core VM)
            os.sync()
        if path.exists():
            old = path.with_name(f".{path.name}.old{_TMP}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def dumps(obj: Any) -> str:
    """Strict JSON (no NaN or Infinity tokens: a non-finite number is a bug upstream)."""
    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write `obj` as indented strict JSON, atomically."""
    text = dumps(obj)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text`, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_torch(path: str | os.PathLike[str], obj: Any) -> None:
    """torch.save, atomically and byte-reproducibly.

    Saving to an open file rather than a path keeps the temporary file's random name out of
    the zip archive, so the same weights always give the same bytes (and the same DVC hash).
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
