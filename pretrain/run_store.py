"""A run directory at a local path or any fsspec URL (``s3://bucket/runs/NAME``, ``gs://…``, ``file://…``).

Layout (the same wherever it lives): the run's files (``config.yaml``, ``metrics.jsonl``, ``tb/``, ``workers.json``,
``artifacts/``, ``probe.json``, ``report.md``, ``train_summary.json``) beside Ray Train's ``checkpoint_*``
directories and its own bookkeeping. A run is complete once ``train_summary.json`` exists: it is written last.

``RunStore`` reads a run (its files, its checkpoints), downloads a checkpoint, and mirrors a local working copy
into it file by file, each file through a temporary key then a move, so a reader never sees half a file.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

from data_pipeline.errors import UserInputError

STATE_FILE = "state.pt"
SUMMARY_FILE = "train_summary.json"
# Not the run's files (never mirrored): checkpoints and Ray Train's bookkeeping (checkpoint_* also matches its
# checkpoint_manager_snapshot.json), hidden and temporary files.
NOT_RUN_FILES = ("checkpoint_*", "checkpoints", ".*", "*.tmp")
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss"}  # keys, no directories to create


def _as_tuple(protocol: str | tuple[str, ...]) -> tuple[str, ...]:
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def is_url(path: str | Path) -> bool:
    """A URL some fsspec filesystem serves (s3://, gs://, http://, …); plain paths and file:// are local."""
    return "://" in str(path) and not str(path).startswith("file://")


def local_path(path: str | Path) -> Path:
    """A local path or file:// URL as an absolute path."""
    return Path(str(path).removeprefix("file://")).expanduser().resolve()


def require_local(path: str | Path) -> None:
    """A local path (or file:// URL) that does not exist raises UserInputError naming it; URLs are checked by
    their readers. Commands call it before their torch import, so a mistyped path is answered at once."""
    if not is_url(path) and not local_path(path).exists():
        raise UserInputError(f"{path}: no such file or directory")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a run file through a hidden temp file + rename: readers (and the mirror) see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def is_run_file(rel: str) -> bool:
    """True for the run's own files (relative path in the run dir), False for checkpoints and Ray's bookkeeping."""
    top, name = rel.split("/", 1)[0], rel.rsplit("/", 1)[-1]
    return not any(fnmatch(top, p) or fnmatch(name, p) for p in NOT_RUN_FILES)


class RunStore:
    """The run (or checkpoint) directory at ``url``, read and written through fsspec."""

    def __init__(self, url: str | Path) -> None:
        from fsspec.core import url_to_fs

        self.url = str(url).rstrip("/")
        try:
            self.fs, self.root = url_to_fs(self.url if is_url(self.url) else str(local_path(self.url)))
        except ImportError as exc:  # fsspec names the package its protocol needs (s3fs, gcsfs, …)
            raise UserInputError(f"{self.url}: {exc}") from exc
        self.root = self.root.rstrip("/")

    def _make_parent(self, path: str) -> None:
        """Create ``path``'s parent directory on file systems (object stores have keys: nothing to create, no buckets)."""
        if not set(_as_tuple(self.fs.protocol)) & OBJECT_STORES:
            self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def refresh(self) -> None:
        """Forget cached listings (object stores cache them), so the next call sees new keys."""
        self.fs.invalidate_cache()

    def exists(self, rel: str = "") -> bool:
        return self.fs.exists(self._path(rel))

    def read_text(self, rel: str) -> str | None:
        """The file's text, or None when it does not exist."""
        try:
            with self.fs.open(self._path(rel), "r") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _files(self, path: str) -> list[str]:
        """Paths relative to ``path`` of the files under it (object stores' directory markers, ``dir/``, left out)."""
        found = (p[len(path):].strip("/") for p in self.fs.find(path) if not p.endswith("/"))
        return [r for r in found if r]

    def run_files(self) -> list[str]:
        """Relative paths of the run's own files (not checkpoints, not Ray's bookkeeping)."""
        if not self.fs.isdir(self.root):
            return []
        return sorted(r for r in self._files(self.root) if is_run_file(r))

    def checkpoints(self) -> list[str]:
        """Relative paths of the complete checkpoints (holding state.pt), oldest first.

        Ray names checkpoints by time and the single-process trainer by step, so name order is step order."""
        found = self.fs.glob(self._path(f"checkpoint_*/{STATE_FILE}")) + \
            self.fs.glob(self._path(f"checkpoints/checkpoint_*/{STATE_FILE}"))
        rels = [p[len(self.root) + 1:].rsplit("/", 1)[0] for p in found]
        return sorted(rels, key=lambda r: r.rsplit("/", 1)[-1])

    def download(self, rel: str, dest: Path) -> Path:
        """Copy the file or directory ``rel`` to the local ``dest``; each file lands through a temp file + rename."""
        src = self._path(rel)
        dest = Path(dest)
        if self.fs.isdir(src):
            dest.mkdir(parents=True, exist_ok=True)
            files = [(f"{src}/{r}", dest / r) for r in self._files(src)]
        else:
            files = [(src, dest)]
        for remote, out in files:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                self.fs.get_file(remote, str(tmp))
                tmp.replace(out)
            finally:
                tmp.unlink(missing_ok=True)
        return dest

    def upload(self, local: Path, rel: str) -> None:
        """Put one local file at ``rel``: written to a temporary key beside it, then moved into place."""
        final = self._path(rel)
        parent, name = final.rsplit("/", 1)
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
        self._make_parent(final)
        self.fs.put_file(str(local), tmp)
        try:
            self.fs.mv(tmp, final)
        except BaseException:
            self.fs.rm(tmp)
            raise

    def copy(self, src: str, dest: str) -> None:
        """Copy the file or directory ``src`` to ``dest`` (replaced if present), file by file within the store: on an
        object store a server-side copy of each key. A failed copy leaves no ``dest``."""
        self.remove(dest)
        source = self._path(src)
        files = [(f"{source}/{r}", f"{self._path(dest)}/{r}") for r in self._files(source)] \
            if self.fs.isdir(source) else [(source, self._path(dest))]
        try:
            for a, b in files:
                self._make_parent(b)
                self.fs.copy(a, b)
        except BaseException:
            self.remove(dest)
            raise

    def remove(self, rel: str) -> None:
        """Delete the file or directory ``rel`` if it exists."""
        if self.exists(rel):
            self.fs.rm(self._path(rel), recursive=True)


class RunMirror:
    """Keeps ``store`` a copy of the run files of the local working directory ``local``: ``sync()`` uploads what
    changed since the last call; ``pull()`` fetches the store's run files into ``local`` (a resume elsewhere)."""

    def __init__(self, local: Path, store: RunStore) -> None:
        self.local, self.store = Path(local), store
        self.sent: dict[str, tuple[int, int]] = {}

    def pull(self) -> list[str]:
        self.store.refresh()
        rels = self.store.run_files()
        for rel in rels:
            self.store.download(rel, self.local / rel)
        self.sent = {rel: self._stamp(rel) for rel in rels}
        return rels

    def _stamp(self, rel: str) -> tuple[int, int]:
        st = (self.local / rel).stat()
        return st.st_size, st.st_mtime_ns

    def sync(self) -> list[str]:
        """Upload every changed run file, train_summary.json last (its presence marks a complete run)."""
        rels = sorted(str(p.relative_to(self.local)) for p in self.local.rglob("*") if p.is_file())
        rels = [r for r in rels if is_run_file(r)]
        rels.sort(key=lambda r: r == SUMMARY_FILE)
        sent = []
        for rel in rels:
            try:
                stamp = self._stamp(rel)
            except FileNotFoundError:  # replaced while we listed
                continue
            if self.sent.get(rel) != stamp:
                self.store.upload(self.local / rel, rel)
                self.sent[rel] = stamp
                sent.append(rel)
        return sent

    def remove(self, rel: str) -> None:
        """Delete ``rel`` in both copies (a stale train_summary.json when a finished run is resumed)."""
        (self.local / rel).unlink(missing_ok=True)
        self.sent.pop(rel, None)
        self.store.remove(rel)


def checkpoint_location(path_or_url: str | Path) -> str:
    """The checkpoint directory a location names: itself (a checkpoint dir, or the dir of a state.pt) or the run's
    latest checkpoint. Local locations come back as absolute paths."""
    if not is_url(path_or_url):
        from pretrain.checkpoint import find_latest_checkpoint
        return str(find_latest_checkpoint(local_path(path_or_url)))
    url = str(path_or_url).rstrip("/")
    if url.endswith(f"/{STATE_FILE}"):
        return url.rsplit("/", 1)[0]
    store = RunStore(url)
    if store.fs.isfile(store._path(STATE_FILE)):
        return url
    ckpts = store.checkpoints()
    if not ckpts:
        raise ValueError(f"{url}: no bigbatch checkpoint found (expected {STATE_FILE} or checkpoint_*/{STATE_FILE})")
    return f"{url}/{ckpts[-1]}"


@contextmanager
def local_checkpoint(path_or_url: str | Path, copy: bool = False) -> Iterator[Path]:
    """A local directory holding the checkpoint a location names (see ``checkpoint_location``). A URL's checkpoint
    is downloaded into a temporary directory removed on exit; a local path is yielded as it is, or copied like a
    URL with ``copy`` (a private copy outlives Ray pruning the original while it is read)."""
    if not copy and not is_url(path_or_url):
        yield local_path(path_or_url)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bigbatch-ckpt-"))
    try:
        yield RunStore(checkpoint_location(path_or_url)).download("", tmp / "checkpoint")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
