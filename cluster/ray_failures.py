"""Ray Train failure handling: a user error in a worker ends the run at once; a dead worker is restarted as before.

Ray Train retries every worker-group failure up to ``FailureConfig.max_failures`` times. A user error (a bad shard,
a refused checkpoint, a missing file: cluster/errors.py) fails the same way on every attempt, so
:class:`FailFastPolicy` raises it on first sight; anything else (a killed process, a lost node, a bug) goes to
Ray's default policy. :func:`user_error_of` returns the worker's original exception from Ray's ``WorkerGroupError``,
so the driver can show bigbatch's own message instead of Ray's truncated error summary.
"""

from __future__ import annotations

from typing import Any

from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.failure_handling import (
    FailureDecision,
    FailurePolicy,
    create_failure_policy,
)
from ray.train.v2.api.exceptions import TrainingFailedError, WorkerGroupError

from cluster.errors import is_user_error


def user_error_of(error: BaseException) -> BaseException | None:
    """The lowest-rank worker's user error inside a Ray Train ``WorkerGroupError``, None if there is none."""
    failures = getattr(error, "worker_failures", None) or {}
    for _, exc in sorted(failures.items()):
        if is_user_error(exc):
            return exc
    return None


class FailFastPolicy(FailurePolicy):
    """RAISE when any worker failed with a user error; otherwise the decision of Ray's default policy."""

    def __init__(self, inner: FailurePolicy) -> None:
        super().__init__(inner.failure_config)
        self.inner = inner

    def make_decision(self, training_failed_error: TrainingFailedError) -> FailureDecision:
        if isinstance(training_failed_error, WorkerGroupError) and user_error_of(training_failed_error) is not None:
            return FailureDecision.RAISE
        return self.inner.make_decision(training_failed_error)


class FailFastTorchTrainer(TorchTrainer):
    """TorchTrainer whose controller uses :class:`FailFastPolicy` (Ray 2.60 builds the policy inside ``fit``, from
    ``FailureConfig`` only, and hands it to the controller through ``_initialize_and_run_controller``)."""

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any) -> Any:
        inner = controller_init_kwargs.get("failure_policy") or create_failure_policy(self.run_config.failure_config)
        controller_init_kwargs["failure_policy"] = FailFastPolicy(inner)
        return super()._initialize_and_run_controller(**controller_init_kwargs)
