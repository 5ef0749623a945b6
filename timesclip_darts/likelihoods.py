"""The likelihoods TimesCLIP supports, one row each, and point forecasts and quantiles from their
parameters. numpy and the standard library only: the model (de-normalising its head), the
export step (the manifest's likelihood spec), the runtime and the command line all read this
table, and the runtime needs no Darts, torch or scipy for it. Adding a likelihood is one row in
:data:`LIKELIHOODS` (and its test in ``tests/test_quantiles.py``).

Parameters come with the last axis holding what Darts' ``predict_likelihood_parameters=True``
returns (and what ``RollingForecaster`` returns with ``parameters=True``): the fitted quantiles
for ``QuantileRegression``, ``(location, scale)`` for the location/scale likelihoods, where the
scale is the distribution's own (after Darts' softplus), in the forecast's units.

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
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

# How a parameter is de-normalised from the window's instance norm (mean, std):
LOCATION = "location"  # like the data: value * std + mean
SCALE = "scale"  # a spread: softplus(raw) * std (Darts applies the softplus)


def _laplace(q: float) -> float:
    """torch's ``Laplace.icdf`` for loc 0, scale 1: ``-sign(q - 0.5) log1p(-2 |q - 0.5|)``."""
    term = q - 0.5
    return 0.0 if term == 0 else -math.copysign(1.0, term) * math.log1p(-2 * abs(term))


@dataclass(frozen=True)
class Likelihood:
    """One supported Darts likelihood: its class (in ``darts.utils.likelihood_models``), the
    command line's name for it, the kind of each parameter and, for location/scale
    likelihoods, the standard distribution's inverse CDF ``z(q)``. ``QuantileRegression`` has
    one location parameter per fitted quantile and no closed form."""

    darts_class: str
    cli_name: str
    kinds: tuple[str, ...] | None  # None: one LOCATION per fitted quantile
    standard_quantile: Callable[[float], float] | None = None
    cli_arguments: dict[str, Any] = field(default_factory=dict)

    @property
    def is_location_scale(self) -> bool:
        return self.kinds == (LOCATION, SCALE)

    def build(self) -> Any:
        """The Darts likelihood object the command line trains with."""
        from darts.utils import likelihood_models

        return getattr(likelihood_models, self.darts_class)(**self.cli_arguments)


LIKELIHOODS: dict[str, Likelihood] = {
    row.darts_class: row
    for row in (
        Likelihood(
            "QuantileRegression",
            "quantile",
            None,
            cli_arguments={"quantiles": [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]},
        ),
        Likelihood("GaussianLikelihood", "gaussian", (LOCATION, SCALE), NormalDist().inv_cdf),
        Likelihood("LaplaceLikelihood", "laplace", (LOCATION, SCALE), _laplace),
        Likelihood(
            "CauchyLikelihood", "cauchy", (LOCATION, SCALE), lambda q: math.tan(math.pi * (q - 0.5))
        ),
        Likelihood(
            "GumbelLikelihood", "gumbel", (LOCATION, SCALE), lambda q: -math.log(-math.log(q))
        ),
    )
}
SUPPORTED = tuple(LIKELIHOODS)
_MATCH_TOLERANCE = 1e-9


class UnsupportedLikelihoodError(ValueError):
    """A Darts likelihood TimesCLIP cannot de-normalise per window (not in :data:`LIKELIHOODS`)."""


def likelihood_row(likelihood: Any) -> Likelihood | None:
    """The registry row of a Darts likelihood object (``None`` for a point model)."""
    if likelihood is None:
        return None
    row = LIKELIHOODS.get(type(likelihood).__name__)
    if row is None:
        raise UnsupportedLikelihoodError(
            f"TimesCLIPModel does not support {type(likelihood).__name__}: its forecast is "
            "de-normalised per window, which is defined for location/scale and quantile "
            f"outputs. Supported likelihoods: {', '.join(SUPPORTED)}."
        )
    return row


def by_cli_name(name: str) -> Any:
    """``--likelihood NAME`` -> the Darts likelihood object (``none`` -> ``None``)."""
    if name == "none":
        return None
    return next(row for row in LIKELIHOODS.values() if row.cli_name == name).build()


def cli_names() -> list[str]:
    """The ``--likelihood`` choices: ``none`` and one per row."""
    return ["none", *(row.cli_name for row in LIKELIHOODS.values())]


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
    side reads parameters exactly as the runtime does (the export step writes the same)."""
    row = likelihood_row(likelihood)
    if row is None:
        return {"name": None, "parameters": ["value"], "kinds": [LOCATION], "point_index": 0}
    names = list(likelihood.parameter_names)
    if row.kinds is None:
        quantiles = [float(q) for q in likelihood.quantiles]
        return {
            "name": row.darts_class,
            "quantiles": quantiles,
            "parameters": names,
            "kinds": [LOCATION] * len(names),
            "point_index": quantiles.index(0.5),
            "point": "median (the 0.5 quantile)",
        }
    return {
        "name": row.darts_class,
        "parameters": names,
        "kinds": list(row.kinds),
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
    if LIKELIHOODS[name].kinds is None:
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
    row = LIKELIHOODS[name]
    if row.kinds is None:
        fitted = likelihood_spec["quantiles"]
        return point, params[..., [_fitted_index(fitted, q) for q in quantiles]]
    z = np.array([row.standard_quantile(float(q)) for q in quantiles], dtype=np.float64)
    loc = params[..., :1].astype(np.float64)
    scale = params[..., 1:2].astype(np.float64)
    return point, (loc + scale * z).astype(params.dtype)


def _fitted_index(fitted: Sequence[float], q: float) -> int | None:
    for i, value in enumerate(fitted):
        if abs(value - q) <= _MATCH_TOLERANCE:
            return i
    return None
