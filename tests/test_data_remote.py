"""Streaming over the network through fsspec: http(s) against a server on 127.0.0.1 started here, s3 against
moto's server mode on 127.0.0.1. Both must give exactly the batches of the local stream."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest
import torch
from conftest import s3_env

from data_pipeline.manifest import load_manifest
from data_pipeline.stream import StreamSpec, make_loader

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")


def batches(source, workers: int = 2, rank: int = 0, world: int = 2):
    spec = StreamSpec(source=source, batch_size=64, num_workers=workers, seed=1)
    loader = make_loader(spec, rank=rank, world_size=world, epoch=1)
    return [(b["key"], b["label"], b["views"]) for b in loader], loader.stats


def same(a, b) -> bool:
    return all(ka == kb and torch.equal(la, lb) and all(torch.equal(x, y) for x, y in zip(va, vb, strict=True))
               for (ka, la, va), (kb, lb, vb) in zip(a, b, strict=True)) and len(a) == len(b)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_root(digits_shards):
    handler = functools.partial(_Quiet, directory=str(digits_shards["train"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_http_manifest_url_streams_the_same_batches(digits_shards, http_root):
    local, _ = batches(str(digits_shards["train"]))
    remote, stats = batches(http_root + "/")
    assert same(local, remote)
    assert sum(stats["bad"].values()) == 0 and stats["seen"] == len(remote) * 64
    assert same(local, batches(http_root + "/manifest.json")[0])


def test_http_brace_pattern_without_manifest(digits_shards, http_root):
    m = load_manifest(digits_shards["train"])
    pattern = f"{http_root}/digits-{{000000..{len(m.shards) - 1:06d}}}.tar"
    remote, _ = batches(pattern, workers=1, world=1)
    keys = [k for ks, _, _ in remote for k in ks]
    assert set(keys) == {k for s in m.shards for k in s.keys}
    local_list = [str(digits_shards["train"] / s.name) for s in m.shards]
    assert same(batches(local_list, workers=1, world=1)[0], remote)


def test_s3_through_fsspec(digits_shards, s3_endpoint, monkeypatch):
    import boto3
    import fsspec

    for k, v in s3_env(s3_endpoint).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": s3_endpoint})
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket="shards")
    for p in digits_shards["train"].iterdir():
        client.upload_file(str(p), "shards", f"digits/train/{p.name}")
    local, _ = batches(str(digits_shards["train"]))
    remote, stats = batches("s3://shards/digits/train")
    assert same(local, remote)
    assert sum(stats["bad"].values()) == 0
