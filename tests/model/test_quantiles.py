"""export/quantiles.py: point forecasts and quantiles from likelihood parameters, numpy-only."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from darts.utils.likelihood_models import (
    CauchyLikelihood,
    GaussianLikelihood,
    GumbelLikelihood,
    LaplaceLikelihood,
    QuantileRegression,
)

from timesclip_darts.likelihoods import (
    QuantileError,
    likelihood_spec,
    parse_quantiles,
    point_and_quantiles,
    quantile_label,
)

LEVELS = [1e-4, 0.01, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 0.99, 1 - 1e-4]
TORCH = {
    GaussianLikelihood: torch.distributions.Normal,
    LaplaceLikelihood: torch.distributions.Laplace,
    CauchyLikelihood: torch.distributions.Cauchy,
    GumbelLikelihood: torch.distributions.Gumbel,
}


@pytest.mark.parametrize("likelihood", list(TORCH), ids=lambda c: c.__name__)
def test_location_scale_quantiles_equal_torch_icdf(likelihood) -> None:
    rng = np.random.default_rng(0)
    loc = rng.normal(0, 10, size=(3, 4))
    scale = rng.uniform(0.01, 5, size=(3, 4))
    params = np.stack([loc, scale], axis=-1)  # [3, 4, 2]: (location, scale) last
    point, quantiles = point_and_quantiles(params, likelihood_spec(likelihood()), LEVELS)
    distribution = TORCH[likelihood](torch.from_numpy(loc), torch.from_numpy(scale))
    expected = np.stack(
        [distribution.icdf(torch.full_like(distribution.loc, q)).numpy() for q in LEVELS], -1
    )
    np.testing.assert_allclose(quantiles, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(point, loc)  # the runtime's point: the location
    assert (np.diff(quantiles, axis=-1) > 0).all()


def test_median_is_the_point_except_for_gumbel() -> None:
    params = np.array([[3.0, 2.0]], dtype=np.float32)
    for likelihood in (GaussianLikelihood, LaplaceLikelihood, CauchyLikelihood):
        point, median = point_and_quantiles(params, likelihood_spec(likelihood()), [0.5])
        assert median[..., 0] == point == 3.0 and median.dtype == np.float32
    # Gumbel's location is its mode; its median lies scale * -ln(ln 2) above.
    point, median = point_and_quantiles(params, likelihood_spec(GumbelLikelihood()), [0.5])
    assert point == 3.0 and median[0, 0] == pytest.approx(3.0 - 2.0 * np.log(np.log(2)))


def test_quantile_regression_reads_the_fitted_quantiles() -> None:
    spec = likelihood_spec(QuantileRegression([0.05, 0.1, 0.5, 0.9, 0.95]))
    params = np.arange(2 * 5, dtype=np.float32).reshape(2, 5)
    point, quantiles = point_and_quantiles(params, spec, [0.1, 0.9])
    np.testing.assert_array_equal(point, params[:, 2])
    np.testing.assert_array_equal(quantiles, params[:, [1, 3]])
    with pytest.raises(QuantileError, match=r"0\.3 were not fitted.*has 0\.05, 0\.1, 0\.5, 0\.9"):
        point_and_quantiles(params, spec, [0.1, 0.3])


def test_a_point_model_has_no_quantiles() -> None:
    spec = likelihood_spec(None)
    values = np.ones((4, 1), np.float32)
    point, quantiles = point_and_quantiles(values, spec)
    assert point.shape == (4,) and quantiles.shape == (4, 0)
    with pytest.raises(QuantileError, match="no likelihood"):
        point_and_quantiles(values, spec, [0.5])


def test_wrong_parameter_count_is_refused() -> None:
    with pytest.raises(ValueError, match=r"expected 2 parameters \['mu', 'sigma'\]"):
        point_and_quantiles(np.ones((3, 3)), likelihood_spec(GaussianLikelihood()), [0.5])


def test_parse_quantiles_sorts_and_refuses_bad_values() -> None:
    assert parse_quantiles(["0.9", "0.1", "0.10", "0.5"]) == [0.1, 0.5, 0.9]
    for bad, message in [
        ("0", "strictly between 0 and 1"),
        ("1", "strictly between 0 and 1"),
        ("1.5", "strictly between 0 and 1"),
        ("-0.1", "strictly between 0 and 1"),
        ("nan", "strictly between 0 and 1"),
        ("inf", "strictly between 0 and 1"),
        ("abc", "not a number"),
    ]:
        with pytest.raises(QuantileError, match=message):
            parse_quantiles(["0.5", bad])
    assert [quantile_label(q) for q in (0.1, 0.05, 0.975)] == ["q0.1", "q0.05", "q0.975"]


def test_module_imports_neither_torch_nor_darts() -> None:
    code = (
        "import sys, timesclip_darts.likelihoods; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'darts', 'scipy', 'pandas', 'onnxruntime'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
