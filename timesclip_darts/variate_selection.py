"""Variate selection: each variate's language CLS attends over all variate tokens."""

from __future__ import annotations

import torch
from torch import nn


class VariateSelection(nn.Module):
    """Cross-attention (query: a variate's language CLS; keys/values: all variate tokens), then
    residual + LayerNorm and a feed-forward block with residual + LayerNorm: a selection token.

    ``forward`` also returns the attention weights ``[B, N_query, N_key]`` (averaged over heads)
    so users can see which variates drive each variate's forecast.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm_attention = nn.LayerNorm(d_model)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, 2 * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * d_model, d_model),
        )
        self.norm_feed_forward = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, language_cls: torch.Tensor, variate_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        attended, weights = self.attention(
            language_cls,
            variate_tokens,
            variate_tokens,
            need_weights=True,
            average_attn_weights=True,
        )
        hidden = self.norm_attention(language_cls + self.dropout(attended))
        selected = self.norm_feed_forward(hidden + self.dropout(self.feed_forward(hidden)))
        return selected, weights
