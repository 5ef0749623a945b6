"""Point forecasts and quantiles from a likelihood's parameters, shared by the Darts side (the
``predict`` and ``backtest`` commands) and the runtime side (``stream``). numpy and the standard
library only, so the runtime needs no Darts, torch or scipy for it.

Parameters come with the last axis holding what Darts' ``predict_likelihood_parameters=True``
returns (and what :class:`RollingForecaster` returns with ``parameters=True``): the fitted
quantiles for ``QuantileRegression``, ``(location, scale)`` for the location/scale likelihoods,
where the scale is the distribution's own (after Darts' softplus), in the forecast's units.

- The point forecast is the runtime's: the median (the 0.5 quantile) for ``QuantileRegression``,
  the location parameter otherwise. For Gaussian, Laplace and Cauchy that is the median too;
  for Gumbel it is the mode (the median is ``loc - scale * ln(ln 2)``, above it).
- Quantiles of location/scale likelihoods are closed-form, ``loc + scale * z(q)`` with ``z`` the
  standard distribution's inverse CDF as torch defines it (``torch.distributions.Normal``,
  ``Laplace``, ``Cauchy``, ``Gumbel``, which Darts samples from).
- ``QuantileRegression`` has only the quantiles it was trained on. Any other is refused, with
  the list of fitted ones, rather than interpolated: a straight line between two fitted
  quantiles is a guess about the distribution's shape that the model never made, and tail
  quantiles outside the fitted range could not be had at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np


def _laplace(q: float) -> float:
    """torch's ``Laplace.icdf`` for loc 0, scale 1: ``-sign(q - 0.5) log1p(-2 |q - 0.5|)``."""
    term = q - 0.5
    return 0.0 if term == 0 else -math.copysign(1.0, term) * math.log1p(-2 * abs(term))


# Location/scale likelihoods (Darts' class names) and their standard inverse CDFs z(q).
_STANDARD_QUANTILES: dict[str, Callable[[float], float]] = {
    "GaussianLikelihood": NormalDist().inv_cdf,
    "LaplaceLikelihood": _laplace,
    "CauchyLikelihood": lambda q: math.tan(math.pi * (q - 0.5)),
    "GumbelLikelihood": lambda q: -math.log(-math.log(q)),
}
LOCATION_SCALE = tuple(_STANDARD_QUANTILES)
SUPPORTED = ("QuantileRegression", *LOCATION_SCALE)
_MATCH_TOLERANCE = 1e-9


class QuantileError(ValueError):
    """Quantiles that cannot be given: not numbers, outside (0, 1), not fitted by the model's
    ``QuantileRegression``, or asked of a model without a likelihood. A usage error (exit 2)."""


def parse_quantiles(values: Sequence[str | float]) -> list[float]:
    """Command-line quantiles -> sorted, distinct floats strictly between 0 and 1."""
    parsed = []
    for value in values:
        try:
            q = float(value)
        except (TypeError, ValueError):
            raise QuantileError(f"quantile {value!r} is not a number") from None
        if not 0.0 < q < 1.0:  # also refuses nan and inf
            raise QuantileError(f"quantile {value!r} must be strictly between 0 and 1")
        parsed.append(q)
    if not parsed:
        raise QuantileError("no quantiles given")
    return sorted(set(parsed))


def quantile_label(q: float) -> str:
    """The column suffix of a quantile: ``q0.1`` (shortest text that reads back as ``q``)."""
    return f"q{float(q)!r}"


def likelihood_spec(likelihood: Any) -> dict:
    """The manifest's likelihood spec for a Darts likelihood object (or ``None``), so the Darts
    side reads parameters exactly as the runtime does (``export/bundle.py`` writes the same)."""
    if likelihood is None:
        return {"name": None, "parameters": ["value"], "kinds": ["location"], "point_index": 0}
    name = type(likelihood).__name__
    names = list(likelihood.parameter_names)
    if name == "QuantileRegression":
        quantiles = [float(q) for q in likelihood.quantiles]
        return {
            "name": name,
            "quantiles": quantiles,
            "parameters": names,
            "kinds": ["location"] * len(names),
            "point_index": quantiles.index(0.5),
            "point": "median (the 0.5 quantile)",
        }
    return {
        "name": name,
        "parameters": names,
        "kinds": ["location", "scale"],
        "point_index": 0,
        "point": f"the location parameter '{names[0]}'",
    }


def check_quantiles(spec: dict, quantiles: Sequence[float]) -> None:
    """Raise :class:`QuantileError` unless the model described by ``spec`` can give them."""
    if not quantiles:
        return
    name = spec.get("name")
    if name is None:
        raise QuantileError(
            "the model has no likelihood, so its forecasts have no quantiles; train it with a "
            "likelihood (`train --likelihood quantile` or `gaussian`)"
        )
    if name not in SUPPORTED:
        raise QuantileError(
            f"no quantiles for likelihood {name}; supported: {', '.join(SUPPORTED)}"
        )
    if name == "QuantileRegression":
        fitted = spec["quantiles"]
        missing = [q for q in quantiles if _fitted_index(fitted, q) is None]
        if missing:
            raise QuantileError(
                f"quantile(s) {', '.join(repr(q) for q in missing)} were not fitted; the model's "
                f"QuantileRegression has {', '.join(repr(q) for q in fitted)}"
            )


def point_and_quantiles(
    params: np.ndarray, likelihood_spec: dict, quantiles: Sequence[float] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Point forecast ``[...]`` and quantiles ``[..., len(quantiles)]`` from likelihood
    parameters ``[..., n_parameters]``, in the parameters' dtype."""
    params = np.asarray(params)
    n_parameters = len(likelihood_spec["parameters"])
    if params.shape[-1] != n_parameters:
        raise ValueError(
            f"expected {n_parameters} parameters {likelihood_spec['parameters']} on the last "
            f"axis, got shape {params.shape}"
        )
    check_quantiles(likelihood_spec, quantiles)
    point = params[..., likelihood_spec["point_index"]]
    shape = (*params.shape[:-1], len(quantiles))
    if not quantiles:
        return point, np.empty(shape, params.dtype)
    name = likelihood_spec["name"]
    if name == "QuantileRegression":
        fitted = likelihood_spec["quantiles"]
        return point, params[..., [_fitted_index(fitted, q) for q in quantiles]]
    z = np.array([_STANDARD_QUANTILES[name](float(q)) for q in quantiles], dtype=np.float64)
    loc = params[..., :1].astype(np.float64)
    scale = params[..., 1:2].astype(np.float64)
    return point, (loc + scale * z).astype(params.dtype)


def _fitted_index(fitted: Sequence[float], q: float) -> int | None:
    for i, value in enumerate(fitted):
        if abs(value - q) <= _MATCH_TOLERANCE:
            return i
    return None
