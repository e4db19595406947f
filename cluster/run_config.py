"""Loading a run configuration: built-in default ← YAML preset/file ← ``key=value`` overrides, validated by pydantic.

Errors name the offending key and value before anything starts (no Ray, no data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from data_pipeline.errors import UserInputError
from pretrain.config import LOSSES, METHOD_SECTIONS, RunConfig

PRESET_DIR = Path(__file__).resolve().parent / "presets"  # package data: shipped in wheels too


class ConfigError(UserInputError):
    """A run configuration that cannot be used; the message names the source and the key."""


def find_config(name_or_path: str) -> Path:
    """A YAML path, or the name of a preset in cluster/presets/ (with or without .yaml)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (PRESET_DIR / name_or_path, PRESET_DIR / f"{name_or_path}.yaml"):
        if cand.is_file():
            return cand
    presets = ", ".join(sorted(q.stem for q in PRESET_DIR.glob("*.yaml"))) or "none"
    raise ConfigError(f"config {name_or_path!r}: no such file, and no preset of that name (presets: {presets})")


def parse_override(item: str) -> tuple[list[str], Any]:
    """'optim.lr=0.1' → (['optim', 'lr'], 0.1); the value is parsed as YAML (numbers, bools, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. batch_size=512 or loss.name=spectral")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from exc
    return key.split("."), value


def _set(tree: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    node = tree
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
        node = nxt
    node[path[-1]] = value


def _problem(err: dict[str, Any]) -> str:
    """One validation error as 'dotted.key: what is wrong', the loss tag pydantic inserts taken out of the key."""
    loc = [str(x) for x in err["loc"]]
    loss_name = loc.pop(1) if len(loc) > 2 and loc[0] == "loss" and loc[1] in LOSSES else None
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        users = [n for n, cls in LOSSES.items() if loc[-1] in cls.model_fields] if loss_name else []
        if users:
            return f"{key}: not used by loss.name={loss_name} (a setting of {', '.join(users)}); remove it"
        return f"{key}: unknown key"
    if err["type"] == "union_tag_invalid":
        return f"{key}.{err['ctx']['discriminator'].strip(chr(39))}: {err['ctx']['tag']!r} is not one of " \
               f"{err['ctx']['expected_tags']}"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = "" if isinstance(value, dict) or not key or repr(value) in msg else f" (got {value!r})"
    return f"{key}: {msg}{shown}" if key else msg


def _format_errors(exc: ValidationError, source: str) -> str:
    return f"invalid configuration ({source}): " + "; ".join(_problem(e) for e in exc.errors())


def _check_encoder(cfg: RunConfig, source: str) -> None:
    from pretrain.encoders import close_encoder_names, is_encoder

    if not is_encoder(cfg.model.encoder):
        near = close_encoder_names(cfg.model.encoder)
        hint = f"; close matches: {', '.join(near)}" if near else "; see timm.list_models()"
        raise ConfigError(f"invalid configuration ({source}): model.encoder: unknown encoder "
                          f"{cfg.model.encoder!r}{hint}")


def load_run_config(config: str | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                    check_data: bool = False) -> RunConfig:
    """The validated config: CONFIG (a preset name or YAML file; default: the default preset) ← KEY=VALUE overrides.
    ``check_data``: also read the training and probe shards' manifests (cluster/preflight.py) before the encoder
    check, whose timm import is the slow part: a wrong data path is then answered in a second.

    An override of ``steps`` replaces the file's ``epochs`` and vice versa (both in one source are an error); an
    override of ``method`` (``loss.name``) drops the file's sections (loss settings) that the new one does not use."""
    tree: dict[str, Any] = {}
    source = "built-in default"
    if config is None and (PRESET_DIR / "default.yaml").is_file():
        config = str(PRESET_DIR / "default.yaml")
    if config:
        path = find_config(config)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(loaded).__name__}")
        tree = loaded
    parsed = [(parse_override(item), item) for item in overrides]
    given = {tuple(path_parts) for (path_parts, _), _ in parsed}
    for length, other in (("steps", "epochs"), ("epochs", "steps")):
        if (length,) in given and (other,) not in given:
            tree.pop(other, None)
    overridden = {tuple(p): v for (p, v), _ in parsed}
    if ("method",) in overridden:  # the file's sections of another method no longer apply
        for section, methods in METHOD_SECTIONS.items():
            if overridden[("method",)] not in methods and not any(p[0] == section for p in given):
                tree.pop(section, None)
    new_loss = LOSSES.get(overridden.get(("loss", "name")))
    if new_loss is not None and isinstance(tree.get("loss"), dict):  # keep the file's settings the new loss uses
        tree["loss"] = {k: v for k, v in tree["loss"].items() if k in new_loss.model_fields}
    for (path_parts, value), item in parsed:
        _set(tree, path_parts, value, item)
    if overrides:
        source += " + " + " ".join(overrides)
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    if check_data:
        from cluster.preflight import check_data as read_manifests

        read_manifests(cfg, cfg.eval.probe)
    _check_encoder(cfg, source)
    return cfg


def dump_yaml(cfg: RunConfig) -> str:
    """The config as YAML that load_run_config reads back to the same config (unused method sections left out)."""
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude={k for k in METHOD_SECTIONS if getattr(cfg, k) is None}),
                          sort_keys=False)
