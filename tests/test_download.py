"""The download stage: over HTTP from 127.0.0.1, from files and directories; a server that
trickles gives up in one line; failures never destroy a verified archive."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest
from conftest import assert_one_line_error, make_imagefolder, md5, no_files, run_cli, sha256, tiny_params

from cnnvit.config.types import Data
from cnnvit.stages import download as dl
from cnnvit.stages.prepare import prepare


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(dl, "BACKOFF_S", 0.01)


def data(url: str, md5_: str | None = None, sha: str | None = None) -> Data:
    return Data(
        url=url, format="cifar10-python", expect_train=0, expect_test=0, val_size=20, val_seed=0, md5=md5_, sha256=sha
    )


def test_download_over_http_verifies_and_skips_refetch(tmp_path, http_server, cifar_archive, capsys):
    www, base = http_server
    (www / "c.tar.gz").write_bytes(cifar_archive.read_bytes())
    out = tmp_path / "data/raw/cifar10.tar.gz"
    dl.download(data(f"{base}/c.tar.gz", md5(cifar_archive)), out)
    assert out.read_bytes() == cifar_archive.read_bytes()
    (www / "c.tar.gz").unlink()  # a second fetch would now 404: it must not happen
    dl.download(data(f"{base}/c.tar.gz", md5(cifar_archive)), out)
    assert "not fetching again" in capsys.readouterr().out


def test_download_by_sha256_from_file_url(tmp_path, cifar_archive):
    out = tmp_path / "raw.tar.gz"
    dl.download(data(cifar_archive.as_uri(), sha=sha256(cifar_archive)), out)
    assert out.read_bytes() == cifar_archive.read_bytes()


def test_download_404(tmp_path, http_server, capsys):
    _, base = http_server
    code, err = run_cli(
        tmp_path,
        capsys,
        ["download", "--out", str(tmp_path / "d/x.tar.gz")],
        tiny_params(f"{base}/missing.tar.gz", "0" * 32),
    )
    assert_one_line_error(code, err, "HTTP 404", "data.url")
    assert no_files(tmp_path / "d")


def test_download_unreachable_host_retries_then_points_at_mirror(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on: connection refused, like no network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, err = run_cli(
        tmp_path,
        capsys,
        ["download", "--out", str(tmp_path / "d/x.tar.gz")],
        tiny_params(f"http://127.0.0.1:{port}/cifar.tar.gz", "0" * 32),
    )
    assert_one_line_error(code, err, "cannot reach 127.0.0.1", "mirror or a local copy")
    assert no_files(tmp_path / "d")


def test_checksum_mismatch_shows_both_and_leaves_no_file(tmp_path, http_server, cifar_archive, capsys):
    www, base = http_server
    (www / "c.tar.gz").write_bytes(cifar_archive.read_bytes())
    code, err = run_cli(
        tmp_path, capsys, ["download", "--out", str(tmp_path / "d/x.tar.gz")], tiny_params(f"{base}/c.tar.gz", "f" * 32)
    )
    assert_one_line_error(code, err, "checksum mismatch", "f" * 32, md5(cifar_archive))
    assert no_files(tmp_path / "d")


def test_a_failed_download_keeps_the_verified_archive(tmp_path, cifar_archive, capsys):
    """Issue 9.3: a bad data.url or checksum must not delete the good archive already in place."""
    out = tmp_path / "data/raw/cifar10.tar.gz"
    good = tiny_params(str(cifar_archive), md5(cifar_archive))
    assert run_cli(tmp_path, capsys, ["download", "--out", str(out)], good)[0] == 0
    before = out.read_bytes()
    code, err = run_cli(
        tmp_path,
        capsys,
        ["download", "--out", str(out)],
        {**good, "data": {**good["data"], "url": str(tmp_path / "nope.tar.gz"), "md5": "a" * 32}},
    )
    assert_one_line_error(code, err, "nothing at")
    code, err = run_cli(
        tmp_path, capsys, ["download", "--out", str(out)], {**good, "data": {**good["data"], "md5": "a" * 32}}
    )
    assert_one_line_error(code, err, "checksum mismatch", "left as it was")
    assert out.read_bytes() == before
    assert [p.name for p in out.parent.iterdir()] == ["cifar10.tar.gz"]  # no temp files left


def test_directory_source_is_packed_reproducibly_and_checksummed(tmp_path):
    src = make_imagefolder(tmp_path / "folder")
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    with pytest.raises(Exception, match=r"checksum mismatch for directory .*set data.md5=([0-9a-f]{32})") as exc:
        dl.download(data(str(src), "0" * 32), a)
    digest = str(exc.value).split("data.md5=")[1].split()[0]
    dl.download(data(str(src), digest), a)
    dl.download(data(str(src), digest), b)
    assert a.read_bytes() == b.read_bytes() and md5(a) == digest
    assert len(prepare(a, "imagefolder")["train"][1]) == 30
    next((src / "train/cat").iterdir()).unlink()  # the contents changed: the pinned digest catches it
    with pytest.raises(Exception, match="checksum mismatch"):
        dl.download(data(str(src), digest), tmp_path / "c.tar.gz")


class Trickle(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        for _ in range(200):
            self.wfile.write(b"x")
            self.wfile.flush()
            time.sleep(0.05)

    def log_message(self, *args):
        pass


def test_a_trickling_download_gives_up_in_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(dl, "STALL_WINDOW_S", 1.0)
    monkeypatch.setattr(dl, "PROGRESS_EVERY_S", 0.3)
    params = tiny_params(f"http://127.0.0.1:{server.server_address[1]}/c.tar.gz", "0" * 32)
    out = tmp_path / "raw/c.tar.gz"
    try:
        code, err = run_cli(tmp_path, capsys, ["download", "--out", str(out)], params)
    finally:
        server.shutdown()
    assert_one_line_error(code, err, "stalled", "under 10 kB/s", "mirror or a local copy")
    assert not out.exists() and not list(out.parent.glob(".*.tmp"))
