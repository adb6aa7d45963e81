"""Checked downloads and safe archive extraction for the real data sources.

A dataset download is the one place vitlab touches the network, so it must never leave a file
that later runs would trust: bodies stream to a temporary file beside the target, are checked
against Content-Length and the md5, and only then renamed into place. A verified file is a
cache (no network on the next run). Archives are unpacked with tarfile's "data" filter (no
path traversal, absolute paths, outside links or device files) into a temporary directory.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import http.client
import logging
import lzma
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from tqdm import tqdm

from vitlab.core.atomic import atomic_path
from vitlab.core.errors import VitlabError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
BACKOFF_S = 0.5  # first retry waits this long, doubling each time (capped at 8 s)
RETRY_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class _Transient(Exception):
    """An attempt failed in a way a retry may fix (reset, timeout, 5xx, truncated body)."""


def md5sum(path: Path) -> str:
    """The file's md5 hex digest, read in chunks so an 800 MB archive never sits in memory."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download(
    url: str,
    dest: Path,
    md5: str | None,
    *,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Fetch `url` to `dest` unless a verified copy is already there; return `dest`.

    An existing `dest` whose md5 matches is returned without any network access (with
    `md5=None` an existing file is trusted: it can only have been written whole). Transient
    failures are retried `retries` times with a short doubling backoff; a 4xx status or an md5
    mismatch is not. On any failure nothing is left at `dest` or beside it.
    """
    dest = Path(dest)
    expected = md5.lower().strip() if md5 else None
    if expected is not None and not re.fullmatch(r"[0-9a-f]{32}", expected):
        raise VitlabError(f"md5 {md5!r} for {url} is not 32 hex digits; fix the md5 parameter")
    if dest.is_file():
        if expected is None:
            log.info("%s: using cached %s (no md5 to check)", url, dest)
            return dest
        actual = md5sum(dest)
        if actual == expected:
            log.info("%s: using cached %s (md5 ok)", url, dest)
            return dest
        log.warning("%s has md5 %s, expected %s; downloading it again", dest, actual, expected)
        dest.unlink()  # a wrong file is never worth keeping, even if the download fails
    if retries < 0:
        raise VitlabError(f"download retries must be >= 0, got {retries}")
    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        try:
            with atomic_path(dest) as tmp:
                _fetch_once(url, tmp, dest, expected, timeout)
            return dest
        except _Transient as e:
            if attempt == attempts:
                raise VitlabError(
                    f"{url}: {e} (after {attempts} attempt(s)); check the network or proxy and "
                    f"rerun, or put the file at {dest} yourself"
                    + (f" (md5 {expected})" if expected else "")
                ) from None
            wait = min(BACKOFF_S * 2 ** (attempt - 1), 8.0)
            log.warning("%s: %s; retry %d/%d in %.1f s", url, e, attempt, retries, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _fetch_once(url: str, tmp: Path, dest: Path, expected: str | None, timeout: float) -> None:
    """One attempt: stream into `tmp`, check length and md5; raise _Transient or VitlabError."""
    h = hashlib.md5(usedforsecurity=False)
    got = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            length_header = resp.headers.get("Content-Length")
            total = int(length_header) if length_header and length_header.isdigit() else None
            log.info("downloading %s (%s bytes) to %s", url, total or "unknown", dest)
            with (
                open(tmp, "wb") as out,
                tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=dest.name,
                    file=sys.stderr,
                    leave=False,
                    disable=None,  # a bar only on a terminal; logs get no \r noise
                ) as bar,
            ):
                while chunk := resp.read(CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        if e.code in RETRY_HTTP:
            raise _Transient(f"HTTP {e.code} {e.reason}") from None
        raise VitlabError(
            f"{url}: HTTP {e.code} {e.reason}; check the URL parameter (not retried)"
        ) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, FileNotFoundError):  # a file:// URL that does not exist
            raise VitlabError(f"{url}: no such file; check the URL parameter") from None
        if isinstance(e.reason, OSError):
            raise _Transient(f"network error: {e.reason}") from None
        raise VitlabError(f"{url}: {e.reason}; check the URL parameter") from None
    except ValueError as e:  # unknown url type, malformed URL
        raise VitlabError(f"{url}: not a URL vitlab can download ({e}); check the URL") from None
    except http.client.HTTPException as e:  # IncompleteRead, BadStatusLine, ...
        raise _Transient(f"bad HTTP response after {got} bytes: {e!r}") from None
    except OSError as e:
        if e.errno in LOCAL_ERRNOS:  # our side: disk full, read-only, no permission
            raise VitlabError(f"cannot write {dest}: {e.strerror}; free space or fix it") from None
        raise _Transient(f"connection failed after {got} bytes: {e}") from None
    if total is not None and got != total:
        raise _Transient(f"download truncated: got {got} of {total} bytes")
    if expected is not None:
        actual = h.hexdigest()
        if actual != expected:
            raise VitlabError(
                f"{url}: md5 {actual} does not match the expected {expected} ({got} bytes); "
                f"check the URL / md5 parameters (the file may have changed upstream); "
                f"nothing was saved to {dest}"
            )


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a tar(.gz/.bz2/.xz) into `dest`, refusing anything that could escape it.

    Every member passes tarfile's "data" filter. The archive is unpacked into a temporary
    directory beside `dest`; only after the whole archive has been read is each top-level entry
    renamed into `dest` (replacing an entry of the same name), so a crash or a bad archive never
    leaves a half-extracted tree that looks complete.
    """
    archive, dest = Path(archive), Path(dest)
    if not hasattr(tarfile, "data_filter"):  # added in 3.11.4; never extract without it
        raise VitlabError(f"extracting {archive} safely needs Python >= 3.11.4; upgrade Python")
    if not archive.is_file():
        raise VitlabError(f"archive {archive} does not exist; rerun the download")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract.", suffix=".tmp", dir=dest.parent))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.errorlevel = 1
                tar.extractall(tmp, filter=_strict_data_filter)
        except tarfile.FilterError as e:
            member = e.tarinfo.name if e.tarinfo is not None else "?"
            raise VitlabError(
                f"archive {archive}: refused member {member!r} ({e}); the archive is unsafe, "
                f"delete it and check where it came from"
            ) from None
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError) as e:
            raise VitlabError(
                f"archive {archive} is corrupt or truncated ({type(e).__name__}: {e}); "
                f"delete it and rerun to download it again"
            ) from None
        except OSError as e:
            raise VitlabError(
                f"extracting {archive} into {dest} failed: {e}; free disk space or fix "
                f"permissions and rerun"
            ) from None
        for entry in sorted(tmp.iterdir()):
            _replace_entry(entry, dest / entry.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _strict_data_filter(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo | None:
    """tarfile's "data" filter, except that an absolute name is refused, not made relative."""
    if member.name.startswith(("/", os.sep)) or os.path.isabs(member.name):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, dest_path)


def _replace_entry(src: Path, target: Path) -> None:
    """Rename `src` onto `target`, moving any old `target` aside first (renames are atomic)."""
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old")
        _remove(old)
        os.replace(target, old)
        os.replace(src, target)
        _remove(old)
    else:
        os.replace(src, target)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()
