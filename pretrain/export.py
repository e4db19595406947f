"""Exporting a trained encoder in timm's hub layout, and loading it back as a plain ``nn.Module``.

An export directory holds
    model.safetensors   the backbone's weights (timm state dict: no optimiser, no RNG, no pickle)
    config.json         timm's layout (what ``timm.models.save_for_hf`` writes: ``architecture``, ``num_classes``,
                        ``num_features``, ``model_args``, ``pretrained_cfg`` with input size, mean/std, interpolation,
                        crop_pct) plus a ``bigbatch`` section: method, representation, heads, source run
    heads.safetensors   only with heads: ``mu.*`` (a VAE's μ head, when the probe used μ) and/or ``projection.*``
                        (SimCLR's projection head, with ``--with-projection``)

``load_encoder(DIR)`` rebuilds the features the probe used. Stock timm architectures also load with timm alone:
``timm.create_model("local-dir:DIR", pretrained=True)``; ``bb_convnet_*`` and ``bb_timm`` (small-stem or GroupNorm
timm models) are registered into timm by ``import pretrain.encoders``, i.e. they need bigbatch installed.
``local_copy`` opens a run, checkpoint or export directory given as a local path or any fsspec URL (s3://…).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_pipeline.errors import UserInputError
from pretrain.checkpoint import find_latest_checkpoint, load_method
from pretrain.encoders import ProjectionHead, encoder_args  # (also registers bb_convnet_*, bb_timm into timm)
from pretrain.preprocess import MEAN, STD, Normalize
from pretrain.run_store import STATE_FILE, is_url

WEIGHTS, CONFIG, HEADS = "model.safetensors", "config.json", "heads.safetensors"
FORMAT = 1


@contextmanager
def local_copy(path: str | Path) -> Iterator[Path]:
    """A run dir, checkpoint dir, state.pt or export dir as a local path: itself, or (for an fsspec URL) a temp
    copy of the files export and probe read (every checkpoint's state.pt; an export's three files)."""
    if not is_url(path):
        yield Path(str(path).removeprefix("file://"))
        return
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(path))
    root = root.rstrip("/")
    if not fs.exists(root):
        raise UserInputError(f"{path}: no such file or directory")
    single = fs.isfile(root)
    base = root.rsplit("/", 1)[0] if single else root
    names = [root] if single else [f"{root}/{n}" for n in (CONFIG, WEIGHTS, HEADS, STATE_FILE) if fs.isfile(f"{root}/{n}")]
    if not single:
        names += fs.glob(f"{root}/checkpoint_*/{STATE_FILE}") + fs.glob(f"{root}/checkpoints/checkpoint_*/{STATE_FILE}")
    with tempfile.TemporaryDirectory(prefix="bigbatch-remote-") as tmp:
        for name in names:
            dest = Path(tmp) / name[len(base) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(name, str(dest))
        yield Path(tmp) / root[len(base) + 1:] if single else Path(tmp)


def is_export(path: str | Path) -> bool:
    """True for a directory (local or fsspec URL) holding config.json and model.safetensors."""
    if not is_url(path):
        return (Path(path) / CONFIG).is_file() and (Path(path) / WEIGHTS).is_file()
    import fsspec

    fs, root = fsspec.core.url_to_fs(str(path))
    return fs.isfile(f"{root.rstrip('/')}/{CONFIG}") and fs.isfile(f"{root.rstrip('/')}/{WEIGHTS}")


class Encoder(nn.Module):
    """Images ``[B, 3, H, W]``, uint8 in [0, 255] or float in [0, 1], → features ``[B, D]``:
    bigbatch's Normalize (x/255 for uint8, then (x − mean)/std with ImageNet's mean/std), the backbone's pooled
    features, then the exported head (a VAE's μ, SimCLR's projection) if any. Eval mode; frozen use is the caller's."""

    def __init__(self, backbone: nn.Module, head: nn.Module | None, config: dict[str, Any]) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.backbone = backbone
        self.head = head if head is not None else nn.Identity()
        self.config = config
        self.image_size = int(config["pretrained_cfg"]["input_size"][-1])
        last = list(self.head.modules())[-1]
        self.num_features = getattr(last, "out_features", backbone.num_features)  # D of the output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.normalize(images)))


