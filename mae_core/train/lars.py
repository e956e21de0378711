"""LARS, exactly as the official MAE `util/lars.py` (from MoCo v3), for the linear probe.

timm's `Lars` is not the same update: it adapts per parameter group, only where that group has
weight decay (or `always_adapt`), so at the linear probe's weight decay 0 it is plain SGD; and its
trust ratio divides by `|g| + wd * |w| + eps`, not by the norm of the decayed update. The published
linear-probe numbers come from the official rule: matrices get weight decay and the trust ratio,
vectors (biases, norm parameters) get neither, and all get heavy-ball momentum (buffer `mu`).
"""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum and a per-matrix trust ratio `trust_coefficient * |w| / |g + wd * w|`."""

    def __init__(self, params, lr: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.9,
                 trust_coefficient: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      trust_coefficient=trust_coefficient))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if p.ndim > 1:  # not a bias or a norm parameter
                    dp = dp.add(p, alpha=g["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    trust = g["trust_coefficient"] * param_norm / update_norm
                    q = torch.where(param_norm > 0.0, torch.where(update_norm > 0, trust, one), one)
                    dp = dp.mul(q)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])
        return loss
