"""The standard scaler saved beside a model (``<model>.scaler.json``) and inside a bundle's
manifest, read and applied by column name: one implementation for the CLI and the runtime.

numpy only, so the runtime imports it as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class ScalerError(ValueError):
    """A scaler payload that is malformed, or that does not cover the columns asked for."""


@dataclass(frozen=True)
class StandardScaling:
    """Per-column mean and scale of a fitted standard scaler."""

    mean: dict[str, float]
    scale: dict[str, float]

    @classmethod
    def from_payload(cls, payload: dict) -> StandardScaling:
        """From what ``data.save_scaler_json`` writes (``kind``, ``components``, ``mean``,
        ``scale``)."""
        try:
            names, mean, scale = payload["components"], payload["mean"], payload["scale"]
            if payload.get("kind", "standard") != "standard" or not (
                len(names) == len(mean) == len(scale)
            ):
                raise ValueError("not a standard scaler")
            return cls(
                dict(zip(names, map(float, mean), strict=True)),
                dict(zip(names, map(float, scale), strict=True)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ScalerError(f"not a timesclip-darts standard scaler ({err})") from err

    def params(
        self, columns: Sequence[str], unscaled_ok: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and scale per column, float32. Columns the scaler does not know are an error,
        or pass unchanged (mean 0, scale 1) with ``unscaled_ok``."""
        missing = [c for c in columns if c not in self.mean]
        if missing and not unscaled_ok:
            raise ScalerError(f"the model's scaler knows no column(s) {missing}")
        mean = np.array([self.mean.get(c, 0.0) for c in columns], dtype=np.float32)
        scale = np.array([self.scale.get(c, 1.0) for c in columns], dtype=np.float32)
        return mean, scale
