"""Shared helpers for the model-based strategies: seeding, encoding, dedup, GP fitting.

Everything a strategy draws at random goes through :func:`derive_seed`, keyed by the strategy's
seed and by how many trials it has been told (plus how many suggestions are pending since the
last ``tell``). A strategy rebuilt from the journal (``tell(past)`` then ``ask``) therefore
draws exactly what the original run drew at the same point; no RNG state has to be stored.

BoTorch and GPyTorch are imported lazily inside the functions (architecture convention 4), so
``import kd_compile.search`` stays cheap.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .space import Config, ParamSpace
from .trial import Trial, TrialStatus

if TYPE_CHECKING:  # pragma: no cover
    from botorch.models import SingleTaskGP


# -- seeding ------------------------------------------------------------------------------------
def derive_seed(*parts: int | str) -> int:
    """A 31-bit seed that depends on every part (strings hashed stably, not with ``hash()``)."""
    ints: list[int] = []
    for p in parts:
        if isinstance(p, str):
            ints.extend(p.encode("utf-8"))
            ints.append(0xFFFF)  # separator so ("ab", "c") != ("a", "bc")
        else:
            ints.append(int(p) & 0xFFFFFFFF)
    return int(np.random.SeedSequence(ints).generate_state(1)[0] & 0x7FFFFFFF)


@contextlib.contextmanager
def torch_seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG inside the block, and restore the caller's RNG state after.

    GP fitting (restarts from prior samples) and posterior sampling use the global generator;
    forking keeps a strategy from perturbing the user's RNG stream (and vice versa).
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# -- encoding -----------------------------------------------------------------------------------
def param_slices(space: ParamSpace) -> list[slice]:
    """For each parameter of ``space``, its slice of unit-cube coordinates."""
    out: list[slice] = []
    i = 0
    for p in space.params:
        out.append(slice(i, i + p.width))
        i += p.width
    return out


def encode(space: ParamSpace, configs: Sequence[Config]) -> np.ndarray:
    """Configs -> unit-cube array of shape ``(len(configs), space.dim)``."""
    if not configs:
        return np.zeros((0, space.dim))
    return np.stack([space.to_unit(c) for c in configs])


def snap(space: ParamSpace, u: np.ndarray) -> tuple[list[Config], np.ndarray]:
    """Decode unit rows to configs and re-encode them.

    A GP must score the point that will actually be evaluated: an int or one-hot block decodes
    by rounding/argmax, so the raw candidate is not the config's encoding.

    Args:
        u: array ``(n, space.dim)``.

    Returns:
        (configs, encoded array ``(n, space.dim)``).
    """
    configs = [space.from_unit(row) for row in np.clip(u, 0.0, 1.0)]
    return configs, encode(space, configs)


def seen_keys(space: ParamSpace, trials: Iterable[Trial]) -> set[str]:
    """Keys of every config already evaluated (any status)."""
    return {space.key(t.config) for t in trials}


def unique_new(space: ParamSpace, configs: Sequence[Config], seen: set[str]) -> list[int]:
    """Indices of ``configs`` whose key is neither in ``seen`` nor repeated earlier in the list,
    and that the space's constraint accepts (``space.feasible``; every config without one).

    This is where candidate sets lose their infeasible members: every strategy builds its
    candidates (designs, trust-region and BO candidate sets, measured configs to promote)
    through it, before an acquisition picks among them.
    """
    keep: list[int] = []
    local: set[str] = set()
    constrained = space.constraint is not None
    for i, c in enumerate(configs):
        k = space.key(c)
        if k in seen or k in local:
            continue
        local.add(k)
        if constrained and not space.feasible(c):
            continue
        keep.append(i)
    return keep


def space_size(space: ParamSpace) -> float:
    """Number of distinct configs before canonicalisation (inf with any float param)."""
    n = 1.0
    for p in space.params:
        n *= p.cardinality
    return n


def sobol(dim: int, n: int, seed: int, skip: int = 0) -> np.ndarray:
    """Scrambled Sobol points in ``[0, 1]^dim``: rows ``skip .. skip + n`` of one sequence."""
    from torch.quasirandom import SobolEngine

    eng = SobolEngine(dim, scramble=True, seed=seed)
    if skip:
        eng.fast_forward(skip)
    return eng.draw(n, dtype=_float64()).numpy()


def _float64() -> Any:
    import torch

    return torch.float64


#: random draws per suggestion that :func:`fresh_samples` may spend looking for a new *feasible*
#: config when the space has a constraint (a tight limit can leave a small feasible share)
FEASIBLE_TRIES = 200


def fresh_samples(
    space: ParamSpace, n: int, seen: set[str], rng: np.random.Generator, tries: int = 50
) -> list[Config]:
    """``n`` random configs not in ``seen`` (nor repeated); repeats allowed once the space is spent.

    With a constraint on the space (``space.with_constraint``) each suggestion takes the first
    of up to ``max(tries, FEASIBLE_TRIES) + 1`` draws that is new and feasible; when none is,
    the best effort: the first new draw (infeasible), else the last draw (a repeat), so ``n``
    configs always come back. Without a constraint the draws are exactly the unconstrained ones.

    Adds the returned keys to ``seen``.
    """
    out: list[Config] = []
    for _ in range(n):
        cfg = space.sample(rng)
        if space.constraint is None:
            for _ in range(tries):
                if space.key(cfg) not in seen:
                    break
                cfg = space.sample(rng)
        else:
            cfg = _first_feasible(space, cfg, seen, rng, max(tries, FEASIBLE_TRIES))
        seen.add(space.key(cfg))
        out.append(cfg)
    return out


def _first_feasible(
    space: ParamSpace, cfg: Config, seen: set[str], rng: np.random.Generator, tries: int
) -> Config:
    """The first of ``cfg`` and up to ``tries`` more draws that is new and feasible; else the
    first new draw, else the last draw (bounded: never loops on an infeasible space)."""
    fallback: Config | None = None
    for i in range(tries + 1):
        if i:
            cfg = space.sample(rng)
        if space.key(cfg) in seen:
            continue
        if space.feasible(cfg):
            return cfg
        if fallback is None:
            fallback = cfg
    return fallback if fallback is not None else cfg


def pick_from_unit(
    space: ParamSpace,
    u: np.ndarray,
    n: int,
    seen: set[str],
    rng: np.random.Generator,
) -> list[Config]:
    """Take the first ``n`` new (and feasible, see :func:`unique_new`) configs decoded from the
    rows of ``u``; fill up at random (:func:`fresh_samples`).

    Adds the returned keys to ``seen``.
    """
    configs = [space.from_unit(row) for row in np.clip(u, 0.0, 1.0)]
    out = [configs[i] for i in unique_new(space, configs, seen)][:n]
    seen.update(space.key(c) for c in out)
    if len(out) < n:
        out += fresh_samples(space, n - len(out), seen, rng)
    return out


# -- targets ------------------------------------------------------------------------------------
def penalised_scores(trials: Sequence[Trial]) -> tuple[list[Trial], np.ndarray]:
    """Trials a surrogate should learn from, with their scores (to minimise).

    ``ok`` trials keep their score. ``infeasible`` trials (a hard constraint failed; never
    trained) get a penalty worse than every feasible score, so the surrogate learns to steer
    away from the region without a separate constraint model: ``worst + max(0.5 * range,
    0.1 * |worst|, 1e-3)``. This is robust whatever constraint fired (params, FLOPs, latency,
    memory) and needs no constraint metric to be present. ``failed`` trials say nothing about
    the objective and are dropped (strategies still avoid re-proposing them via
    :func:`seen_keys`). With no ok trial there is nothing to penalise against: returns none.

    Returns:
        (trials used, scores array ``(n,)``).
    """
    ok = [t for t in trials if t.ok]
    if not ok:
        return [], np.zeros(0)
    s = np.asarray([float(t.score) for t in ok])  # type: ignore[arg-type]
    worst, best = float(s.max()), float(s.min())
    penalty = worst + max(0.5 * (worst - best), 0.1 * abs(worst), 1e-3)
    used = [t for t in trials if t.ok or t.status == TrialStatus.INFEASIBLE]
    y = np.asarray([float(t.score) if t.ok else penalty for t in used])  # type: ignore[arg-type]
    return used, y


def fitness(trial: Trial) -> float:
    """A trial's rank when sorting by quality (minimise): its score if ok, else ``inf``.

    Tournaments and good/bad splits rank every evaluated trial; an infeasible or failed one
    ranks after every ok one (ties keep their order under a stable sort).
    """
    return float(trial.score) if trial.ok else math.inf  # type: ignore[arg-type]


# -- GP -----------------------------------------------------------------------------------------
def fit_gp(x: np.ndarray, y: np.ndarray, *, maxiter: int = 200) -> SingleTaskGP:
    """Fit a GP to maximise-oriented targets in the unit cube.

    Matern-5/2 ARD kernel with BoTorch's dimension-scaled log-normal lengthscale prior and a
    log-normal noise prior (Hvarfner et al. 2024; BoTorch's defaults), observation noise
    learned (KD accuracy and latency are noisy), outcome standardised, no output scale (the
    standardised outcome has unit variance). The priors matter at KD-search sample sizes: with
    an unconstrained output scale and noise, 3-10 points are often "explained" as pure noise
    (flat mean, outputscale -> 0), which stalls Thompson sampling. Fitting failures keep the
    initial hyperparameters rather than crashing a search.

    Args:
        x: inputs ``(n, d)`` in ``[0, 1]``.
        y: targets ``(n,)`` or ``(n, 1)``, larger is better.
        maxiter: L-BFGS iterations for the marginal-likelihood fit.

    Returns:
        The fitted ``SingleTaskGP`` in eval mode.
    """
    import torch
    from botorch.models import SingleTaskGP
    from botorch.models.transforms.outcome import Standardize
    from botorch.models.utils.gpytorch_modules import (
        get_covar_module_with_dim_scaled_prior,
        get_gaussian_likelihood_with_lognormal_prior,
    )

    tx = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    ty = torch.as_tensor(np.asarray(y), dtype=torch.float64).reshape(-1, 1)
    d = tx.shape[-1]
    model = SingleTaskGP(
        tx,
        ty,
        covar_module=get_covar_module_with_dim_scaled_prior(ard_num_dims=d, use_rbf_kernel=False),
        likelihood=get_gaussian_likelihood_with_lognormal_prior(),
        outcome_transform=Standardize(m=1),
    )
    return fit_mll(model, maxiter)


def fit_mll(model: Any, maxiter: int, what: str = "GP") -> Any:
    """Fit a BoTorch model's hyper-parameters by exact marginal likelihood (L-BFGS,
    ``maxiter`` iterations) and return it in eval mode. A failed fit must not end a search: the
    model keeps its initial hyper-parameters (logged at debug level)."""
    from botorch.fit import fit_gpytorch_mll
    from gpytorch.mlls import ExactMarginalLogLikelihood

    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": int(maxiter)}})
        except Exception as exc:  # noqa: BLE001
            logging.getLogger(__name__).debug("%s fit failed, using initial values: %s", what, exc)
    model.eval()
    return model


def lengthscales(model: SingleTaskGP) -> np.ndarray:
    """ARD lengthscales ``(d,)`` of a GP built by :func:`fit_gp`."""
    kernel = getattr(model.covar_module, "base_kernel", model.covar_module)
    ls = kernel.lengthscale.detach().reshape(-1)
    return ls.cpu().numpy().astype(np.float64)


def posterior_mean_std(model: SingleTaskGP, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and std (latent function, no noise) at ``x`` ``(n, d)``; each ``(n,)``."""
    import torch

    with torch.no_grad():
        post = model.posterior(torch.as_tensor(x, dtype=torch.float64))
        mean = post.mean.reshape(-1).cpu().numpy()
        std = post.variance.clamp_min(0).sqrt().reshape(-1).cpu().numpy()
    return mean, std


