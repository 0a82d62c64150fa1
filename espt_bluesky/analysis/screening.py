"""SECCM passivation screening: per-spot CV features, clustering of spots, statistics per parameter group.

numpy/scipy, clustering by scikit-learn. Units: time s, potential V, current A (anodic positive, cathodic negative),
charge C (reported positive for both directions), positions µm.

Per spot (one multi-cycle CV of the droplet cell) :func:`spot_features` gives the cathodic and anodic charge of
every cycle, the passivation ratio Q_p2/Q_p1 (cathodic charge of cycle 2 over cycle 1, Martín-Yerga et al. 2021,
2022), the first-cycle cathodic and anodic peak currents and potentials, and the onset potential of the cathodic
(SEI) current on the first sweep.  It only calls :mod:`espt_bluesky.analysis.voltammetry`.

:func:`cluster_spots` groups spots on a standardised feature matrix with a Gaussian mixture
(``sklearn.mixture.GaussianMixture``, number of clusters by BIC) or k-means (``sklearn.cluster.KMeans``, number of
clusters by the mean silhouette, ``sklearn.metrics.silhouette_score``). :func:`group_statistics` compares a feature
between the parameter groups of a combinatorial sweep (Welch t-test for two groups, Kruskal–Wallis and Welch
ANOVA-free one-way ANOVA for more).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InvalidArgument, check_choice, check_finite, check_range
from . import voltammetry as _cv

__all__ = [
    "SpotFeatures", "ScreeningResult", "ClusterResult", "GroupStatistics",
    "spot_features", "screen_spots", "feature_matrix", "cluster_spots", "group_statistics", "DEFAULT_CLUSTER_FEATURES",
]

#: Features used for clustering by default (logarithms of charges and currents; see :func:`feature_matrix`).
DEFAULT_CLUSTER_FEATURES = ("log_q1", "log_q2", "passivation_ratio", "log_ip_cathodic", "onset_potential")


# ------------------------------------------------------------------------------------------------ per spot
@dataclass
class SpotFeatures:
    """Features of one spot's CV.

    Attributes
    ----------
    q_cathodic, q_anodic : ndarray
        Charge per cycle, C (positive numbers), one entry per complete cycle.
    passivation_ratio : float
        Q_p2/Q_p1: cathodic charge of cycle 2 over that of cycle 1 (NaN with a single cycle).
    ip_cathodic, Ep_cathodic : float
        First-cycle cathodic peak current (A, negative) and its potential (V).
    ip_anodic, Ep_anodic : float
        First-cycle anodic peak current (A) and potential (V).
    onset_potential : float
        Potential (V) where the cathodic current of the first cycle first exceeds the baseline (the current at the
        start of the sweep) by the onset threshold (NaN if it never does).
    onset_threshold : float
        The threshold used, A.
    """

    q_cathodic: np.ndarray
    q_anodic: np.ndarray
    passivation_ratio: float
    ip_cathodic: float
    Ep_cathodic: float
    ip_anodic: float
    Ep_anodic: float
    onset_potential: float
    onset_threshold: float


def spot_features(t, E, i, *, e_window: Optional[Sequence[float]] = None, onset_threshold: Optional[float] = None,
                  onset_fraction: float = 0.1, peak_window: Optional[Sequence[float]] = None,
                  baseline_fraction: float = 0.05) -> SpotFeatures:
    """Features of one spot's cyclic voltammogram.

    Parameters
    ----------
    t, E, i : array_like
        Time (s), potential (V), current (A; cathodic negative) of the spot's CV, 1-D, same length, at least
        one complete cycle.
    e_window : (float, float), optional
        Count charge only while E lies in [low, high] V (e.g. (0, 0.8) for the SEI region vs Li+/Li).
    onset_threshold : float, optional
        Cathodic current magnitude (A) that defines the onset.  Default: ``onset_fraction`` × |first-cycle
        cathodic peak current|.
    onset_fraction : float
        Fraction of the first-cycle cathodic peak (above the baseline) used when ``onset_threshold`` is not
        given, (0, 1).
    baseline_fraction : float
        The baseline (double-layer charging current at the start of the sweep, A) is the median current of this
        leading fraction of the first cycle; the onset is where the cathodic current rises ``threshold`` beyond
        it.
    peak_window : (float, float), optional
        Potential window (V) searched for peaks (default: the whole cycle).

    Returns
    -------
    SpotFeatures
    """
    t, E, i = (_as_1d(n, v) for n, v in (("t", t), ("E", E), ("i", i)))
    if not (t.size == E.size == i.size):
        raise InvalidArgument(f"t, E and i must have the same length; got {t.size}, {E.size}, {i.size}")
    check_range("onset_fraction", onset_fraction, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
    cycles = _cv.split_cycles(t, E)
    if not cycles:
        raise InvalidArgument("the CV has no complete cycle; a spot needs at least one")
    q = _cv.cycle_charges(t, E, i, e_window=e_window, cycles=cycles)
    pk = _cv.peak_currents_and_potentials(t, E, i, e_window=peak_window, cycles=cycles)
    ratio = float(q.cathodic[1] / q.cathodic[0]) if q.cathodic.size >= 2 and q.cathodic[0] > 0 else float("nan")
    ipc = float(pk.ip_cathodic[0])
    check_range("baseline_fraction", baseline_fraction, 0.0, 0.5, low_inclusive=False)
    if onset_threshold is None:
        thr = onset_fraction * abs(ipc - float(np.median(i[cycles[0]][: max(3, int(baseline_fraction * (cycles[0].stop - cycles[0].start)))])))
        if not thr > 0:
            thr = float("nan")
    else:
        thr = float(check_range("onset_threshold", onset_threshold, 0.0, low_inclusive=False, units="A"))
    sl = cycles[0]
    i1 = i[sl]
    nb = max(3, int(baseline_fraction * i1.size))
    baseline = float(np.median(i1[:nb]))
    onset = _cv.onset_potential(E[sl], i1 - baseline, thr, "cathodic") if np.isfinite(thr) else float("nan")
    return SpotFeatures(q_cathodic=q.cathodic, q_anodic=q.anodic, passivation_ratio=ratio, ip_cathodic=ipc,
                        Ep_cathodic=float(pk.Ep_cathodic[0]), ip_anodic=float(pk.ip_anodic[0]),
                        Ep_anodic=float(pk.Ep_anodic[0]), onset_potential=float(onset), onset_threshold=float(thr))


def _as_1d(name: str, v) -> np.ndarray:
    if v is None:
        raise InvalidArgument(f"{name} is None; an array is required")
    a = np.asarray(v, dtype=float)
    if a.ndim != 1:
        raise InvalidArgument(f"{name} must be one-dimensional, got shape {a.shape}")
    return check_finite(name, a)


@dataclass
class ScreeningResult:
    """Features of every spot of a screen (arrays of length n_spots; charges (n_spots, n_cycles)).

    ``x``/``y`` are the spot positions in µm (NaN if unknown); ``valid`` marks spots whose CV could be analysed
    (a spot without a landing or with NaNs in its data gets NaN features and ``valid = False``, with the reason in
    ``problems``).
    """

    x: np.ndarray
    y: np.ndarray
    q_cathodic: np.ndarray
    q_anodic: np.ndarray
    passivation_ratio: np.ndarray
    ip_cathodic: np.ndarray
    Ep_cathodic: np.ndarray
    ip_anodic: np.ndarray
    Ep_anodic: np.ndarray
    onset_potential: np.ndarray
    valid: np.ndarray
    problems: dict[int, str] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def n_spots(self) -> int:
        return int(self.x.size)

    def as_dict(self) -> dict[str, np.ndarray]:
        """Per-spot columns (q1, q2 ... as separate columns) for a table."""
        out = {"x": self.x, "y": self.y}
        for c in range(self.q_cathodic.shape[1]):
            out[f"q_cathodic_{c + 1}"] = self.q_cathodic[:, c]
            out[f"q_anodic_{c + 1}"] = self.q_anodic[:, c]
        for name in ("passivation_ratio", "ip_cathodic", "Ep_cathodic", "ip_anodic", "Ep_anodic",
                     "onset_potential"):
            out[name] = getattr(self, name)
        out["valid"] = self.valid
        return out


def screen_spots(t, E, i, *, x=None, y=None, e_window: Optional[Sequence[float]] = None,
                 onset_threshold: Optional[float] = None, onset_fraction: float = 0.1,
                 peak_window: Optional[Sequence[float]] = None, strict: bool = False) -> ScreeningResult:
    """Features of every spot of an SECCM screen.

    Parameters
    ----------
    t, E, i : array_like
        Shape (n_spots, n_samples): time (s), potential (V), current (A) of each spot's CV.  ``t`` and ``E`` may
        also be 1-D (one program shared by all spots).
    x, y : array_like, optional
        Spot positions, µm (length n_spots).
    e_window, onset_threshold, onset_fraction, peak_window
        As in :func:`spot_features`.
    strict : bool
        Raise on the first spot that cannot be analysed (default: mark it invalid and go on).

    Returns
    -------
    ScreeningResult
    """
    i = np.asarray(i, dtype=float)
    if i.ndim != 2 or i.shape[0] == 0:
        raise InvalidArgument(f"i must have shape (n_spots, n_samples); got {i.shape}")
    n = i.shape[0]
    t = np.broadcast_to(np.asarray(t, dtype=float), i.shape) if np.ndim(t) == 1 else np.asarray(t, float)
    E = np.broadcast_to(np.asarray(E, dtype=float), i.shape) if np.ndim(E) == 1 else np.asarray(E, float)
    if t.shape != i.shape or E.shape != i.shape:
        raise InvalidArgument(f"t {t.shape}, E {E.shape} and i {i.shape} must have the same shape")
    xs = np.full(n, np.nan) if x is None else np.asarray(x, dtype=float).ravel()
    ys = np.full(n, np.nan) if y is None else np.asarray(y, dtype=float).ravel()
    if xs.size != n or ys.size != n:
        raise InvalidArgument(f"x and y must have one entry per spot ({n}); got {xs.size} and {ys.size}")
    feats: list[Optional[SpotFeatures]] = []
    problems: dict[int, str] = {}
    for k in range(n):
        try:
            feats.append(spot_features(t[k], E[k], i[k], e_window=e_window, onset_threshold=onset_threshold,
                                       onset_fraction=onset_fraction, peak_window=peak_window))
        except InvalidArgument as exc:
            if strict:
                raise InvalidArgument(f"spot {k}: {exc}") from None
            feats.append(None)
            problems[k] = str(exc)
    good = [f for f in feats if f is not None]
    if not good:
        raise InvalidArgument(f"no spot of the screen could be analysed; first problem: {problems.get(0)}")
    nc = max(f.q_cathodic.size for f in good)

    def col(name):
        return np.array([getattr(f, name) if f is not None else np.nan for f in feats], dtype=float)

    def charges(name):
        out = np.full((n, nc), np.nan)
        for k, f in enumerate(feats):
            if f is not None:
                q = getattr(f, name)
                out[k, : q.size] = q
        return out

    return ScreeningResult(
        x=xs, y=ys, q_cathodic=charges("q_cathodic"), q_anodic=charges("q_anodic"),
        passivation_ratio=col("passivation_ratio"), ip_cathodic=col("ip_cathodic"), Ep_cathodic=col("Ep_cathodic"),
        ip_anodic=col("ip_anodic"), Ep_anodic=col("Ep_anodic"), onset_potential=col("onset_potential"),
        valid=np.array([f is not None for f in feats]), problems=problems,
        parameters=dict(e_window=None if e_window is None else [float(v) for v in e_window],
                        onset_threshold=onset_threshold, onset_fraction=float(onset_fraction),
                        peak_window=None if peak_window is None else [float(v) for v in peak_window]),
    )


def feature_matrix(result: ScreeningResult, names: Sequence[str] = DEFAULT_CLUSTER_FEATURES) -> np.ndarray:
    """Feature matrix (n_spots, n_features) of a screen, unscaled.

    Names: ``log_q1``/``log_q2`` (log10 of the cycle-1/2 cathodic charge in C), ``passivation_ratio``,
    ``log_ip_cathodic`` (log10 |first-cycle cathodic peak| in A), ``Ep_cathodic``, ``Ep_anodic``,
    ``onset_potential`` (V), ``ip_anodic`` (A).
    """
    cols = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for name in names:
            if name == "log_q1":
                cols.append(np.log10(result.q_cathodic[:, 0]))
            elif name == "log_q2":
                if result.q_cathodic.shape[1] < 2:
                    raise InvalidArgument("feature 'log_q2' needs CVs with at least two cycles")
                cols.append(np.log10(result.q_cathodic[:, 1]))
            elif name == "log_ip_cathodic":
                cols.append(np.log10(np.abs(result.ip_cathodic)))
            elif name in ("passivation_ratio", "Ep_cathodic", "Ep_anodic", "onset_potential", "ip_anodic",
                          "ip_cathodic"):
                cols.append(np.asarray(getattr(result, name), float))
            else:
                raise InvalidArgument(f"unknown feature {name!r}; allowed: log_q1, log_q2, passivation_ratio, "
                                      "log_ip_cathodic, ip_cathodic, ip_anodic, Ep_cathodic, Ep_anodic, "
                                      "onset_potential")
    return np.column_stack(cols)


# ------------------------------------------------------------------------------------------------ clustering
def _silhouette(X: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette (scikit-learn; singletons count 0); NaN when it is undefined (k < 2 or k = n)."""
    from sklearn.metrics import silhouette_score

    k = np.unique(labels).size
    return float(silhouette_score(X, labels)) if 2 <= k < X.shape[0] else float("nan")


