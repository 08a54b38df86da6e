"""The measured rows joined with their models' kernels: the :class:`Problem` fits and evaluations run on."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..profilers.roofline import DeviceTerms, KernelTable, fuse, kernel_rows
from ..targets.profile import TargetProfile, get_target
from .counts import LAYER_COSTS, layer_costs
from .tables import NAS_FIT, MeasuredRow

# the sampled tables (``tables.NAS_SAMPLE`` architectures), of which fits use the first ``nas_fit``
NAS_FAMILIES = ("nb201", "fbnet", "anb", "ofa")


@dataclass
class Problem:
    """Measured rows with their kernel table, ready to fit and evaluate.

    Attributes:
        rows: the measurements.
        table: their kernels (device scales 1).
        seconds: measured seconds per batch, shape (M,).
        flops: FLOPs per sample of each row's model.
        params: parameters of each row's model.
        fit_mask: rows a fit may use (all but the NAS architectures beyond ``NAS_FIT``).
    """

    rows: list[MeasuredRow]
    table: KernelTable
    seconds: np.ndarray
    flops: np.ndarray
    params: np.ndarray
    fit_mask: np.ndarray

    def mask(self, pred: Callable[[MeasuredRow], bool]) -> np.ndarray:
        return np.array([pred(r) for r in self.rows], dtype=bool)

    def with_nas_fit(self, nas_fit: int) -> Problem:
        """The same rows, with the fits using the first ``nas_fit`` architectures of each NAS table."""
        return dataclasses.replace(self, fit_mask=nas_fit_mask(self.rows, nas_fit))


def nas_fit_mask(rows: Sequence[MeasuredRow], nas_fit: int) -> np.ndarray:
    """Rows a fit may use: every non-NAS row, and the first ``nas_fit`` architectures (in table
    order) of each NAS-Bench-201 / FBNet / Accel-NASBench / OFA table."""
    nas_rank: dict[str, dict[str, int]] = defaultdict(dict)
    for r in rows:
        fam = r.spec.split(":", 1)[0]
        if fam in NAS_FAMILIES:
            nas_rank[(fam + r.file)].setdefault(r.spec, len(nas_rank[fam + r.file]))
    return np.array([r.spec.split(":", 1)[0] not in NAS_FAMILIES
                     or nas_rank[r.spec.split(":", 1)[0] + r.file][r.spec] < nas_fit for r in rows], dtype=bool)


def build_problem(rows: Sequence[MeasuredRow], verbose: bool = False, nas_fit: int = NAS_FIT,
                  profiles: Mapping[str, TargetProfile] | None = None, counts: Path | None = None) -> Problem:
    """Count (or load) every row's model and build the kernel table. A row's device is looked up
    in ``profiles`` first (a user's own TOML profile), then among the built-in targets. ``counts``:
    the op-count cache to keep new counts in (default: the shipped one, ``counts.LAYER_COSTS``,
    which the benchmarks of this repository extend; a user's run passes one of its own, seeded from
    the shipped one)."""
    costs = (layer_costs({r.spec for r in rows}, verbose=verbose) if counts is None else
             layer_costs({r.spec for r in rows}, cache=counts, verbose=verbose, seed=LAYER_COSTS))
    rows = [r for r in rows if r.spec in costs]
    kern: dict[tuple[str, str], np.ndarray] = {}
    devs: dict[tuple[str, str, str], DeviceTerms] = {}
    ks, ds = [], []
    for r in rows:
        if (r.spec, r.runtime) not in kern:
            kern[(r.spec, r.runtime)] = kernel_rows(fuse(costs[r.spec][0], r.runtime))
        if (r.device, r.precision, r.runtime) not in devs:
            prof = (profiles or {}).get(r.device) or get_target(r.device)
            devs[(r.device, r.precision, r.runtime)] = DeviceTerms.of(prof, r.precision, r.runtime)
        ks.append(kern[(r.spec, r.runtime)])
        ds.append(devs[(r.device, r.precision, r.runtime)])
    table = KernelTable.build(ks, [r.batch for r in rows], ds)
    fit_mask = nas_fit_mask(rows, nas_fit)
    return Problem(rows, table, np.array([r.seconds for r in rows]),
                   np.array([sum(o.flops for o in costs[r.spec][0]) for r in rows], float),
                   np.array([costs[r.spec][1] for r in rows], float), fit_mask)
