"""A DCGAN-style convolutional decoder z → image, sized from the image size; the VAE's decoder and the GAN's generator.

Layout: Linear(z) → [C₀, s, s] → k × (ConvTranspose 4×4 stride 2 → norm → ReLU) → Conv 3×3 → out channels, where
k = ⌊log₂(size/4)⌋ and s = ⌈size/2ᵏ⌉ (16 px: 4→8→16; 28 px: 7→14→28); a size that is not s·2ᵏ is centre-cropped.
Channels halve per stage from ``width·min(2ᵏ, 8)`` down to ``width`` at full resolution.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pretrain.encoders import _norm_layer


def upsampling_plan(image_size: int) -> tuple[int, int]:
    """(start side s, number of 2× upsamplings k) with s·2ᵏ ≥ image_size and 4 ≤ s ≤ 8 for image_size ≥ 8."""
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    k = max(0, math.floor(math.log2(image_size / 4))) if image_size >= 4 else 0
    return math.ceil(image_size / 2**k), k


class ConvDecoder(nn.Module):
    """z ``[B, latent_dim]`` → unbounded outputs ``[B, out_channels, image_size, image_size]`` (logits / pre-activations)."""

    def __init__(self, latent_dim: int, image_size: int, width: int = 64, norm: str = "batch",
                 out_channels: int = 3, max_mult: int = 8) -> None:
        super().__init__()
        self.latent_dim, self.image_size = latent_dim, image_size
        start, k = upsampling_plan(image_size)
        self.start = start
        chans = [width * min(2 ** (k - i), max_mult) for i in range(k + 1)]
        bias = norm == "none"
        self.project = nn.Linear(latent_dim, chans[0] * start * start, bias=bias)
        self.stem = nn.Sequential(_norm_layer(norm, chans[0]), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            blocks += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=bias),
                       _norm_layer(norm, c_out), nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*blocks)
        self.to_image = nn.Conv2d(chans[-1], out_channels, 3, padding=1)
        self._init_weights()

    def _init_weights(self) -> None:
        """DCGAN's initialisation: conv/linear weights ~ N(0, 0.02), norm scales ~ N(1, 0.02), biases 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(z.shape[0], -1, self.start, self.start)
        out = self.to_image(self.blocks(self.stem(h)))
        side = out.shape[-1]
        if side != self.image_size:  # centre crop s·2ᵏ → image_size
            o = (side - self.image_size) // 2
            out = out[..., o:o + self.image_size, o:o + self.image_size]
        return out
