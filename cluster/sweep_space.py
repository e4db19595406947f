"""What a sweep runs: its axes (``key=a,b,c`` and ranges) and the list of trials, each a validated run config.

Syntax of the items after CONFIG (every value is parsed as YAML, like `bigbatch pretrain` overrides):
  ``key=v``                        a fixed override of every trial
  ``key=a,b,c``                    an axis: the grid takes every value; random search (``samples``) draws one
  ``key=loguniform(lo,hi)``        a range, random search only; also ``uniform(lo,hi)`` and ``randint(lo,hi)`` (lo ≤ v < hi)
Commas inside brackets or quotes do not split values: ``eval.baselines=[pixels],[pixels,pca]`` is two values.
The grid is the product of the axes (the last one varies fastest); random search draws each key independently with
Ray Tune's samplers from a generator seeded by ``seed``, so the same arguments give the same trials.
Every trial's config is validated here, before Ray starts: a bad key or value is a user error naming the trial.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from cluster.run_config import ConfigError, load_run_config, parse_override
from pretrain.config import RunConfig

NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
RANGE_RE = re.compile(r"^(loguniform|uniform|randint)\((.*)\)$")
MAX_NAME = 120


@dataclass(frozen=True)
class Range:
    """A range of a random search, drawn with ``ray.tune``'s sampler of the same name."""

    kind: str
    low: float
    high: float

    def sample(self, rng: Any) -> Any:
        from ray import tune
        return getattr(tune, self.kind)(self.low, self.high).sample(random_state=rng)

    def __str__(self) -> str:
        return f"{self.kind}({self.low:g},{self.high:g})"


Axis = list[str] | Range  # raw YAML texts of the values, or a range


@dataclass
class SweepSpec:
    config: str | None                      # preset name or YAML path; None: the built-in default
    fixed: list[str] = field(default_factory=list)
    axes: dict[str, Axis] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"config": self.config, "fixed": self.fixed,
                "axes": {k: str(a) if isinstance(a, Range) else a for k, a in self.axes.items()}}


@dataclass
class Trial:
    index: int
    name: str
    values: dict[str, Any]   # swept key → the value as the validated config holds it
    config: RunConfig


def split_values(raw: str) -> list[str]:
    """Split at commas outside brackets, parentheses and quotes."""
    parts, depth, quote, cur = [], 0, "", []
    for ch in raw:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]


def parse_range(item: str, raw: str) -> Range | None:
    m = RANGE_RE.match(raw.strip())
    if not m:
        return None
    kind, args = m.group(1), split_values(m.group(2))
    try:
        if len(args) != 2:
            raise ValueError
        low, high = (int(a) for a in args) if kind == "randint" else (float(a) for a in args)
    except ValueError:
        raise ConfigError(f"{item!r}: expected {kind}(LOW,HIGH) with two {'integers' if kind == 'randint' else 'numbers'}") from None
    if not low < high:
        raise ConfigError(f"{item!r}: LOW must be below HIGH")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{item!r}: loguniform needs LOW > 0")
    return Range(kind, low, high)


def parse_items(items: list[str]) -> SweepSpec:
    """``[CONFIG] key=… …`` → the spec; a key with one value is a fixed override."""
    spec = SweepSpec(config=None)
    for i, item in enumerate(items):
        if "=" not in item:
            if i == 0:
                spec.config = item
                continue
            raise ConfigError(f"{item!r}: expected KEY=VALUE[,VALUE…] (only the first argument may be a CONFIG)")
        key, raw = item.split("=", 1)
        if key == "name":
            raise ConfigError(f"{item!r}: trials are named by the sweep (its own name: --name)")
        if key in spec.axes or any(f.split("=", 1)[0] == key for f in spec.fixed):
            raise ConfigError(f"{item!r}: {key} is given twice")
        values = split_values(raw)
        ranges = [parse_range(item, v) for v in values]
        for v, r in zip(values, ranges, strict=True):
            if r is None:
                parse_override(f"{key}={v}")  # the key's syntax and each value's YAML
        if any(ranges):
            if len(values) > 1:
                raise ConfigError(f"{item!r}: a range must be the key's only value")
            spec.axes[key] = ranges[0]
        elif len(values) > 1:
            if key == "cluster.storage_path":
                raise ConfigError(f"{item!r}: the storage path cannot be swept (a sweep's runs share one directory)")
            if "" in values:
                raise ConfigError(f"{item!r}: empty value in the list")
            spec.axes[key] = values
        else:
            spec.fixed.append(item)
    return spec


def _yaml_text(value: Any) -> str:
    """A drawn value as override text that parses back to the same value (``1.0e-05``, not PyYAML's string '1e-05')."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 30).removesuffix("...\n").strip()


def _lookup(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree[part]
    return tree


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "+".join(_show(v) for v in value)
    return str(value)


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key's shortest suffix that no other key shares (``optim.lr`` → ``lr``)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            cand = ".".join(parts[-n:])
            if not any(o != key and (o == cand or o.endswith("." + cand)) for o in keys):
                break
        out[key] = cand
    return out


def trial_name(index: int, width: int, values: dict[str, Any]) -> str:
    """``trial03-lr_0.3-temperature_0.5``: characters outside [A-Za-z0-9._-] become '_'."""
    short = short_keys(list(values))
    tail = "-".join(f"{short[k]}_{_show(v)}" for k, v in values.items())
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f"trial{index:0{width}d}" + (f"-{tail}" if tail else ""))
    return name[:MAX_NAME]


def check_name(name: str) -> str:
    if not NAME_RE.match(name) or name.startswith("."):
        raise ConfigError(f"sweep name {name!r}: use letters, digits, '.', '_' and '-' only (not starting with '.')")
    return name


def _draws(spec: SweepSpec, samples: int | None, seed: int) -> list[dict[str, str]]:
    """Per trial: swept key → override text."""
    ranges = [k for k, a in spec.axes.items() if isinstance(a, Range)]
    if samples is None:
        if ranges:
            raise ConfigError(f"{ranges[0]}={spec.axes[ranges[0]]}: a range needs random search (--samples N)")
        keys = list(spec.axes)
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*spec.axes.values())]
    import numpy as np
    from ray import tune

    rng = np.random.default_rng(seed)
    return [{k: _yaml_text(a.sample(rng)) if isinstance(a, Range) else tune.choice(a).sample(random_state=rng)
             for k, a in spec.axes.items()} for _ in range(samples)]


def make_trials(spec: SweepSpec, base_overrides: list[str], samples: int | None = None, seed: int = 0) -> list[Trial]:
    """The trials: CONFIG + fixed + ``base_overrides`` (storage, budget, address) + the trial's values, validated."""
    draws = _draws(spec, samples, seed)
    width = max(2, len(str(len(draws) - 1)))
    trials = []
    for i, draw in enumerate(draws):
        swept = [f"{k}={v}" for k, v in draw.items()]
        try:
            cfg = load_run_config(spec.config, [*spec.fixed, *base_overrides, *swept])
        except ConfigError as exc:
            raise ConfigError(f"trial {i} ({' '.join(swept)}): {exc}") from None
        values = {k: _lookup(cfg.model_dump(mode="json"), k) for k in draw}
        cfg.name = trial_name(i, width, values)
        trials.append(Trial(i, cfg.name, values, cfg))
    return trials
