"""The linear probe: multinomial logistic regression on standardised frozen features.

    min_W,b  (1/n) Σ_i CE(W x_i + b, y_i) + λ ‖W‖²
Full-batch L-BFGS (strong Wolfe line search) in float32 on CPU or GPU, trained to convergence from zero — a
convex problem with a unique optimum, so the result is deterministic. λ is chosen on a class-stratified
validation split of the training features (data_pipeline/split.py) from a log-spaced grid, then the probe is refit on all of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from data_pipeline.split import stratified_split

DEFAULT_GRID = tuple(float(x) for x in np.logspace(-5, -1, 5))


@dataclass
class ProbeResult:
    top1: float
    top5: float
    l2: float
    val_top1: dict[str, float] = field(default_factory=dict)
    n_train: int = 0
    n_test: int = 0
    dim: int = 0
    iterations: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Zero mean, unit variance per feature, with the training split's statistics (constant features → 0)."""
    mean = train.mean(0)
    std = train.std(0)
    std[std < 1e-8] = 1.0
    return [(a - mean) / std for a in (train, *others)]


def fit_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float, device: str = "cpu",
                 max_iter: int = 500, tol: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(W [C, D], b [C], iterations) minimising mean cross-entropy + l2·‖W‖² with full-batch L-BFGS."""
    xt = torch.as_tensor(x, dtype=torch.float32, device=device)
    yt = torch.as_tensor(y, dtype=torch.long, device=device)
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float32, device=device, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float32, device=device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=tol,
                            tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(xt @ w.T + b, yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    iterations = opt.state[opt._params[0]].get("n_iter", 0)
    return w.detach(), b.detach(), int(iterations)


def topk_accuracy(logits: torch.Tensor, y: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices.cpu().numpy()
    return float((top == y[:, None]).any(1).mean())


def linear_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 grid: tuple[float, ...] = DEFAULT_GRID, val_fraction: float = 0.2, seed: int = 0,
                 device: str = "cpu") -> ProbeResult:
    """Choose λ on a validation split of the training features, refit on all of them, score the test set."""
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    tr, va = stratified_split(y_train, val_fraction, seed)
    a, b_ = standardize(x_train[tr], x_train[va])
    val_scores = {}
    for l2 in grid:
        w, b, _ = fit_logistic(a, y_train[tr], num_classes, l2, device)
        logits = torch.as_tensor(b_, dtype=torch.float32, device=device) @ w.T + b
        val_scores[f"{l2:.0e}"] = topk_accuracy(logits, y_train[va], 1)
    best = max(grid, key=lambda l2: (val_scores[f"{l2:.0e}"], l2))  # ties → the stronger regulariser
    xtr, xte = standardize(x_train, x_test)
    w, b, iters = fit_logistic(xtr, y_train, num_classes, best, device)
    logits = torch.as_tensor(xte, dtype=torch.float32, device=device) @ w.T + b
    return ProbeResult(top1=topk_accuracy(logits, y_test, 1), top5=topk_accuracy(logits, y_test, 5), l2=best,
                       val_top1=val_scores, n_train=len(y_train), n_test=len(y_test), dim=x_train.shape[1],
                       iterations=iters)
