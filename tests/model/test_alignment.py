"""InfoNCE against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from timesclip_darts.alignment import info_nce


def test_info_nce_matches_hand_computation() -> None:
    vision = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    language = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    # cosine similarities: v0·t0 = 1, v0·t1 = 1/√2, v1·t0 = 0, v1·t1 = 1/√2
    s = [[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]]

    def ce(row: list[float], target: int) -> float:
        return -(row[target] / tau - math.log(sum(math.exp(v / tau) for v in row)))

    rows = ce(s[0], 0) + ce(s[1], 1)
    cols = ce([s[0][0], s[1][0]], 0) + ce([s[0][1], s[1][1]], 1)
    expected = (rows / 2 + cols / 2) / 2
    assert info_nce(vision, language, tau).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_low_for_aligned_pairs_and_high_for_shuffled() -> None:
    torch.manual_seed(0)
    tokens = torch.randn(16, 8)
    aligned = info_nce(tokens, tokens, 0.07)
    shuffled = info_nce(tokens, tokens[torch.randperm(16)], 0.07)
    assert aligned < 0.1 < shuffled


def test_info_nce_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="one shape"):
        info_nce(torch.zeros(4, 8), torch.zeros(5, 8), 0.1)
