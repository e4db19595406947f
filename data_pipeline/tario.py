"""Reading WebDataset tars as a stream: open any URL (fsspec: local, http(s), s3, …; ``pipe:`` via webdataset's
gopen), group consecutive members by key (webdataset's ``base_plus_ext``), read data only where wanted.

Errors are classified for the bad-input accounting: :class:`UnreadableShard` (open failed: missing file,
unreachable URL) and :class:`TruncatedShard` (the tar stream broke mid-way; complete samples before it are
still yielded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import IO

from webdataset.tariterators import base_plus_ext


class UnreadableShard(OSError):
    """The shard could not be opened."""


class TruncatedShard(OSError):
    """The tar stream ended or broke in the middle."""


def open_url(url: str) -> IO[bytes]:
    """A binary read stream for a local path, ``file://``, ``pipe:CMD`` or any fsspec URL (http(s)://, s3://, …)."""
    try:
        if url.startswith("pipe:"):
            from webdataset.gopen import gopen

            return gopen(url, "rb")
        if "://" not in url:
            return open(url, "rb", buffering=1 << 20)
        from fsspec.core import url_to_fs

        fs, path = url_to_fs(url)
        return fs.open(path, "rb", block_size=1 << 22)
    except Exception as exc:  # noqa: BLE001 — every open failure is an unreadable shard
        raise UnreadableShard(f"{url}: cannot open ({type(exc).__name__}: {exc})") from exc


class TarStream:
    """Sequential reader of a POSIX tar stream (ustar, pax and GNU long names — what tarfile and webdataset's
    TarWriter write): :meth:`next` gives the next regular member's (name, size); then :meth:`read` or
    :meth:`skip` its data. The same members as ``tarfile.open(mode="r|")`` (tested), at a fraction of its
    per-member cost, and a member's data is only read when asked for."""

    def __init__(self, stream: IO[bytes], url: str) -> None:
        self.stream, self.url = stream, url
        self.pending = 0          # bytes (data + padding) of the current member not yet consumed
        self.size = 0
        self.seekable = bool(getattr(stream, "seekable", lambda: False)())

    def _exact(self, n: int) -> bytes:
        buf = self.stream.read(n)
        while len(buf) < n:
            more = self.stream.read(n - len(buf))
            if not more:
                raise TruncatedShard(f"{self.url}: unexpected end of data")
            buf += more
        return buf

    def _consume(self) -> None:
        if self.pending:
            if self.seekable:
                self.stream.seek(self.pending, 1)
            else:
                self._exact(self.pending)
            self.pending = 0

    def next(self) -> tuple[str, int] | None:
        """The next regular member (name, size), or None at the end of the archive."""
        self._consume()
        long_name: str | None = None
        pax: dict[str, str] = {}
        while True:
            header = self.stream.read(512)
            if len(header) < 512:
                if not header:
                    return None            # end of file without end-of-archive blocks: as tarfile, the end
                header += self._exact(512 - len(header))
            if header.count(0) == 512:
                return None                # end-of-archive block
            if int(header[148:156].split(b"\0", 1)[0].strip() or b"0", 8) != sum(header) - sum(header[148:156]) + 256:
                raise TruncatedShard(f"{self.url}: bad tar header checksum")
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


def iter_grouped(url: str, want: Callable[[int], bool] | None = None,
                 read: Callable[[str], bool] | None = None) -> Iterator[tuple[int, str, dict[str, bytes | None]]]:
    """Yield ``(position, key, {ext: bytes | None})`` per sample (members grouped by webdataset's
    ``base_plus_ext``); data is read only where ``want(position)`` (and ``read(ext)``), else None.
    Raises UnreadableShard / TruncatedShard (after yielding the complete samples before the break)."""
    stream = open_url(url)
    try:
        tar = TarStream(stream, url)
        pos, key, files = -1, None, {}
        while True:
            try:
                member = tar.next()
            except TruncatedShard as exc:
                raise TruncatedShard(f"{exc} (after {pos} complete samples)") from exc
            except Exception as exc:  # noqa: BLE001 — e.g. a connection dropping mid-stream
                raise TruncatedShard(f"{url}: stream broke after {pos} complete samples ({exc})") from exc
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
                except TruncatedShard as exc:
                    raise TruncatedShard(f"{exc} (after {pos} complete samples)") from exc
            else:
                files[ext] = None
                tar.skip()
        if key is not None:
            yield pos, key, files
    finally:
        stream.close()


def iter_members_grouped(url: str, read: Callable[[str], bool] | None = None):
    """``(key, files)`` for every sample of a shard (see :func:`iter_grouped`)."""
    for _, key, files in iter_grouped(url, read=read):
        yield key, files
