"""The agent of adaptive hopping: a Gaussian-process map that suggests the next landing and ingests the result.

:class:`GPMapAgent` implements bluesky-adaptive's agent protocols (``bluesky_adaptive.protocols.Optimizer``:
``suggest``/``ingest``/``get_best_points``; ``TrialFaultAware``: ``register_failures``;
``SupportsStoppingCriteria``: ``should_stop``), so the same object is driven in-process by
:func:`espt_bluesky.plans.adaptive.adaptive_hopping_scan` or by bluesky-adaptive's own plans
(:meth:`GPMapAgent.optimization_problem`), and later by an agent beside the queue server.  The numbers come
from :mod:`espt_bluesky.analysis.gp_sampling`; this module only keeps the state (hops, attempted landings,
budget, kernel hyperparameters) and the refit schedule.

A suggestion is ``{"_id": k, "x": µm, "y": µm, "proposal": Proposal}``; an outcome is
``{"_id": k, "x": µm, "y": µm, "objective": value, "valid": bool}`` (invalid landings, and valid ones whose
objective is not finite, never enter the model; every landing counts for the minimum separation).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..analysis import gp_sampling as gps
from ..errors import InvalidArgument

__all__ = ["GPMapAgent", "replay_decisions"]


class GPMapAgent:
    """Gaussian-process map agent over (x, y) µm (see the module docstring).

    Parameters
    ----------
    candidates : (N, 2) array, µm
        Allowed landings (inside the stage limits and the region): :func:`~espt_bluesky.analysis.gp_sampling.
        candidate_grid`.
    strategy : {"mapping", "hotspots", "balanced", "boundary"}
    min_separation : float, µm
        No landing closer than this to an earlier one (valid or not).
    survey : (M, 2) array, µm
        Seed landings suggested first, in order.
    max_hops : int
        Budget of valid hops (survey included); invalid landings do not count.
    max_attempts : int
        Most landings in all (valid or not): a sample where every landing fails is not mapped blind.
    span, min_length : float, µm
        Length-scale bounds of the GP (see :func:`~espt_bluesky.analysis.gp_sampling.fit_gp`).
    beta : float
        UCB weight of ``"hotspots"``/``"balanced"``.
    threshold : float, optional
        Class threshold of ``"boundary"`` (default: midpoint of the values measured so far).
    nu : float
        Matérn smoothness.
    refit_every : int
        Fit the hyperparameters by marginal likelihood when the number of valid hops is a multiple of this
        (and for the first model); in between keep them (a cheap Cholesky update).
    anisotropic : bool
        One length scale per axis (straight features such as step bands).
    """

    def __init__(self, candidates: Any, *, strategy: str, min_separation: float, survey: Any, max_hops: int,
                 max_attempts: int, span: float, min_length: float, beta: float = 2.0,
                 threshold: float | None = None, nu: float = 1.5, refit_every: int = 5, anisotropic: bool = False):
        self.candidates = np.asarray(candidates, float)
        self.strategy = strategy
        self.min_separation = float(min_separation)
        self.survey = [tuple(map(float, p)) for p in np.asarray(survey, float)]
        self.max_hops, self.max_attempts = int(max_hops), int(max_attempts)
        self.span, self.min_length = float(span), float(min_length)
        self.beta, self.threshold, self.nu = float(beta), threshold, float(nu)
        self.refit_every = int(refit_every)
        self.anisotropic = bool(anisotropic)
        self.X: list[tuple[float, float]] = []  # valid hops (model)
        self.y: list[float] = []
        self.attempted: list[tuple[float, float]] = []  # every landing
        self.kernel: dict[str, float] | None = None
        self.kernel_n = -1  # number of valid hops of the last refit
        self._next_id = 0
        self._pending: dict[Any, Mapping] = {}
        self._stop: str | None = None

    # ------------------------------------------------------------------ state
    @property
    def n_valid(self) -> int:
        return len(self.y)

    @property
    def n_attempted(self) -> int:
        return len(self.attempted)

    def _survey_left(self) -> list[tuple[float, float]]:
        """Survey landings not yet attempted and not too close to a landing (a resumed run skips them)."""
        if not self.survey:
            return []
        att = np.asarray(self.attempted, float).reshape(-1, 2)
        ok = gps.far_enough(np.asarray(self.survey), att, self.min_separation * (1 - 1e-9))
        return [p for p, k in zip(self.survey, ok) if k]

    def load(self, x: Sequence[float], y: Sequence[float], valid: Sequence[Any], objective: Sequence[float]) -> None:
        """Rebuild the state from recorded landings (a resumed run): positions, validity and objective values."""
        for xi, yi, v, o in zip(x, y, valid, objective):
            self._record(float(xi), float(yi), bool(v), float(o))

    def _record(self, x: float, y: float, valid: bool, objective: float) -> None:
        self.attempted.append((x, y))
        if valid and math.isfinite(objective):
            self.X.append((x, y))
            self.y.append(objective)

    def _kernel_for_next(self) -> dict[str, float] | None:
        """None (fit) on the refit schedule, else the kept hyperparameters."""
        n = self.n_valid
        if self.kernel is None or (n != self.kernel_n and n % self.refit_every == 0):
            return None
        return self.kernel

    # ------------------------------------------------------------------ bluesky-adaptive protocol
    def suggest(self, num_points: int | None = None) -> list[dict[str, Any]]:
        """Up to ``num_points`` (default 1) next landings; an empty list when the budget or the candidates are
        used up (:meth:`should_stop` says why).  Several points at once: each later one treats the earlier ones
        as landed with their predicted value (kriging believer)."""
        n = 1 if num_points is None else int(num_points)
        out: list[dict[str, Any]] = []
        X, y, att = list(self.X), list(self.y), list(self.attempted)
        survey = self._survey_left()
        kernel = self._kernel_for_next()
        for _ in range(n):
            if self.n_valid + len(out) >= self.max_hops:
                self._stop = f"hop budget used ({self.max_hops} valid hops)"
                break
            if self.n_attempted + len(out) >= self.max_attempts:
                self._stop = f"attempt budget used ({self.max_attempts} landings)"
                break
            if survey:
                x0, y0 = survey.pop(0)
                k_s = len(self.survey) - len(survey)
                prop = gps.Proposal(x=x0, y=y0, strategy="survey", reason=f"survey point {k_s} of "
                                    f"{len(self.survey)}", n_model=len(y), n_attempted=len(att))
            elif len(y) < 2:
                self._stop = "fewer than 2 valid hops after the survey: no model to propose from"
                break
            else:
                prop = gps.propose(np.asarray(X), np.asarray(y), np.asarray(att), self.candidates,
                                   strategy=self.strategy, min_separation=self.min_separation, span=self.span,
                                   min_length=self.min_length, beta=self.beta, threshold=self.threshold,
                                   nu=self.nu, kernel_params=kernel, anisotropic=self.anisotropic)
                if prop is None:
                    self._stop = (f"no candidate left farther than min_separation={self.min_separation:g} µm "
                                  f"from every landing")
                    break
                if prop.refit:
                    kernel = dict(length_scale=prop.length_scale, length_scale_y=prop.length_scale_y,
                                  amplitude=prop.amplitude, noise=prop.noise)
                    if not out:
                        self.kernel, self.kernel_n = kernel, len(y)
                X.append((prop.x, prop.y))
                y.append(prop.mean)
            att.append((prop.x, prop.y))
            sid = self._next_id
            self._next_id += 1
            s = {"_id": sid, "x": prop.x, "y": prop.y, "proposal": prop}
            self._pending[sid] = s
            out.append(s)
        return out

    def ingest(self, points: Sequence[Mapping]) -> None:
        """Record outcomes ``{"_id", "x", "y", "objective", "valid"}`` (invalid or non-finite: landing only)."""
        for p in points:
            self._pending.pop(p.get("_id"), None)
            self._record(float(p["x"]), float(p["y"]), bool(p.get("valid", True)),
                         float(p.get("objective", math.nan)))

    def register_failures(self, suggestions: Sequence[Mapping]) -> None:
        """Suggestions whose acquisition failed: attempted (kept out of the model), not retried."""
        self.ingest([{**s, "valid": False, "objective": math.nan} for s in suggestions])

    def should_stop(self) -> tuple[bool, str | None]:
        if self.n_valid >= self.max_hops:
            return True, f"hop budget used ({self.max_hops} valid hops)"
        if self.n_attempted >= self.max_attempts:
            return True, f"attempt budget used ({self.max_attempts} landings)"
        return (self._stop is not None), self._stop

    def get_best_points(self) -> list[tuple[Any, Mapping, Mapping]]:
        """The highest measured objective: [(index, {"x", "y"}, {"objective"})] (empty before a valid hop)."""
        if not self.y:
            return []
        k = int(np.argmax(self.y))
        return [(k, {"x": self.X[k][0], "y": self.X[k][1]}, {"objective": self.y[k]})]

    # ------------------------------------------------------------------ model and maps
    def model(self):
        """The GP fitted (hyperparameters by marginal likelihood) to every valid hop so far."""
        if self.n_valid < 2:
            raise InvalidArgument(f"{self.n_valid} valid hop(s): a map model needs at least 2")
        return gps.fit_gp(np.asarray(self.X), np.asarray(self.y), span=self.span, min_length=self.min_length,
                          nu=self.nu, anisotropic=self.anisotropic)

    def optimization_problem(self, actuators: Sequence[Any], sensors: Sequence[Any], evaluation_function: Any,
                             acquisition_plan: Any = None):
        """This agent as a ``bluesky_adaptive.protocols.OptimizationProblem`` (for bluesky-adaptive's
        ``optimize``/``optimize_in_run`` plans)."""
        from bluesky_adaptive.protocols import OptimizationProblem

        return OptimizationProblem(optimizer=self, actuators=actuators, sensors=sensors,
                                   evaluation_function=evaluation_function, acquisition_plan=acquisition_plan)


def replay_decisions(settings: Mapping[str, Any], decisions: Mapping[str, Sequence]) -> list[dict[str, Any]]:
    """Rebuild each recorded proposal from the hops recorded before it.

    Parameters
    ----------
    settings : dict
        The start document's ``adaptive`` entry (candidate bounds/spacing/region, strategy, separation, GP
        settings).
    decisions : dict of arrays
        The ``decisions`` stream's columns (``decision_x``, ``decision_y``, ``decision_valid``,
        ``decision_objective``, ``decision_strategy``, ``decision_refit``, ``decision_length_scale``,
        ``decision_amplitude``, ``decision_noise``), in hop order.

    Returns
    -------
    list of dict
        For every non-survey decision: ``hop``, ``recorded`` (x, y), ``replayed`` (x, y), and for those whose
        hyperparameters were fitted, ``recorded_length_scale`` and ``replayed_length_scale``.
    """
    cand = settings_candidates(settings)
    d = {k: list(v) for k, v in decisions.items()}
    X, y, att, out = [], [], [], []
    for k in range(len(d["decision_x"])):
        xk, yk = float(d["decision_x"][k]), float(d["decision_y"][k])
        if str(d["decision_strategy"][k]) != "survey":
            refit = bool(int(d["decision_refit"][k]))
            ls_y = d.get("decision_length_scale_y", d["decision_length_scale"])[k]
            kp = None if refit else dict(length_scale=float(d["decision_length_scale"][k]),
                                         length_scale_y=float(ls_y), amplitude=float(d["decision_amplitude"][k]),
                                         noise=float(d["decision_noise"][k]))
            p = gps.propose(np.asarray(X), np.asarray(y), np.asarray(att), cand, strategy=settings["strategy"],
                            min_separation=settings["min_separation"], span=settings["span"],
                            min_length=settings["min_length"], beta=settings["beta"],
                            threshold=settings.get("threshold"), nu=settings["nu"], kernel_params=kp,
                            anisotropic=bool(settings.get("anisotropic", False)))
            row = dict(hop=k, recorded=(xk, yk), replayed=None if p is None else (p.x, p.y))
            if refit and p is not None:
                row.update(recorded_length_scale=float(d["decision_length_scale"][k]),
                           replayed_length_scale=p.length_scale)
            out.append(row)
        att.append((xk, yk))
        o = float(d["decision_objective"][k])
        if int(d["decision_valid"][k]) and math.isfinite(o):
            X.append((xk, yk))
            y.append(o)
    return out


def settings_candidates(settings: Mapping[str, Any]) -> np.ndarray:
    """The candidate grid described by a start document's ``adaptive`` entry."""
    return gps.candidate_grid(settings["bounds"], settings["spacing"], settings.get("region"))
