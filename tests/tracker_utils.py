"""Reading what the trackers recorded: W&B's offline run files."""

from __future__ import annotations

import json
from pathlib import Path


def wandb_records(path: Path) -> list:
    """The records of a .wandb file: W&B's protobuf ``Record`` messages in LevelDB's log framing (7-byte file header,
    32 KiB blocks, each chunk: crc32 (4), length (2), type (1 full, 2 first, 3 middle, 4 last))."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's zero-padded tail
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def wandb_history(run_dir: Path, run_id: str) -> tuple[list[dict], list[str]]:
    """(history rows, saved file names) over every offline run directory of ``run_id`` (one per attempt)."""
    rows, files = [], []
    for f in sorted(run_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")):
        for rec in wandb_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
            elif kind == "files":
                files += [x.path for x in rec.files.files]
    return rows, files


def offline_env(home: Path) -> dict[str, str]:
    """Environment for trackers that stay on this machine: MLflow's local file store allowed, W&B offline, W&B's
    own settings and caches under ``home``."""
    wandb_home = str(Path(home) / "wandb-home")
    return {"MLFLOW_ALLOW_FILE_STORE": "true",  # MLflow 3 asks for this (or a database) for a local store
            "WANDB_MODE": "offline", "WANDB_CONFIG_DIR": wandb_home, "WANDB_CACHE_DIR": wandb_home,
            "WANDB_DATA_DIR": wandb_home, "WANDB_ARTIFACT_DIR": wandb_home}
