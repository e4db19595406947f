"""Remote shards that break: an HTTP server on 127.0.0.1 (started here) serving 4.7 MB shards (more than one
request each) that resets a connection in the middle of a tar, stalls there, or answers 403/404/503. A reset is
resumed at the byte offset reached (a Range request; a server without Range support is re-read and the bytes
already consumed skipped) and the batches are exactly the local ones; a shard that stays broken or stalls is
retried a bounded number of times and the rest of it is counted as truncated_tar while the stream finishes its
steps; 404, 403 and a missing local file are never retried."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from data_pipeline.manifest import load_manifest
from data_pipeline.stream import StreamSpec, make_loader

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")


class ShardServer:
    """Serves ``root`` (with or without Range support), logs ``(method, path, range start)`` of every request and
    injects faults: ``faults[path] = [action, times]`` acts on the next ``times`` GETs of ``path`` whose bytes reach
    the middle of the file: it sends the bytes up to the middle (or half the body past it), then "reset"s the
    connection (RST) or "stall"s until released; ``statuses[path]`` answers its successive requests."""

    def __init__(self, root: Path, ranges: bool = True) -> None:
        self.root, self.ranges = root, ranges
        self.log: list[tuple[str, str, int]] = []
        self.faults: dict[str, list] = {}
        self.faulted: list[tuple[str, int]] = []          # (path, range start) of the GETs a fault hit
        self.statuses: dict[str, list[int]] = {}
        self.release = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                owner.serve(self, head=True)

            def do_GET(self) -> None:
                owner.serve(self, head=False)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass                                  # the resets and stalls made here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def serve(self, h: http.server.BaseHTTPRequestHandler, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        data_path = self.root / path.lstrip("/")
        start, end, partial = 0, None, False
        if self.ranges and h.headers.get("Range", "").startswith("bytes="):
            a, _, b = h.headers["Range"][6:].partition("-")
            start, end, partial = int(a), (int(b) + 1 if b else None), True
        self.log.append((h.command, path, start))
        status = self.statuses.get(path, [])
        if status:
            h.send_error(status.pop(0))
            return
        if not data_path.is_file():
            h.send_error(404)
            return
        data = data_path.read_bytes()
        end = min(end or len(data), len(data))
        body = data[start:end]
        h.send_response(206 if partial else 200)
        if partial:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        if self.ranges:
            h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if head:
            return
        fault = self.faults.get(path)
        middle = len(data) // 2
        if not fault or fault[1] <= 0 or end <= middle:
            h.wfile.write(body)
            return
        fault[1] -= 1
        self.faulted.append((path, start))
        h.wfile.write(body[: middle - start] if start < middle else body[: len(body) // 2])
        h.wfile.flush()
        if fault[0] == "stall":
            self.release.wait(300)
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.connection.close()                          # with SO_LINGER 0: a reset
        h.close_connection = True

    def gets(self, path: str) -> list[int]:
        return [start for method, p, start in self.log if method == "GET" and p == path]

    def __enter__(self) -> ShardServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def big_shards(tmp_path_factory) -> Path:
    """Three shards of 24 noise PNGs (256 px, 197 KB each): 4.7 MB per shard, more than fsspec's 4 MiB block."""
    from data_pipeline.sources import arrays
    from data_pipeline.writer import write_shards

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (72, 256, 256, 3), dtype=np.uint8)
    out = tmp_path_factory.mktemp("big") / "shards"
    write_shards(arrays(images, [i % 3 for i in range(72)], name="noise"), out, shard_size=24, seed=0)
    return out


@pytest.fixture
def io_env(monkeypatch):
    """1 MiB blocks (five requests per shard), a 1 s timeout, quick backoff."""
    for k, v in {"BIGBATCH_IO_BLOCK_SIZE": str(1 << 20), "BIGBATCH_IO_TIMEOUT": "1", "BIGBATCH_IO_RETRIES": "2",
                 "BIGBATCH_IO_BACKOFF": "0.01"}.items():
        monkeypatch.setenv(k, v)


def run(source: str, workers: int = 0, batch: int = 12):
    # one lane: each shard has one reader, whose requests the tests count
    spec = StreamSpec(source=source, batch_size=batch, num_workers=workers, seed=3, max_bad_fraction=1.0, lanes=1)
    loader = make_loader(spec, epoch=1)
    batches = [(b["key"], b["label"], b["views"]) for b in loader]
    assert len(batches) == len(loader)
    return batches, loader.stats


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        ka == kb and torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(va, vb, strict=True))
        for (ka, la, va), (kb, lb, vb) in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def local(big_shards):
    batches, stats = run(str(big_shards))
    assert sum(stats["bad"].values()) == 0
    return batches


