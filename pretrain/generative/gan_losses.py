"""GAN objectives in numerically stable logit form (log σ(ℓ) = −softplus(−ℓ), log(1 − σ(ℓ)) = −softplus(ℓ)).

Discriminator D = σ(ℓ) (both minimax and non-saturating): maximise E log D(x) + E log(1 − D(G(z))), i.e. minimise
    L_D = E softplus(−ℓ_real) + E softplus(ℓ_fake)
Generator, minimax:       minimise E log(1 − D(G(z))) = −E softplus(ℓ_fake)
Generator, non-saturating: minimise −E log D(G(z))    =  E softplus(−ℓ_fake)
WGAN critic f (weights clipped to [−c, c]): maximise E f(x) − E f(G(z)), i.e. minimise L_f = E f(G(z)) − E f(x);
generator minimises −E f(G(z)).
All inputs are cast to fp32; results are batch means.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """−[E log σ(ℓ_real) + E log(1 − σ(ℓ_fake))]."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def generator_loss(fake_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """The generator's loss on D's logits of its samples: ``minimax`` | ``nonsaturating`` | ``wgan``."""
    f = fake_logits.float()
    if kind == "minimax":
        return -F.softplus(f).mean()
    if kind == "nonsaturating":
        return F.softplus(-f).mean()
    if kind == "wgan":
        return -f.mean()
    raise ValueError(f"gan loss must be minimax|nonsaturating|wgan, got {kind!r}")


def critic_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """WGAN critic: E f(G(z)) − E f(x) (the negated Wasserstein estimate)."""
    return fake_scores.float().mean() - real_scores.float().mean()


@torch.no_grad()
def clip_weights_(module: nn.Module, clip: float) -> None:
    """Clamp every parameter of ``module`` to [−clip, clip] in place (WGAN's crude Lipschitz constraint)."""
    for p in module.parameters():
        p.clamp_(-clip, clip)
