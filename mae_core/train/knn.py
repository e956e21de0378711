"""Weighted k-NN on frozen features, as DINO's `eval_knn.py` (Caron et al., 2021).

Features are L2-normalised; a val image's k nearest train images by cosine similarity vote for
their labels with weight exp(similarity / T); the class with the largest summed weight wins. DINO's
k = 20 and T = 0.07. No training and no hyper-parameter fitted to the data: a second reading of
the same features beside the linear probe, sensitive to their local structure rather than to a
linear separation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .evaluate import topk_correct


@torch.inference_mode()
def knn_scores(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int, k: int = 20,
               temperature: float = 0.07, max_elements: int = 1 << 27) -> torch.Tensor:
    """(N_test, num_classes) summed vote weights. Test rows go in chunks of at most `max_elements`
    similarities, so ImageNet's 1.28M train features never meet all 50k val ones at once."""
    train = F.normalize(train_x.float(), dim=1)
    test = F.normalize(test_x.float(), dim=1)
    k = min(k, train.shape[0])
    chunk = max(1, max_elements // train.shape[0])
    scores = []
    for start in range(0, test.shape[0], chunk):
        sim, idx = (test[start:start + chunk] @ train.T).topk(k, dim=1)
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        scores.append(votes.scatter_add_(1, train_y[idx], (sim / temperature).exp()))
    return torch.cat(scores)


def knn_classify(train_x, train_y, test_x, test_y, num_classes: int, k: int = 20, temperature: float = 0.07) -> dict:
    """top1 / top5 (percent) of the weighted k-NN vote on the test features."""
    scores = knn_scores(train_x, train_y, test_x, num_classes, k, temperature)
    top1, top5 = topk_correct(scores, test_y.to(scores.device))
    n = len(test_y)
    return {"top1": 100.0 * top1.item() / n, "top5": 100.0 * top5.item() / n}