def test_reset_mid_tar_resumes_at_the_byte_offset(big_shards, local, io_env):
    shard = "/" + load_manifest(big_shards).shards[1].name
    with ShardServer(big_shards) as srv:
        srv.faults[shard] = ["reset", 1]
        remote, stats = run(srv.url + "/")
    assert sum(stats["bad"].values()) == 0 and same(local, remote)
    starts = srv.gets(shard)                      # Range starts of the shard's GETs
    (_, reset_at), = srv.faulted
    resumed = starts[starts.index(reset_at) + 1]
    assert 0 < resumed <= reset_at and starts.count(0) == 1     # reopened at the offset read, not from the start


def test_server_without_range_support_is_reread_and_skipped(big_shards, local, io_env):
    shard = "/" + load_manifest(big_shards).shards[1].name
    with ShardServer(big_shards, ranges=False) as srv:
        srv.faults[shard] = ["reset", 1]
        remote, stats = run(srv.url + "/")
    assert sum(stats["bad"].values()) == 0 and same(local, remote)
    assert len(srv.gets(shard)) >= 3          # blocks, then the whole file streamed again past the bytes read


def _broken_shard(big_shards, index: int, fault: str):
    """Stream the shards with shard ``index`` failing by ``fault`` on every try: (its keys read, stats, remote, tries)."""
    m = load_manifest(big_shards)
    shard = "/" + m.shards[index].name
    with ShardServer(big_shards) as srv:
        srv.faults[shard] = [fault, 100]
        remote, stats = run(srv.url + "/")
        tries = srv.faulted
    seen = {k for keys, _, _ in remote for k in keys} & set(m.shards[index].keys)
    return seen, stats, remote, tries


def test_a_shard_that_stays_broken_counts_the_rest_as_truncated(big_shards, io_env):
    seen, stats, remote, tries = _broken_shard(big_shards, 1, "reset")
    assert 0 < len(seen) < 24
    assert {k: v for k, v in stats["bad"].items() if v} == {"truncated_tar": 24 - len(seen)}
    assert len(remote) == 72 // 12 and all(len(k) == 12 for k, _, _ in remote)
    assert len(tries) == 1 + 2                     # the reset and two retries (BIGBATCH_IO_RETRIES=2)


@pytest.mark.timeout(120)
def test_a_stalled_read_times_out(big_shards, io_env):
    seen, stats, _, tries = _broken_shard(big_shards, 2, "stall")
    assert 0 < len(seen) < 24
    assert {k: v for k, v in stats["bad"].items() if v} == {"truncated_tar": 24 - len(seen)}
    assert len(tries) == 1 + 2


def test_errors_that_cannot_succeed_are_not_retried(big_shards, tmp_path, monkeypatch, io_env):
    import time

    waits = []
    monkeypatch.setattr(time, "sleep", lambda s: waits.append(s))
    root = tmp_path / "served"
    shutil.copytree(big_shards, root)
    manifest = json.loads((root / "manifest.json").read_text())
    names = [s["name"] for s in manifest["shards"]]
    manifest["shards"][0]["name"] = "gone.tar"                    # 404
    (root / "manifest.json").write_text(json.dumps(manifest))
    with ShardServer(root) as srv:
        srv.statuses["/" + names[2]] = [403] * 100
        srv.statuses["/" + names[1]] = [503, 503]                 # transient: HEAD and GET fail once, then served
        remote, stats = run(srv.url + "/")                        # 72 / 12: no planned repeats
    assert {k: v for k, v in stats["bad"].items() if v} == {"unreadable_shard": 24 + 24}
    assert len([r for r in srv.log if r[1] == "/gone.tar"]) == 2                # HEAD + GET, once
    assert len([r for r in srv.log if r[1] == "/" + names[2]]) == 2
    assert waits == [0.01]                                                      # the one retry: the 503
    local_missing = tmp_path / "local"
    shutil.copytree(big_shards, local_missing)
    (local_missing / names[0]).unlink()
    _, stats = run(str(local_missing))
    assert stats["bad"]["unreadable_shard"] == 24 and waits == [0.01]
