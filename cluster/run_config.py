"""Loading a run configuration: built-in default ← YAML preset/file ← ``key=value`` overrides, validated by pydantic.

Errors name the offending key and value before anything starts (no Ray, no data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from data_pipeline.errors import UserInputError
from pretrain.config import RunConfig

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


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        key = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        value = err.get("input")
        shown = "" if err["type"] == "extra_forbidden" or isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def load_run_config(config: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
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
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(loaded).__name__}")
        tree = loaded
    for item in overrides:
        path_parts, value = parse_override(item)
        _set(tree, path_parts, value, item)
    if overrides:
        source += " + " + " ".join(overrides)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
