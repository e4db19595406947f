"""Data throughput, side by side on the same shards and one core: bigbatch's stream (positive pairs/s) vs a plain
torchvision ImageFolder + PIL transforms pipeline doing the same SimCLR recipe (pairs/s) vs decoding alone
(images/s). Every pipeline runs in the calling process with one torch thread, so "per second" is "per core".
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _timed(fn, min_seconds: float) -> tuple[int, float]:
    """Run ``fn() -> items`` repeatedly for at least ``min_seconds`` of this process's CPU time; (items, CPU
    seconds). CPU time (one thread, no worker processes) is per-core time, and robust to other load."""
    n, t0 = 0, time.process_time()
    while True:
        n += fn()
        dt = time.process_time() - t0
        if dt >= min_seconds:
            return n, dt


def export_image_folder(source: Any, out: Path) -> int:
    """Unpack shards into ``out/CLASS/KEY.EXT`` (bytes as stored) for the ImageFolder baseline."""
    from data_pipeline.decode import image_member
    from data_pipeline.manifest import resolve_shards
    from data_pipeline.tario import iter_grouped

    m = resolve_shards(source)
    n = 0
    for i in range(len(m.shards)):
        for _, key, files in iter_grouped(m.url(i)):
            member = image_member(files)
            label = int(files["cls"]) if files.get("cls") else 0
            if member is None:
                continue
            d = out / f"{label:04d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{key}.{member[0]}").write_bytes(member[1])
            n += 1
    return n


def torchvision_pipeline(folder: Path, image_size: int, blur: bool, batch_size: int):
    """The plain baseline: ImageFolder (PIL loader) + v2 transforms on PIL images, two views, DataLoader collate."""
    from torchvision import datasets
    from torchvision.transforms import v2

    steps: list[Any] = [
        v2.RandomResizedCrop(image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if blur:
        k = max(3, int(0.1 * image_size) // 2 * 2 + 1)
        steps.append(v2.RandomApply([v2.GaussianBlur(k, sigma=(0.1, 2.0))], p=0.5))
    steps.append(v2.PILToTensor())
    recipe = v2.Compose(steps)

    def two_views(img):
        return recipe(img), recipe(img)

    ds = datasets.ImageFolder(str(folder), transform=two_views)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0)


def run_bench(source: Any, image_size: int = 32, batch_size: int = 256, seconds: float = 5.0,
              blur: bool | None = None) -> dict[str, Any]:
    from data_pipeline.decode import decode, image_member
    from data_pipeline.manifest import resolve_shards
    from data_pipeline.stream import StreamSpec, make_loader
    from data_pipeline.tario import iter_grouped

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = resolve_shards(source)
        blur_on = image_size > 32 if blur is None else blur
        spec = StreamSpec(source=source, batch_size=batch_size, image_size=image_size, blur=blur, num_workers=0,
                          shuffle_buffer=1000)
        epoch = [0]

        def stream_epoch() -> int:
            n = 0
            for b in make_loader(spec, epoch=epoch[0]):
                n += len(b["key"])
            epoch[0] += 1
            return n

        blobs = []
        for i in range(len(m.shards)):
            for _, _, files in iter_grouped(m.url(i)):
                member = image_member(files)
                if member:
                    blobs.append(member[1])

        def decode_all() -> int:
            for data in blobs:
                decode(data)
            return len(blobs)

        with tempfile.TemporaryDirectory(prefix="bigbatch-bench-") as tmp:
            export_image_folder(source, Path(tmp))
            baseline = torchvision_pipeline(Path(tmp), image_size, blur_on, batch_size)

            def baseline_epoch() -> int:
                return sum(len(v1) for (v1, _), _ in baseline)

            stream_epoch()  # warm-up (imports, first manifest read)
            ns, ts = _timed(stream_epoch, seconds)
            nb, tb = _timed(baseline_epoch, seconds)
            nd, td = _timed(decode_all, seconds / 2)
    finally:
        torch.set_num_threads(threads)
    stream, base, dec = ns / ts, nb / tb, nd / td
    return {"bench": "data", "source": str(source), "samples": m.num_samples, "image_size": image_size,
            "blur": blur_on, "batch_size": batch_size, "cores": 1,
            "stream_pairs_per_s_per_core": round(stream, 1), "torchvision_pairs_per_s_per_core": round(base, 1),
            "decode_images_per_s_per_core": round(dec, 1),
            "stream_over_torchvision": round(stream / base, 2), "stream_pairs_over_decode_images": round(stream / dec, 3)}
