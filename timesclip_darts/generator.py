"""Forecast head over the fused tokens of each variate."""

from __future__ import annotations

import math

import torch
from torch import nn


class PerVariateLinear(nn.Module):
    """``n_variates`` independent linear layers, one per variate, applied in one ``einsum``:
    ``[B, N, in_features] -> [B, N, out_features]`` (the DLinear paper's ``individual=True``)."""

    def __init__(self, n_variates: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_variates, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_variates, out_features))
        # nn.Linear's initialisation, per variate.
        bound = 1 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N always equals n_variates: TimesCLIP validates its input and fuses n_targets rows.
        return torch.einsum("bnf,nfo->bno", x, self.weight) + self.bias


class Generator(nn.Module):
    """[vision token, language CLS, patch tokens, selection token] of a variate -> its forecast.

    A flatten head (as in PatchTST): LayerNorm over each token, flatten the ``P + 3`` tokens,
    one linear layer to ``prediction_steps * n_params`` values, shared across variates (the
    default, as PatchTST and DLinear/NLinear as run here) or, with ``per_variate`` set to the
    number of forecast variates, one per variate. Every token, the vision token included, has
    its own weights into every output, so perturbing the vision features changes the forecast;
    that is what makes the vision path needed at inference.
    """

    def __init__(
        self,
        d_model: int,
        n_tokens: int,
        prediction_steps: int,
        n_params: int = 1,
        dropout: float = 0.0,
        per_variate: int | None = None,
    ) -> None:
        super().__init__()
        self.prediction_steps = prediction_steps
        self.n_params = n_params
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        in_features, out_features = n_tokens * d_model, prediction_steps * n_params
        self.head = (
            nn.Linear(in_features, out_features)
            if per_variate is None
            else PerVariateLinear(per_variate, in_features, out_features)
        )

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """Fused tokens ``[B, N, n_tokens, D]`` -> normalised forecast ``[B, N, H, n_params]``."""
        b, n = fused.shape[:2]
        flat = self.dropout(self.norm(fused).flatten(2))
        return self.head(flat).reshape(b, n, self.prediction_steps, self.n_params)