@dataclass
class ClusterResult:
    """Result of :func:`cluster_spots`.

    Attributes
    ----------
    labels : ndarray of int
        Cluster of each spot (−1 for spots left out: invalid or non-finite features); clusters are numbered by
        increasing mean of the first feature.
    k : int
        Number of clusters chosen.
    scores : dict
        Criterion value per candidate k (BIC: lower is better; silhouette: higher is better).
    method, criterion : str
    features : tuple of str
    centres : ndarray
        (k, n_features) cluster means in the original (unscaled) feature units.
    rejected : list of int
        Candidate k left out because a cluster had fewer than ``min_cluster_size`` spots.
    """

    labels: np.ndarray
    k: int
    scores: dict[int, float]
    method: str
    criterion: str
    features: tuple
    centres: np.ndarray
    rejected: list = field(default_factory=list)
    min_cluster_size: int = 1

    def parameters(self) -> dict[str, Any]:
        """JSON-friendly description (for product metadata)."""
        return dict(k=self.k, method=self.method, criterion=self.criterion, features=list(self.features),
                    scores={str(k): float(v) for k, v in self.scores.items()}, rejected=list(self.rejected),
                    min_cluster_size=self.min_cluster_size,
                    centres=np.asarray(self.centres).tolist())


def cluster_spots(features, *, names: Sequence[str] = DEFAULT_CLUSTER_FEATURES, k_max: int = 5,
                  method: str = "gmm", criterion: Optional[str] = None, min_cluster_size: Optional[int] = None,
                  seed: int = 0) -> ClusterResult:
    """Cluster the spots of a screen; the number of clusters is chosen by a criterion.

    Parameters
    ----------
    features : ScreeningResult or array_like
        A screen (its :func:`feature_matrix` with ``names`` is used) or an (n_spots, n_features) matrix.
    names : sequence of str
        Features of a ScreeningResult to cluster on.
    k_max : int
        Largest number of clusters tried (≥ 1; limited to n_spots − 1).
    method : {"gmm", "kmeans"}
        Gaussian mixture (EM) or k-means, on features standardised to zero mean and unit variance.
    criterion : {"bic", "silhouette"}, optional
        Default: "bic" for "gmm" (k from 1 to k_max), "silhouette" for "kmeans" (k from 2 to k_max).
    min_cluster_size : int, optional
        A candidate k whose clustering has a cluster with fewer spots is not eligible (listed in ``rejected``):
        a lone spot that sits between two materials (a droplet on a boundary) would otherwise win its own
        cluster, because real clusters are far tighter than the spread between them.  Default
        max(3, round(0.05·n_spots)).

    Returns
    -------
    ClusterResult
    """
    method = check_choice("method", method, ["gmm", "kmeans"])
    criterion = check_choice("criterion", criterion or ("bic" if method == "gmm" else "silhouette"),
                             ["bic", "silhouette"])
    if isinstance(features, ScreeningResult):
        X = feature_matrix(features, names)
        ok = features.valid & np.all(np.isfinite(X), axis=1)
        names = tuple(names)
    else:
        X = np.asarray(features, dtype=float)
        if X.ndim != 2:
            raise InvalidArgument(f"features must be (n_spots, n_features); got shape {X.shape}")
        ok = np.all(np.isfinite(X), axis=1)
        names = tuple(f"feature_{j}" for j in range(X.shape[1]))
    n_ok = int(ok.sum())
    if n_ok < 3:
        raise InvalidArgument(f"only {n_ok} spots have finite features; clustering needs at least 3")
    if isinstance(k_max, bool) or not isinstance(k_max, (int, np.integer)) or k_max < 1:
        raise InvalidArgument(f"k_max={k_max!r} must be an integer >= 1")
    k_max = min(int(k_max), n_ok - 1)
    from sklearn.preprocessing import StandardScaler

    Xs = StandardScaler().fit_transform(X[ok])  # a constant feature is left at 0 (scale 1)
    ks = range(1 if criterion == "bic" else 2, k_max + 1)
    if not len(ks):
        raise InvalidArgument(f"k_max={k_max} leaves no candidate for criterion {criterion!r} (needs k >= 2)")
    if min_cluster_size is None:
        min_cluster_size = max(3, int(round(0.05 * n_ok)))
    from sklearn.cluster import KMeans
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_limits

    fits, scores, rejected = {}, {}, []
    # a few spots x a few features: one BLAS/OpenMP thread (more threads only add synchronisation, and on a busy
    # machine their spin-waits made a Gaussian-mixture fit ~25x slower)
    with threadpool_limits(limits=1):
        for k in ks:
            if method == "gmm":
                # reg_covar in standardised units: the smallest spread a cluster may have (a cluster of
                # near-identical spots would otherwise collapse onto a singular covariance and win the BIC)
                g = GaussianMixture(k, covariance_type="full", reg_covar=1e-2, n_init=5, max_iter=300, tol=1e-6,
                                    init_params="k-means++", random_state=seed).fit(Xs)
                lab = g.predict(Xs)
                fits[k] = lab
                scores[k] = float(g.bic(Xs)) if criterion == "bic" else _silhouette(Xs, lab)
            else:
                km = KMeans(k, n_init=10, random_state=seed).fit(Xs)
                lab = km.labels_
                fits[k] = lab
                if criterion == "silhouette":
                    scores[k] = _silhouette(Xs, lab)
                else:  # spherical-Gaussian BIC of k-means (shared variance)
                    nn, dd = Xs.shape
                    var = max(float(km.inertia_) / max(nn * dd, 1), 1e-12)
                    ll = -0.5 * nn * dd * (math.log(2 * math.pi * var) + 1.0)
                    counts = np.bincount(lab, minlength=k)
                    ll += float(np.sum(counts[counts > 0] * np.log(counts[counts > 0] / nn)))
                    scores[k] = -2 * ll + (k * dd + k) * math.log(nn)
            if np.bincount(fits[k], minlength=k).min() < min_cluster_size:
                rejected.append(k)
    eligible = [kk for kk in scores if kk not in rejected] or [min(scores)]
    if criterion == "bic":
        k_best = min(eligible, key=lambda kk: scores[kk])
    else:
        k_best = max(eligible, key=lambda kk: (np.nan_to_num(scores[kk], nan=-np.inf)))
    lab = fits[k_best]
    # renumber clusters by increasing mean of the first feature (stable, reproducible numbering)
    present = np.unique(lab)
    order = present[np.argsort([X[ok][lab == c, 0].mean() for c in present])]
    remap = {int(c): j for j, c in enumerate(order)}
    labels = np.full(X.shape[0], -1, dtype=int)
    labels[ok] = [remap[int(c)] for c in lab]
    centres = np.array([X[ok][lab == c].mean(0) for c in order])
    return ClusterResult(labels=labels, k=int(order.size), scores=scores, method=method, criterion=criterion,
                         features=names, centres=centres, rejected=rejected, min_cluster_size=int(min_cluster_size))


