"""MMCL's co-learning heads (training only): FAM, the contrastive RGB alignment, and FRM, the
text-driven refinement of the classifier scores."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcl.errors import MMCLError


class FAM(nn.Module):
    """Feature Alignment Module: an RGB feature per sample -> an embedding in the skeleton space.

    ``MLP(D -> 256, ReLU, 256 -> 256)``; ``loss(skeleton, rgb)`` is the symmetric contrastive loss.
    """

    def __init__(self, rgb_dim: int, embed_dim: int = 256, temperature: float = 0.4):
        super().__init__()
        if rgb_dim <= 0 or embed_dim <= 0 or temperature <= 0:
            raise MMCLError(f"FAM needs positive sizes and temperature, got {rgb_dim=}, {embed_dim=}, {temperature=}")
        self.mlp = nn.Sequential(nn.Linear(rgb_dim, embed_dim), nn.ReLU(inplace=True), nn.Linear(embed_dim, embed_dim))
        self.temperature = temperature

    def forward(self, rgb: Tensor) -> Tensor:
        """``(N, D)`` RGB features -> ``(N, embed_dim)`` embeddings."""
        return self.mlp(rgb)

    def loss(self, skeleton: Tensor, rgb: Tensor) -> Tensor:
        return contrastive_loss(skeleton, rgb, self.temperature)


def contrastive_loss(a: Tensor, b: Tensor, temperature: float = 0.4) -> Tensor:
    """Symmetric cross-modal contrastive loss on cosine similarities.

    For anchor ``a_i`` the positive is ``b_i``; the denominator sums ``exp(sim / tau)`` over all
    ``b_j`` and over all ``a_j`` with ``j != i``; likewise with the modalities swapped; the two
    directions are averaged (the NT-Xent form over the 2N embeddings). Computed in float32.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise MMCLError(f"contrastive loss needs two (N, D) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]).float(), dim=1)
    sim = z @ z.t() / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)


class FRM(nn.Module):
    """Feature Refinement Module: a text feature per sample re-weights the classifier scores.

    ``MLP(D -> 64, ReLU, 64 -> 2)`` and a softmax give weights ``p, n``; with learnable
    ``Pos``/``Neg`` of size ``num_class`` (initialised to 1),
    ``refined = p * (Pos * logits) + n * (Neg * logits)``.
    """

    def __init__(self, text_dim: int, num_class: int, hidden: int = 64):
        super().__init__()
        if text_dim <= 0 or num_class <= 0:
            raise MMCLError(f"FRM needs positive sizes, got {text_dim=}, {num_class=}")
        self.mlp = nn.Sequential(nn.Linear(text_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))
        self.pos = nn.Parameter(torch.ones(num_class))
        self.neg = nn.Parameter(torch.ones(num_class))

    def weights(self, text: Tensor) -> Tensor:
        """``(N, D)`` text features -> ``(N, 2)`` softmax weights ``(p, n)``."""
        return torch.softmax(self.mlp(text).float(), dim=-1)

    def forward(self, logits: Tensor, text: Tensor) -> Tensor:
        if logits.shape[-1] != self.pos.shape[0]:
            raise MMCLError(f"FRM was built for {self.pos.shape[0]} classes, got logits for {logits.shape[-1]}")
        w = self.weights(text)
        p, n = w[:, :1], w[:, 1:]
        logits = logits.float()
        return p * (self.pos * logits) + n * (self.neg * logits)
