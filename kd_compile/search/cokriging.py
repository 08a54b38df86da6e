"""Two-fidelity co-kriging (Kennedy & O'Hagan's AR(1) model) as one GPyTorch/BoTorch GP.

``y_high(x) = rho * y_low(x) + delta(x)`` with ``y_low`` and ``delta`` independent GPs. Stacked
over both fidelities, with ``s = 0`` for a low-fidelity point and ``s = 1`` for a full-fidelity
one, the joint covariance is::

    k((x, s), (x', s')) = r(s) r(s') k_low(x, x') + s s' k_delta(x, x'),   r(0) = 1, r(1) = rho

so ``rho``, the two kernels' hyper-parameters, the two fidelities' means and the noise are all
fitted together by exact marginal likelihood (``fit_gpytorch_mll``), as MF-KD fits ``rho``
("a scaling factor which is fitted by maximum likelihood"). Low- and full-fidelity points need
not be nested (the joint GP needs no low-fidelity value at a full-fidelity point, unlike the
recursive two-step estimate).

Inputs to the model are ``(n, d + 1)``: the unit-cube encoding and the fidelity indicator last.
BoTorch and GPyTorch are imported lazily (architecture convention 4).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .gp import fit_mll

__all__ = ["fit_cokriging", "predict", "rho_of"]


def _modules() -> tuple[Any, Any]:
    """The kernel and mean classes, built on first use (GPyTorch is imported lazily)."""
    global _CACHE
    if _CACHE is not None:
        return _CACHE
    import torch
    from gpytorch.constraints import Interval
    from gpytorch.kernels import Kernel
    from gpytorch.means import Mean
    from gpytorch.priors import NormalPrior

    class AR1Kernel(Kernel):
        """The AR(1) co-kriging covariance over ``(x, s)``; ``k_low`` and ``k_delta`` act on x."""

        def __init__(self, k_low: Kernel, k_delta: Kernel) -> None:
            super().__init__()
            self.k_low, self.k_delta = k_low, k_delta
            # rho may be any real in principle; a wide interval keeps L-BFGS away from blow-ups,
            # a N(1, 1) prior says "the fidelities agree" until the data say otherwise
            self.register_parameter("raw_rho", torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)))
            self.register_constraint("raw_rho", Interval(-10.0, 10.0))
            self.register_prior("rho_prior", NormalPrior(1.0, 1.0), lambda m: m.rho, lambda m, v: m._set_rho(v))
            self._set_rho(1.0)

        @property
        def rho(self) -> torch.Tensor:
            return self.raw_rho_constraint.transform(self.raw_rho)

        def _set_rho(self, value: Any) -> None:
            v = torch.as_tensor(value, dtype=self.raw_rho.dtype).reshape(1)
            self.initialize(raw_rho=self.raw_rho_constraint.inverse_transform(v))

        def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, **params: Any) -> torch.Tensor:
            z1, s1 = x1[..., :-1], x1[..., -1]
            z2, s2 = x2[..., :-1], x2[..., -1]
            r1 = 1.0 + (self.rho - 1.0) * s1
            r2 = 1.0 + (self.rho - 1.0) * s2
            k_low = self.k_low(z1, z2, diag=diag)
            k_d = self.k_delta(z1, z2, diag=diag)
            if diag:
                return r1 * r2 * k_low + s1 * s2 * k_d
            k_low, k_d = k_low.to_dense(), k_d.to_dense()
            return r1.unsqueeze(-1) * r2.unsqueeze(-2) * k_low + s1.unsqueeze(-1) * s2.unsqueeze(-2) * k_d

    class FidelityMean(Mean):
        """A constant mean per fidelity (the AR(1) model's ``rho * mu_low + mu_delta`` at s = 1)."""

        def __init__(self) -> None:
            super().__init__()
            self.register_parameter("low", torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)))
            self.register_parameter("high", torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            s = x[..., -1]
            return self.low + (self.high - self.low) * s

    _CACHE = (AR1Kernel, FidelityMean)
    return _CACHE


_CACHE: tuple[Any, Any] | None = None


def fit_cokriging(
    x_low: np.ndarray, y_low: np.ndarray, x_high: np.ndarray, y_high: np.ndarray, *, maxiter: int = 200
) -> Any:
    """Fit the AR(1) co-kriging GP to both fidelities' (maximise-oriented) targets.

    ``k_low`` is the Matern-5/2 ARD kernel with BoTorch's dimension-scaled lengthscale prior (as
    :func:`~kd_compile.search.gp.fit_gp`; no output scale, the outcome is standardised over both
    fidelities); ``k_delta`` the same kernel with an output scale (the discrepancy's size is
    learned); one Gaussian noise with BoTorch's log-normal prior. A fit that fails keeps the
    initial values (rho 1) rather than ending a search.

    Args:
        x_low, x_high: unit-cube inputs ``(n_low, d)`` and ``(n_high, d)``.
        y_low, y_high: their targets ``(n,)``, larger is better.
        maxiter: L-BFGS iterations for the marginal-likelihood fit.

    Returns:
        The fitted BoTorch ``SingleTaskGP`` over ``(n, d + 1)`` inputs, in eval mode.
    """
    import torch
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from botorch.models.utils.gpytorch_modules import (
        get_covar_module_with_dim_scaled_prior,
        get_gaussian_likelihood_with_lognormal_prior,
    )
    from gpytorch.kernels import ScaleKernel

    ar1, fmean = _modules()
    d = np.asarray(x_low).shape[1]
    x = np.vstack([np.c_[x_low, np.zeros(len(x_low))], np.c_[x_high, np.ones(len(x_high))]])
    y = np.r_[np.asarray(y_low, dtype=np.float64).ravel(), np.asarray(y_high, dtype=np.float64).ravel()]
    tx = torch.as_tensor(x, dtype=torch.float64)
    ty = torch.as_tensor(y, dtype=torch.float64).reshape(-1, 1)
    k_low = get_covar_module_with_dim_scaled_prior(ard_num_dims=d, use_rbf_kernel=False)
    k_delta = ScaleKernel(get_covar_module_with_dim_scaled_prior(ard_num_dims=d, use_rbf_kernel=False))
    model = SingleTaskGP(
        tx,
        ty,
        covar_module=ar1(k_low, k_delta).to(torch.float64),
        mean_module=fmean().to(torch.float64),
        likelihood=get_gaussian_likelihood_with_lognormal_prior(),
        outcome_transform=Standardize(m=1),
    )
    return fit_mll(model, maxiter, "co-kriging")


def rho_of(model: Any) -> float:
    """The fitted scaling factor ``rho`` of a model from :func:`fit_cokriging`."""
    return float(model.covar_module.rho.detach().reshape(-1)[0])


def predict(model: Any, x: np.ndarray, high: bool) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and std (latent, no noise) of ``y_high`` (``high``) or ``y_low`` at the
    unit-cube points ``x`` ``(n, d)``, in the targets' units; each ``(n,)``."""
    import torch

    xs = np.c_[x, np.full(len(x), 1.0 if high else 0.0)]
    with torch.no_grad():
        post = model.posterior(torch.as_tensor(xs, dtype=torch.float64))
        mean = post.mean.reshape(-1).cpu().numpy()
        std = post.variance.clamp_min(0).sqrt().reshape(-1).cpu().numpy()
    return mean, std
