"""`bigbatch export RUN_OR_CHECKPOINT --out DIR [--with-projection] [--force]`: the encoder in timm's hub layout."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write a run's encoder as model.safetensors + config.json (timm's hub layout)",
        description="Export the encoder of a run's latest checkpoint (or of a checkpoint dir / state.pt): weights as "
                    "safetensors, architecture and preprocessing as timm's config.json. Load it with "
                    "pretrain.export.load_encoder(DIR), or timm.create_model('local-dir:DIR', pretrained=True).")
    p.add_argument("run", metavar="RUN_OR_CHECKPOINT", help="run directory, checkpoint dir or state.pt; a local path "
                   "or any fsspec URL (s3://bucket/runs/NAME)")
    p.add_argument("--out", required=True, help="directory to write (created; must be empty unless --force)")
    p.add_argument("--with-projection", action="store_true", help="also export SimCLR's projection head")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from pretrain.run_store import require_local

    require_local(args.run)  # before the torch import: a mistyped path is answered at once
    from pretrain.export import CONFIG, export_encoder

    out = export_encoder(args.run, args.out, with_projection=args.with_projection, force=args.force)
    cfg = json.loads((out / CONFIG).read_text())
    section = cfg["bigbatch"]
    dim = section["heads"]["mu"]["out_features"] if "mu" in section["heads"] else cfg["num_features"]
    print(f"exported the {section['method']} encoder ({cfg['architecture']} {cfg.get('model_args', {})}; "
          f"{section['representation']}: {dim}-d) from {section['source']['checkpoint']} to {out}")
    print(f"  python: from pretrain.export import load_encoder; encoder = load_encoder({str(out)!r})")
    need = "import pretrain.encoders; " if cfg["architecture"].startswith("bb_") else ""
    print(f"  timm:   {need}timm.create_model('local-dir:{out}', pretrained=True)  # backbone features; "
          "normalise with config.json's mean/std")
    return 0
