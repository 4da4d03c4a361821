"""Download stage: fetch the CIFAR-10 archive and verify its checksum.

    cnnvit download --out data/raw/cifar10.tar.gz

``data.url`` may be http(s)://, file:// or a local path: an archive, or for ``imagefolder`` a
directory, which is packed into a byte-reproducible tar.gz and checked like an archive (the
error names the digest to pin). The archive is streamed to a temporary file beside ``--out``,
verified, and only then renamed over it: a failed or wrong download never removes a good
archive. An archive already at ``--out`` that verifies is not fetched again. Transient network
errors are retried with backoff.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from cnnvit import paths
from cnnvit.config.types import Data, Params
from cnnvit.errors import CnnvitError
from cnnvit.files import atomic_path
from cnnvit.stage import Out, Stage

STAGE = Stage(
    name="download",
    help="fetch and verify the archive",
    cmd=f"cnnvit download --out {paths.RAW}",
    outs=(Out(paths.RAW),),
    params=("data.url", "data.md5", "data.sha256"),
    local_input="data.url",
    priority=10,
)

CHUNK = 1 << 20
RETRIES = 3
BACKOFF_S = 1.0  # doubled after each failed attempt
TIMEOUT_S = 30  # no byte at all for this long: the socket gives up
STALL_WINDOW_S = 60.0  # a transfer slower than MIN_RATE over this long is given up on too
MIN_RATE = 10 * 1024  # bytes/s: CIFAR-10 (170 MB) would take over four hours below it
PROGRESS_EVERY_S = 10.0


def local_path(url: str) -> Path | None:
    """The filesystem path ``data.url`` names (file:// or a plain path), or None for a URL."""
    if url.startswith("file://"):
        return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", url):
        return None
    return Path(url).expanduser()


def file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class Stalled(Exception):
    """The transfer went on, but slower than MIN_RATE over STALL_WINDOW_S."""


def _stream(src: io.BufferedIOBase, dst: Path, algo: str, total: int | None, label: str) -> str:
    """Copy ``src`` to ``dst``, hashing it. ``read1`` returns whatever has arrived, so a transfer
    that trickles (bytes too slowly for the socket timeout to fire) is measured and given up on,
    and a progress line goes to the log every PROGRESS_EVERY_S when nothing draws a bar."""
    h = hashlib.new(algo)
    start = window = last_line = time.monotonic()
    done = window_bytes = 0
    with open(dst, "wb") as out, tqdm(total=total, unit="B", unit_scale=True, desc=label, disable=None) as bar:
        while chunk := src.read1(CHUNK):
            h.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
            done += len(chunk)
            window_bytes += len(chunk)
            now = time.monotonic()
            if now - window >= STALL_WINDOW_S:
                if window_bytes < MIN_RATE * (now - window):
                    raise Stalled(f"{window_bytes:,} bytes in the last {now - window:.0f} s")
                window, window_bytes = now, 0
            if bar.disable and now - last_line >= PROGRESS_EVERY_S:
                of = f" of {total / 2**20:,.1f}" if total else ""
                print(f"{label}: {done / 2**20:,.1f}{of} MB ({done / 2**20 / (now - start):.2f} MB/s)", flush=True)
                last_line = now
    return h.hexdigest()


def pack_directory(src: Path, dst: Path) -> None:
    """A byte-for-byte reproducible tar.gz of a directory (sorted, zeroed times and owners)."""
    with (
        open(dst, "wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(p for p in src.rglob("*") if p.is_file() or p.is_dir()):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(src).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_dir():
                tar.addfile(info)
            else:
                with open(path, "rb") as f:
                    tar.addfile(info, f)


def _http_fetch(url: str, tmp: Path, algo: str) -> str:
    """Download with retries on transient failures; returns the digest of what was written."""
    host = urllib.parse.urlparse(url).netloc
    delay = BACKOFF_S
    for attempt in range(1, RETRIES + 1):
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                digest = _stream(resp, tmp, algo, total, Path(url).name)
                if total is not None and tmp.stat().st_size != total:
                    raise ConnectionError(f"got {tmp.stat().st_size} of {total} bytes")
                return digest
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == RETRIES:
                raise CnnvitError(
                    f"HTTP {exc.code} {exc.reason} for {url}: the archive is not at that address; "
                    "fix data.url or point it at a mirror or a local copy"
                ) from None
            reason = f"HTTP {exc.code}"
        except Stalled as exc:
            raise CnnvitError(
                f"the transfer from {host} stalled ({exc}, under {MIN_RATE // 1024} kB/s): check the network, or "
                "point data.url at a mirror or a local copy; the partial file was removed"
            ) from None
        except (urllib.error.URLError, OSError, ConnectionError) as exc:
            reason = str(getattr(exc, "reason", exc))
            if attempt == RETRIES:
                raise CnnvitError(
                    f"cannot reach {host} ({reason}) after {RETRIES} attempts: no network? "
                    "point data.url at a mirror or a local copy of the archive"
                ) from None
        print(f"download attempt {attempt} failed ({reason}); retrying in {delay:.1f}s", flush=True)
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def download(data: Data, out: str | Path) -> Path:
    """Fetch ``data.url`` to ``out`` and verify its checksum; keep ``out`` if it already verifies."""
    out, url = Path(out), data.url
    algo, expected = data.checksum
    if out.exists() and file_digest(out, algo) == expected:
        print(f"{out} already present and verified ({algo} {expected}); not fetching again")
        return out
    local = local_path(url)
    socket.setdefaulttimeout(TIMEOUT_S)
    with atomic_path(out) as tmp:
        if local is None:
            if not url.startswith(("http://", "https://")):
                raise CnnvitError(f"data.url {url!r}: unsupported scheme; use http(s)://, file:// or a path")
            actual = _http_fetch(url, tmp, algo)
        elif local.is_dir():
            pack_directory(local, tmp)
            actual = file_digest(tmp, algo)
            url = f"directory {local} (packed reproducibly)"
        elif local.is_file():
            with open(local, "rb") as src:
                actual = _stream(src, tmp, algo, local.stat().st_size, local.name)
        else:
            raise CnnvitError(f"data.url: nothing at {local}: fix data.url or copy the archive there")
        if actual != expected:
            kept = f"; {out} is left as it was" if out.exists() else ""
            raise CnnvitError(
                f"checksum mismatch for {url}: expected {algo} {expected}, got {actual}: the file is corrupt or "
                f"a different archive; fix data.url or set data.{algo}={actual} if you trust it{kept}"
            )
    print(f"fetched {url} -> {out} ({algo} verified)")
    return out


def add_args(p) -> None:
    p.add_argument("--out", default=paths.RAW, help=f"where to write the archive (default {paths.RAW})")


def run(args, params: Params) -> None:
    download(params.data, args.out)
