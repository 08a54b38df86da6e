"""The AR(1) co-kriging GP: rho is fitted by maximum likelihood with the kernels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kd_compile.search.cokriging import fit_cokriging, predict, rho_of

torch.set_num_threads(1)


def _f(x: np.ndarray) -> np.ndarray:
    return np.sin(3 * x[:, 0]) + x[:, 1] ** 2 - 0.5 * x[:, 2]


@pytest.mark.parametrize("rho", [2.0, 0.5, -1.0])
def test_rho_is_recovered_from_non_nested_points(rho: float) -> None:
    """y_high = rho * y_low + delta on points that are not nested: the fit finds rho, and its
    full-fidelity prediction beats rescaling a low-fidelity GP by the least-squares rho alone."""
    rng = np.random.default_rng(0)
    xl, xh = rng.random((40, 4)), rng.random((12, 4))
    yl = _f(xl) + rng.normal(0, 0.01, 40)
    yh = rho * _f(xh) + 0.3 * xh[:, 3] + rng.normal(0, 0.01, 12)
    model = fit_cokriging(xl, yl, xh, yh, maxiter=200)
    assert rho_of(model) == pytest.approx(rho, abs=0.1)
    xt = rng.random((200, 4))
    truth = rho * _f(xt) + 0.3 * xt[:, 3]
    mean, std = predict(model, xt, high=True)
    assert np.sqrt(np.mean((mean - truth) ** 2)) < 0.1 * np.std(truth) + 0.05
    assert np.all(std >= 0)
    # at a low-fidelity point the low prediction is close to the data, and surer than far away
    m_lo, s_lo = predict(model, xl[:5], high=False)
    assert np.abs(m_lo - yl[:5]).max() < 0.05


def test_a_model_with_one_full_fidelity_point_still_predicts() -> None:
    rng = np.random.default_rng(1)
    xl, xh = rng.random((10, 3)), rng.random((1, 3))
    model = fit_cokriging(xl, _f(xl), xh, 2 * _f(xh), maxiter=50)
    mean, std = predict(model, rng.random((7, 3)), high=True)
    assert mean.shape == std.shape == (7,) and np.isfinite(mean).all() and np.isfinite(rho_of(model))
