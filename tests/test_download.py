"""download() against a real HTTP server on 127.0.0.1, and safe_extract() on real archives.

The server misbehaves on purpose (503, 404, short bodies) and counts requests, so retries,
the cache and "nothing left behind" are observed from the outside.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tarfile
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vitlab.core import download as dl
from vitlab.core.download import download, md5sum, safe_extract
from vitlab.core.errors import VitlabError

PAYLOAD = os.urandom(300_000)
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Server:
    """Routes: path -> list of responses, one per request (the last one repeats)."""

    def __init__(self) -> None:
        self.routes: dict[str, list[tuple]] = {}
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.hits[self.path] += 1
                plan = server.routes.get(self.path, [("status", 404)])
                kind, *args = plan[min(server.hits[self.path], len(plan)) - 1]
                if kind == "status":
                    self.send_error(args[0])
                    return
                body, claimed = args[0], (args[1] if len(args) > 1 else len(args[0]))
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(claimed))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(dl, "BACKOFF_S", 0.01)  # keep retries quick; the count is what matters
    s = Server()
    yield s
    s.close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_md5sum_streams_across_chunks(tmp_path: Path) -> None:
    data = os.urandom(dl.CHUNK * 2 + 17)
    f = tmp_path / "blob"
    f.write_bytes(data)
    assert md5sum(f) == hashlib.md5(data).hexdigest()


def test_download_verifies_then_serves_from_cache(server: Server, tmp_path: Path) -> None:
    server.routes["/a.tar.gz"] = [("ok", PAYLOAD)]
    dest = tmp_path / "cache" / "a.tar.gz"
    assert download(f"{server.base}/a.tar.gz", dest, PAYLOAD_MD5) == dest
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == ["a.tar.gz"]
    assert server.hits["/a.tar.gz"] == 1

    download(f"{server.base}/a.tar.gz", dest, PAYLOAD_MD5.upper())  # md5 case does not matter
    download(f"{server.base}/a.tar.gz", dest, None)  # no md5: a whole file is trusted
    assert server.hits["/a.tar.gz"] == 1  # the cache made no request

    dest.write_bytes(b"damaged")  # a wrong cached file is fetched again
    download(f"{server.base}/a.tar.gz", dest, PAYLOAD_MD5)
    assert server.hits["/a.tar.gz"] == 2
    assert dest.read_bytes() == PAYLOAD


def test_md5_mismatch_is_refused_and_not_retried(server: Server, tmp_path: Path) -> None:
    server.routes["/a.tar.gz"] = [("ok", PAYLOAD)]
    dest = tmp_path / "cache" / "a.tar.gz"
    wrong = "0" * 32
    with pytest.raises(VitlabError) as e:
        download(f"{server.base}/a.tar.gz", dest, wrong)
    msg = str(e.value)
    assert wrong in msg and PAYLOAD_MD5 in msg and "/a.tar.gz" in msg and "md5" in msg
    assert leftovers(dest.parent) == []
    assert server.hits["/a.tar.gz"] == 1


def test_stale_cached_file_is_removed_when_refetch_fails(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "a.tar.gz"
    dest.write_bytes(b"old, wrong bytes")
    with pytest.raises(VitlabError, match="404"):
        download(f"{server.base}/gone.tar.gz", dest, PAYLOAD_MD5)
    assert leftovers(tmp_path) == []


def test_truncated_body_is_an_error_and_leaves_nothing(server: Server, tmp_path: Path) -> None:
    server.routes["/a.tar.gz"] = [("ok", PAYLOAD[:1000], len(PAYLOAD))]
    dest = tmp_path / "a.tar.gz"
    with pytest.raises(VitlabError) as e:
        download(f"{server.base}/a.tar.gz", dest, None, retries=1)
    assert f"got 1000 of {len(PAYLOAD)} bytes" in str(e.value)
    assert "truncated" in str(e.value) and "2 attempt" in str(e.value)
    assert leftovers(tmp_path) == []
    assert server.hits["/a.tar.gz"] == 2  # a dropped connection is worth one retry


def test_transient_503_is_retried(server: Server, tmp_path: Path) -> None:
    server.routes["/a.tar.gz"] = [("status", 503), ("ok", PAYLOAD)]
    dest = tmp_path / "a.tar.gz"
    download(f"{server.base}/a.tar.gz", dest, PAYLOAD_MD5)
    assert dest.read_bytes() == PAYLOAD
    assert server.hits["/a.tar.gz"] == 2
    assert leftovers(tmp_path) == ["a.tar.gz"]


def test_503_every_time_gives_up_after_the_retries(server: Server, tmp_path: Path) -> None:
    server.routes["/a.tar.gz"] = [("status", 503)]
    with pytest.raises(VitlabError, match=r"HTTP 503.*3 attempt"):
        download(f"{server.base}/a.tar.gz", tmp_path / "a.tar.gz", PAYLOAD_MD5, retries=2)
    assert server.hits["/a.tar.gz"] == 3
    assert leftovers(tmp_path) == []


def test_404_is_clear_and_not_retried(server: Server, tmp_path: Path) -> None:
    with pytest.raises(VitlabError) as e:
        download(f"{server.base}/missing.tar.gz", tmp_path / "m.tar.gz", PAYLOAD_MD5)
    assert "HTTP 404" in str(e.value) and f"{server.base}/missing.tar.gz" in str(e.value)
    assert server.hits["/missing.tar.gz"] == 1
    assert leftovers(tmp_path) == []


def test_bad_md5_parameter_fails_before_any_request(server: Server, tmp_path: Path) -> None:
    with pytest.raises(VitlabError, match="32 hex digits"):
        download(f"{server.base}/a.tar.gz", tmp_path / "a.tar.gz", "not-an-md5")
    assert sum(server.hits.values()) == 0


def test_connection_refused_is_retried_then_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(dl, "BACKOFF_S", 0.01)
    with socket.socket() as s:  # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(VitlabError, match=r"network error.*2 attempt.*put the file at"):
        download(f"http://127.0.0.1:{port}/a.tar.gz", tmp_path / "a.tar.gz", None, retries=1)
    assert leftovers(tmp_path) == []


# --- safe_extract -------------------------------------------------------------------------


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def test_extracts_and_replaces_top_level_entries(tmp_path: Path) -> None:
    v1 = make_tar(tmp_path / "v1.tar.gz", [file_member("images/a.jpg"), file_member("old.txt")])
    v2 = make_tar(tmp_path / "v2.tar.gz", [file_member("images/b.jpg", b"new")])
    dest = tmp_path / "out"
    safe_extract(v1, dest)
    assert (dest / "images" / "a.jpg").read_bytes() == b"x"
    safe_extract(v2, dest)
    assert leftovers(dest / "images") == ["b.jpg"]  # images/ replaced as a whole
    assert leftovers(dest) == ["images", "old.txt"]  # other entries kept
    assert leftovers(tmp_path) == ["out", "v1.tar.gz", "v2.tar.gz"]  # no temporary dirs


def unsafe_member(kind: str, root: Path) -> tarfile.TarInfo:
    if kind == "parent-traversal":
        return tarfile.TarInfo("../evil")
    if kind == "absolute-path":
        return tarfile.TarInfo(str(root / "abs_evil"))
    info = tarfile.TarInfo(kind)
    if kind == "symlink-outside":
        info.type, info.linkname = tarfile.SYMTYPE, "../../outside"
    else:  # a character device, /dev/null's numbers
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info


@pytest.mark.parametrize(
    "kind", ["parent-traversal", "absolute-path", "symlink-outside", "device-file"]
)
def test_unsafe_members_are_refused_and_nothing_is_extracted(tmp_path: Path, kind: str) -> None:
    info = unsafe_member(kind, tmp_path)
    data = b"evil" if info.isfile() else None
    # A good member first: a naive extractor would already have written it.
    archive = make_tar(tmp_path / "bad.tar.gz", [file_member("images/ok.jpg"), (info, data)])
    dest = tmp_path / "sub" / "out"
    with pytest.raises(VitlabError) as e:
        safe_extract(archive, dest)
    msg = str(e.value)
    assert str(archive) in msg and repr(info.name) in msg and "refused" in msg
    assert leftovers(dest) == []
    assert leftovers(tmp_path / "sub") == ["out"]
    assert not (tmp_path / "evil").exists() and not (tmp_path / "abs_evil").exists()


def test_truncated_or_bogus_archive_says_delete_and_rerun(tmp_path: Path) -> None:
    good = make_tar(
        tmp_path / "good.tar.gz", [file_member(f"f{i}", os.urandom(50_000)) for i in range(4)]
    )
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(b"<html>Not Found</html>")
    for archive in (cut, bogus):
        dest = tmp_path / f"out_{archive.stem}"
        with pytest.raises(VitlabError) as e:
            safe_extract(archive, dest)
        assert str(archive) in str(e.value) and "delete it and rerun" in str(e.value)
        assert leftovers(dest) == []
    with pytest.raises(VitlabError, match="does not exist"):
        safe_extract(tmp_path / "nope.tar.gz", tmp_path / "out")
