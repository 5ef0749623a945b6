"""A saved model and the scaler saved beside it, as every command finds them."""

from __future__ import annotations

from pathlib import Path


def load_model(path: str | Path):
    """``TimesCLIPModel.load``: every unusable file is a ``ModelFileError`` naming the problem."""
    from timesclip_darts.darts_model import TimesCLIPModel

    return TimesCLIPModel.load(str(path))


def scaler_path(model_path: str | Path) -> Path:
    """Where ``train`` saves the model's scaler: ``MODEL_PATH.scaler.json``."""
    return Path(f"{model_path}.scaler.json")