# -- export -----------------------------------------------------------------------------------------------------
def export_encoder(run: str | Path, out: str | Path, *, with_projection: bool = False, force: bool = False) -> Path:
    """Write the encoder of a run's latest checkpoint (or of the given checkpoint) to ``out`` atomically: into a
    temp dir next to it, read back with ``load_encoder``, then renamed. A non-empty ``out`` needs ``force``."""
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserInputError(f"--out {out}: directory is not empty (use --force to replace it)")
    with local_copy(run) as local:
        try:
            ckpt = find_latest_checkpoint(local)
            method, cfg = load_method(ckpt)
        except (ValueError, RuntimeError) as exc:
            msg = str(exc).replace(str(local), str(run))  # a remote run's temp copy: name the URL
            raise UserInputError(msg if str(run) in msg else f"{run}: {msg}") from exc
    if with_projection and cfg.method != "simclr":
        raise UserInputError(f"--with-projection: a {cfg.method} run has no projection head (SimCLR runs only)")
    method = method.cpu().eval()
    heads, head_cfg = _heads(method, cfg, with_projection)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        _write(tmp, method.encoder, heads, {
            "format": FORMAT, "method": cfg.method, "encoder": cfg.model.model_dump(include={"encoder", "small_stem", "norm"}),
            "representation": "mu" if "mu" in heads else "features", "heads": head_cfg,
            "source": {"run": cfg.name, "checkpoint": ckpt.name,
                       "location": str(run) if is_url(run) else str(Path(run).resolve())}},
            cfg.data.image_size)
        load_encoder(tmp)  # what was written reads back
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _heads(method: nn.Module, cfg: Any, with_projection: bool) -> tuple[dict[str, nn.Module], dict[str, Any]]:
    """The heads the export carries: the μ rows of a VAE's latent layer when the probe used μ; the projection."""
    heads: dict[str, nn.Module] = {}
    spec: dict[str, Any] = {}
    if cfg.method == "vae" and cfg.vae.representation == "mu":
        to_latent = method.net.to_latent
        mu = nn.Linear(to_latent.in_features, cfg.vae.latent_dim)
        mu.load_state_dict({"weight": to_latent.weight[:cfg.vae.latent_dim], "bias": to_latent.bias[:cfg.vae.latent_dim]})
        heads["mu"], spec["mu"] = mu, {"in_features": mu.in_features, "out_features": mu.out_features}
    if with_projection:
        m = cfg.model
        heads["projection"] = method.net.projector
        spec["projection"] = {"in_dim": method.encoder.num_features, "hidden_dim": m.proj_hidden, "out_dim": m.proj_dim,
                              "layers": m.proj_layers, "norm": "batch" if m.norm == "batch" else "group"}
    return heads, spec


def _write(directory: Path, backbone: nn.Module, heads: dict[str, nn.Module], section: dict[str, Any],
           image_size: int) -> None:
    from safetensors.torch import save_file
    from timm.models import save_for_hf

    e = section["encoder"]
    arch, args = encoder_args(e["encoder"], small_stem=e["small_stem"], norm=e["norm"])
    keep = ("architecture", "first_conv", "classifier", "fixed_input_size")  # the rest described other weights
    backbone.pretrained_cfg = {**{k: v for k, v in backbone.pretrained_cfg.items() if k in keep}, "architecture": arch,
                               "input_size": (args["in_chans"], image_size, image_size), "interpolation": "bilinear",
                               "crop_pct": 1.0, "crop_mode": "center", "mean": MEAN, "std": STD, "num_classes": 0}
    save_for_hf(backbone, str(directory), model_config={"bigbatch": section}, model_args=args, safe_serialization=True)
    if heads:
        save_file({f"{name}.{k}": v.contiguous() for name, h in heads.items() for k, v in h.state_dict().items()},
                  str(directory / HEADS))


