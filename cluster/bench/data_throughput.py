"""Data throughput, side by side on the same shards and one core: bigbatch's stream (positive pairs/s) vs a plain
torchvision ImageFolder + PIL transforms pipeline doing the same SimCLR recipe (pairs/s; its parameters, the blur
kernel included, read from the stream's ``ViewRecipe``) vs decoding alone (images/s); with ``local_views`` L > 0,
also the stream's multi-crop recipe (2 global views at area 0.14–1 + L local views of ``local_size`` px at 0.05–0.14
per image, pairs/s = images/s). Every pipeline runs in the calling process with one torch thread, so "per second"
is "per core". No pipeline reads labels.
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from data_pipeline.decode import decode, image_member
from data_pipeline.manifest import resolve_shards
from data_pipeline.stream import StreamSpec, make_loader
from data_pipeline.tario import iter_grouped
from data_pipeline.views import ViewRecipe


def _interleaved(runs: dict[str, Iterator[int]], min_seconds: float, slice_seconds: float = 0.25) -> dict[str, float]:
    """Items per CPU-second of each endless ``runs[name]`` (yielding item counts per step), taken in alternating
    slices of ``slice_seconds`` until each has used ``min_seconds`` of this process's CPU time. Alternating
    keeps the ratios fair when other load changes during the run; CPU time of one thread is per-core time."""
    items = dict.fromkeys(runs, 0)
    spent = dict.fromkeys(runs, 0.0)
    while min(spent.values()) < min_seconds:
        for name, it in runs.items():
            t0 = time.process_time()
            while time.process_time() - t0 < slice_seconds:
                items[name] += next(it)
            spent[name] += time.process_time() - t0
    return {name: items[name] / spent[name] for name in runs}


IMAGE_FOLDER_CLASS = "images"  # the ImageFolder baseline's one class folder: its targets are never read


def export_image_folder(source: Any, out: Path) -> int:
    """Unpack shards into ``out/images/N.EXT`` (bytes as stored, N counting from 0) for the ImageFolder baseline;
    returns the count. Labels are not needed (the baseline discards ImageFolder's targets): none are read or made up."""
    m = resolve_shards(source)
    d = out / IMAGE_FOLDER_CLASS
    d.mkdir(parents=True, exist_ok=True)
    n = 0
    for i in range(len(m.shards)):
        for _, _, files in iter_grouped(m.url(i)):
            member = image_member(files)
            if member is None:
                continue
            (d / f"{n:08d}.{member[0]}").write_bytes(member[1])
            n += 1
    return n


def torchvision_pipeline(folder: Path, recipe: ViewRecipe, batch_size: int) -> torch.utils.data.DataLoader:
    """The plain baseline: ImageFolder (PIL loader) + v2 transforms on PIL images, two views of ``recipe``,
    DataLoader collate. The jitter strengths are the recipe's at ``strength=1`` (torchvision's arguments)."""
    from torchvision import datasets
    from torchvision.transforms import v2

    steps: list[Any] = [
        v2.RandomResizedCrop(recipe.size, scale=recipe.scale, ratio=recipe.ratio),
        v2.RandomHorizontalFlip(recipe.flip_p),
        v2.RandomApply([v2.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=recipe.jitter_p),
        v2.RandomGrayscale(p=recipe.gray_p),
    ]
    if recipe.blur_on:
        steps.append(v2.RandomApply([v2.GaussianBlur(recipe.blur_kernel, sigma=recipe.blur_sigma)], p=recipe.blur_p))
    steps.append(v2.PILToTensor())
    transform = v2.Compose(steps)

    def two_views(img):
        return transform(img), transform(img)

    ds = datasets.ImageFolder(str(folder), transform=two_views)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0)


def run_bench(source: Any, image_size: int = 32, batch_size: int = 256, seconds: float = 5.0,
              blur: bool | None = None, local_views: int = 0, local_size: int | None = None) -> dict[str, Any]:
    """The pipelines interleaved on ``source`` for ``seconds`` of CPU time each: the JSON line's fields."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = resolve_shards(source)
        spec = StreamSpec(source=source, batch_size=batch_size, image_size=image_size, blur=blur, num_workers=0,
                          shuffle_buffer=1000)
        recipe = spec.recipe
        local_size = local_size or max(8, image_size // 2)
        multi = StreamSpec(source=source, batch_size=batch_size, image_size=image_size, blur=blur, num_workers=0,
                           shuffle_buffer=1000, global_scale=(0.14, 1.0), local_views=local_views,
                           local_size=local_size, local_scale=(0.05, 0.14))

        def stream_steps(spec: StreamSpec = spec) -> Iterator[int]:
            for epoch in itertools.count():
                for b in make_loader(spec, epoch=epoch):
                    yield len(b["key"])

        blobs = []
        for i in range(len(m.shards)):
            for _, _, files in iter_grouped(m.url(i)):
                member = image_member(files)
                if member:
                    blobs.append(member[1])

        def decode_steps() -> Iterator[int]:
            while True:
                for a in range(0, len(blobs), 64):
                    for data in blobs[a: a + 64]:
                        decode(data)
                    yield len(blobs[a: a + 64])

        with tempfile.TemporaryDirectory(prefix="bigbatch-bench-") as tmp:
            export_image_folder(source, Path(tmp))
            baseline = torchvision_pipeline(Path(tmp), recipe, batch_size)

            def baseline_steps() -> Iterator[int]:
                while True:
                    for (v1, _), _ in baseline:
                        yield len(v1)

            runs = {"stream": stream_steps(), "torchvision": baseline_steps(), "decode": decode_steps(),
                    **({"multicrop": stream_steps(multi)} if local_views else {})}
            for it in runs.values():  # warm-up: imports, first manifest read, first batch
                next(it)
            rates = _interleaved(runs, seconds)
    finally:
        torch.set_num_threads(threads)
    stream, base, dec = rates["stream"], rates["torchvision"], rates["decode"]
    return {"bench": "data", "source": str(source), "samples": m.num_samples, "image_size": image_size,
            "blur": recipe.blur_on, "batch_size": batch_size, "cores": 1,
            "stream_pairs_per_s_per_core": round(stream, 1), "torchvision_pairs_per_s_per_core": round(base, 1),
            "decode_images_per_s_per_core": round(dec, 1),
            "stream_over_torchvision": round(stream / base, 2), "stream_pairs_over_decode_images": round(stream / dec, 3),
            **({"local_views": local_views, "local_size": local_size,
                "multicrop_pairs_per_s_per_core": round(rates["multicrop"], 1),
                "multicrop_over_stream": round(rates["multicrop"] / stream, 2)} if local_views else {})}
