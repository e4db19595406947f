"""What a run reads, checked on the driver before Ray starts (or timm is imported): a wrong path is answered at once."""

from __future__ import annotations

from cluster.probing import probe_sources
from data_pipeline.manifest import load_source
from pretrain.config import RunConfig


def check_data(cfg: RunConfig, probe: bool) -> None:
    """Read the manifests of the training (and probe) shards before Ray starts: a wrong path fails now, naming it.
    The built-in digits are written here once, before workers race for them. On an existing cluster the workers'
    files may not be visible here: they check them themselves (a missing file ends the run at once)."""
    if cfg.cluster.address:
        if cfg.data.train == "digits":
            load_source("digits")
        return
    sources = [cfg.data.train]
    if probe:
        sources += probe_sources(cfg) or ()
    for source in dict.fromkeys(sources):
        load_source(source)
