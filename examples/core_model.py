"""The core TimesCLIP model on its own (no Darts): one training step on random windows.

Run: python examples/core_model.py [--preset tiny]
"""

from __future__ import annotations

import argparse

import torch

from timesclip_darts import TimesCLIP


def main(preset: str = "tiny") -> None:
    model = TimesCLIP(
        time_steps=96,
        n_variates=7,
        prediction_steps=96,
        patch_length=16,
        stride=8,
        d_model=512,
        n_heads=8,
        temperature=0.07,
        clip_model_name=preset,
    )
    print("backbone:", model.backbone_info.describe())
    x = torch.randn(32, 96, 7)  # [batch, time, variates]
    y_true = torch.randn(32, 7, 96)  # [batch, variates, horizon]
    y_pred, contrastive_loss = model(x, return_loss=True)  # y_pred: [32, 7, 96]
    total_loss, loss_dict = model.compute_loss(
        y_pred, y_true, contrastive_loss, lambda_gen=1.0, lambda_align=0.1
    )
    param_groups = model.get_parameter_groups(lr_vision=1e-5, lr_other=1e-4)
    optimizer = torch.optim.AdamW(param_groups)
    total_loss.backward()
    optimizer.step()
    print("forecast:", tuple(y_pred.shape), "losses:", loss_dict)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="tiny", help="CLIP preset, local folder or hub id")
    main(parser.parse_args().preset)