def thompson_pick(model: SingleTaskGP, x: np.ndarray, n: int) -> list[int]:
    """Indices of ``n`` distinct rows of ``x`` chosen by Thompson sampling (BoTorch).

    Uses ``MaxPosteriorSampling`` without replacement: each joint posterior draw over the
    candidates nominates its maximiser.

    Args:
        x: candidates ``(N, d)``, N >= n.
    """
    import torch
    from botorch.generation import MaxPosteriorSampling

    tx = torch.as_tensor(x, dtype=torch.float64)
    n = min(n, tx.shape[0])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        picked = MaxPosteriorSampling(model=model, replacement=False)(tx, num_samples=n)
    picked = picked.reshape(n, -1).cpu().numpy()
    # map rows back to indices (candidates are unique configs, so rows are unique)
    out: list[int] = []
    for row in picked:
        idx = int(np.argmin(np.abs(x - row).sum(axis=1)))
        if idx not in out:
            out.append(idx)
    return out


def thompson_values(model: SingleTaskGP, x: np.ndarray, n: int) -> np.ndarray:
    """``n`` joint posterior draws at ``x`` ``(N, d)``: array ``(n, N)`` (larger is better)."""
    import torch

    tx = torch.as_tensor(x, dtype=torch.float64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = model.posterior(tx).rsample(torch.Size([n]))
    return s.reshape(n, -1).cpu().numpy()


def is_finite(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def bo_candidates(
    space: ParamSpace,
    x_best: np.ndarray,
    n_candidates: int,
    seed: int,
    local_scale: float = 0.1,
) -> np.ndarray:
    """Raw candidates for global BO: half Sobol over the cube, half Gaussian perturbations of
    the best observed points ``x_best`` ``(k, d)`` (the acquisition's maximiser is usually
    near an incumbent; pure Sobol rarely lands there in 10+ dimensions).

    Returns:
        Array ``(n_candidates, d)`` in ``[0, 1]`` (not snapped).
    """
    rng = np.random.default_rng(seed)
    n_glob = n_candidates // 2 if len(x_best) else n_candidates
    glob = sobol(space.dim, n_glob, seed)
    if not len(x_best):
        return glob
    n_loc = n_candidates - n_glob
    base = x_best[rng.integers(0, len(x_best), size=n_loc)]
    loc = np.clip(base + rng.normal(0.0, local_scale, size=base.shape), 0.0, 1.0)
    # one-hot blocks: re-draw a category for ~1/3 of the local candidates instead of blurring
    for p, sl in zip(space.params, param_slices(space)):
        if p.kind == "cat":
            loc[:, sl] = base[:, sl]
            jump = rng.random(n_loc) < 1.0 / 3.0
            cats = rng.integers(0, p.width, size=int(jump.sum()))
            block = np.zeros((int(jump.sum()), p.width))
            block[np.arange(block.shape[0]), cats] = 1.0
            loc[jump, sl] = block
    return np.vstack([glob, loc])


def bo_propose(
    space: ParamSpace,
    configs: Sequence[Config],
    scores: np.ndarray,
    n: int,
    taken: set[str],
    rng: np.random.Generator,
    seed: int,
    *,
    n_candidates: int = 1000,
    maxiter: int = 200,
) -> list[Config]:
    """``n`` new configs by GP Thompson sampling (minimising ``scores``), global BO.

    Adds the returned keys to ``taken``. Falls back to random configs when fewer than two
    points are known.
    """
    if len(configs) < 2:
        return fresh_samples(space, n, taken, rng)
    x = encode(space, configs)
    with torch_seeded(seed):
        model = fit_gp(x, -np.asarray(scores, dtype=np.float64), maxiter=maxiter)
        top = x[np.argsort(scores)[: max(1, min(5, len(scores) // 3))]]
        raw = bo_candidates(space, top, n_candidates, derive_seed(seed, "cand"))
        cands, _ = snap(space, raw)
        keep = unique_new(space, cands, taken)
        cands = [cands[i] for i in keep]
        if not cands:
            return fresh_samples(space, n, taken, rng)
        idx = thompson_pick(model, encode(space, cands), n)
    out = [cands[i] for i in idx]
    taken.update(space.key(c) for c in out)
    if len(out) < n:
        out += fresh_samples(space, n - len(out), taken, rng)
    return out


# -- learned constraints (SCBO) -----------------------------------------------------------------
#: ``Trial.metrics`` key of the constraints that need a measurement (e.g. a measured latency):
#: ``{name: value}``, feasible when ``value <= 0`` (the evaluator records ``latency / limit - 1``).
#: Constraints known without training are filtered before a proposal exists and never need this.
CONSTRAINT_METRIC = "constraints"


def constraint_data(space: ParamSpace, trials: Sequence[Trial]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per learned constraint, the unit-cube inputs and values ``(x (m, d), c (m,))`` of the
    trials that measured it (any status: an infeasible trial is the most informative one)."""
    rows: dict[str, list[tuple[Config, float]]] = {}
    for t in trials:
        for name, v in (t.metrics.get(CONSTRAINT_METRIC) or {}).items():
            if is_finite(v):
                rows.setdefault(str(name), []).append((t.config, float(v)))
    return {k: (encode(space, [c for c, _ in r]), np.array([v for _, v in r])) for k, r in rows.items()}


def violation_draws(
    space: ParamSpace, trials: Sequence[Trial], x: np.ndarray, n: int, *, maxiter: int = 200
) -> np.ndarray | None:
    """SCBO's constraint model (Eriksson & Poloczek 2021): a GP on each learned constraint and
    ``n`` joint posterior draws of it at the candidates ``x`` ``(N, d)``; returns the total
    violation per draw and candidate, ``sum max(c, 0)``, shape ``(n, N)``. None when no
    constraint has two measurements or none was ever violated (nothing to learn yet)."""
    data = {k: v for k, v in constraint_data(space, trials).items() if len(v[1]) >= 2 and (v[1] > 0).any()}
    if not data:
        return None
    total = np.zeros((n, len(x)))
    for xc, c in data.values():
        model = fit_gp(xc, c, maxiter=maxiter)
        total += np.maximum(thompson_values(model, x, n), 0.0)
    return total


def scbo_key(values: np.ndarray, violation: np.ndarray | None, available: np.ndarray) -> np.ndarray:
    """SCBO's ranking of candidates in one posterior draw (larger is better): among the
    ``available`` candidates whose drawn constraints all hold, the drawn objective; when none
    holds, the negative drawn violation. Unavailable candidates rank ``-inf``. Without
    ``violation`` it is the draw itself (plain Thompson sampling).

    Args:
        values: the objective draw ``(N,)``, larger is better.
        violation: the total violation draw ``(N,)`` (a row of :func:`violation_draws`) or None.
        available: ``(N,)`` bool, candidates that may still be picked.
    """
    if violation is None:
        key = values
    else:
        ok = violation <= 0
        key = np.where(ok, values, -np.inf) if (ok & available).any() else -violation
    return np.where(available, key, -np.inf)


def scbo_pick(values: np.ndarray, violation: np.ndarray | None) -> list[int]:
    """One distinct candidate per draw by :func:`scbo_key`: ``values`` ``(n, N)`` objective
    draws, ``violation`` ``(n, N)`` violation draws or None. Returns up to ``n`` indices."""
    n, m = values.shape
    available = np.ones(m, dtype=bool)
    out: list[int] = []
    for i in range(min(n, m)):
        j = int(np.argmax(scbo_key(values[i], None if violation is None else violation[i], available)))
        available[j] = False
        out.append(j)
    return out
