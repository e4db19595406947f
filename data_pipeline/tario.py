"""Reading WebDataset tars as a stream: open any URL (fsspec: local, http(s), s3, …; ``pipe:`` via webdataset's
gopen), group consecutive members by key (webdataset's ``base_plus_ext``), read data only where wanted.

Errors are classified for the bad-input accounting: :class:`UnreadableShard` (open failed: missing file,
unreachable URL, not a tar) and :class:`TruncatedShard` (the tar stream broke mid-way or ends without the
end-of-archive marker; complete samples before it are still yielded). A file whose size differs from the one
the manifest lists raises :class:`~data_pipeline.manifest.ManifestMismatch` at open.

Remote shards are read through :class:`RemoteStream`: a stalled connection times out after
``IOOptions.timeout`` seconds, and a transient failure (reset, timeout, 5xx) reopens the URL at the byte offset
reached (a Range request; a server without Range support is re-read from the start and the bytes already
consumed are skipped), at most ``IOOptions.retries`` times in a row with exponential backoff. Errors that cannot
succeed on retry (404, 403, a missing local file) are raised at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from webdataset.tariterators import base_plus_ext

from data_pipeline.errors import UserInputError
from data_pipeline.manifest import ManifestMismatch, mismatch_message


class UnreadableShard(OSError):
    """The shard could not be opened (or is not a tar)."""


class TruncatedShard(OSError):
    """The tar stream ended or broke in the middle."""


@dataclass(frozen=True)
class IOOptions:
    """Remote reads: ``timeout`` s for a connection or a stalled read; ``retries`` reopenings in a row after a
    transient failure, waiting ``backoff``·2^k s (at most 30 s); fsspec's ``block_size`` bytes per request."""

    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0
    block_size: int = 1 << 22

    @classmethod
    def from_env(cls) -> IOOptions:
        """Defaults overridden by ``BIGBATCH_IO_TIMEOUT``, ``_RETRIES``, ``_BACKOFF`` and ``_BLOCK_SIZE``."""
        values: dict[str, Any] = {}
        for field_, kind in (("timeout", float), ("retries", int), ("backoff", float), ("block_size", int)):
            var = f"BIGBATCH_IO_{field_.upper()}"
            raw = os.environ.get(var)
            if raw is None:
                continue
            try:
                values[field_] = kind(raw)
            except ValueError:
                raise UserInputError(f"{var}={raw!r}: not a {kind.__name__}") from None
            positive = field_ in ("timeout", "block_size")
            if values[field_] < 0 or (positive and values[field_] == 0):
                raise UserInputError(f"{var}={raw!r}: must be {'> 0' if positive else '>= 0'}")
        return cls(**values)


def _storage_options(url: str, opts: IOOptions) -> dict[str, Any]:
    """fsspec options that bound connection and read times for ``url``'s protocol."""
    proto = url.split("://", 1)[0]
    if proto in ("http", "https"):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=opts.timeout,
                                                                   sock_read=opts.timeout)}}
    if proto in ("s3", "s3a"):
        return {"config_kwargs": {"connect_timeout": opts.timeout, "read_timeout": opts.timeout}}
    return {}


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(out) < 10:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _http_status(exc: BaseException) -> int | None:
    for e in _chain(exc):
        status = getattr(e, "status", None)
        if isinstance(status, int) and 100 <= status < 600:
            return status
    return None


def permanent(exc: BaseException) -> bool:
    """Whether retrying cannot help: an HTTP 4xx (but 408/425/429), a missing or forbidden file, a size mismatch,
    a missing fsspec backend, a bad URL; connection failures, timeouts and 5xx are transient (as is anything else)."""
    status = _http_status(exc)
    if status is not None:
        return 400 <= status < 500 and status not in (408, 425, 429)
    for e in _chain(exc):
        if isinstance(e, TimeoutError | ConnectionError | asyncio.TimeoutError) or \
                type(e).__module__.split(".")[0] == "aiohttp":
            return False
    return isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError |
                      ImportError | ValueError | TruncatedShard | ManifestMismatch)


def describe(exc: BaseException) -> str:
    """A short reason for a failed read: ``HTTP 404``, ``ConnectionRefusedError: …``, …"""
    status = _http_status(exc)
    if status is not None:
        return f"HTTP {status}"
    root = _chain(exc)[-1]
    text = " ".join((str(root) or str(exc)).split())      # one line
    return f"{type(root).__name__}: {text}" if text else type(root).__name__