def _replace_dir(new: Path, dest: Path) -> None:
    """Rename ``new`` onto ``dest``; an existing ``dest`` is moved aside first and removed after."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    os.replace(new, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# -- load -------------------------------------------------------------------------------------------------------
def load_encoder(path: str | Path, *, projection: bool = False, device: str | torch.device = "cpu") -> Encoder:
    """The exported encoder as a plain ``nn.Module`` in eval mode: uint8 [0, 255] or float [0, 1] images →
    the features the probe used (backbone features, or μ for a VAE exported with its μ head); ``projection=True``
    appends SimCLR's projection head (exported with ``--with-projection``). Raises UserInputError naming the file
    when config.json and the weights do not fit. ``path``: a local directory or any fsspec URL."""
    import timm

    with local_copy(path) as local:
        config = _read_config(local / CONFIG)
        section = config["bigbatch"]
        try:
            backbone = timm.create_model(config["architecture"], pretrained=False, **config.get("model_args", {}))
        except (RuntimeError, TypeError, ValueError) as exc:
            raise UserInputError(f"{path}/{CONFIG}: cannot build {config['architecture']!r} "
                                 f"with model_args {config.get('model_args')}: {exc}") from exc
        _load_into(backbone, local / WEIGHTS, "", f"{path}/{WEIGHTS}", f"{config['architecture']} of {CONFIG}")
        modules: list[nn.Module] = []
        heads = section.get("heads", {})
        if projection and "projection" not in heads:
            raise UserInputError(f"{path}: exported without the projection head (export with --with-projection)")
        if "mu" in heads:
            modules.append(nn.Linear(heads["mu"]["in_features"], heads["mu"]["out_features"]))
            _load_into(modules[-1], local / HEADS, "mu.", f"{path}/{HEADS}", f"the μ head of {CONFIG}")
        if projection:
            modules.append(ProjectionHead(**heads["projection"]))
            _load_into(modules[-1], local / HEADS, "projection.", f"{path}/{HEADS}", f"the projection head of {CONFIG}")
    head = nn.Sequential(*modules) if len(modules) > 1 else (modules[0] if modules else None)
    return Encoder(backbone, head, config).to(device).eval()


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserInputError(f"{path.parent}: not an exported encoder (no {CONFIG})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or "architecture" not in config or "pretrained_cfg" not in config:
        raise UserInputError(f"{path}: not in timm's layout (needs 'architecture' and 'pretrained_cfg')")
    if not isinstance(config.get("bigbatch"), dict) or config["bigbatch"].get("format") != FORMAT:
        raise UserInputError(f"{path}: not a bigbatch export (no 'bigbatch' section of format {FORMAT}); "
                             f"a timm model loads with timm.create_model('local-dir:{path.parent}', pretrained=True)")
    return config


def _load_into(module: nn.Module, file: Path, prefix: str, shown: str, what: str) -> None:
    """Load ``prefix``-ed tensors of a safetensors file into ``module``; any missing, extra or misshapen tensor
    is one UserInputError naming the file and the first differences."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not file.is_file():
        raise UserInputError(f"{shown}: missing")
    try:
        tensors = {k[len(prefix):]: v for k, v in load_file(str(file)).items() if k.startswith(prefix)}
    except (SafetensorError, OSError) as exc:
        raise UserInputError(f"{shown}: not a readable safetensors file: {exc}") from exc
    expected = module.state_dict()
    problems = [f"missing {k}" for k in expected if k not in tensors]
    problems += [f"unexpected {k}" for k in tensors if k not in expected]
    problems += [f"{k} is {list(v.shape)}, expected {list(expected[k].shape)}" for k, v in tensors.items()
                 if k in expected and v.shape != expected[k].shape]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserInputError(f"{shown}: does not match {what}: {'; '.join(problems[:3])}{more}")
    module.load_state_dict(tensors)
