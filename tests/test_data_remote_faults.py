"""Remote shards that break: an HTTP server on 127.0.0.1 (started here) that resets a connection in the middle of a
tar, stalls, or answers 403/404/503. A reset is resumed at the byte offset reached (a Range request; a server
without Range support is re-read and the bytes already consumed skipped) and the batches are exactly the local
ones; a shard that stays broken or stalls is retried a bounded number of times and the rest of it is counted as
truncated_tar while the stream finishes its steps; 404, 403 and a missing local file are never retried."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import struct
import threading
from pathlib import Path

import pytest
import torch

from data_pipeline.manifest import load_manifest
from data_pipeline.stream import StreamSpec, make_loader

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")


class ShardServer:
    """Serves ``root`` (with or without Range support), logs ``(method, path, range start)`` of every request and
    plays per-path scripts: ``actions[path]`` for its successive GETs ("ok", "reset" = close with RST half-way
    through the body, "stall" = stop sending until released) and ``statuses[path]`` for its successive requests."""

    def __init__(self, root: Path, ranges: bool = True) -> None:
        self.root, self.ranges = root, ranges
        self.log: list[tuple[str, str, int]] = []
        self.actions: dict[str, list[str]] = {}
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
        body = data[start:end] if partial else data
        h.send_response(206 if partial else 200)
        if partial:
            h.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        if self.ranges:
            h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if head:
            return
        script = self.actions.get(path, [])
        action = script.pop(0) if script else "ok"
        if action == "ok":
            h.wfile.write(body)
            return
        h.wfile.write(body[: len(body) // 2])
        h.wfile.flush()
        if action == "stall":
            self.release.wait(60)
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


@pytest.fixture
def io_env(monkeypatch):
    """Small blocks (several requests per 133 KB shard), a 1 s timeout, quick backoff."""
    for k, v in {"BIGBATCH_IO_BLOCK_SIZE": "16384", "BIGBATCH_IO_TIMEOUT": "1", "BIGBATCH_IO_RETRIES": "2",
                 "BIGBATCH_IO_BACKOFF": "0.01"}.items():
        monkeypatch.setenv(k, v)


def run(source: str, workers: int = 0, batch: int = 32):
    spec = StreamSpec(source=source, batch_size=batch, num_workers=workers, seed=3, max_bad_fraction=1.0)
    loader = make_loader(spec, epoch=1)
    batches = [(b["key"], b["label"], b["views"]) for b in loader]
    assert len(batches) == len(loader)
    return batches, loader.stats


def same(a, b) -> bool:
    return len(a) == len(b) and all(
        ka == kb and torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(va, vb, strict=True))
        for (ka, la, va), (kb, lb, vb) in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def local(small_shards):
    batches, stats = run(str(small_shards))
    assert sum(stats["bad"].values()) == 0
    return batches


def test_reset_mid_tar_resumes_at_the_byte_offset(small_shards, local, io_env):
    shard = "/" + load_manifest(small_shards).shards[2].name
    with ShardServer(small_shards) as srv:
        srv.actions[shard] = ["ok", "ok", "ok", "reset"]          # the 4th block of 9: the middle of the tar
        remote, stats = run(srv.url + "/")
    assert same(local, remote) and sum(stats["bad"].values()) == 0
    starts = srv.gets(shard)                      # Range starts of its GETs: the 4th was reset
    assert 0 < starts[4] <= starts[3] and starts.count(0) == 1   # reopened at the offset read, not from 0


def test_server_without_range_support_is_reread_and_skipped(small_shards, local, io_env):
    shard = "/" + load_manifest(small_shards).shards[2].name
    with ShardServer(small_shards, ranges=False) as srv:
        # 1: the first block; 2: the second block (the whole file again: fsspec gives up on ranges); 3: streamed
        # from the start and reset half-way; 4: streamed again, the bytes already read skipped
        srv.actions[shard] = ["ok", "ok", "reset"]
        remote, stats = run(srv.url + "/")
    assert same(local, remote) and sum(stats["bad"].values()) == 0
    assert len(srv.gets(shard)) == 4


def test_a_shard_that_stays_broken_counts_the_rest_as_truncated(small_shards, io_env):
    m = load_manifest(small_shards)
    shard = "/" + m.shards[2].name
    with ShardServer(small_shards) as srv:
        srv.actions[shard] = ["ok", "ok", "ok"] + ["reset"] * 100
        remote, stats = run(srv.url + "/", workers=2)
        tries = srv.gets(shard)
    seen = {k for keys, _, _ in remote for k in keys} & set(m.shards[2].keys)
    assert 0 < len(seen) < 64
    assert {k: v for k, v in stats["bad"].items() if v} == {"truncated_tar": 64 - len(seen)}
    assert len(remote) == -(-300 // 32) and all(len(k) == 32 for k, _, _ in remote)
    assert len(tries) == 3 + 1 + 2                 # three good blocks, the failure, two retries


@pytest.mark.timeout(120)
def test_a_stalled_read_times_out(small_shards, io_env):
    m = load_manifest(small_shards)
    shard = "/" + m.shards[1].name
    with ShardServer(small_shards) as srv:
        srv.actions[shard] = ["ok", "ok", "ok"] + ["stall"] * 100
        remote, stats = run(srv.url + "/")
        tries = srv.gets(shard)
    seen = {k for keys, _, _ in remote for k in keys} & set(m.shards[1].keys)
    assert {k: v for k, v in stats["bad"].items() if v} == {"truncated_tar": 64 - len(seen)}
    assert len(tries) == 3 + 1 + 2


def test_errors_that_cannot_succeed_are_not_retried(small_shards, tmp_path, monkeypatch, io_env):
    import data_pipeline.tario as tario

    waits = []
    monkeypatch.setattr(tario.time, "sleep", lambda s: waits.append(s))
    root = tmp_path / "served"
    shutil.copytree(small_shards, root)
    manifest = json.loads((root / "manifest.json").read_text())
    names = [s["name"] for s in manifest["shards"]]
    manifest["shards"][3]["name"] = "gone.tar"                    # 404
    manifest["shards"][4]["name"] = names[4]                      # 403 below
    (root / "manifest.json").write_text(json.dumps(manifest))
    with ShardServer(root) as srv:
        srv.statuses["/" + names[4]] = [403] * 100
        srv.statuses["/" + names[1]] = [503, 503]                 # transient: HEAD and GET fail once, then served
        remote, stats = run(srv.url + "/", batch=30)              # 300 / 30: no planned repeats
    assert {k: v for k, v in stats["bad"].items() if v} == {"unreadable_shard": 64 + 44}
    assert len([r for r in srv.log if r[1] == "/gone.tar"]) == 2                # HEAD + GET, once
    assert len([r for r in srv.log if r[1] == "/" + names[4]]) == 2
    assert waits == [0.01]                                                      # the one retry: the 503
    local_missing = tmp_path / "local"
    shutil.copytree(small_shards, local_missing)
    (local_missing / names[0]).unlink()
    _, stats = run(str(local_missing), batch=30)
    assert stats["bad"]["unreadable_shard"] == 64 and waits == [0.01]