class RemoteStream:
    """A forward read stream over an fsspec URL that survives transient failures (see the module docstring).
    ``size`` is the length the server reports (None if unknown)."""

    def __init__(self, url: str, opts: IOOptions) -> None:
        self.url, self.opts = url, opts
        self.pos = 0
        self.file: Any = None
        self.streaming = False      # the server ignores Range: re-read from the start and skip
        self.failures = 0           # consecutive failures without progress
        self._call(lambda: None)
        self.size: int | None = getattr(self.file, "size", None)

    def _open(self) -> None:
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(self.url, **_storage_options(self.url, self.opts))
        f = fs.open(path, "rb", block_size=0 if self.streaming else self.opts.block_size)
        try:
            if self.pos and not self.streaming:
                f.seek(self.pos)
            elif self.pos:
                left = self.pos
                while left:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        raise TruncatedShard(f"{self.url}: shorter than before ({self.pos - left} bytes)")
                    left -= len(chunk)
        except BaseException:
            f.close()
            raise
        self.file = f

    def _drop(self) -> None:
        if self.file is not None:
            with contextlib.suppress(Exception):  # closing a broken connection may fail too
                self.file.close()
            self.file = None

    def _call(self, fn: Callable[[], Any]) -> Any:
        while True:
            opening = self.file is None
            try:
                if opening:
                    self._open()
                return fn()
            except Exception as exc:  # noqa: BLE001 — classified below
                self._drop()
                if not self.streaming and "support range requests" in str(exc):
                    self.streaming = True
                    continue
                if permanent(exc) or self.failures >= self.opts.retries:
                    if isinstance(exc, ManifestMismatch | TruncatedShard):
                        raise
                    tries = f" after {self.failures} retries" if self.failures else ""
                    kind = TruncatedShard if self.pos else UnreadableShard
                    what = f"stream broke at byte {self.pos}" if self.pos else "cannot open" if opening else "cannot read"
                    raise kind(f"{self.url}: {what}{tries} ({describe(exc)})") from exc
                time.sleep(min(self.opts.backoff * 2 ** self.failures, 30.0))
                self.failures += 1

    def read(self, n: int = -1) -> bytes:
        data = self._call(lambda: self.file.read(n))
        if data:
            self.pos += len(data)
            self.failures = 0
        return data

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self.pos + offset
        if target < self.pos and self.streaming:
            raise ValueError(f"{self.url}: cannot seek backwards in a streamed response")
        if not self.streaming:
            self._call(lambda: self.file.seek(target))
            self.pos = target
        while self.pos < target:
            if not self.read(min(target - self.pos, 1 << 20)):
                break
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self._drop()


def open_url(url: str, expect_bytes: int = 0, opts: IOOptions | None = None) -> IO[bytes]:
    """A binary read stream for a local path, ``file://``, ``pipe:CMD`` or any fsspec URL (http(s)://, s3://, …).
    ``expect_bytes`` > 0: the size the manifest lists; a file of another (known) size raises ManifestMismatch."""
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        try:
            return gopen(url, "rb")
        except Exception as exc:  # noqa: BLE001
            raise UnreadableShard(f"{url}: cannot open ({describe(exc)})") from exc
    path = url[len("file://"):] if url.startswith("file://") else url
    if "://" not in path:
        try:
            stream: Any = open(path, "rb", buffering=1 << 20)  # noqa: SIM115 — returned to the caller
        except OSError as exc:
            raise UnreadableShard(f"{url}: cannot open ({type(exc).__name__}: {exc.strerror or exc})") from exc
        size = os.fstat(stream.fileno()).st_size
    else:
        stream = RemoteStream(url, opts or IOOptions.from_env())
        size = stream.size
    if expect_bytes and size is not None and size != expect_bytes:
        stream.close()
        raise ManifestMismatch(mismatch_message(url, f"{size} bytes, but manifest.json lists {expect_bytes}"))
    return stream


