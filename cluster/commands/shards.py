"""`bigbatch shards write|inspect|plan`: make WebDataset shards, check them, and show an epoch's plan.

A mistake in the input (a missing path, a file where a directory is expected, an invalid manifest.json, an
unreachable URL, …) is one line on stderr, ``bigbatch shards: MESSAGE``, and exit code 2.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("shards", help="write, inspect and plan WebDataset shards")
    sub = parser.add_subparsers(dest="shards", metavar="ACTION")

    w = sub.add_parser("write", help="SOURCE → OUT_DIR/NAME-000000.tar … + manifest.json",
                       description="SOURCE: an image folder (CLASS/NAME.jpg|png), 'digits' (scikit-learn's bundled "
                                   "handwritten digits, stored as PNG) or torchvision:NAME:ROOT[:test] (on disk).")
    w.add_argument("source")
    w.add_argument("out_dir")
    w.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    w.add_argument("--max-shard-mb", type=float, default=1024.0, help="bytes bound per shard, MB (default 1024)")
    w.add_argument("--holdout", type=float, default=0.0, help="class-stratified held-out fraction (own shards)")
    w.add_argument("--holdout-dir", default=None, help="where the holdout goes (default: OUT_DIR-holdout)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--name", default=None, help="shard name prefix (default: the source's name)")
    w.add_argument("--verify", action="store_true", help="decode every image fully (default: read its header)")
    w.add_argument("--strict", action="store_true", help="refuse to write when any image is bad (default: skip it)")
    w.set_defaults(func=run_write)

    i = sub.add_parser("inspect", help="decode every sample: per-class counts, bad samples by kind")
    i.add_argument("source", help="shard dir / manifest URL / brace pattern")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=run_inspect)

    p = sub.add_parser("plan", help="an epoch's global batches, and which shards/samples every rank and worker reads",
                       description="The epoch's order is fixed by the global batch and the lanes; --world-size and "
                                   "--workers only change who reads which lanes (--json: global_batches, the sample "
                                   "keys of every step, are the same for every supported world size).")
    p.add_argument("source", help="shard dir / manifest URL / brace pattern")
    p.add_argument("--world-size", type=int, default=1, help="ranks (must divide --lanes and --batch-size)")
    p.add_argument("--workers", type=int, default=1, help="DataLoader workers per rank")
    p.add_argument("--batch-size", type=int, default=256, help="global batch size (all ranks together)")
    p.add_argument("--lanes", type=int, default=None, help="reading lanes (default: training's, data.lanes)")
    p.add_argument("--shuffle-buffer", type=int, default=2000, help="per-lane shuffle buffer (default 2000)")
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("exact", "resampled"), default="exact")
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--no-equalize", action="store_true", help="the probe pass: each sample once, last batch partial")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_plan)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def run_write(args: argparse.Namespace) -> int:
    from data_pipeline.sources import check_source

    check_source(args.source)  # a wrong path fails here, before the decoder's torch import
    from data_pipeline.writer import write_shards

    r = write_shards(args.source, args.out_dir, shard_size=args.shard_size, holdout=args.holdout,
                     holdout_dir=args.holdout_dir, seed=args.seed, name=args.name,
                     max_shard_bytes=int(args.max_shard_mb * 2**20), verify=args.verify, strict=args.strict)
    m = r.train
    size = "x".join(map(str, m.image_size)) if m.image_size else f"{m.image_size_range} (mixed)"
    print(f"{r.out_dir}: {m.num_samples} samples in {len(m.shards)} shards, {len(m.classes)} classes, "
          f"image size {size}")
    if r.holdout is not None:
        print(f"{r.holdout_dir}: {r.holdout.num_samples} held-out samples in {len(r.holdout.shards)} shards")
    if r.bad:
        print(f"skipped {len(r.bad)} bad image file{'s' * (len(r.bad) != 1)} (not written; --strict refuses them):")
        for f, why in r.bad[:20]:
            print(f"  {f}: {why}")
        if len(r.bad) > 20:
            print(f"  … and {len(r.bad) - 20} more")
    if r.ignored:
        shown = ", ".join(r.ignored[:5]) + (f", … ({len(r.ignored) - 5} more)" if len(r.ignored) > 5 else "")
        print(f"ignored {len(r.ignored)} file{'s' * (len(r.ignored) != 1)} (no image extension, or outside a class folder): {shown}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from data_pipeline.audit import inspect_shards

    r = inspect_shards(args.source)
    status = 0 if r["bad_total"] == 0 and not r["checksum_mismatch"] and not r["manifest_mismatch"] else 1
    if args.json:
        print(json.dumps(r))
        return status
    mismatched = f", {r['samples_mismatched']} in shards that do not match manifest.json" \
        if r["manifest_mismatch"] else ""
    print(f"{r['source']}: {r['shards']} shards, {r['samples_good']} good + {r['bad_total']} bad{mismatched} "
          f"= {r['samples_expected']} samples; image sizes {r['image_sizes']}")
    print(f"{'class':<20}{'samples':>9}")
    for cls, n in r["per_class"].items():
        print(f"{cls:<20}{n:>9}")
    print(f"{'bad input':<20}{'samples':>9}")
    for kind, n in r["bad"].items():
        print(f"{kind:<20}{n:>9}")
    for ex in r["bad_examples"]:
        print(f"  {ex}")
    for msg in r["manifest_mismatch"]:
        print(f"manifest mismatch: {msg}")
    if r["checksum_mismatch"]:
        print(f"sha256 mismatch: {', '.join(r['checksum_mismatch'])}")
    return status


def run_plan(args: argparse.Namespace) -> int:
    from data_pipeline.errors import UserInputError
    from data_pipeline.manifest import check_sizes, load_source
    from data_pipeline.plan import DEFAULT_LANES, check_world_size, global_batches

    if args.lanes is None:
        args.lanes = DEFAULT_LANES
    for flag, value in (("--world-size", args.world_size), ("--batch-size", args.batch_size), ("--lanes", args.lanes)):
        if value < 1:
            raise UserInputError(f"{flag} {value}: must be >= 1")
    if not args.no_equalize:
        try:
            check_world_size(args.world_size, args.lanes, args.batch_size)
        except ValueError as exc:
            raise UserInputError(f"--world-size {args.world_size}: {exc}") from None
    elif args.batch_size % args.world_size:
        raise UserInputError(f"--batch-size {args.batch_size}: not divisible by --world-size {args.world_size}")
    manifest = load_source(args.source)  # a wrong path fails here, before the stream's torch import
    check_sizes(manifest)
    from data_pipeline.stream import StreamSpec, plan_for

    spec = StreamSpec(source=args.source, batch_size=args.batch_size // args.world_size, num_workers=args.workers,
                      seed=args.seed, mode=args.mode, shuffle=not args.no_shuffle, equalize=not args.no_equalize,
                      lanes=args.lanes, shuffle_buffer=args.shuffle_buffer)
    plan = plan_for(spec, manifest, args.world_size, args.epoch)
    failed = [{"name": s.name, "readable": len(s.keys), "planned": s.samples, "failure": s.failure}
              for s in manifest.shards if s.failure]
    if args.json:
        d = plan.to_json()
        for r in d["ranks"]:
            for w in r["workers"]:
                for lane in w["lanes"]:
                    for s in lane["segments"]:
                        s["name"] = manifest.shards[s["shard"]].name
        d["failed_shards"] = failed
        d["global_batches"] = [[_key(manifest, shard, pos) for shard, pos, _ in step] for step in global_batches(plan)]
        print(json.dumps(d))
        return 0
    lanes = f"{plan.lanes} lanes" if plan.equalize else "one lane per worker"
    print(f"{manifest.num_samples} samples in {len(manifest.shards)} shards; mode {plan.mode}, epoch {plan.epoch}, "
          f"seed {plan.seed}; global batch {plan.batch_size} = {plan.world_size} ranks × "
          f"{plan.ranks[0].batch_size}; {lanes}; up to {plan.num_workers} workers per rank")
    print(f"steps: {plan.steps}; repeated {plan.repeated}, dropped {plan.dropped} samples")
    print(f"{'rank':>4} {'worker':>6} {'lane':>4} {'rows':>4} {'samples':>7} {'repeat':>6}  shards [start:stop]")
    for r in plan.ranks:
        for w in r.workers:
            for lane in w.lanes:
                segs = " ".join(f"{manifest.shards[s.shard].name}[{s.start}:{s.stop}]" + ("*" if s.lap else "")
                                for s in lane.segments)
                rows = lane.batch_sizes[0] if plan.equalize and lane.batch_sizes else "-"
                print(f"{r.rank:>4} {w.worker:>6} {lane.lane:>4} {rows:>4} {lane.samples:>7} {lane.repeated:>6}  {segs}")
    if plan.repeated:
        print("(* = repeated samples that equalise the steps)")
    if plan.equalize:
        print("(rows: the lane's rows of every global batch; global batch s = the lanes' rows in lane order)")
    if plan.mode == "resampled":
        print("(resampled: every lane draws whole shards with replacement; the epoch length is nominal)")
    if not plan.equalize:
        print("(not equalized: every sample exactly once; ranks may differ by one step, last batch partial)")
    if failed:
        print(f"{len(failed)} shards could not be counted to their end (no manifest.json); their lost samples are "
              "estimated, planned, and counted as bad when read:")
        for f in failed:
            print(f"  {f['name']}: {f['readable']} readable, {f['planned'] - f['readable']} lost ({f['failure']})")
    return 0


def _key(manifest, shard: int, pos: int) -> str:
    keys = manifest.shards[shard].keys
    return keys[pos] if pos < len(keys) else f"{manifest.shards[shard].name}#{pos}"
