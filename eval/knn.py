"""Weighted kNN monitor (InstDisc / solo-learn convention): cosine similarity, k nearest training features,
votes weighted by exp(s/T); k = 200, T = 0.1."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def knn_top1(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, k: int = 200,
             temperature: float = 0.1, chunk: int = 1024, device: str = "cpu") -> float:
    """Top-1 accuracy of the temperature-weighted vote of the k most cosine-similar training samples."""
    train = F.normalize(torch.as_tensor(x_train, dtype=torch.float32, device=device), dim=1)
    test = F.normalize(torch.as_tensor(x_test, dtype=torch.float32, device=device), dim=1)
    labels = torch.as_tensor(y_train, dtype=torch.long, device=device)
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    k = min(k, train.shape[0])
    correct = 0
    for s in range(0, test.shape[0], chunk):
        sim, idx = (test[s:s + chunk] @ train.T).topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=device)
        votes.scatter_add_(1, labels[idx], (sim / temperature).exp())
        pred = votes.argmax(1).cpu().numpy()
        correct += int((pred == y_test[s:s + chunk]).sum())
    return correct / len(y_test)
