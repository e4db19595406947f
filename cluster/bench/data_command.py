"""`bigbatch bench data [DIR]`: pairs/s/core of bigbatch's stream vs a plain torchvision ImageFolder + PIL pipeline
doing the same SimCLR recipe vs decoding alone, on the same shards and one core, in one run."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from data_pipeline.builtin import resolve_builtin


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="data stream throughput vs torchvision ImageFolder+PIL vs decode alone",
                              description="DIR: shards (dir/URL with manifest.json, brace pattern). Default: the "
                                          "built-in digits at 32 px; --make-photos N: N realistic JPEG photos "
                                          "(crops of the photos scikit-learn/scikit-image ship) written as shards "
                                          "to a temp dir, for the 224-px figure.")
    p.add_argument("source", nargs="?", default=None, metavar="DIR")
    p.add_argument("--image-size", type=int, default=None, help="output side (default: 32; 224 with --make-photos)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 256 at ≤64 px, else 64")
    p.add_argument("--seconds", type=float, default=5.0, help="CPU seconds measured per pipeline")
    p.add_argument("--blur", choices=("on", "off", "auto"), default="auto", help="auto: on above 32 px")
    p.add_argument("--make-photos", type=int, default=0, metavar="N", help="bench on N generated JPEG photos")
    p.add_argument("--local-views", type=int, default=0, metavar="L", help="also the multi-crop recipe: 2 global "
                   "views (area 0.14-1) + L local views (0.05-0.14) per image")
    p.add_argument("--local-size", type=int, default=None, help="side of the local views (default: half the size)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cluster.bench.data_throughput import run_bench

    blur = {"on": True, "off": False, "auto": None}[args.blur]
    with tempfile.TemporaryDirectory(prefix="bigbatch-bench-data-") as tmp:
        source = args.source
        size = args.image_size
        if args.make_photos:
            from cluster.bench.photos import make_photos
            from data_pipeline.writer import write_shards

            folder = make_photos(Path(tmp) / "photos", count=args.make_photos)
            source = str(Path(tmp) / "shards")
            write_shards(str(folder), source, shard_size=100)
            size = size or 224
        if source is None:
            source = resolve_builtin("digits")
        size = size or 32
        batch = args.batch_size or (256 if size <= 64 else 64)
        r = run_bench(source, image_size=size, batch_size=batch, seconds=args.seconds, blur=blur,
                      local_views=args.local_views, local_size=args.local_size)
    if args.make_photos:
        r["source"] = f"{args.make_photos} generated JPEG photos"
    if not args.json:
        print(f"data throughput on one core: {r['source']} ({r['samples']} samples), {size} px, "
              f"blur {'on' if r['blur'] else 'off'}, batch {batch}")
        rows = [("bigbatch stream", "pairs/s", r["stream_pairs_per_s_per_core"], r["stream_over_torchvision"]),
                ("torchvision ImageFolder + PIL", "pairs/s", r["torchvision_pairs_per_s_per_core"], 1.0),
                ("decode alone", "images/s", r["decode_images_per_s_per_core"], None)]
        if args.local_views:
            rows.insert(1, (f"bigbatch multi-crop 2x{size}+{args.local_views}x{r['local_size']}", "pairs/s",
                            r["multicrop_pairs_per_s_per_core"],
                            r["multicrop_pairs_per_s_per_core"] / r["torchvision_pairs_per_s_per_core"]))
        print(f"{'pipeline':<32}{'unit':>10}{'per core':>12}{'vs torchvision':>16}")
        for name, unit, value, ratio in rows:
            print(f"{name:<32}{unit:>10}{value:>12.1f}{(f'{ratio:.2f}x' if ratio else '-'):>16}")
    print(json.dumps(r))
    return 0