def read_url(url: str, opts: IOOptions | None = None) -> bytes:
    """The whole content of a (small) file at ``url``, with the retries of :func:`open_url`."""
    stream = open_url(url, opts=opts)
    try:
        chunks = []
        while chunk := stream.read(1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        stream.close()


def _file_size(stream: Any) -> int | None:
    size = getattr(stream, "size", None)
    if isinstance(size, int):
        return size
    try:
        return os.fstat(stream.fileno()).st_size
    except (AttributeError, OSError, ValueError):
        return None


class TarStream:
    """Sequential reader of a POSIX tar stream (ustar, pax and GNU long names — what tarfile and webdataset's
    TarWriter write): :meth:`next` gives the next regular member's (name, size); then :meth:`read` or
    :meth:`skip` its data. The same members as ``tarfile.open(mode="r|")`` for a complete archive (tested), at a
    fraction of its per-member cost, and a member's data is only read when asked for."""

    def __init__(self, stream: IO[bytes], url: str) -> None:
        self.stream, self.url = stream, url
        self.pending = 0          # bytes (data + padding) of the current member not yet consumed
        self.size = 0
        self.pos = 0              # bytes consumed
        self.seekable = bool(getattr(stream, "seekable", lambda: False)())
        self.total = _file_size(stream) if self.seekable else None

    def _exact(self, n: int) -> bytes:
        buf = self.stream.read(n)
        while len(buf) < n:
            more = self.stream.read(n - len(buf))
            if not more:
                raise TruncatedShard(f"{self.url}: unexpected end of data at byte {self.pos + len(buf)}")
            buf += more
        self.pos += n
        return buf

    def _consume(self) -> None:
        if self.pending:
            if self.seekable:
                if self.total is not None and self.pos + self.pending > self.total:
                    raise TruncatedShard(f"{self.url}: unexpected end of data at byte {self.total}")
                self.stream.seek(self.pending, 1)
                self.pos += self.pending
            else:
                self._exact(self.pending)
            self.pending = 0

    def next(self) -> tuple[str, int] | None:
        """The next regular member (name, size), or None at the end of the archive."""
        self._consume()
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            start = self.pos
            header = self.stream.read(512)
            self.pos += len(header)
            if len(header) < 512:
                if not header and start == 0:
                    return None            # an empty file: an archive without members
                if not header:
                    raise TruncatedShard(f"{self.url}: ends at byte {start} without the end-of-archive marker")
                try:
                    header += self._exact(512 - len(header))
                except TruncatedShard:
                    if start == 0:
                        raise UnreadableShard(f"{self.url}: not a tar archive ({self.pos} bytes)") from None
                    raise
            if header.count(0) == 512:
                return None                # end-of-archive block
            if not _valid_header(header):
                if start == 0:
                    raise UnreadableShard(f"{self.url}: not a tar archive (no valid header at byte 0)")
                raise TruncatedShard(f"{self.url}: bad tar header at byte {start}")
            size = _number(header[124:136])
            kind = header[156:157]
            padded = (size + 511) // 512 * 512
            if kind in (b"x", b"L", b"g"):
                data = self._exact(padded)[:size]
                if kind == b"x":
                    pax.update(_pax_records(data))
                elif kind == b"L":
                    long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            name = header[0:100].split(b"\0", 1)[0]
            if header[257:263] == b"ustar\x00" and header[345]:
                name = header[345:500].split(b"\0", 1)[0] + b"/" + name
            name_s = pax.get("path") or long_name or name.decode("utf-8", "surrogateescape")
            size = int(pax["size"]) if "size" in pax else size
            padded = (size + 511) // 512 * 512
            long_name, pax = None, {}
            if kind in (b"0", b"\0", b"7"):
                self.size, self.pending = size, padded
                return name_s, size
            self.pending = padded          # directories, links, devices: skipped
            self._consume()

    def read(self) -> bytes:
        data = self._exact(self.pending)[: self.size]
        self.pending = 0
        return data

    def skip(self) -> None:
        self._consume()


def _valid_header(header: bytes) -> bool:
    try:
        stored = int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8)
        _number(header[124:136])
    except ValueError:
        return False
    return stored == sum(header) - sum(header[148:156]) + 256


def _number(field: bytes) -> int:
    if field[0] & 0x80:                    # GNU base-256
        return int.from_bytes(field[1:], "big")
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


def _pax_records(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        sp = data.index(b" ", i)
        length = int(data[i:sp])
        key, _, value = data[sp + 1: i + length - 1].partition(b"=")
        out[key.decode()] = value.decode("utf-8", "surrogateescape")
        i += length
    return out


def iter_grouped(url: str, want: Callable[[int], bool] | None = None, read: Callable[[str], bool] | None = None,
                 expect_bytes: int = 0) -> Iterator[tuple[int, str, dict[str, bytes | None]]]:
    """Yield ``(position, key, {ext: bytes | None})`` per sample (members grouped by webdataset's
    ``base_plus_ext``); data is read only where ``want(position)`` (and ``read(ext)``), else None.
    Raises UnreadableShard / TruncatedShard (after yielding the complete samples before the break), and
    ManifestMismatch when the file's size is not ``expect_bytes`` (> 0)."""
    stream = open_url(url, expect_bytes)
    try:
        tar = TarStream(stream, url)
        pos, key, files = -1, None, {}
        while True:
            try:
                member = tar.next()
            except (UnreadableShard, ManifestMismatch):
                raise
            except TruncatedShard as exc:
                raise TruncatedShard(f"{exc} (after {max(pos, 0)} complete samples)") from exc
            except Exception as exc:  # noqa: BLE001 — e.g. a local read error
                raise TruncatedShard(f"{url}: stream broke after {max(pos, 0)} complete samples ({exc})") from exc
            if member is None:
                break
            name, _ = member
            k, ext = base_plus_ext(name)
            if k is None or k.startswith("__"):
                tar.skip()
                continue
            ext = ext.lower()
            if k != key:
                if key is not None:
                    yield pos, key, files
                pos, key, files = pos + 1, k, {}
            if (want is None or want(pos)) and (read is None or read(ext)):
                try:
                    files[ext] = tar.read()
                except (UnreadableShard, ManifestMismatch):
                    raise
                except Exception as exc:  # noqa: BLE001
                    raise TruncatedShard(f"{exc} (after {pos} complete samples)") from exc
            else:
                files[ext] = None
                try:
                    tar.skip()
                except Exception as exc:  # noqa: BLE001
                    raise TruncatedShard(f"{exc} (after {pos} complete samples)") from exc
        if key is not None:
            yield pos, key, files
    finally:
        stream.close()


def iter_members_grouped(url: str, read: Callable[[str], bool] | None = None):
    """``(key, files)`` for every sample of a shard (see :func:`iter_grouped`)."""
    for _, key, files in iter_grouped(url, read=read):
        yield key, files
