"""Run configuration, Ray launch (embedded or remote), job submission, deployment manifests and the CLI."""

import os
from importlib.metadata import PackageNotFoundError, version

# Ray Train's V2 API, for the CLI, the library and the tests alike: read when ray.train is first imported, and
# passed on by Ray Train to its controller and workers.
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

try:
    __version__ = version("bigbatch")  # the installed distribution's version (pyproject.toml)
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"
