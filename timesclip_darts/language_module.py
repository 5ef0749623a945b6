"""Language branch: numeric patches read as "words" by a fine-tuned CLIP text transformer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPTextModel


class LanguageModule(nn.Module):
    """Patch embedding + learnable CLS + CLIP text encoder (bidirectional) + output projection.

    CLIP's text transformer is causal; with the CLS first, a causal mask would let it see only
    itself. Patches of a window are all observed together, so this module runs the encoder with
    **bidirectional** attention (``is_causal=False``, no mask). Position embeddings are CLIP's
    learned ones; when a window has more tokens than CLIP's positions (77), they are linearly
    interpolated to the needed length instead of failing.

    The same encoder also reads the *variate tokens* (each variate's whole window embedded as one
    token, iTransformer style) as a set without positions: this is the paper's second language box,
    sharing weights with the first (a choice the paper leaves open; it keeps the model small).
    CLIP's word-embedding table is dropped: it is never used, and keeping it would put 49,408 rows
    into the optimiser, the parameter counts and the exported graph.
    """

    def __init__(
        self,
        text_model: CLIPTextModel,
        patch_length: int,
        time_steps: int,
        d_model: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = text_model.config.hidden_size
        text_model.embeddings.token_embedding = None
        self.text_model = text_model
        self.hidden_size = hidden
        self.patch_embedding = nn.Linear(patch_length, hidden)
        self.variate_embedding = nn.Linear(time_steps, hidden)
        self.cls_token = nn.Parameter(torch.randn(hidden) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.output_projection = nn.Linear(hidden, d_model)

    @property
    def max_positions(self) -> int:
        return self.text_model.config.max_position_embeddings

    def position_embeddings(self, n_tokens: int) -> torch.Tensor:
        """CLIP's learned positions for ``n_tokens``, interpolated when it exceeds 77."""
        weight = self.text_model.embeddings.position_embedding.weight  # [77, H]
        if n_tokens <= weight.shape[0]:
            return weight[:n_tokens]
        return F.interpolate(weight.T[None], size=n_tokens, mode="linear", align_corners=True)[0].T

    def _encode(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.text_model.encoder(inputs_embeds=hidden, attention_mask=None, is_causal=False)
        return self.output_projection(self.text_model.final_layer_norm(out.last_hidden_state))

    def encode_patches(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches ``[B, N, P, L]`` -> language CLS ``[B, N, D]``, patch tokens ``[B, N, P, D]``."""
        b, n, p, _ = patches.shape
        tokens = self.patch_embedding(patches.flatten(0, 1))  # [B*N, P, H]
        cls = self.cls_token.expand(b * n, 1, -1)
        hidden = torch.cat([cls, tokens], dim=1) + self.position_embeddings(p + 1)
        encoded = self._encode(self.dropout(hidden)).reshape(b, n, p + 1, -1)
        return encoded[:, :, 0], encoded[:, :, 1:]

    def encode_variates(self, x_norm: torch.Tensor) -> torch.Tensor:
        """Whole normalised windows ``[B, T, N]`` -> one token per variate ``[B, N, D]``."""
        tokens = self.variate_embedding(x_norm.transpose(1, 2))  # [B, N, H]
        return self._encode(self.dropout(tokens))
