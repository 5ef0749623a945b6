"""Forecast head over the fused tokens of each variate."""

from __future__ import annotations

import torch
from torch import nn


class Generator(nn.Module):
    """[vision token, language CLS, patch tokens, selection token] of a variate -> its forecast.

    A flatten head (as in PatchTST): LayerNorm over each token, flatten the ``P + 3`` tokens,
    one linear layer to ``prediction_steps * n_params`` values. Every token, the vision token
    included, has its own weights into every output, so perturbing the vision features changes
    the forecast; that is what makes the vision path needed at inference.
    """

    def __init__(
        self,
        d_model: int,
        n_tokens: int,
        prediction_steps: int,
        n_params: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.prediction_steps = prediction_steps
        self.n_params = n_params
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(n_tokens * d_model, prediction_steps * n_params)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """Fused tokens ``[B, N, n_tokens, D]`` -> normalised forecast ``[B, N, H, n_params]``."""
        b, n = fused.shape[:2]
        flat = self.dropout(self.norm(fused).flatten(2))
        return self.head(flat).reshape(b, n, self.prediction_steps, self.n_params)
