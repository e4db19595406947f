"""Reading WebDataset tars as a stream: open any URL (fsspec: local, http(s), s3, …; ``pipe:`` via webdataset's
gopen), group consecutive members by key (webdataset's ``base_plus_ext``), read data only where wanted.

Errors are classified for the bad-input accounting: :class:`UnreadableShard` (open failed: missing file,
unreachable URL) and :class:`TruncatedShard` (the tar stream broke mid-way; complete samples before it are
still yielded).
"""

from __future__ import annotations

import tarfile
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


def iter_grouped(url: str, want: Callable[[int], bool] | None = None,
                 read: Callable[[str], bool] | None = None) -> Iterator[tuple[int, str, dict[str, bytes | None]]]:
    """Yield ``(position, key, {ext: bytes | None})`` per sample; data is read only where ``want(position)``
    (and ``read(ext)``), else the value is None. Raises UnreadableShard / TruncatedShard."""
    stream = open_url(url)
    try:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 — closed with the stream below
        except tarfile.ReadError as exc:
            if "empty file" in str(exc):
                return
            raise TruncatedShard(f"{url}: not a readable tar ({exc})") from exc
        except Exception as exc:  # noqa: BLE001 — e.g. a connection dropping on the first block
            raise UnreadableShard(f"{url}: cannot read ({type(exc).__name__}: {exc})") from exc
        pos, key, files = -1, None, {}
        try:
            for info in tar:
                if not info.isreg():
                    continue
                k, ext = base_plus_ext(info.name)
                if k is None or k.startswith("__"):
                    continue
                ext = ext.lower()
                if k != key:
                    if key is not None:
                        yield pos, key, files
                    pos, key, files = pos + 1, k, {}
                take = (want is None or want(pos)) and (read is None or read(ext))
                files[ext] = tar.extractfile(info).read() if take else None
                tar.members = []  # streaming: keep no member list
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            raise TruncatedShard(f"{url}: tar stream broke after {pos} complete samples ({exc})") from exc
        if key is not None:
            yield pos, key, files
    finally:
        stream.close()


def iter_members_grouped(url: str, read: Callable[[str], bool] | None = None):
    """``(key, files)`` for every sample of a shard (see :func:`iter_grouped`)."""
    for _, key, files in iter_grouped(url, read=read):
        yield key, files