# ------------------------------------------------------------------------------------------------ statistics
@dataclass
class GroupStatistics:
    """Per-group summary and a test of difference (see :func:`group_statistics`).

    ``groups`` maps each group key to n, mean, std (ddof=1), sem, median, q25, q75; ``test`` names the test,
    ``statistic`` and ``p_value`` its result; ``pairwise`` holds Welch t-tests of every pair (statistic, p).
    """

    groups: dict[Any, dict[str, float]]
    test: str
    statistic: float
    p_value: float
    pairwise: dict[tuple, tuple[float, float]]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (group keys as strings)."""
        return dict(groups={str(k): v for k, v in self.groups.items()}, test=self.test,
                    statistic=float(self.statistic), p_value=float(self.p_value),
                    pairwise={f"{a} vs {b}": [float(s), float(p)] for (a, b), (s, p) in self.pairwise.items()})


def group_statistics(values, groups, *, test: Optional[str] = None) -> GroupStatistics:
    """Compare a per-spot quantity between parameter groups (e.g. electrolyte or potential of a sweep).

    Parameters
    ----------
    values : array_like
        One value per spot (e.g. Q_p2/Q_p1); NaNs are dropped with their spot.
    groups : array_like
        Group key of each spot (any hashable; e.g. the parameter value of a combinatorial sweep).
    test : {"welch", "kruskal", "anova"}, optional
        Default: Welch's unequal-variance t-test for two groups, Kruskal–Wallis for more.

    Returns
    -------
    GroupStatistics
    """
    from scipy import stats

    v = np.asarray(values, dtype=float).ravel()
    g = np.asarray(groups, dtype=object).ravel()
    if v.size != g.size:
        raise InvalidArgument(f"values ({v.size}) and groups ({g.size}) must have one entry per spot")
    keep = np.isfinite(v)
    if not keep.any():
        raise InvalidArgument("values contains no finite number; nothing to compare")
    v, g = v[keep], g[keep]
    keys = list(dict.fromkeys(g.tolist()))
    if len(keys) < 2:
        raise InvalidArgument(f"groups has {len(keys)} distinct value(s) {keys}; a comparison needs at least 2")
    samples = {k: v[np.array([x == k for x in g])] for k in keys}
    small = [k for k, s in samples.items() if s.size < 2]
    if small:
        raise InvalidArgument(f"group(s) {small} have fewer than 2 finite values; a test needs at least 2 each")
    test = check_choice("test", test or ("welch" if len(keys) == 2 else "kruskal"), ["welch", "kruskal", "anova"])
    if test == "welch" and len(keys) != 2:
        raise InvalidArgument(f"test='welch' compares exactly 2 groups; got {len(keys)} (use 'kruskal' or 'anova')")
    summary = {}
    for k, s in samples.items():
        q25, med, q75 = np.percentile(s, [25, 50, 75])
        sd = float(s.std(ddof=1))
        summary[k] = dict(n=int(s.size), mean=float(s.mean()), std=sd, sem=sd / math.sqrt(s.size),
                          median=float(med), q25=float(q25), q75=float(q75))
    arrs = list(samples.values())
    if test == "welch":
        r = stats.ttest_ind(arrs[0], arrs[1], equal_var=False)
    elif test == "kruskal":
        r = stats.kruskal(*arrs)
    else:
        r = stats.f_oneway(*arrs)
    pairwise = {}
    for a_i in range(len(keys)):
        for b_i in range(a_i + 1, len(keys)):
            pr = stats.ttest_ind(samples[keys[a_i]], samples[keys[b_i]], equal_var=False)
            pairwise[(keys[a_i], keys[b_i])] = (float(pr.statistic), float(pr.pvalue))
    return GroupStatistics(groups=summary, test=test, statistic=float(r.statistic), p_value=float(r.pvalue),
                           pairwise=pairwise)
