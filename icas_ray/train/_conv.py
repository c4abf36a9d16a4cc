"""The convolutional autoencoder of ``conv_small`` and ``conv_large`` (layers only; the
registry and the size rules are in :mod:`icas_ray.train.models`)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvAutoencoder", "build_autoencoder"]


class ConvAutoencoder(nn.Module):
    """An encoder and a decoder composed: ``embed = encoder``, ``forward = decoder(encoder)``.

    Args:
        encoder: ``(N, 3, S, S) float32`` in [0, 1] -> ``(N, D) float32``.
        decoder: ``(N, D)`` -> ``(N, 3, S, S) float32`` in [0, 1].
        image_size: ``S``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, image_size: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` in [0, 1] -> reconstruction, same shape, in [0, 1]."""
        out: torch.Tensor = self.decoder(self.encoder(x))
        return out

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` in [0, 1] -> ``(N, D) float32`` features."""
        out: torch.Tensor = self.encoder(x)
        return out


def _down(c_in: int, c_out: int, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=2, padding=kernel // 2),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _up(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _refine(c: int) -> list[nn.Module]:
    return [nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]


def build_autoencoder(image_size: int, channels: tuple[int, ...], embed_dim: int, *,
                       stem_kernel: int, refine: bool) -> ConvAutoencoder:
    """Stride-2 stages through ``channels`` (the first with ``stem_kernel``), a linear
    bottleneck of ``embed_dim``, and the mirrored decoder ending in a sigmoid."""
    side = image_size >> len(channels)
    flat = channels[-1] * side * side
    enc: list[nn.Module] = []
    c_in = 3
    for i, c in enumerate(channels):
        enc += _down(c_in, c, stem_kernel if i == 0 else 3)
        if refine and i > 0:
            enc += _refine(c)
        c_in = c
    enc += [nn.Flatten(), nn.Linear(flat, embed_dim)]
    dec: list[nn.Module] = [nn.Linear(embed_dim, flat), nn.Unflatten(1, (channels[-1], side, side)),
                            nn.ReLU(inplace=True)]
    for c_hi, c_lo in zip(channels[::-1], channels[-2::-1]):
        dec += _up(c_hi, c_lo)
        if refine:
            dec += _refine(c_lo)
    dec += [nn.ConvTranspose2d(channels[0], 3, 4, stride=2, padding=1), nn.Sigmoid()]
    return ConvAutoencoder(nn.Sequential(*enc), nn.Sequential(*dec), image_size)
