"""Prediction-powered inference: the detector's error carried into every interval.

The ``refusal`` flag comes from a detector; a column of human labels (``human``: 0/1
on a random sample of rows, NaN elsewhere; see :mod:`refusalstats.labels`) measures its
error. The estimators here combine both (Angelopoulos, Bates, Fannjiang, Jordan &
Zrnic 2023, *Prediction-powered inference*, Science 382:669; Angelopoulos, Duchi &
Zrnic 2023, *PPI++: efficient prediction-powered inference*, arXiv 2311.01453):

    theta = mean_labelled(human - lam * flag) + lam * mean_unlabelled(flag),

a labels-only estimate corrected by the detector (``lam = 0`` is labels only, ``lam =
1`` the original PPI, the default tunes ``lam`` to the smallest variance, PPI++). The
estimate is unbiased for the human-label rate whatever the detector's quality; the
interval is narrower than the labels-only one when the detector is good and about as
wide when it is useless.

Two layers:

* :func:`ppi_mean` and :func:`ppi_logistic` take arrays (labelled ``y``, ``yhat``;
  unlabelled ``yhat_unlabeled``) and reproduce ``ppi_python`` 0.2.3's ``ppi_mean_ci``
  and ``ppi_logistic_ci`` (its variance conventions and its lam) on i.i.d. data;
* :func:`ppi_rates`, :func:`ppi_effect` and :func:`ppi_logit` take the response table
  with a label column; ``refusal_rates``, ``persona_effect``, ``disparity`` and
  ``logit`` send ``labels="human"`` here. They handle what the table has and the
  published estimators do not: item clustering (cluster sums of the influence
  functions of the labelled and the unlabelled parts together) and stratified label
  samples with different sampling fractions per stratum (``strata=``; inverse
  probability weights, influence functions centred within each stratum, so a fixed
  number of labels per stratum is accounted for). The maths is in
  ``docs/methods_ppi.md``; ``benchmarks/calibration_ppi.py`` measures coverage.

Also: :func:`rogan_gladen` (the classical misclassification correction of a rate, for
comparison) and :func:`label_budget` (labels per stratum for a target
interval width). The detector's report card, sensitivity / specificity per model and
raw vs corrected rates side by side, is :func:`refusalstats.detector_card`
(:mod:`refusalstats.labels`, which builds it on both the rates and this module).

Examples
--------
>>> import numpy as np, refusalstats as rs
>>> rng = np.random.default_rng(0)
>>> y = rng.binomial(1, 0.3, 200); yhat = np.where(rng.random(200) < 0.9, y, 1 - y)
>>> yu = rng.binomial(1, 0.3 * 0.9 + 0.7 * 0.1, 5000)
>>> r = rs.ppi_mean(y, yhat, yu)
>>> bool(r["ci_low"] < r["estimate"] < r["ci_high"])
True
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse, stats
from scipy.special import expit

from ._summary import Summary
from ._validation import check_conf, resolve_cluster
from ._validation import column_names as _columns
from .spread import control_personas, corrected_variance, spread
from .vocabulary import level_slug

__all__ = [
    "PPILogitResult",
    "label_budget",
    "ppi_disparity",
    "ppi_effect",
    "ppi_logistic",
    "ppi_logit",
    "ppi_mean",
    "ppi_rates",
    "rogan_gladen",
]


# ======================================================================================
# Arrays: the published estimators (ppi_python's conventions)
# ======================================================================================


def _z(conf: float) -> float:
    return float(stats.norm.ppf(1 - (1 - conf) / 2))


def _as_float(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has NaN or infinite values; drop those rows")
    return a


def _lam_glm(grads, grads_hat, grads_hat_unl, inv_h) -> float:
    """PPI++'s tuning parameter for a GLM, as ppi_python's ``_calc_lam_glm`` (clipped)."""
    n, N = grads.shape[0], grads_hat_unl.shape[0]
    gc = grads - grads.mean(0)
    hc = grads_hat - grads_hat.mean(0)
    cov = (gc.T @ hc + hc.T @ gc) / n
    var = np.atleast_2d(np.cov(np.concatenate([grads_hat, grads_hat_unl]).T))
    num = np.trace(inv_h @ cov @ inv_h)
    den = 2 * (1 + n / N) * np.trace(inv_h @ var @ inv_h)
    return float(np.clip(num / den, 0, 1)) if den > 0 else 0.0


def ppi_mean(y, yhat, yhat_unlabeled, *, lam: float | None = None, conf: float = 0.95) -> dict:
    """Prediction-powered mean with a z interval (PPI, PPI++), on arrays.

    Parameters
    ----------
    y : array of float
        Human labels of the labelled rows (0/1 for a refusal rate).
    yhat : array of float
        The detector's predictions on the same rows.
    yhat_unlabeled : array of float
        The detector's predictions on the unlabelled rows.
    lam : float, optional
        Power-tuning parameter: 0 gives the labels-only mean, 1 the PPI estimator of
        Angelopoulos et al. (2023); None (default) estimates the variance-minimizing
        value clipped to [0, 1] (PPI++).
    conf : float
        Confidence level.

    Returns
    -------
    dict
        ``estimate``, ``std_error``, ``ci_low``, ``ci_high``, ``lam``.

    Notes
    -----
    ``estimate = lam * mean(yhat_unlabeled) + mean(y - lam * yhat)`` with variance
    ``lam^2 var(yhat_unlabeled) / N + var(y - lam * yhat) / n`` (variances with
    divisor n, as ``ppi_python``); the tuned ``lam`` is
    ``cov(y, yhat) / ((1 + n / N) var(yhat, yhat_unlabeled pooled))``, ppi_python's
    ``_calc_lam_glm`` for the mean. It equals ``ppi_python.ppi_mean_ci`` and
    ``ppi_mean_pointestimate`` (tests/test_ppi.py).

    Examples
    --------
    >>> r = ppi_mean([1, 0, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0, 1, 1, 0, 0], lam=1)
    >>> r["estimate"]
    0.625
    """
    conf = check_conf(conf)
    y, yh, yu = _as_float(y, "y"), _as_float(yhat, "yhat"), _as_float(yhat_unlabeled, "yhat_unlabeled")
    if len(y) != len(yh):
        raise ValueError(f"y and yhat must have the same length, got {len(y)} and {len(yh)}")
    if len(y) < 2 or len(yu) < 1:
        raise ValueError("ppi_mean needs at least 2 labelled and 1 unlabelled rows")
    n, N = len(y), len(yu)
    if lam is None:
        theta1 = yu.mean() + (y - yh).mean()
        lam = _lam_glm((y - theta1)[:, None], (yh - theta1)[:, None], (yu - theta1)[:, None], np.eye(1))
    est = lam * yu.mean() + (y - lam * yh).mean()
    se = float(np.sqrt((lam * yu).std() ** 2 / N + (y - lam * yh).std() ** 2 / n))
    z = _z(conf)
    return {"estimate": float(est), "std_error": se, "ci_low": float(est - z * se),
            "ci_high": float(est + z * se), "lam": float(lam)}


def _logistic_solve(X, y, yh, Xu, yu, lam, w=None, wu=None, start=None) -> np.ndarray:
    """Minimize the rectified logistic loss (PPI++ for GLMs) by Newton's method.

    loss = 1/n sum w l(y) - lam/n sum w l(yhat) + lam/N sum wu l(yhat_u); its Hessian
    (1 - lam)/n X'WX + lam/N Xu'WuXu is positive definite for lam in [0, 1].
    """
    n, N = len(y), len(yu)
    w = np.ones(n) if w is None else w
    wu = np.ones(N) if wu is None else wu
    beta = np.zeros(X.shape[1]) if start is None else start.copy()
    for _ in range(100):
        mu, muu = expit(X @ beta), expit(Xu @ beta)
        g = X.T @ (w * ((mu - y) - lam * (mu - yh))) / n + lam * Xu.T @ (wu * (muu - yu)) / N
        H = (X.T * (w * (1 - lam) * mu * (1 - mu))) @ X / n + lam * (Xu.T * (wu * muu * (1 - muu))) @ Xu / N
        step = np.linalg.solve(H, g)
        beta -= step
        if np.max(np.abs(step)) < 1e-12:
            break
    return beta


def _logistic_stats(beta, X, y, yh, Xu, yu):
    """Gradients and the inverse pooled Hessian, as ppi_python's ``_logistic_get_stats``."""
    n, N = len(y), len(yu)
    mu, muu = expit(X @ beta), expit(Xu @ beta)
    H = ((Xu.T * (muu * (1 - muu))) @ Xu + (X.T * (mu * (1 - mu))) @ X) / (N + n)
    return X * (mu - y)[:, None], X * (mu - yh)[:, None], Xu * (muu - yu)[:, None], np.linalg.inv(H)


def ppi_logistic(X, y, yhat, X_unlabeled, yhat_unlabeled, *, lam: float | None = None,
                 conf: float = 0.95) -> pd.DataFrame:
    """Prediction-powered logistic regression coefficients (PPI++ for GLMs), on arrays.

    Parameters
    ----------
    X : 2-D array
        Design matrix of the labelled rows (include a column of ones for an intercept).
    y : array
        Human labels (0/1) of the labelled rows.
    yhat : array
        The detector's predictions on the labelled rows.
    X_unlabeled : 2-D array
        Design matrix of the unlabelled rows.
    yhat_unlabeled : array
        The detector's predictions on the unlabelled rows.
    lam : float, optional
        Power-tuning parameter (0: labels only; 1: PPI; None: tuned, PPI++).
    conf : float
        Confidence level.

    Returns
    -------
    DataFrame
        One row per coefficient: ``estimate``, ``std_error``, ``ci_low``, ``ci_high``;
        ``attrs["lam"]``.

    Notes
    -----
    The estimate minimizes the rectified loss (see :func:`_logistic_solve`); the
    covariance is ``H^-1 (n/N V_u + V) H^-1 / n`` with ``H`` the Hessian pooled over all
    rows, ``V`` the covariance of ``grad(y) - lam grad(yhat)`` on the labelled rows and
    ``V_u`` that of ``lam grad(yhat)`` on the unlabelled rows (divisor n - 1). A tuned
    ``lam`` follows ``ppi_python.ppi_logistic_ci``: fit with lam = 1, estimate lam, refit,
    estimate lam again at that fit, refit. It equals ``ppi_logistic_ci`` to 1e-6
    (tests/test_ppi.py).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> X = np.c_[np.ones(300), rng.normal(size=300)]
    >>> y = rng.binomial(1, 1 / (1 + np.exp(-X @ [-1, 1])))
    >>> Xu = np.c_[np.ones(3000), rng.normal(size=3000)]
    >>> yu = rng.binomial(1, 1 / (1 + np.exp(-Xu @ [-1, 1])))
    >>> ppi_logistic(X, y, y, Xu, yu, lam=1).shape
    (2, 4)
    """
    conf = check_conf(conf)
    X = np.asarray(X, dtype=float)
    Xu = np.asarray(X_unlabeled, dtype=float)
    y, yh, yu = _as_float(y, "y"), _as_float(yhat, "yhat"), _as_float(yhat_unlabeled, "yhat_unlabeled")
    if X.ndim != 2 or Xu.ndim != 2 or X.shape[1] != Xu.shape[1] or len(X) != len(y) or len(Xu) != len(yu):
        raise ValueError("X (n x p), y, yhat (n) and X_unlabeled (N x p), yhat_unlabeled (N) do not line up")
    n, N = len(y), len(yu)
    if lam is None:
        beta = _logistic_solve(X, y, yh, Xu, yu, 1.0)
        for _ in range(2):
            lam = _lam_glm(*_logistic_stats(beta, X, y, yh, Xu, yu))
            beta = _logistic_solve(X, y, yh, Xu, yu, lam, start=beta)
    else:
        beta = _logistic_solve(X, y, yh, Xu, yu, float(lam))
    g, gh, ghu, inv_h = _logistic_stats(beta, X, y, yh, Xu, yu)
    if lam == 0:  # ppi_python drops the unlabelled rows from the Hessian then
        mu = expit(X @ beta)
        inv_h = np.linalg.inv((X.T * (mu * (1 - mu))) @ X / n)
    d = X.shape[1]
    v_u = np.atleast_2d(np.cov((lam * ghu).T)).reshape(d, d)
    v = np.atleast_2d(np.cov((g - lam * gh).T)).reshape(d, d)
    cov = inv_h @ (n / N * v_u + v) @ inv_h / n
    se = np.sqrt(np.diag(cov))
    z = _z(conf)
    out = pd.DataFrame({"estimate": beta, "std_error": se, "ci_low": beta - z * se, "ci_high": beta + z * se})
    out.attrs["lam"] = float(lam)
    return out


# ======================================================================================
# Tables: labels on a random sample of rows, strata, clusters
# ======================================================================================

#: Pseudo-labels per (label, flag) cell of each labelled group in the small-sample
#: interval (``ci="t"``): a Jeffreys-type floor for the rectifier's variance.
_PSEUDO = 0.25
#: The same for the logistic regression: in the estimate, spread over each stratum's
#: labelled rows; in the variance, only for the labelled (covariate pattern, stratum)
#: groups whose labels all agree with the flag or hold one class (there the sandwich has
#: nothing to estimate the correction's or the group's variance from). Everywhere, as the
#: rates' floor, it over-covered (0.97-0.99 with 30 labels per model; docs/methods_ppi.md).
_PSEUDO_LOGIT = 0.1
#: Pseudo-labels per (label, flag) pair and stratum in the logistic regression's estimate
#: (``ci="t"``): half a refusal and half a non-refusal per stratum, the Haldane-Anscombe
#: correction of a log odds, spread over the stratum's labelled rows. With 0.1 (until
#: December 2026) the log-odds intervals over-covered (0.97-0.98 with 30 labels per model).
_PULL_LOGIT = 0.25


def _floor_groups(at: _Atoms) -> np.ndarray:
    """Per atom: its labelled (cell, stratum) group's labels all agree with the flag, or hold one class."""
    g = at.cell * at.n_strata + at.stratum
    G = at.n_cells * at.n_strata
    lab_m = np.where(at.lab, at.m, 0.0)
    n = np.bincount(g, lab_m, G)
    disagree = np.bincount(g, lab_m * (at.y != at.f), G)
    pos = np.bincount(g, lab_m * at.y, G)
    bare = (disagree == 0) | (pos == 0) | (pos == n)
    return bare[g] & at.lab


@dataclass
class _Atoms:
    """Rows collapsed to atoms: one per (cell, part, stratum, label, flag[, cluster])."""

    cell: np.ndarray      # target cell (group, or group x arm)
    lab: np.ndarray       # True: labelled part
    stratum: np.ndarray   # label stratum code
    y: np.ndarray         # human label (0 in the unlabelled part)
    f: np.ndarray         # detector flag
    w: np.ndarray         # inverse-probability weight of one row of the atom
    m: np.ndarray         # rows in the atom
    cluster: np.ndarray | None  # cluster code of the atom (None: rows independent)
    n_cells: int
    n_strata: int
    n_clusters: int = 0
    part_size: np.ndarray = field(default_factory=lambda: np.zeros(0))  # rows per (part, stratum)


def _label_values(data: pd.DataFrame, labels: str) -> np.ndarray:
    if labels not in data.columns:
        raise ValueError(
            f"labels={labels!r} is not a column of the table (columns: {list(map(str, data.columns))}); "
            "join human labels first (rs.join_labels(df, 'labelled.csv'))"
        )
    h = pd.to_numeric(data[labels].astype(object).where(data[labels].notna(), np.nan),
                      errors="coerce").to_numpy(dtype=float)
    bad = ~np.isnan(h) & ~np.isin(h, [0.0, 1.0])
    if bad.any() or (data[labels].notna().to_numpy() & np.isnan(h)).any():
        raise ValueError(f"labels column {labels!r} must be 0/1 (1 = refusal) or missing; found other values")
    if (~np.isnan(h)).sum() < 2:
        raise ValueError(f"labels column {labels!r} has {(~np.isnan(h)).sum()} label(s); "
                         "label at least a few rows (rs.label_sample)")
    return h


def _codes(frame: pd.DataFrame, cols: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """Integer codes of the observed combinations of ``cols`` (in sorted / level order)."""
    if not cols:
        return np.zeros(len(frame), dtype=np.int64), pd.DataFrame(index=[0])
    g = frame.groupby(cols, observed=True, sort=True)
    codes = g.ngroup().to_numpy().astype(np.int64)
    keys = g.size().index.to_frame(index=False)
    return codes, keys


def _build_atoms(data, cells: np.ndarray, n_cells: int, *, labels, refusal, strata, cluster, where):
    """Validate the columns, compute the weights and collapse rows into atoms."""

    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"{where}: labels= needs the response table as a DataFrame (read a file "
                        f"with rs.read_table first), got {type(data).__name__}")
    h = _label_values(data, labels)
    if refusal not in data.columns:
        raise ValueError(f"{where}: no refusal column {refusal!r} (the detector's flag)")
    f = pd.to_numeric(data[refusal], errors="coerce").to_numpy(dtype=float)
    if np.isnan(f).any() or not np.isin(f, [0.0, 1.0]).all():
        raise ValueError(f"{where}: the detector column {refusal!r} must be 0/1 in every row")
    lab = ~np.isnan(h)
    strata = _columns(strata, "strata")
    missing = [c for c in strata if c not in data.columns]
    if missing:
        raise ValueError(f"{where}: strata column(s) {missing} are not in the table")
    s_codes, s_keys = _codes(data, strata)
    H = len(s_keys)
    N_h = np.bincount(s_codes, minlength=H).astype(float)
    n_h = np.bincount(s_codes, weights=lab, minlength=H)
    if (n_h == 0).any():
        ex = s_keys.iloc[np.flatnonzero(n_h == 0)[0]].to_dict() if strata else {}
        raise ValueError(f"{where}: stratum {ex} has no labelled row; every stratum of strata= needs labels")
    w_lab = N_h / n_h
    with np.errstate(divide="ignore"):
        w_unl = np.where(N_h > n_h, N_h / np.maximum(N_h - n_h, 1), 0.0)
    clusters = resolve_cluster(data, cluster, where=where)
    clusters = _columns(clusters, "cluster")
    if len(clusters) > 1:
        raise ValueError(f"{where}: labels= takes one cluster column, got {clusters}; two-way clustering "
                         "is not implemented for prediction-powered estimates (make one column, e.g. "
                         "df['item'] = df.task.astype(str) + ':' + df.item_id.astype(str))")
    frame = {"cell": cells, "lab": lab, "stratum": s_codes, "y": np.nan_to_num(h), "f": f}
    if clusters:
        c_codes, _ = _codes(data, clusters)
        frame["cluster"] = c_codes
    frame = pd.DataFrame(frame)
    keys = list(frame.columns)
    at = frame.groupby(keys, sort=False).size().rename("m").reset_index()
    part_size = np.bincount(at["lab"].to_numpy().astype(int) * H + at["stratum"].to_numpy(),
                            weights=at["m"].to_numpy(), minlength=2 * H)
    atoms = _Atoms(
        cell=at["cell"].to_numpy(), lab=at["lab"].to_numpy(), stratum=at["stratum"].to_numpy(),
        y=at["y"].to_numpy(float), f=at["f"].to_numpy(float),
        w=np.where(at["lab"], w_lab[at["stratum"]], w_unl[at["stratum"]]),
        m=at["m"].to_numpy(float), cluster=at["cluster"].to_numpy() if clusters else None,
        n_cells=n_cells, n_strata=H, n_clusters=int(frame["cluster"].max() + 1) if clusters else 0,
        part_size=part_size,
    )
    return atoms, clusters


#: The small-sample rule of ``ci="t"`` in the linear estimators (rates, persona effect,
#: disparity). ``"floor"`` (the default): the ``_PSEUDO`` floor above, t quantile, m / (m - 1).
#: ``"bp"``: an alternative measured in docs/methods_ppi.md section 4 and NOT the default (it
#: was more conservative than the floor with a good detector): Bonett & Price's adjusted
#: Wald for a paired difference carried into PPI++, ``mass`` pseudo-labelled rows (y=1,
#: f=0) and (y=0, f=1) added to every labelled (cell, stratum) group for the variance and
#: lam (point estimate unadjusted), each pseudo-row its own cluster; ``quantile`` "z" or
#: "t", ``factor`` the m / (m - 1) factor without clusters. With lam = 1, one stratum and
#: ``mass=1``, the labelled part of the variance is Bonett & Price's (p10 + p01 - d^2) /
#: (n + 2) with p10 = (n10 + 1) / (n + 2), p01 = (n01 + 1) / (n + 2), d = p10 - p01.
#: Only ``benchmarks/calibration_ppi.py --small-sample bp`` changes it.
_SMALL_SAMPLE = {"rule": "floor", "mass": 1.0, "quantile": "t", "factor": True}


def _augment(at: _Atoms, mass: float) -> _Atoms:
    """The atoms plus pseudo-labelled rows (y=1, f=0) and (y=0, f=1), ``mass`` each, per
    labelled (cell, stratum) group (Bonett & Price's adjusted Wald for a paired
    difference), each pseudo-row its own cluster."""
    H = at.n_strata
    g = (at.cell * H + at.stratum)[at.lab]
    groups, first = np.unique(g, return_index=True)
    kk, hh = groups // H, groups % H
    wg = at.w[at.lab][first]
    G = len(groups)
    cell = np.concatenate([at.cell, kk, kk])
    stratum = np.concatenate([at.stratum, hh, hh])
    lab = np.concatenate([at.lab, np.ones(2 * G, bool)])
    y = np.concatenate([at.y, np.ones(G), np.zeros(G)])
    f = np.concatenate([at.f, np.zeros(G), np.ones(G)])
    w = np.concatenate([at.w, wg, wg])
    m = np.concatenate([at.m, np.full(2 * G, float(mass))])
    cl = None if at.cluster is None else np.concatenate([at.cluster, at.n_clusters + np.arange(2 * G)])
    part_size = np.bincount(lab.astype(int) * H + stratum, weights=m, minlength=2 * H)
    return _Atoms(cell=cell, lab=lab, stratum=stratum, y=y, f=f, w=w, m=m, cluster=cl, n_cells=at.n_cells,
                  n_strata=H, n_clusters=at.n_clusters + 2 * G if cl is not None else 0, part_size=part_size)


#: Skewness-corrected intervals (Hall 1992) in ``ci="t"``; False gives the symmetric t interval.
_SKEW = True
#: The skewness used is capped at this size. Hall's expansion is for small skewness: the
#: inverse transformation diverges as |gamma| nears 1 / q (about 0.49), where one end of
#: the interval runs off to several times the symmetric half-width (a rate of 1 in 30
#: labels got an upper end of 0.38; Clopper-Pearson's is 0.17). At 0.3 the far end is at
#: most 1.4 times the symmetric one. On binomial label samples (exact, rates 0.03-0.5;
#: ``benchmarks/calibration_ppi.py --binomial-exact [--skew-cap 1]``) the cap brings the
#: mean coverage from 0.969 to 0.963 with 30 labels (0.965 to 0.960 with 60) and leaves
#: the rates below 0.93 at 8% of the grid (the symmetric t interval: 19%).
_SKEW_CAP = 0.3
#: Score-type (Wilson-like) intervals for single-cell targets in ``ci="t"`` (a rate, not a
#: difference; the cell's labels in one stratum): the values theta0 that a test of the
#: rate = theta0 accepts, with the variance taken at theta0 (docs/methods_ppi.md section 4).
#: "constrained" (the default since 2026-12-08): the whole labelled variance at the (label,
#: flag) table's MLE under theta0, the flag's rates given the label kept (with
#: ``_SCORE_PSEUDO`` per cell); Wilson's at lam = 0; with clusters scaled by the design
#: effect, on the Satterthwaite t. It brought the rates' 30-label rows that Hall's interval
#: left at 0.971-0.977 into 0.93-0.97. "simple" (measured, not adopted): the labelled
#: mean's variance at theta0, the flag terms as estimated, i.i.d. only. False: Hall's
#: interval everywhere (the default before; still the one for several-cell targets and
#: strata that cut across a cell).
_SCORE: bool | str = "constrained"
#: "constrained"'s pseudo-count on each (label, flag) cell of the flag's rates given the label
_SCORE_PSEUDO = 0.5
#: "constrained" with clusters: the quantile, "t" (the Satterthwaite df) or "z"
_SCORE_CLUSTER_Q = "t"


def _hall_inverse(v, gamma):
    """The T at which Hall's (1992) transformation ``g(T) = T + gamma T^2 / 3 + gamma^2 T^3 / 27
    + gamma / 6`` equals ``v``: ``g(T) = ((1 + gamma T / 3)^3 - 1) / gamma + gamma / 6`` is
    monotone, so ``T = 3 / gamma ((1 + gamma (v - gamma / 6))^(1/3) - 1)`` (``v`` at gamma 0)."""
    v, gamma = np.broadcast_arrays(np.asarray(v, dtype=float), np.asarray(gamma, dtype=float))
    small = np.abs(gamma) < 1e-8
    g = np.where(small, 1.0, gamma)
    return np.where(small, v, 3 / g * (np.cbrt(1 + g * (v - g / 6)) - 1))


class _PairSums:
    """Sums of atom values per (cell, cluster) as a sparse K x C matrix: the pairs present
    are found once (a dense K x C count would scan every cell times every item)."""

    def __init__(self, cell: np.ndarray, cluster: np.ndarray, K: int, C: int):
        pairs, self.inverse = np.unique(cell.astype(np.int64) * C + cluster, return_inverse=True)
        self.rows, self.cols, self.shape = pairs // C, pairs % C, (K, C)

    def __call__(self, values: np.ndarray) -> sparse.csr_matrix:
        data = np.bincount(self.inverse, values, len(self.rows))
        return sparse.csr_matrix((data, (self.rows, self.cols)), shape=self.shape)


def _mul(x, y):
    """Elementwise product of two (target x cluster) arrays, either sparse or dense."""
    if sparse.issparse(x):
        return sparse.csr_matrix(x.multiply(y))
    if sparse.issparse(y):
        return sparse.csr_matrix(y.multiply(x))
    return x * y


def _rowsum(x) -> np.ndarray:
    return np.asarray(x.sum(1), dtype=float).ravel()


def _dense(x) -> np.ndarray:
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


class _CR2:
    """CR2 pieces per (target, cluster), for the labelled (L) and unlabelled (U) rows.

    Each part of a target is a weighted mean (one intercept per cell and part; a target's
    cells pooled with weights ``|L|``). A cluster's leverage in a part is its share ``h`` of
    the part's weight, so Bell & McCaffrey's adjustment ``(I - H_gg)^(-1/2)`` scales the
    cluster's sum by ``(1 - h)^(-1/2)`` (exact for a target of one cell). Everything is a
    sparse (target x cluster) matrix over the clusters a target has rows in: ``W`` and
    ``Q`` (weights and squared weights), and ``adj - 1``, which is 0 for the clusters a part
    does not touch (h = 0).
    """

    def __init__(self, at: _Atoms, absL, pair_sums: _PairSums):
        mw = at.m * at.w
        absL = sparse.csr_matrix(absL)
        self.absL, self.W, self.Q, self.inv, self.adj, self.adj_m1 = absL, {}, {}, {}, {}, {}
        for part, sel in (("L", at.lab), ("U", ~at.lab)):
            ww = np.where(sel, mw, 0.0)
            W = sparse.csr_matrix(absL @ pair_sums(ww))
            W.eliminate_zeros()
            tot = _rowsum(W)
            inv = np.divide(1.0, tot, out=np.zeros_like(tot), where=tot > 0)
            h = W.data * np.repeat(inv, np.diff(W.indptr))
            adj = W.copy()
            adj.data = np.where(h < 1 - 1e-12, 1 / np.sqrt(np.maximum(1 - h, 1e-12)), 1.0)
            adj_m1 = adj.copy()
            adj_m1.data -= 1.0
            self.W[part], self.inv[part], self.adj[part], self.adj_m1[part] = W, inv, adj, adj_m1
            self.Q[part] = sparse.csr_matrix(absL @ pair_sums(ww * at.w))

    def scale(self, x, part: str):
        """``x`` (target x cluster, sparse or dense) with each cluster's sum times its adj."""
        out = x + _mul(x, self.adj_m1[part])
        return out if sparse.issparse(out) else np.asarray(out)


def _bm_df(cr2: _CR2, lam_t: np.ndarray, cells: tuple) -> np.ndarray:
    """Satterthwaite degrees of freedom of each target's CR2 variance (Bell & McCaffrey 2002;
    Pustejovsky & Tipton 2018): ``tr(M)^2 / ||M||_F^2``, ``M`` the clusters' covariance of
    their adjusted sums under the working model of independent rows with a variance per
    part (labelled: of ``y - lam f``; unlabelled: of ``lam f``), each part a weighted mean.

    For one part with variance ``s``, cluster ``g`` with weight ``W_g``, squared weights
    ``Q_g``, leverage ``h_g = W_g / W`` and ``alpha_g = (1 - h_g)^(-1/2) / W``:
    ``M_gh = s alpha_g alpha_h (1[g=h] Q_g - h_h Q_g - h_g Q_h + h_g h_h Q)``; the two parts
    add. So ``M = diag(D) + sum over parts of s (Q x x' - x y' - y x')`` with ``x = alpha h``,
    ``y = alpha Q``: diagonal plus rank four, and its trace and norm are sums over clusters
    (sparse: only the clusters a target has rows in). ``cells``: per cell the labelled and
    unlabelled weights and the weighted means of the label, the flag (both parts) and their
    product in the labelled rows, as :func:`_linear_ppi` has them.
    """
    n0, n0u, Ey, Ef, Efu, Eyf = (np.nan_to_num(v) for v in cells)
    absL = cr2.absL
    # labelled: var(y - lam f) in each cell = E[y] - 2 lam E[yf] + lam^2 E[f] - mean^2,
    # pooled over the target's cells by |L| n; unlabelled: var(lam f)
    wL, wU = _rowsum(absL.multiply(n0)), _rowsum(absL.multiply(n0u))
    # sum_k |L_tk| n_k v_k(lam_t), v quadratic in lam: expand so no T x K dense array is needed
    c0 = absL @ (n0 * (Ey - Ey ** 2))
    c1 = absL @ (n0 * (-2 * Eyf + 2 * Ey * Ef))
    c2 = absL @ (n0 * (Ef - Ef ** 2))
    cu = absL @ (n0u * (Efu - Efu ** 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        sig = {"L": (c0 + lam_t * c1 + lam_t ** 2 * c2) / wL,
               "U": np.where(wU > 0, lam_t ** 2 * cu / np.where(wU > 0, wU, 1), 0.0)}
    D, xs, ys, Qt = 0.0, [], [], []
    for part in ("L", "U"):
        sg = np.nan_to_num(np.maximum(sig[part], 0.0))
        sig[part] = sg
        inv = cr2.inv[part][:, None]
        alpha = cr2.adj[part].multiply(inv)                       # adj / W
        x = sparse.csr_matrix(alpha.multiply(cr2.W[part]).multiply(inv))
        y = sparse.csr_matrix(alpha.multiply(cr2.Q[part]))
        D = D + sparse.csr_matrix(y.multiply(alpha).multiply(sg[:, None]))
        xs.append(x)
        ys.append(y)
        Qt.append(sg * _rowsum(cr2.Q[part]))
    D = sparse.csr_matrix(D)
    U = [xs[0], ys[0], xs[1], ys[1]]
    T = len(lam_t)
    G = np.empty((T, 4, 4))
    for i in range(4):
        for j in range(i, 4):
            G[:, i, j] = G[:, j, i] = _rowsum(U[i].multiply(U[j]))
    B = np.zeros((T, 4, 4))
    for k, part in enumerate(("L", "U")):
        B[:, 2 * k, 2 * k] = Qt[k]
        B[:, 2 * k, 2 * k + 1] = B[:, 2 * k + 1, 2 * k] = -sig[part]
    tr = _rowsum(D) + np.einsum("tij,tji->t", B, G)
    # sum_g D_g (U B U')_gg, with (U B U')_gg = sum over parts of s (Q x_g^2 - 2 x_g y_g)
    cross = sum(Qt[k] * _rowsum(D.multiply(xs[k]).multiply(xs[k]))
                - 2 * sig[part] * _rowsum(D.multiply(xs[k]).multiply(ys[k])) for k, part in enumerate(("L", "U")))
    BG = np.einsum("tij,tjk->tik", B, G)
    fro = _rowsum(D.multiply(D)) + 2 * cross + np.einsum("tij,tji->t", BG, BG)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(fro > 0, tr ** 2 / fro, np.nan)


def _linear_ppi(at: _Atoms, L: np.ndarray, lam, conf: float, df_rule: str = "z"):
    """PPI / PPI++ for linear combinations ``L`` (targets x cells) of cell means.

    Each cell's estimate is ``A + lam (FU - FL)``: the weighted labelled mean of the
    human label, plus lam times the weighted unlabelled minus labelled mean of the flag.
    Influence of an atom on its cell: ``a = [lab] w (y - A) / W_L`` and ``b = -[lab] w (f
    - FL) / W_L + [unl] w (f - FU) / W_U``; a target's are ``L @`` those, centred within
    (part, stratum) (fixed sample sizes per stratum), summed per cluster (or per row),
    and the variance is ``sum (a + lam b)^2`` (times C / (C - 1) with C clusters); lam
    minimizes it (``-sum ab / sum b^2``, clipped to [0, 1]).
    """
    small = df_rule == "t"
    bp = small and _SMALL_SAMPLE["rule"] == "bp"
    if bp:
        Vbp = _linear_ppi(_augment(at, _SMALL_SAMPLE["mass"]), L, lam, conf, "z")["V"]
    K = at.n_cells
    mw = at.m * at.w
    labw = np.where(at.lab, mw, 0.0)
    n_lab = np.bincount(at.cell, np.where(at.lab, at.m, 0.0), K)
    a, b, (W_L, W_U, A, FL, FU) = _atom_influences(at)
    T = L.shape[0]
    H = at.n_strata
    part = at.lab.astype(int) * H + at.stratum          # (part, stratum) code
    P = 2 * H
    Ls = sparse.csr_matrix(L)
    # per (cell, part-stratum) sums of the atom influences, then per target
    ks = at.cell * P + part

    def sums(v):
        return sparse.csr_matrix(np.bincount(ks, at.m * v, K * P).reshape(K, P))

    Sa, Sb = (Ls @ sums(a)).toarray(), (Ls @ sums(b)).toarray()       # T x P
    with np.errstate(invalid="ignore", divide="ignore"):
        cen_a = np.where(at.part_size > 0, Sa / np.where(at.part_size > 0, at.part_size, 1), 0.0)
        cen_b = np.where(at.part_size > 0, Sb / np.where(at.part_size > 0, at.part_size, 1), 0.0)
    if at.cluster is None:
        def q(u, v):
            return np.bincount(ks, at.m * u * v, K * P).reshape(K, P)
        L2 = sparse.csr_matrix(L ** 2)
        # rows of one cell only: sum over atoms of L^2 * (a, b products), minus the centring
        Vaa = (L2 @ q(a, a)).sum(1) - (cen_a ** 2 * at.part_size).sum(1)
        Vab = (L2 @ q(a, b)).sum(1) - (cen_a * cen_b * at.part_size).sum(1)
        Vbb = (L2 @ q(b, b)).sum(1) - (cen_b ** 2 * at.part_size).sum(1)
        touched = np.asarray((abs(Ls) @ n_lab[:, None]).ravel())
        factor = np.ones(T)
        n_units = touched
    else:
        C = at.n_clusters
        pair_sums = _PairSums(at.cell, at.cluster, K, C)
        # The centring within (part, stratum) is a rounding zero unless strata cut across a
        # target's cells; then it touches every cluster and the sums are dense, else sparse
        # over the clusters a target has rows in.
        scale_ab = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)), 1e-300)
        cen_cols = np.flatnonzero(np.any(np.abs(np.vstack([cen_a, cen_b])) > 1e-12 * scale_ab, axis=0))

        def centred(v, cen, sel):
            """Per (target, cluster) sums of the atoms in ``sel``, centred within (part, stratum)."""
            x = sparse.csr_matrix(Ls @ pair_sums(np.where(sel, at.m * v, 0.0)))
            if not len(cen_cols):
                return x
            cnt = sparse.csr_matrix((np.where(sel, at.m, 0.0), (at.cluster, part)), shape=(C, P))[:, cen_cols]
            return x.toarray() - (cnt @ cen[:, cen_cols].T).T

        lab_, unl_ = at.lab, ~at.lab
        ca, cbL, cbU = centred(a, cen_a, lab_), centred(b, cen_b, lab_), centred(b, cen_b, unl_)
        n_cl = np.asarray(((abs(Ls) @ pair_sums(at.m)) > 0).sum(1)).ravel()
        n_units = np.asarray(((abs(Ls) @ pair_sums(np.where(at.lab, at.m, 0.0))) > 0).sum(1)).ravel()
        if small:
            # CR2 (Bell & McCaffrey 2002): each cluster's sums scaled by (1 - h)^(-1/2), h its
            # leverage (share of the weight) in the target's labelled, or unlabelled, rows;
            # no C / (C - 1) factor. Satterthwaite df below (docs/methods_ppi.md section 4).
            cr2 = _CR2(at, abs(Ls), pair_sums)
            ca, cbL, cbU = cr2.scale(ca, "L"), cr2.scale(cbL, "L"), cr2.scale(cbU, "U")
            factor = np.where(n_cl > 1, 1.0, np.nan)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                factor = np.where(n_cl > 1, n_cl / np.maximum(n_cl - 1, 1), np.nan)
        cb = cbL + cbU
        Vaa, Vab, Vbb = _rowsum(_mul(ca, ca)), _rowsum(_mul(ca, cb)), _rowsum(_mul(cb, cb))
        influence = (ca, cb)
    if bp:  # the variance of the augmented atoms (cluster factor included), instead of the floor
        Vaa, Vab, Vbb = Vbp
        factor = np.ones(T)
        if _SMALL_SAMPLE["factor"] and at.cluster is None:
            with np.errstate(invalid="ignore", divide="ignore"):
                factor = np.where(n_units > 1, n_units / np.maximum(n_units - 1, 1), np.nan)
    elif small:
        if at.cluster is None:
            with np.errstate(invalid="ignore", divide="ignore"):
                factor = np.where(n_units > 1, n_units / np.maximum(n_units - 1, 1), np.nan)
        # a quarter pseudo-label in each of the four (label, flag) cells of every labelled
        # (cell, stratum): a Jeffreys-type floor for the rectifier's variance, which a few
        # dozen labels that all agree with the detector would otherwise put at zero
        ks_lab = np.unique((at.cell * H + at.stratum)[at.lab])
        kk, hh = ks_lab // H, ks_lab % H
        w_h = np.zeros(H)
        w_h[at.stratum[at.lab]] = at.w[at.lab]
        with np.errstate(divide="ignore", invalid="ignore"):
            wk = np.where(W_L[kk] > 0, w_h[hh] / np.where(W_L[kk] > 0, W_L[kk], 1), 0.0)
        pa = pb = pab = np.zeros(len(ks_lab))
        for yy in (0.0, 1.0):
            for ff in (0.0, 1.0):
                ua = wk * (yy - A[kk])
                ub = np.where(W_U[kk] > 0, -wk * (ff - FL[kk]), 0.0)
                pa, pb, pab = pa + _PSEUDO * ua ** 2, pb + _PSEUDO * ub ** 2, pab + _PSEUDO * ua * ub
        L2 = sparse.csr_matrix(L ** 2)
        Vaa = np.asarray(Vaa).ravel() + L2 @ np.bincount(kk, pa, K)
        Vbb = np.asarray(Vbb).ravel() + L2 @ np.bincount(kk, pb, K)
        Vab = np.asarray(Vab).ravel() + L2 @ np.bincount(kk, pab, K)
    Vaa, Vab, Vbb = (np.asarray(v, dtype=float).ravel() * factor for v in (Vaa, Vab, Vbb))
    if lam is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            lam_t = np.where(Vbb > 0, np.clip(-Vab / Vbb, 0, 1), 0.0)
        if small:
            # A cell whose labels hold one class (30 labels, no refusal) says nothing about how
            # label and flag co-vary: the tuned lam then comes from the floor's pseudo-labels
            # alone (about 0.4) and shrinks the estimate towards the labels' 0 (a model with a
            # 10% rate came out at 5%, its interval covering 3% of the time). Such targets take
            # lam = 1, plain PPI (Angelopoulos et al. 2023): unbiased whatever the detector.
            pos = np.bincount(at.cell, np.where(at.lab, at.m * at.y, 0.0), K)
            one_class = (n_lab > 0) & ((pos == 0) | (pos == n_lab))
            touched = np.asarray((abs(Ls) @ one_class[:, None].astype(float)).ravel()) > 0
            lam_t = np.where(touched, 1.0, lam_t)
    else:
        lam_t = np.full(T, float(lam))
    A0, D0 = np.nan_to_num(A), np.nan_to_num(FU - FL)   # cells without labels: NaN below, not in others
    est = L @ A0 + lam_t * (L @ D0)
    var = np.maximum(Vaa + 2 * lam_t * Vab + lam_t ** 2 * Vbb, 0.0)
    se = np.sqrt(var)
    labels_only = L @ A0
    se_lab = np.sqrt(np.maximum(Vaa, 0))
    undefined = np.asarray((abs(Ls) @ (n_lab == 0)[:, None].astype(float)).ravel()) > 0
    est[undefined] = np.nan
    labels_only[undefined] = np.nan
    se[undefined] = np.nan
    df = np.maximum(n_units - 1, 1).astype(float)
    if small and at.cluster is not None and not bp:
        # Satterthwaite (Bell-McCaffrey) df, at most the labelled clusters - 1
        with np.errstate(invalid="ignore", divide="ignore"):
            YF = np.bincount(at.cell, labw * at.y * at.f, K) / W_L
        bm = _bm_df(cr2, lam_t, (W_L, W_U, A, FL, FU, YF))
        df = np.where(np.isfinite(bm) & (bm > 0), np.minimum(np.maximum(bm, 1.0), df), df)
    if df_rule == "t" and not (bp and _SMALL_SAMPLE["quantile"] == "z"):
        q = stats.t.ppf(1 - (1 - conf) / 2, df)
    else:
        q = np.full(T, _z(conf))
    if at.cluster is not None:  # cluster influence of each target (the covariance of targets)
        ca, cb = influence
        infl = _mul(ca + _mul(cb, lam_t[:, None]), np.sqrt(np.where(np.isfinite(factor), factor, 0))[:, None])
    else:
        infl = None
    lo, hi = est - q * se, est + q * se
    gamma = np.zeros(T)
    if small and _SKEW and not bp:
        # Hall's (1992) skewness-removing transformation of the studentized estimate: the
        # interval bends towards the estimator's long tail (a rare rate's labels: upwards; a
        # detector's rare false flags among the labels: downwards). gamma is the estimate's
        # skewness, sum u^3 / Var^(3/2), u the (cluster) influences; the floor's variance
        # shrinks it where the labels hold few disagreements.
        if at.cluster is None:
            lamc = lam_t[:, None]

            def mom(j, l, Lr):
                return np.asarray(Lr @ np.bincount(ks, at.m * a ** j * b ** l, K * P).reshape(K, P))
            L2s, L3s = sparse.csr_matrix(L ** 2), sparse.csr_matrix(L ** 3)
            M1 = mom(1, 0, Ls) + lamc * mom(0, 1, Ls)
            M2 = mom(2, 0, L2s) + 2 * lamc * mom(1, 1, L2s) + lamc ** 2 * mom(0, 2, L2s)
            M3 = (mom(3, 0, L3s) + 3 * lamc * mom(2, 1, L3s) + 3 * lamc ** 2 * mom(1, 2, L3s)
                  + lamc ** 3 * mom(0, 3, L3s))
            c = cen_a + lamc * cen_b
            third = (M3 - 3 * c * M2 + 3 * c ** 2 * M1 - c ** 3 * at.part_size).sum(1) * factor ** 1.5
        else:
            third = _rowsum(_mul(_mul(infl, infl), infl))
        with np.errstate(invalid="ignore", divide="ignore"):
            gamma = np.where(var > 0, np.nan_to_num(third) / np.where(var > 0, var, 1) ** 1.5, 0.0)
        gamma = np.clip(gamma, -_SKEW_CAP, _SKEW_CAP)
        lo, hi = est - se * _hall_inverse(q, gamma), est - se * _hall_inverse(-q, gamma)
    interval = np.full(T, "t" if small else "z", dtype=object)
    if small and not bp:
        interval[:] = "hall" if _SKEW else "t"
        if _SCORE and (at.cluster is None or _SCORE == "constrained"):
            lo, hi, scored = _score_ends(at, Ls, K, W_L, W_U, FU, est, lam_t, Vab, Vbb, lo, hi, _z(conf),
                                         None if at.cluster is None else (var, q))
            interval[scored] = "score"
            if at.cluster is None:  # the variance at theta0 is known: the normal quantile
                q = np.where(scored, _z(conf), q)
    return {"influence": infl, "estimate": est, "std_error": se, "ci_low": lo, "ci_high": hi, "skewness": gamma,
            "lam": lam_t, "V": (Vaa, Vab, Vbb), "labels_only": labels_only, "labels_only_se": se_lab, "n_labelled": (
                np.asarray((abs(Ls) @ n_lab[:, None]).ravel())), "quantile": q, "df": df, "interval": interval}


def _score_ends(at, Ls, K, W_L, W_U, FU, est, lam_t, Vab, Vbb, lo, hi, z, clustered=None):
    """``_SCORE``'s interval where a target is one cell whose labels share one stratum
    (the other targets keep ``lo``, ``hi``; ``ok`` marks the scored ones): the theta0 with (est - theta0)^2 <= z^2 V(theta0). "simple": V = theta0 (1 - theta0) /
    n_eff + 2 lam Vab + lam^2 Vbb, n_eff = W_L^2 / sum w^2 of the cell's labels (Wilson's at
    lam = 0). "constrained": the labelled part of V at the (label, flag) table's MLE with
    the label rate theta0 (each label's flag rate kept: p11 = theta0 se, p01 = (1 - theta0)
    (1 - sp), se and sp with half a pseudo-count), plus lam^2 FU (1 - FU) / N_U. With
    ``clustered`` = (the clustered variance, the t quantile): V is scaled by the design
    effect, that variance over V at the estimate, and the quantile is the t's."""
    nnz = np.diff(Ls.indptr)
    single = (nnz == 1) & np.isclose(np.asarray(Ls.sum(1)).ravel(), 1.0)
    cell = np.where(nnz > 0, Ls.indices[np.minimum(Ls.indptr[:-1], max(len(Ls.indices) - 1, 0))], 0)
    lab = at.lab
    s_lo = np.full(K, np.inf)
    s_hi = np.full(K, -np.inf)
    np.minimum.at(s_lo, at.cell[lab], at.stratum[lab])
    np.maximum.at(s_hi, at.cell[lab], at.stratum[lab])
    one_stratum = s_lo == s_hi
    sw2 = np.bincount(at.cell, np.where(lab, at.m * at.w ** 2, 0.0), K)
    with np.errstate(invalid="ignore", divide="ignore"):
        n_eff = W_L ** 2 / sw2
        alpha = 1.0 / n_eff[cell]  # the variance at theta0 is known: no n / (n - 1)
    ok = single & one_stratum[cell] & np.isfinite(est) & np.isfinite(alpha) & (alpha > 0)
    z2 = z * z
    if _SCORE == "constrained":
        def count(yy, ff):
            return np.bincount(at.cell, np.where(lab & (at.y == yy) & (at.f == ff), at.m, 0.0), K)[cell]
        n11, n10, n01, n00 = count(1, 1), count(1, 0), count(0, 1), count(0, 0)
        sens = (n11 + _SCORE_PSEUDO) / (n11 + n10 + 2 * _SCORE_PSEUDO)
        fpr = (n01 + _SCORE_PSEUDO) / (n01 + n00 + 2 * _SCORE_PSEUDO)
        uw2 = np.bincount(at.cell, np.where(~lab, at.m * at.w ** 2, 0.0), K)
        with np.errstate(invalid="ignore", divide="ignore"):
            var_u = np.where(uw2[cell] > 0, FU[cell] * (1 - FU[cell]) * uw2[cell] / W_U[cell] ** 2, 0.0)
        lam = lam_t[:, None]

        def score_var(th):
            """V at label rates ``th`` (targets x values): Var(y - lam f) at the constrained
            table, over n_eff, plus the unlabelled flags' part."""
            pi = th * sens[:, None] + (1 - th) * fpr[:, None]  # the flag rate
            v_lab = th * (1 - th) + lam ** 2 * pi * (1 - pi) - 2 * lam * th * (sens[:, None] - pi)
            return alpha[:, None] * v_lab + lam ** 2 * np.nan_to_num(var_u)[:, None]

        scale = np.ones((len(est), 1))
        if clustered is not None:
            var_cl, q_t = clustered
            v_hat = score_var(np.nan_to_num(est)[:, None])[:, 0]
            with np.errstate(invalid="ignore", divide="ignore"):
                deff = np.where(v_hat > 0, var_cl / v_hat, np.nan)
            ok &= np.isfinite(deff)
            scale = np.nan_to_num(deff)[:, None]
            z2 = (np.asarray(q_t, dtype=float)[:, None] if _SCORE_CLUSTER_Q == "t" else z) ** 2
        e = np.nan_to_num(est)[:, None]

        def excess(th):
            """(est - theta0)^2 - z^2 V(theta0): at most 0 where theta0 is accepted."""
            return (e - th) ** 2 - z2 * scale * score_var(th)

        # the accepted values on a grid of 2,001, then each end refined by bisection between
        # its grid neighbours (accepted inside, rejected outside) to 1e-12
        grid = np.linspace(0.0, 1.0, 2001)
        acc = excess(grid[None, :]) <= 0
        ok &= acc.any(1)
        first = np.argmax(acc, 1)
        last = acc.shape[1] - 1 - np.argmax(acc[:, ::-1], 1)
        ends = []
        for inside, outside in ((first, first - 1), (last, last + 1)):
            edge = (outside < 0) | (outside >= len(grid))
            a = grid[np.clip(inside, 0, len(grid) - 1)][:, None]
            b = grid[np.clip(outside, 0, len(grid) - 1)][:, None]
            for _ in range(40):
                mid = (a + b) / 2
                good = excess(mid) <= 0
                a, b = np.where(good, mid, a), np.where(good, b, mid)
            ends.append(np.where(edge, grid[np.clip(inside, 0, len(grid) - 1)], a[:, 0]))
        lo = np.where(ok, ends[0], lo)
        hi = np.where(ok, ends[1], hi)
        return lo, hi, ok
    beta = 2 * lam_t * Vab + lam_t ** 2 * Vbb
    a2, a1, a0 = 1 + z2 * alpha, -(2 * est + z2 * alpha), est ** 2 - z2 * beta
    disc = a1 ** 2 - 4 * a2 * a0
    ok &= disc >= 0
    r = np.sqrt(np.where(ok, disc, 0.0))
    lo = np.where(ok, np.clip((-a1 - r) / (2 * a2), 0.0, 1.0), lo)
    hi = np.where(ok, np.clip((-a1 + r) / (2 * a2), 0.0, 1.0), hi)
    return lo, hi, ok


def _check_lam(lam):
    if lam is None:
        return None
    if not isinstance(lam, (int, float, np.floating, np.integer)) or isinstance(lam, bool) or not 0 <= lam <= 1:
        raise ValueError(f"lam must be None (tuned, PPI++) or a number in [0, 1] (0: labels only, 1: PPI), "
                         f"got {lam!r}")
    return float(lam)


def ppi_rates(
    data: pd.DataFrame,
    by: str | Sequence[str] | None = None,
    *,
    labels: str = "human",
    conf: float = 0.95,
    cluster: str | Sequence[str] | None = "auto",
    strata: str | Sequence[str] | None = None,
    lam: float | None = None,
    refusal: str = "refusal",
    ci: str = "t",
) -> pd.DataFrame:
    """Refusal rate per group corrected by human labels (prediction-powered inference).

    Parameters
    ----------
    data : DataFrame
        The response table with the detector's ``refusal`` flag on every row and human
        labels (0/1) on a random sample of rows, NaN elsewhere.
    by : str or list of str, optional
        Grouping columns.
    labels : str
        The human label column (default ``"human"``).
    conf : float
        Confidence level.
    cluster : "auto", str, list of str or None
        Correlated rows (default ``"auto"``: ``item_id`` when items repeat): the
        influence functions of the labelled and the unlabelled rows are summed per
        cluster before squaring.
    strata : str or list of str, optional
        The ``by`` of :func:`refusalstats.label_sample`: labels were drawn at random
        within these strata, possibly with different fractions. Each stratum's labelled
        rows weigh rows / labels of the stratum; unlabelled rows rows / unlabelled rows.
        None: one simple random sample of rows.
    lam : float, optional
        0: labels only; 1: PPI; None (default): PPI++ (per group, the variance-
        minimizing value in [0, 1]; with ``ci="t"``, 1 for a group whose labels hold one
        class, where the labels cannot tell how label and flag co-vary).
    refusal : str
        The detector's 0/1 flag.
    ci : {"t", "z"}
        ``"t"`` (default), the small-sample interval. The interval is a score
        interval: the rates theta0 that a test of "rate = theta0" accepts, its variance
        taken at theta0, where the (label, flag) table is refitted with the label rate
        theta0 and the detector's error rates kept (half a pseudo-count per cell). With
        labels only (``lam=0``) it is Wilson's interval. With clusters that variance is
        scaled by the design effect (the CR2 variance over the i.i.d. one at the
        estimate) on a Student t quantile with Bell-McCaffrey (Satterthwaite) degrees of
        freedom, at most the clusters with labels minus 1. ``std_error`` is the CR2 one
        with clusters, else the variance times m / (m - 1) (m labelled rows), floored
        by a quarter pseudo-label in each of the four (label, flag) cells of every
        labelled group. A group whose labels come from several strata gets Hall's (1992)
        skewness-corrected t interval on that standard error instead. The attribute
        ``interval`` says which each row got ("score" or "hall"); docs/methods_ppi.md
        section 4 has both and their calibration. ``"z"``: the published interval
        (normal quantile, plain variance, symmetric), as ``ppi_python``.

    Returns
    -------
    DataFrame
        ``by`` columns, ``n`` (rows), ``n_labelled``, ``rate_detector`` (the raw flag
        rate), ``rate`` (corrected), ``std_error``, ``ci_low``, ``ci_high`` (clipped to
        [0, 1]), ``lam``, ``rate_labels_only`` and ``se_labels_only`` (the same labels
        without the detector, for comparison).

    Examples
    --------
    >>> import numpy as np, refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.01, seed=1)
    >>> df["human"] = np.where(np.arange(len(df)) % 20 == 0, df["refusal"], np.nan)
    >>> out = rs.ppi_rates(df, by="task", cluster=None)  # a perfect detector here
    >>> bool((out["std_error"] < out["se_labels_only"]).all())
    True
    """
    data = response_rows(data, "ppi_rates")

    by = _columns(by, "by")
    conf = check_conf(conf)
    lam = _check_lam(lam)
    if ci not in ("t", "z"):
        raise ValueError(f"ci must be 't' or 'z', got {ci!r}")
    _need(data, by, "ppi_rates")
    cells, keys = _codes(data, by)
    atoms, clusters = _build_atoms(data, cells, len(keys), labels=labels, refusal=refusal,
                                   strata=strata, cluster=cluster, where="refusal_rates")
    r = _linear_ppi(atoms, np.eye(len(keys)), lam, conf, ci)
    n = np.bincount(atoms.cell, atoms.m, len(keys))
    flag = np.bincount(atoms.cell, atoms.m * atoms.f, len(keys)) / n
    out = keys.reset_index(drop=True) if by else pd.DataFrame(index=[0])
    out = out.assign(n=n.astype("int64"), n_labelled=r["n_labelled"].astype("int64"), rate_detector=flag,
                     rate=r["estimate"], std_error=r["std_error"],
                     ci_low=np.clip(r["ci_low"], 0, 1), ci_high=np.clip(r["ci_high"], 0, 1), lam=r["lam"],
                     rate_labels_only=r["labels_only"], se_labels_only=r["labels_only_se"])
    _notes(out, r, "rate")
    out.attrs.update(conf=conf, method="ppi++" if lam is None else f"ppi(lam={lam:g})", labels=labels,
                     cluster=clusters, strata=_columns(strata, "strata"), ci=ci,
                     quantile=r["quantile"].tolist(), df=r["df"].tolist(), skewness=r["skewness"].tolist(),
                     interval=r["interval"].tolist())
    return out


def response_rows(data, where):
    """A path (Parquet file, shard folder, CSV, ...) read into rows: labels need the rows."""
    if isinstance(data, pd.DataFrame):
        return data
    from pathlib import Path

    if isinstance(data, (str, Path)):
        from .sources import read_responses

        return read_responses(data, validate_table=False)
    raise TypeError(f"{where}: labels= needs the response table as a DataFrame or a path, "
                    f"got {type(data).__name__}")


def _need(data, cols, where):
    if isinstance(data, pd.DataFrame):
        missing = [c for c in cols if c not in data.columns]
        if missing:
            raise ValueError(f"{where}: column(s) {missing} are not in the table "
                             f"(columns: {list(map(str, data.columns))})")


def _notes(out, r, what):
    bad = np.isnan(r["estimate"])
    if bad.any():
        warnings.warn(f"{int(bad.sum())} group(s) have no labelled row; their corrected {what} is NaN. "
                      "Label rows in every group (rs.label_sample(..., by=...))", RuntimeWarning, stacklevel=3)
    no_se = ~bad & np.isnan(r["std_error"])
    if no_se.any():
        warnings.warn(f"{int(no_se.sum())} group(s) have a corrected {what} but no standard error: their rows "
                      "lie in fewer than two clusters (or, without clusters, they hold fewer than two labelled "
                      "rows), so their interval is NaN. Pass cluster=None if their rows are independent, "
                      "or label more rows in them", RuntimeWarning, stacklevel=3)


def ppi_effect(
    data: pd.DataFrame,
    by: str | Sequence[str] | None = None,
    *,
    labels: str = "human",
    setting: str = "setting",
    levels: tuple[str, str] = ("persona", "persona-free"),
    conf: float = 0.95,
    cluster: str | Sequence[str] | None = "auto",
    strata: str | Sequence[str] | None = None,
    lam: float | None = None,
    refusal: str = "refusal",
    ci: str = "t",
) -> pd.DataFrame:
    """Persona minus persona-free rate corrected by human labels (prediction-powered).

    The two rates are the cell estimates of :func:`ppi_rates`; the difference's
    influence function is the difference of theirs, summed per cluster, so items
    answered in both settings are accounted for. One lam per difference (PPI++).

    Parameters
    ----------
    data : DataFrame
        The response table with both settings, the detector's flag and human labels.
    by : str or list of str, optional
        Grouping columns, e.g. ``"model"``.
    labels, conf, cluster, strata, lam, refusal, ci
        As in :func:`ppi_rates`.
    setting : str
        Column telling the settings apart (derived from ``persona == "none"`` when
        absent, as :func:`refusalstats.persona_effect`).
    levels : (str, str)
        The persona and the persona-free level.

    Returns
    -------
    DataFrame
        ``by`` columns, ``rate_persona``, ``rate_persona_free`` (corrected),
        ``n_labelled``, ``difference``, ``std_error``, ``ci_low``, ``ci_high``, ``lam``,
        ``difference_detector`` (raw flags) and ``difference_labels_only``.

    Examples
    --------
    A perfect detector (labels equal to the flags, both classes labelled in each setting):

    >>> import numpy as np, pandas as pd, refusalstats as rs
    >>> df = pd.DataFrame({"setting": ["persona", "persona-free"] * 48,
    ...                    "refusal": [1, 1, 1, 0, 0, 0, 0, 0] * 12})
    >>> df["human"] = np.where(np.arange(96) % 3 == 0, df["refusal"], np.nan)
    >>> out = rs.ppi_effect(df, cluster=None)
    >>> float(out["difference_detector"].iloc[0]), round(float(out["difference"].iloc[0]), 2)
    (0.25, 0.25)
    """
    data = response_rows(data, "ppi_effect")

    by = _columns(by, "by")
    conf = check_conf(conf)
    lam = _check_lam(lam)
    if setting in by:
        raise ValueError(f"{setting!r} is the setting column; it cannot also be in by=")
    _need(data, by, "ppi_effect")
    if setting in data.columns:
        arm_values = data[setting].astype(object)
    elif "persona" in data.columns:
        from .vocabulary import NO_PERSONA

        arm_values = pd.Series(np.where(data["persona"].astype(object) == NO_PERSONA, levels[1], levels[0]),
                               index=data.index)
    else:
        raise ValueError(f"persona_effect: no {setting!r} column (and no persona column to derive it from)")
    unknown = sorted(set(pd.unique(arm_values)) - set(levels), key=str)
    if unknown:
        raise ValueError(f"column {setting!r} has level(s) {unknown} besides {list(levels)}; keep only the two")
    arm = (arm_values == levels[1]).to_numpy().astype(np.int64)
    g_codes, keys = _codes(data, by)
    G = len(keys)
    present = np.zeros((G, 2), bool)
    present[g_codes, arm] = True
    if not present.all():
        raise ValueError(f"persona_effect needs both settings {list(levels)} in every group; "
                         f"{int((~present.all(1)).sum())} group(s) lack one")
    atoms, clusters = _build_atoms(data, g_codes * 2 + arm, 2 * G, labels=labels, refusal=refusal,
                                   strata=strata, cluster=cluster, where="persona_effect")
    L = np.zeros((G, 2 * G))
    L[np.arange(G), 2 * np.arange(G)] = 1
    L[np.arange(G), 2 * np.arange(G) + 1] = -1
    r = _linear_ppi(atoms, L, lam, conf, ci)
    rates = _linear_ppi(atoms, np.eye(2 * G), None if lam is None else lam, conf, ci)
    n = np.bincount(atoms.cell, atoms.m, 2 * G)
    flag = np.bincount(atoms.cell, atoms.m * atoms.f, 2 * G) / n
    s1, s2 = level_slug(levels[0]), level_slug(levels[1])
    out = keys.reset_index(drop=True) if by else pd.DataFrame(index=[0])
    out = out.assign(**{f"rate_{s1}": rates["estimate"][0::2], f"rate_{s2}": rates["estimate"][1::2]},
                     n_labelled=r["n_labelled"].astype("int64"), difference=r["estimate"],
                     std_error=r["std_error"], ci_low=r["ci_low"], ci_high=r["ci_high"], lam=r["lam"],
                     difference_detector=flag[0::2] - flag[1::2],
                     difference_labels_only=r["labels_only"], se_labels_only=r["labels_only_se"])
    _notes(out, r, "difference")
    out.attrs.update(conf=conf, method="ppi++" if lam is None else f"ppi(lam={lam:g})", labels=labels,
                     cluster=clusters, strata=_columns(strata, "strata"), ci=ci)
    return out


# ----------------------------------------------------------------------- Rogan-Gladen


def rogan_gladen(
    data: pd.DataFrame,
    by: str | Sequence[str] | None = None,
    *,
    labels: str = "human",
    conf: float = 0.95,
    strata: str | Sequence[str] | None = None,
    refusal: str = "refusal",
) -> pd.DataFrame:
    """Rogan–Gladen corrected rate per group, for comparison with :func:`ppi_rates`.

    ``rate = (p + specificity - 1) / (sensitivity + specificity - 1)`` with ``p`` the
    detector's flag rate and sensitivity / specificity estimated from the labelled rows
    of the group (weighted by the label strata), clipped to [0, 1]; delta-method
    variance ``(var p + rate^2 var se + (1 - rate)^2 var sp) / (se + sp - 1)^2``
    (Rogan & Gladen 1978; Greenland 1996), rows treated as independent.

    Parameters
    ----------
    data : DataFrame
        The response table with the flag and the human labels.
    by : str or list of str, optional
        Grouping columns.
    labels, conf, strata, refusal
        As in :func:`ppi_rates`.

    Returns
    -------
    DataFrame
        ``by`` columns, ``sensitivity``, ``specificity``, ``rate_detector``, ``rate``,
        ``std_error``, ``ci_low``, ``ci_high``. Undefined (NaN) when the labels of a
        group hold no refusal or no compliance, or ``se + sp <= 1``.

    Examples
    --------
    >>> import numpy as np, refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.01, seed=1)
    >>> df["human"] = np.where(np.arange(len(df)) % 10 == 0, df["refusal"], np.nan)
    >>> r = rs.rogan_gladen(df)
    >>> bool(np.isclose(r["rate"].iloc[0], r["rate_detector"].iloc[0]))
    True
    """
    data = response_rows(data, "rogan_gladen")

    by = _columns(by, "by")
    conf = check_conf(conf)
    _need(data, by, "rogan_gladen")
    cells, keys = _codes(data, by)
    at, _ = _build_atoms(data, cells, len(keys), labels=labels, refusal=refusal, strata=strata,
                         cluster=None, where="rogan_gladen")
    K = len(keys)
    lw = np.where(at.lab, at.m * at.w, 0.0)
    pos_w = np.bincount(at.cell, lw * at.y, K)
    neg_w = np.bincount(at.cell, lw * (1 - at.y), K)
    n_pos = np.bincount(at.cell, np.where(at.lab, at.m * at.y, 0), K)
    n_neg = np.bincount(at.cell, np.where(at.lab, at.m * (1 - at.y), 0), K)
    n = np.bincount(at.cell, at.m, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.bincount(at.cell, lw * at.y * at.f, K) / pos_w
        sp = np.bincount(at.cell, lw * (1 - at.y) * (1 - at.f), K) / neg_w
        p = np.bincount(at.cell, at.m * at.f, K) / n
        j = se + sp - 1
        rate = np.clip((p + sp - 1) / j, 0, 1)
        var = (p * (1 - p) / n + rate ** 2 * se * (1 - se) / n_pos + (1 - rate) ** 2 * sp * (1 - sp) / n_neg) / j ** 2
    rate = np.where(j > 0, rate, np.nan)
    sd = np.sqrt(var)
    z = _z(conf)
    out = keys.reset_index(drop=True) if by else pd.DataFrame(index=[0])
    out = out.assign(n=n.astype("int64"), n_labelled=(n_pos + n_neg).astype("int64"), sensitivity=se,
                     specificity=sp, rate_detector=p, rate=rate, std_error=sd,
                     ci_low=np.clip(rate - z * sd, 0, 1), ci_high=np.clip(rate + z * sd, 0, 1))
    out.attrs.update(conf=conf, method="rogan-gladen", labels=labels)
    return out


# ----------------------------------------------------------------------- logistic regression


#: A ppi_logit coefficient beyond this (log odds) has diverged: the rows it singles out hold
#: one class. The fit's warning, its success flag and the result's ``separated`` share it.
_DIVERGED = 30.0


@dataclass
class PPILogitResult:
    """Prediction-powered logistic regression coefficients (from :func:`ppi_logit`).

    Attributes
    ----------
    params : Series
        Coefficients (log odds ratios) of the human-label model.
    cov : DataFrame
        Their covariance (sandwich, cluster-robust with ``cluster``).
    lam : float
        The power-tuning parameter used.
    params_labels_only, bse_labels_only : Series
        The same model on the labelled rows only (``lam = 0``), for comparison.
    params_detector : Series
        The same model fitted to the detector's flags on every row (the uncorrected fit).
    formula : str
        The formula.
    conf : float
        Default interval level.
    n_obs, n_labelled, n_clusters : int
        Rows, labelled rows, clusters (0: rows independent).
    separated : tuple of str
        Coefficients whose estimate diverged (beyond +-30 on the log-odds scale): the
        labels and flags of the rows they single out hold one class, e.g. a model that
        never refuses. Their estimate is where the fit stopped; standard error, test and
        interval are NaN, as ``logit`` marks separated terms.
    """

    params: pd.Series
    cov: pd.DataFrame
    lam: float
    params_labels_only: pd.Series
    bse_labels_only: pd.Series
    params_detector: pd.Series
    formula: str
    conf: float
    n_obs: int
    n_labelled: int
    n_clusters: int
    df: float = np.inf
    separated: tuple = ()

    @property
    def bse(self) -> pd.Series:
        """Standard errors (NaN for ``separated`` coefficients)."""
        se = pd.Series(np.sqrt(np.diag(self.cov.to_numpy())), index=self.params.index)
        se[list(self.separated)] = np.nan
        return se

    def conf_int(self, conf: float | None = None) -> pd.DataFrame:
        """Wald intervals (t on ``df`` degrees of freedom with clusters).

        Parameters
        ----------
        conf : float, optional
            Level (default the fit's).

        Returns
        -------
        DataFrame
            ``ci_low``, ``ci_high`` by coefficient.
        """
        conf = self.conf if conf is None else check_conf(conf)
        q = stats.t.ppf(1 - (1 - conf) / 2, self.df) if np.isfinite(self.df) else _z(conf)
        out = pd.DataFrame({"ci_low": self.params - q * self.bse, "ci_high": self.params + q * self.bse})
        out.attrs["conf"] = conf
        return out

    def to_frame(self) -> pd.DataFrame:
        """The coefficient table.

        Returns
        -------
        DataFrame
            ``estimate``, ``std_error``, ``z``, ``p_value``, ``ci_low``, ``ci_high``,
            ``estimate_labels_only``, ``std_error_labels_only``, ``estimate_detector``.
        """
        z = self.params / self.bse
        dist = stats.t(self.df) if np.isfinite(self.df) else stats.norm
        out = pd.DataFrame({"estimate": self.params, "std_error": self.bse, "z": z,
                            "p_value": 2 * dist.sf(np.abs(z))})
        out = out.join(self.conf_int())
        out["estimate_labels_only"] = self.params_labels_only
        out["std_error_labels_only"] = self.bse_labels_only
        out.loc[list(self.separated), "std_error_labels_only"] = np.nan
        out["estimate_detector"] = self.params_detector
        out.attrs["separated"] = list(self.separated)
        return out

    def __repr__(self) -> str:
        return (f"PPILogitResult({self.formula!r}, {len(self.params)} coefficients, n={self.n_obs:,}, "
                f"labelled={self.n_labelled:,}, lam={self.lam:.3f})")

    def summary(self) -> Summary:
        """The coefficient table as text and HTML.

        Returns
        -------
        Summary
        """
        t = self.to_frame()
        head = (f"Prediction-powered logistic regression (PPI++, lam = {self.lam:.3f}): {self.formula}\n"
                f"rows {self.n_obs:,}, human labels {self.n_labelled:,}"
                + (f", clusters {self.n_clusters:,} (cluster-robust)" if self.n_clusters else ""))
        with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 140):
            text = head + "\n" + t.to_string()
        if self.separated:
            text += ("\n\nSeparation: " + ", ".join(self.separated) + " diverged (the labels and flags of "
                     "the rows they single out hold one class, e.g. a level that never refuses): their "
                     "estimates are where the fit stopped, with no standard error or interval. Label "
                     "more rows there, or leave the level out.")
        return Summary("PPI logistic regression", text, t)


def ppi_logit(
    formula: str,
    data: pd.DataFrame,
    *,
    labels: str = "human",
    reference: Mapping[str, object] | None = None,
    cluster: str | None = "auto",
    strata: str | Sequence[str] | None = None,
    lam: float | None = None,
    conf: float = 0.95,
    ci: str = "t",
) -> PPILogitResult:
    """Logistic regression of the human label, powered by the detector's flags (PPI++ GLM).

    The coefficients solve the rectified estimating equation

        sum_lab w x (mu - y) / W_L - lam [sum_lab w x (mu - f) / W_L - sum_unl w x (mu - f) / W_U] = 0,

    (``f`` the flag, ``y`` the human label, ``w`` inverse-probability weights of the
    label strata). Covariance: the sandwich ``J^-1 B J^-1`` with ``J`` the Jacobian of
    the equation and ``B`` built from the per-row influence terms, centred within
    (part, stratum) and summed per cluster (times C / (C - 1)); ``lam`` minimizes its
    trace (PPI++), refitted once.

    Parameters
    ----------
    formula : str
        ``"refusal ~ persona + model"``; the left-hand side names the detector's flag.
    data : DataFrame
        The response table with the flag and human labels.
    labels : str
        The human label column.
    reference : mapping, optional
        Reference levels, as :func:`refusalstats.logit`.
    cluster : "auto", str or None
        Cluster column (default ``item_id`` when items repeat).
    strata : str or list of str, optional
        Label sampling strata, as :func:`ppi_rates`.
    lam : float, optional
        0: labels only; 1: PPI; None: tuned.
    conf : float
        Default interval level.
    ci : {"t", "z"}
        ``"t"`` (default): small-sample intervals, the covariance times U / (U - p) and
        t quantiles on U - p degrees of freedom (U labelled clusters, or labelled rows
        when rows are independent; p coefficients), with half a pseudo-refusal and half
        a pseudo-non-refusal per stratum spread over its labelled rows in the estimate
        (the Haldane-Anscombe correction; finite coefficients when a group's labels hold
        one class), and 0.1 pseudo-label per (label, flag) pair in the variance only for
        the labelled (covariate pattern, stratum) groups whose labels all agree with the
        flag or hold one class (0.1 per pair, spread over the group's labelled rows).
        ``"z"``: the plain sandwich (times C / (C - 1) with C clusters) and normal
        quantiles (t on C - 1 with clusters).

    Returns
    -------
    PPILogitResult

    Examples
    --------
    >>> import numpy as np, refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.01, seed=1)
    >>> df["human"] = np.where(np.arange(len(df)) % 5 == 0, df["refusal"], np.nan)
    >>> fit = rs.ppi_logit("refusal ~ task", df, cluster=None)
    >>> len(fit.params), fit.n_labelled
    (3, 4064)
    """
    data = response_rows(data, "logit")
    from .formula import fixed_design, parse_formula, prepare_factors

    conf = check_conf(conf)
    lam = _check_lam(lam)
    if ci not in ("t", "z"):
        raise ValueError(f"ci must be 't' or 'z', got {ci!r}")
    parsed = parse_formula(formula)
    if parsed.random:
        raise ValueError("ppi_logit fits fixed effects only; drop the (1|g) terms")
    resp = parsed.response
    variables = [v for v in parsed.fixed_variables if v in data.columns]
    missing = [v for v in parsed.fixed_variables if v not in data.columns]
    if missing:
        raise ValueError(f"ppi_logit: formula column(s) {missing} are not in the table")
    frame = prepare_factors(data[variables], variables, reference)
    p_codes, patterns = _codes(frame, variables)
    rhs = formula.split("~", 1)[1]
    X, names, _ = fixed_design(rhs, prepare_factors(patterns, variables, reference))
    at, _ = _build_atoms(data, p_codes, len(patterns), labels=labels, refusal=resp, strata=strata,
                         cluster=cluster, where="logit")
    Xa = X[at.cell]
    part = at.lab.astype(int) * at.n_strata + at.stratum
    W_L = float(np.sum(np.where(at.lab, at.m * at.w, 0)))
    W_U = float(np.sum(np.where(~at.lab, at.m * at.w, 0)))
    cw = np.where(at.lab, at.m * at.w / W_L, at.m * at.w / max(W_U, 1e-300))   # per-atom weight (all rows)
    rw = at.w / np.where(at.lab, W_L, max(W_U, 1e-300))                        # one row's weight

    # small-sample default: pseudo-labels (_PULL_LOGIT per (label, flag) pair and stratum,
    # spread over its labelled rows) enter the estimate, a pull toward 1/2 of weight
    # (1 - lam) that keeps it finite when the labels of a group hold one class only
    # (separation); the variance gets _PSEUDO_LOGIT only in the groups of _floor_groups
    part_all = at.lab.astype(int) * at.n_strata + at.stratum
    with np.errstate(invalid="ignore", divide="ignore"):
        pw = np.where(at.lab & (ci == "t"), 4 * _PULL_LOGIT * at.m / np.maximum(at.part_size[part_all], 1),
                      0.0) * rw

    def loss(lam_, beta):
        """The rectified loss (convex for lam in [0, 1]); its gradient is the equation above."""
        eta = Xa @ beta
        sp = np.logaddexp(0.0, eta)
        per = np.where(at.lab, (1 - lam_) * sp - (at.y - lam_ * at.f) * eta, lam_ * (sp - at.f * eta))
        return float(np.sum(cw * per) + (1 - lam_) * np.sum(pw * (sp - 0.5 * eta)))

    def solve(lam_, beta, warn=True):
        cur = loss(lam_, beta)
        converged = False
        for _ in range(200):
            mu = expit(Xa @ beta)
            r = np.where(at.lab, (mu - at.y) - lam_ * (mu - at.f), lam_ * (mu - at.f))
            g = Xa.T @ (cw * r + (1 - lam_) * pw * (mu - 0.5))
            c = np.where(at.lab, 1 - lam_, lam_) * mu * (1 - mu)
            J = (Xa.T * (cw * c + (1 - lam_) * pw * mu * (1 - mu))) @ Xa
            step = np.linalg.lstsq(J, g, rcond=None)[0]
            if not np.isfinite(step).all():
                break
            t = 1.0  # backtracking: Newton's full step can overshoot when J is nearly singular
            while t > 1e-8:
                new = loss(lam_, beta - t * step)
                if new <= cur + 1e-12 * abs(cur):
                    break
                t /= 2
            beta, cur = beta - t * step, new
            if np.max(np.abs(t * step)) < 1e-10:
                converged = True
                break
        ok = converged and np.max(np.abs(beta)) <= _DIVERGED
        if not warn:
            return beta, J, ok
        if not converged:
            warnings.warn("ppi_logit: Newton's method did not converge in 200 steps: the labelled rows "
                          "separate the classes (a group without labelled refusals?); label more rows",
                          RuntimeWarning, stacklevel=3)
        elif np.max(np.abs(beta)) > _DIVERGED:
            warnings.warn("ppi_logit: coefficients beyond +-30 on the log-odds scale: the labelled rows "
                          "separate the classes; label more rows in the groups without both classes",
                          RuntimeWarning, stacklevel=3)
        return beta, J, ok

    def pieces(beta):
        """Per-atom influence pieces: u (label part) and v (flag part, times lam), one row each."""
        mu = expit(Xa @ beta)
        u = np.where(at.lab, mu - at.y, 0.0)[:, None] * Xa * rw[:, None]
        v = np.where(at.lab, -(mu - at.f), mu - at.f)[:, None] * Xa * rw[:, None]
        return u, v

    def centred_sums(u):
        """Sums per cluster (or per atom, with multiplicity) after centring per (part, stratum)."""
        P = 2 * at.n_strata
        tot = np.zeros((P, u.shape[1]))
        np.add.at(tot, part, at.m[:, None] * u)
        with np.errstate(invalid="ignore", divide="ignore"):
            cen = np.where(at.part_size[:, None] > 0, tot / np.maximum(at.part_size, 1)[:, None], 0)
        if at.cluster is None:
            return u - cen[part], at.m
        C = at.n_clusters
        S = np.zeros((C, u.shape[1]))
        np.add.at(S, at.cluster, at.m[:, None] * u)
        cnt = np.zeros((C, P))
        np.add.at(cnt, (at.cluster, part), at.m)
        return S - cnt @ cen, np.ones(C)

    def covariance(beta, J):
        """Influence of each cluster (or atom) on the coefficients: label part a, flag part b."""
        u, v = pieces(beta)
        du, mult = centred_sums(u)
        dv, _ = centred_sums(v)
        if ci == "t" and bare.any():  # pseudo-labels: _PSEUDO_LOGIT per (label, flag) pair of a bare group
            mu = expit(Xa @ beta)
            lab_i = np.flatnonzero(bare)
            share = _PSEUDO_LOGIT * at.m[lab_i] / n_group[lab_i]
            xr = Xa[lab_i] * rw[lab_i, None]
            for yy in (0.0, 1.0):
                for ff in (0.0, 1.0):
                    du = np.vstack([du, (mu[lab_i] - yy)[:, None] * xr])
                    dv = np.vstack([dv, -(mu[lab_i] - ff)[:, None] * xr])
                    mult = np.concatenate([mult, share])
        Jinv = np.linalg.pinv(J)
        factor = at.n_clusters / (at.n_clusters - 1) if at.cluster is not None else 1.0
        return du @ Jinv.T, dv @ Jinv.T, mult, factor

    p = X.shape[1]
    bare = _floor_groups(at)
    g_code = at.cell * at.n_strata + at.stratum
    n_group = np.bincount(g_code, np.where(at.lab, at.m, 0.0), at.n_cells * at.n_strata)[g_code]
    # the uncorrected fit (the flags of every row as the response) starts the others
    det = _flag_fit(Xa, at.f, at.m, p)
    start = det if np.isfinite(det).all() else np.zeros(p)
    beta0, J0, _ = solve(0.0, start, warn=False)
    a0, _, mult, factor = covariance(beta0, J0)
    cov_lab = factor * (a0 * mult[:, None]).T @ a0
    if lam is None:
        # the pilot fit for lam: PPI (lam = 1) as ppi_python, or the labels-only fit when the
        # rectified loss at lam = 1 has no finite minimum (a negative corrected rate in a group)
        pilot, Jp, okp = solve(1.0, start, warn=False)
        if not okp:
            pilot, Jp = beta0, J0
        for _ in range(2):
            a, b, mult, factor = covariance(pilot, Jp)
            sab = float(np.sum(mult[:, None] * a * b))
            sbb = float(np.sum(mult[:, None] * b * b))
            lam_used = float(np.clip(-sab / sbb, 0, 1)) if sbb > 0 else 0.0
            pilot, Jp, okp = solve(lam_used, start, warn=False)
            if not okp:
                break
        # a lam whose loss has no finite minimum is shrunk toward labels only
        while not okp and lam_used > 1e-3:
            lam_used /= 2
            pilot, Jp, okp = solve(lam_used, start, warn=False)
    else:
        lam_used = lam
    beta, J, _ = solve(lam_used, start)
    a, b, mult, factor = covariance(beta, J)
    t = a + lam_used * b
    cov = factor * (t * mult[:, None]).T @ t
    n_lab = int(np.sum(np.where(at.lab, at.m, 0)))
    df = at.n_clusters - 1 if at.cluster is not None else np.inf
    if ci == "t":  # small samples: units with labels, less the coefficients
        units = len(np.unique(at.cluster[at.lab])) if at.cluster is not None else n_lab
        if units <= p:
            raise ValueError(f"ppi_logit: {units} labelled {'clusters' if at.cluster is not None else 'rows'} "
                             f"for {p} coefficients; label more rows or use a smaller formula")
        cov = cov / factor * units / (units - p)
        cov_lab = cov_lab / factor * units / (units - p)
        df = units - p
    return PPILogitResult(
        params=pd.Series(beta, index=names), cov=pd.DataFrame(cov, index=names, columns=names),
        lam=lam_used, params_labels_only=pd.Series(beta0, index=names),
        bse_labels_only=pd.Series(np.sqrt(np.diag(cov_lab)), index=names),
        params_detector=pd.Series(det, index=names), formula=formula, conf=conf,
        n_obs=int(at.m.sum()), n_labelled=n_lab, n_clusters=at.n_clusters, df=float(df),
        separated=tuple(n for n, v in zip(names, beta) if abs(v) > _DIVERGED),
    )


def _flag_fit(X, f, m, p) -> np.ndarray:
    beta = np.zeros(p)
    for _ in range(100):
        mu = expit(X @ beta)
        step = np.linalg.lstsq((X.T * (m * mu * (1 - mu))) @ X, X.T @ (m * (mu - f)), rcond=None)[0]
        beta -= step
        if np.max(np.abs(step)) < 1e-10 or not np.isfinite(beta).all():
            break
    return beta


# ----------------------------------------------------------------------- report card, budget


def label_budget(
    data: pd.DataFrame,
    target_width: float,
    by: str | Sequence[str] | None = "model",
    *,
    labels: str | None = None,
    sensitivity: float | None = None,
    specificity: float | None = None,
    conf: float = 0.95,
    refusal: str = "refusal",
) -> pd.DataFrame:
    """Human labels per stratum needed for a target interval width of the corrected rate.

    From the detector's flag rate ``p`` and its error rates (estimated from the labels
    already in ``labels``, else the assumed ``sensitivity`` / ``specificity``), the true
    rate is ``pi = (p + sp - 1) / (se + sp - 1)`` and PPI++'s variance with ``n`` labels
    out of ``N`` rows is about ``pi (1 - pi) (1 - rho^2) / n + lam^2 p (1 - p) / N``,
    ``rho`` the correlation of label and flag and ``lam = cov / var(flag)``. Solving
    ``2 z se = target_width`` for ``n`` gives the labels needed. Rows are treated as
    independent (item clustering widens the interval a little more; label a few more).

    Parameters
    ----------
    data : DataFrame
        The response table with the detector's flag (and any pilot labels).
    target_width : float
        Full width of the interval to reach (e.g. 0.05 for +- 2.5 points).
    by : str or list of str
        Strata (default ``"model"``).
    labels : str, optional
        A label column with pilot labels to estimate the error rates per stratum from
        (strata without both classes among their labels fall back to the assumed rates).
    sensitivity, specificity : float, optional
        Assumed error rates (default 0.8 and 0.9 when there are no pilot labels).
    conf : float
        Interval level.
    refusal : str
        The detector's flag.

    Returns
    -------
    DataFrame
        ``by`` columns, ``n`` (rows), ``rate_detector``, ``sensitivity``,
        ``specificity``, ``error_rates`` ("estimated" or "assumed"), ``rate`` (implied
        true rate), ``labels_needed`` (PPI++), ``labels_needed_labels_only`` (the
        labels alone), ``n_labelled`` (already) and ``to_label`` (more needed). Strata
        where the width cannot be reached even with every row labelled get ``n``.

    Examples
    --------
    >>> import refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.01, seed=1)
    >>> b = rs.label_budget(df, 0.1, by="task")
    >>> bool((b["labels_needed"] <= b["labels_needed_labels_only"]).all())
    True
    """
    data = response_rows(data, "label_budget")

    by = _columns(by, "by")
    conf = check_conf(conf)
    if not (isinstance(target_width, (int, float)) and 0 < target_width < 1):
        raise ValueError(f"target_width must be a number in (0, 1) (full interval width), got {target_width!r}")
    for nm, v in (("sensitivity", sensitivity), ("specificity", specificity)):
        if v is not None and not 0 < v <= 1:
            raise ValueError(f"{nm} must be in (0, 1], got {v!r}")
    _need(data, [*by, refusal], "label_budget")
    frame = data[[*by, refusal]].copy()
    frame["_f"] = pd.to_numeric(frame[refusal]).astype(float)
    have = labels is not None
    if have:
        h = _label_values(data, labels)
        frame["_lab"] = ~np.isnan(h)
        frame["_tp"] = (h == 1) & (frame["_f"] == 1)
        frame["_pos"] = h == 1
        frame["_tn"] = (h == 0) & (frame["_f"] == 0)
        frame["_neg"] = h == 0
    else:
        frame = frame.assign(_lab=False, _tp=False, _pos=False, _tn=False, _neg=False)
    grp = frame.groupby(by, observed=True) if by else frame.assign(_all=0).groupby("_all")
    g = grp.agg(n=("_f", "size"), p=("_f", "mean"), n_labelled=("_lab", "sum"), tp=("_tp", "sum"),
                pos=("_pos", "sum"), tn=("_tn", "sum"), neg=("_neg", "sum"))
    se0 = 0.8 if sensitivity is None else sensitivity
    sp0 = 0.9 if specificity is None else specificity
    est = (g["pos"] > 0) & (g["neg"] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.where(est, g["tp"] / g["pos"], se0)
        sp = np.where(est, g["tn"] / g["neg"], sp0)
    p = g["p"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        pi = (p + sp - 1) / (se + sp - 1)
    # assumed error rates that the flag rate contradicts (e.g. fewer flags than 1 - sp):
    # plan with the flag rate itself as the true rate
    pi = np.where(~est & ((pi <= 0) | (pi >= 1) | ~np.isfinite(pi)), p, np.clip(pi, 0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        var_y = pi * (1 - pi)
        var_f = p * (1 - p)
        cov = pi * se - pi * p
        rho2 = np.where(var_y * var_f > 0, cov ** 2 / (var_y * var_f), 0.0)
        lam = np.where(var_f > 0, np.clip(cov / var_f, 0, 1), 0.0)
    half = target_width / (2 * _z(conf))
    N = g["n"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        room = half ** 2 - lam ** 2 * var_f / N
        need = np.where(room > 0, np.ceil(var_y * (1 - np.minimum(rho2, 1)) / room), N)
        need_lab = np.ceil(var_y / half ** 2)
    # the default interval floors the rectifier's variance with pseudo-labels (about one
    # disagreement's worth): fewer labels than this cannot reach the width
    floor = np.ceil(2 * _z(conf) * np.sqrt(2 * _PSEUDO) / target_width)
    need = np.minimum(np.maximum(need, floor), N)
    need_lab = np.minimum(np.maximum(need_lab, floor), N)
    out = (g.index.to_frame(index=False) if by else pd.DataFrame(index=[0]))
    out = out.assign(n=N.astype("int64"), rate_detector=p, sensitivity=se, specificity=sp,
                     error_rates=np.where(est, "estimated", "assumed"), rate=pi,
                     labels_needed=need.astype("int64"), labels_needed_labels_only=need_lab.astype("int64"),
                     n_labelled=g["n_labelled"].to_numpy().astype("int64"))
    out["to_label"] = np.maximum(out["labels_needed"] - out["n_labelled"], 0)
    out.attrs.update(target_width=target_width, conf=conf)
    return out


# ----------------------------------------------------------------------- disparity


def _reweighted(at: _Atoms, m: np.ndarray) -> _Atoms:
    """The atoms with new row counts (a bootstrap replicate), part sizes recomputed."""
    H = at.n_strata
    part_size = np.bincount(at.lab.astype(int) * H + at.stratum, weights=m, minlength=2 * H)
    return _Atoms(cell=at.cell, lab=at.lab, stratum=at.stratum, y=at.y, f=at.f, w=at.w, m=m,
                  cluster=at.cluster, n_cells=at.n_cells, n_strata=at.n_strata, n_clusters=at.n_clusters,
                  part_size=part_size)


#: The interval of ``disparity(labels=)``: "percentile" (the default, a bootstrap that
#: re-estimates). Measured and not adopted (docs/methods_ppi.md, "Fieller-type intervals"
#: and "Why no test of the ratio has the right size"; ``calibration_ppi.py --disparity
#: --disparity-interval KIND``): "basic-log", the replicates' deviations from the bootstrap
#: world's true ratio (the plug-in ratio of the estimated rates) on the log scale, reflected
#: about the estimate; "bc", Efron's bias-corrected percentile interval; the Fieller kinds;
#: the U-statistic and wild-bootstrap test inversions below ("wild-lr" is the lead: 0.927-0.985
#: on a fresh seed, two of seven rows outside 0.93-0.97).
_DISPARITY_INTERVAL = "percentile"
#: Test-inversion kinds with the U-statistic variance of V_c - q V_0 (``_ustat_products``;
#: research alternatives, not the default): see ``_ustat_interval``.
_USTAT_KINDS = ("ustat", "boot-t", "boot-t-qw")
#: Restricted wild-bootstrap test inversion (``_wild_interval``; research alternatives, not
#: the default): ``n_boot`` wild draws on the estimate's influences, no re-estimation.
_WILD_KINDS = ("wild-null", "wild-null-t", "wild-pp", "lr", "wild-lr", "wild-lr-full", "wild-lr-mammen")
#: at least this many wild draws (they are cheap: no re-estimation)
_WILD_DRAWS = 999
#: "wild-pp": outer and inner draws each (the p-values cost draws^2 per ratio tried)
_WILD_PP_DRAWS = 400
#: "wild-lr": draws (each needs the restricted fit on a grid of v_0 per ratio tried)
_WILD_LR_DRAWS = 400
#: bisection steps refining each end of the LR kinds' intervals between the grid's
#: accepted and rejected ratios (0: the accepted grid points, up to 10% inside the set)
_REFINE_STEPS = 8


def _disparity_interval(B: np.ndarray, est: np.ndarray, plugin: np.ndarray, alpha: float,
                        var0: np.ndarray | None, boot_var: np.ndarray | None):
    """Bootstrap interval of each ratio (columns of the replicates ``B``); the test-inversion
    kinds use the unfloored corrected variances ``var0`` (rows x 2: category, control) and
    their replicates ``boot_var`` (n_boot x rows x 2)."""
    if _DISPARITY_INTERVAL in _USTAT_KINDS:
        ends = [_ustat_interval(var0[j], boot_var[:, j], alpha, _DISPARITY_INTERVAL) for j in range(len(est))]
        return np.array([e[0] for e in ends]), np.array([e[1] for e in ends])
    if _DISPARITY_INTERVAL.startswith("fieller"):
        kind = _DISPARITY_INTERVAL.partition("-")[2] or "normal"
        ends = [_ratio_test_inversion(var0[j, 0], var0[j, 1], boot_var[:, j, 0], boot_var[:, j, 1], alpha, kind,
                                      var0[j, 2:8])
                for j in range(len(est))]
        return np.array([e[0] for e in ends]), np.array([e[1] for e in ends])
    if _DISPARITY_INTERVAL == "basic-log":
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.log(B) - np.log(plugin)
        return (est * np.exp(-np.nanquantile(d, 1 - alpha / 2, axis=0)),
                est * np.exp(-np.nanquantile(d, alpha / 2, axis=0)))
    if _DISPARITY_INTERVAL == "bc":
        share = np.nanmean(B < est, axis=0) + 0.5 * np.nanmean(B == est, axis=0)
        z0 = stats.norm.ppf(np.clip(share, 0.5 / len(B), 1 - 0.5 / len(B)))
        zq = stats.norm.ppf(1 - alpha / 2)
        return (np.array([np.nanquantile(B[:, j], stats.norm.cdf(2 * z0[j] - zq)) for j in range(B.shape[1])]),
                np.array([np.nanquantile(B[:, j], stats.norm.cdf(2 * z0[j] + zq)) for j in range(B.shape[1])]))
    return np.nanquantile(B, alpha / 2, axis=0), np.nanquantile(B, 1 - alpha / 2, axis=0)


def _noise_products(cat, ctrl, cov, ddof, rate=None):
    """tr(A_x S_xy A_y S_yx) for the category (x, y = c) and the control set (0): the
    second-order noise terms of the corrected variances V = r' A r - tr(A S), A = H / (k - ddof)
    (H centres the set's rates, S their covariance). For normal rates Var(V_c) = 2 t_cc +
    4 r_c' A S A r_c, and a bootstrap around the estimated rates adds 4 t_cc to it (its
    world's rates carry the noise once more); t_c0 is the same for the covariance."""
    cov = np.nan_to_num(cov)
    out = {}
    mats = {}
    for name, mem in (("c", cat), ("0", ctrl)):
        k = int(mem.sum())
        mats[name] = (np.eye(k) - 1.0 / k) / max(k - ddof, 1), np.flatnonzero(mem)
    for x, y in (("c", "c"), ("c", "0"), ("0", "0")):
        (Ax, ix), (Ay, iy) = mats[x], mats[y]
        out[x + y] = float(np.trace(Ax @ cov[np.ix_(ix, iy)] @ Ay @ cov[np.ix_(iy, ix)]))
        if rate is not None:  # r_x' A_x S_xy A_y r_y, the first-order term at the estimated rates
            out["r" + x + y] = float(rate[ix] @ Ax @ cov[np.ix_(ix, iy)] @ Ay @ rate[iy])
    if rate is not None:
        return out["cc"], out["c0"], out["00"], out["rcc"], out["rc0"], out["r00"]
    return out["cc"], out["c0"], out["00"]


def _set_matrices(cat, ctrl, P: int, ddof: int) -> list[np.ndarray]:
    """B_c, B_0 (P x P): r' B r is the variance of the category's, and the controls', rates
    (each set's rates centred, over k - ddof)."""
    B = []
    for mem in (cat, ctrl):
        idx = np.flatnonzero(mem)
        k = len(idx)
        M = np.zeros((P, P))
        M[np.ix_(idx, idx)] = (np.eye(k) - 1.0 / k) / max(k - ddof, 1)
        B.append(M)
    return B


class _Spreads:
    """The parts of the corrected spreads that the test-inversion kinds share: the set
    matrices ``B``, U-statistic products ``comp`` (:func:`_ustat_products`), plug-in
    spreads ``Pc``, ``P0`` (r' B r), each unit's noise ``d`` (t_g' B t_g) and their sums
    ``N``, the corrected spreads ``Vc``, ``V0`` and the linear terms' variance per unit
    spread ``lc``, ``l0`` (NaN where the plug-in spread is 0)."""

    def __init__(self, cat, ctrl, rate, ddof, T):
        self.rate = np.nan_to_num(np.asarray(rate, dtype=float))
        self.T = np.nan_to_num(np.asarray(T, dtype=float))
        r, T = self.rate, self.T
        self.B = _set_matrices(cat, ctrl, len(r), ddof)
        self.comp = _ustat_products(cat, ctrl, r, ddof, T=T)
        self.Pc, self.P0 = (float(r @ M @ r) for M in self.B)
        self.d = [np.einsum("pg,pq,qg->g", T, M, T) for M in self.B]
        self.N = [float(x.sum()) for x in self.d]
        self.Vc, self.V0 = self.Pc - self.N[0], self.P0 - self.N[1]
        with np.errstate(invalid="ignore", divide="ignore"):
            self.lc, self.l0 = (float(np.sum((T.T @ (M @ r)) ** 2)) / p if p > 0 else np.nan
                                for M, p in zip(self.B, (self.Pc, self.P0)))


def _atom_influences(at: _Atoms):
    """Each atom's influences on its cell's PPI++ estimate, ``a`` (the labelled mean of the
    label) and ``b`` (the unlabelled minus the labelled mean of the flag): ``a = [lab] w (y
    - A) / W_L``, ``b = -[lab] w (f - FL) / W_L + [unl] w (f - FU) / W_U`` (0 in cells
    without unlabelled rows), and the cells' (W_L, W_U, A, FL, FU); FU is FL where a cell
    has no unlabelled rows."""
    K = at.n_cells
    mw = at.m * at.w
    labw, unlw = np.where(at.lab, mw, 0.0), np.where(~at.lab, mw, 0.0)
    W_L, W_U = np.bincount(at.cell, labw, K), np.bincount(at.cell, unlw, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        A = np.bincount(at.cell, labw * at.y, K) / W_L
        FL = np.bincount(at.cell, labw * at.f, K) / W_L
        FU = np.where(W_U > 0, np.bincount(at.cell, unlw * at.f, K) / np.where(W_U > 0, W_U, 1), FL)
        a = np.where(at.lab, at.w * (at.y - A[at.cell]) / W_L[at.cell], 0.0)
        b = np.where(at.lab, -at.w * (at.f - FL[at.cell]) / W_L[at.cell],
                     at.w * (at.f - FU[at.cell]) / np.where(W_U > 0, W_U, 1)[at.cell])
    b = np.where(W_U[at.cell] > 0, b, 0.0)
    return np.nan_to_num(a), np.nan_to_num(b), (W_L, W_U, A, FL, FU)


def _row_influence(at: _Atoms, lam: np.ndarray) -> np.ndarray:
    """Each atom's influence a + lam b on its cell's PPI++ estimate (``_linear_ppi``'s, L
    the identity, rows independent, without the small-sample floor and factor)."""
    a, b, _ = _atom_influences(at)
    return np.nan_to_num(a + np.nan_to_num(lam)[at.cell] * b)


def _ustat_products(cat, ctrl, rate, ddof, T=None, moments=None):
    """Variance components of D(q) = V_c - q V_0 that hold without normal rates.

    With r = mu + sum_g t_g (t_g: independent units' influences, clusters or rows) and
    N = sum_g t_g' B t_g the noise term the correction subtracts, V = r' B r - N =
    mu' B mu + 2 sum_g mu' B t_g + sum_{g != h} t_g' B t_h: the correction removes the
    diagonal (the fourth moments) and leaves a U-statistic, so Var V = 4 mu' B S B mu +
    2 sum_{g != h} E (t_g' B t_h)^2 (Hoeffding), whatever the rates' distribution. Both are
    estimated without bias: W = sum_{g != h} (t_g' B t_h)^2 and L = sum_g (t_g' B (r - t_g))^2
    (leave-one-unit-out rates), E L = mu' B S B mu + E W; Var V is estimated by 4 L - 2 W.
    The plug-in 4 r' B S B r - 2 tr(B S B S) adds 2 sum_g (t_g' B t_g)^2 and third-moment
    terms, large when a persona's labels hold a few disagreements.

    ``T``: personas x units influences (clusters); or ``moments``: (m2, m3, m4) per persona,
    sums of the units' u^2, u^3, u^4 when every unit (row) touches one persona. Returns
    ``(S_cc, S_c0, S_00, W_cc, W_c0, W_00)``: Var D(q) ~ S_cc - 2 q S_c0 + q^2 S_00, and the
    same for the degenerate part W (a floor: Var D(q) >= 2 W(q))."""
    rate = np.nan_to_num(np.asarray(rate, dtype=float))
    B = _set_matrices(cat, ctrl, len(rate), ddof)
    if T is not None:
        T = np.nan_to_num(np.asarray(T, dtype=float))
        G = [T.T @ M @ T for M in B]
        d = [np.diag(g) for g in G]
        loo = [(M @ rate) @ T - dd for M, dd in zip(B, d)]

        def L(x, y):
            return float(loo[x] @ loo[y])

        def W(x, y):
            return float(np.sum(G[x] * G[y]) - d[x] @ d[y])
    else:
        m2, m3, m4 = (np.nan_to_num(np.asarray(m, dtype=float)) for m in moments)
        b = [M @ rate for M in B]
        bd = [np.diag(M) for M in B]

        def L(x, y):
            return float(np.sum(b[x] * b[y] * m2 - (b[x] * bd[y] + b[y] * bd[x]) * m3 + bd[x] * bd[y] * m4))

        def W(x, y):
            return float(m2 @ (B[x] * B[y]) @ m2 - np.sum(bd[x] * bd[y] * m4))
    pairs = ((0, 0), (0, 1), (1, 1))
    return tuple(4 * L(x, y) - 2 * W(x, y) for x, y in pairs) + tuple(W(x, y) for x, y in pairs)


def _unit_moments(at: _Atoms, lam: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell, sums over rows of u^2, u^3, u^4 with u a row's influence on its cell's
    PPI++ estimate (``_linear_ppi``'s a + lam b, L the identity, without the small-sample
    floor and factor): the units of :func:`_ustat_products` when rows are independent."""
    u = _row_influence(at, lam)
    return tuple(np.bincount(at.cell, at.m * u ** j, at.n_cells) for j in (2, 3, 4))


def _ustat_interval(v: np.ndarray, V: np.ndarray, alpha: float, kind: str) -> tuple[float, float]:
    """Interval for the ratio sqrt(q) from tests of D(q) = V_c - q V_0 = 0 with the
    U-statistic variance S(q) of :func:`_ustat_products` (at least 2 W(q)).

    ``v``: the estimate's (V_c, V_0, S_cc, S_c0, S_00, W_cc, W_c0, W_00, P_c, P_0), P the
    plug-in (uncorrected) variances r' B r; ``V``: the same per bootstrap replicate.
    ``kind``: "ustat" (Fieller: normal quantile, closed form); "boot-t" (bootstrap-t test at
    each q of a grid: the replicates' (D*(q) - D_w(q)) / sqrt(S*(q)), D_w(q) = P_c - q P_0 the
    bootstrap world's true value, whose true rates are the estimated ones); "boot-t-qw"
    (one bootstrap-t distribution, at the bootstrap world's true q_w = P_c / P_0)."""
    a, c = v[0], v[1]
    if not (np.isfinite(a) and np.isfinite(c)):
        return np.nan, np.nan
    S = np.array([[v[2], v[3]], [v[3], v[4]]])
    Wm = np.array([[v[5], v[6]], [v[6], v[7]]])
    if kind == "ustat":
        z2 = stats.norm.ppf(1 - alpha / 2) ** 2
        ends = [e for e in (_fieller(a, c, S, z2), _fieller(a, c, 2 * Wm, z2)) if np.isfinite(e[0])]
        if not ends:
            return np.nan, np.nan
        return min(e[0] for e in ends), max(e[1] for e in ends)
    V = V[np.all(np.isfinite(V), axis=1)]
    if len(V) < 10:
        return np.nan, np.nan

    def var(x, q):
        """S(q) floored at 2 W(q), x rows of the tuple layout above; q broadcasts."""
        s = x[..., 2] - 2 * q * x[..., 3] + q ** 2 * x[..., 4]
        w = x[..., 5] - 2 * q * x[..., 6] + q ** 2 * x[..., 7]
        return np.maximum(s, 2 * w)

    def stat(x, q, centre):
        with np.errstate(invalid="ignore", divide="ignore"):
            return (x[..., 0] - q * x[..., 1] - centre) / np.sqrt(var(x, q))

    R = np.concatenate([[0.0], np.geomspace(1e-3, 1e4, 700)])
    q = R ** 2
    z = stat(v, q, 0.0)
    if kind == "boot-t-qw":
        qw = v[8] / v[9] if v[9] > 0 else np.inf
        zs = stat(V, qw, 0.0) if np.isfinite(qw) else -V[:, 1] / np.sqrt(np.maximum(V[:, 4], 2 * V[:, 7]))
        lo_q, hi_q = np.nanquantile(zs, [alpha / 2, 1 - alpha / 2])
        ok = (z >= lo_q) & (z <= hi_q)
        z_inf = -c / np.sqrt(max(v[4], 2 * v[7]))
        ok_inf = lo_q <= z_inf <= hi_q
    else:
        zs = stat(V[:, None, :], q[None, :], (v[8] - q * v[9])[None, :])
        lo_q, hi_q = np.nanquantile(zs, alpha / 2, axis=0), np.nanquantile(zs, 1 - alpha / 2, axis=0)
        ok = (z >= lo_q) & (z <= hi_q)
        # q -> infinity: the test of V_0 = its world's P_0 (the controls' spread alone)
        with np.errstate(invalid="ignore", divide="ignore"):
            zi = (V[:, 1] - v[9]) / np.sqrt(np.maximum(V[:, 4], 2 * V[:, 7]))
        z_inf = c / np.sqrt(max(v[4], 2 * v[7]))
        ok_inf = np.nanquantile(zi, alpha / 2) <= z_inf <= np.nanquantile(zi, 1 - alpha / 2)
    if not ok.any() and not ok_inf:
        return np.nan, np.nan
    acc = R[ok]
    lo = float(acc.min()) if ok.any() else float(R[-1])
    hi = np.inf if ok_inf else float(acc.max())
    return lo, hi


def _unit_influences(at: _Atoms, lam: np.ndarray, factor: bool = False) -> np.ndarray:
    """Personas (cells) x rows: each row's influence on its cell's PPI++ estimate (rows
    independent; see :func:`_unit_moments`), atoms expanded into their rows. ``factor``:
    times sqrt(n / (n - 1)), n the cell's labelled rows (the m / (m - 1) of ``_linear_ppi``
    without clusters: the influences are centred at the estimated means)."""
    K = at.n_cells
    u = _row_influence(at, lam)
    if factor:
        n_lab = np.bincount(at.cell, np.where(at.lab, at.m, 0.0), K)
        with np.errstate(invalid="ignore", divide="ignore"):
            u = u * np.sqrt(np.where(n_lab > 1, n_lab / np.maximum(n_lab - 1, 1), 1.0))[at.cell]
    reps = np.round(at.m).astype(int)
    cell, u = np.repeat(at.cell, reps), np.repeat(u, reps)
    T = np.zeros((K, len(u)))
    T[cell, np.arange(len(u))] = u
    return T


def _wild_interval(cat, ctrl, rate, ddof, T, Vc, V0, n_wild, rng, alpha, studentize=False):
    """Interval for the ratio sqrt(q) from restricted wild-bootstrap tests of D(q) = V_c -
    q V_0 = 0 (the null imposed; Davidson & MacKinnon 1999, Cameron, Gelbach & Miller 2008).

    For each q of a grid the bootstrap world's true rates are the estimated ones shrunk
    towards their set's mean so that their spreads are (v_c, v_0) = (q v_0, v_0), v_0 the
    weighted least-squares fit of the corrected variances (Vc, V0) under the null
    (weights 1 / their U-statistic variances, v_0 >= 0); the world's rates are these plus
    sum_g e_g t_g, e_g Rademacher signs on the units' influences ``T`` (personas x units).
    Its D*(q) = V*_c - q V*_0 (the same noise correction) reproduces the corrected spreads'
    U-statistic structure, including the skewness of the noise's quadratic part. The test
    accepts q when D(q) lies inside the draws' alpha / 2 and 1 - alpha / 2 quantiles
    (``studentize``: D / sqrt(S(q)) against D* / sqrt(S*(q)), S the estimate 4 L - 2 W of
    :func:`_ustat_products`, at least 2 W). q = infinity is the test of v_0 = 0."""
    if not (np.isfinite(Vc) and np.isfinite(V0)):
        return np.nan, np.nan
    sp = _Spreads(cat, ctrl, rate, ddof, T)
    rate, T, B, comp, Pc, P0, d, N = sp.rate, sp.T, sp.B, sp.comp, sp.Pc, sp.P0, sp.d, sp.N
    s_c, s_0 = max(comp[0], 2 * comp[3], 1e-300), max(comp[2], 2 * comp[5], 1e-300)
    E = rng.choice([-1.0, 1.0], size=(n_wild, T.shape[1]))
    Y = E @ T.T                                            # n_wild x P: sum_g e_g t_g
    ell = [Y @ M @ rate for M in B]                        # y' B r
    Q = [np.einsum("bp,pq,bq->b", Y, M, Y) - n for M, n in zip(B, N)]   # y' B y - N
    R = np.concatenate([[0.0], np.geomspace(1e-3, 1e4, 400)])
    q = R ** 2
    v0 = np.maximum((q * Vc / s_c + V0 / s_0) / (q ** 2 / s_c + 1 / s_0), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        sc = np.where(Pc > 0, np.sqrt(q * v0 / Pc), 0.0)
        s0 = np.where(P0 > 0, np.sqrt(v0 / P0), 0.0)
    # D*(q) - D_w(q) with D_w(q) = 0: 2 s_c y'B_c r - 2 q s_0 y'B_0 r + Q_c - q Q_0
    Dstar = 2 * sc * ell[0][:, None] - 2 * q * s0 * ell[1][:, None] + Q[0][:, None] - q * Q[1][:, None]
    Dobs = Vc - q * V0
    Dinf, Dinf_star = -V0, -Q[1]                            # D(q) / q as q -> infinity, v_0 = 0
    if studentize:
        # S(q) = 4 L(q) - 2 W(q), L(q) = sum_g (t_g' B(q) (r - t_g))^2, at the estimate and per draw
        alpha_x = [T.T @ (M @ rate) for M in B]               # t_g' B_x r

        def S_obs(qq):
            a = alpha_x[0] - d[0] - qq[:, None] * (alpha_x[1] - d[1])
            Wq = comp[3] - 2 * qq * comp[4] + qq ** 2 * comp[5]
            return np.maximum(4 * np.sum(a ** 2, 1) - 2 * Wq, 2 * Wq), Wq
        S, Wq = S_obs(q)
        # per draw: t_g' B_x (r*_b - e_bg t_g) = s_x alpha_x,g + t_g' B_x y_b - e_bg d_x,g
        beta = [Y @ M @ T - E * dd[None] for M, dd in zip(B, d)]  # n_wild x units
        u = np.stack([np.broadcast_to(alpha_x[0], beta[0].shape), beta[0],
                      np.broadcast_to(alpha_x[1], beta[1].shape), beta[1]], axis=-1)
        Mb = np.einsum("bgi,bgj->bij", u, u)
        coef = np.stack([sc, np.ones_like(q), -q * s0, -q], axis=-1)    # Q x 4
        Lstar = np.einsum("qi,bij,qj->bq", coef, Mb, coef)
        Sstar = np.maximum(4 * Lstar - 2 * Wq[None], 2 * Wq[None])
        with np.errstate(invalid="ignore", divide="ignore"):
            Dobs, Dstar = Dobs / np.sqrt(S), Dstar / np.sqrt(Sstar)
            W00 = comp[5]
            Dinf = Dinf / np.sqrt(max(4 * np.sum((alpha_x[1] - d[1]) ** 2) - 2 * W00, 2 * W00))
            b1 = beta[1]
            Dinf_star = Dinf_star / np.sqrt(np.maximum(4 * np.sum(b1 ** 2, 1) - 2 * W00, 2 * W00))
    lo_q, hi_q = np.nanquantile(Dstar, alpha / 2, axis=0), np.nanquantile(Dstar, 1 - alpha / 2, axis=0)
    ok = (Dobs >= lo_q) & (Dobs <= hi_q)
    ok_inf = bool(np.nanquantile(Dinf_star, alpha / 2) <= Dinf <= np.nanquantile(Dinf_star, 1 - alpha / 2))
    if not ok.any() and not ok_inf:
        return np.nan, np.nan
    acc = R[ok]
    lo = float(acc.min()) if ok.any() else float(R[-1])
    return lo, (np.inf if ok_inf else float(acc.max()))


def _ll(x, v, l, W):
    """Normal log-likelihood of a corrected variance x whose mean is v and variance 4 v l + 2 W."""
    sv = 4 * v * l + 2 * W
    return -0.5 * np.log(sv) - (x - v) ** 2 / (2 * sv)


def _ll_max(x, l, W):
    """max over v >= 0 of :func:`_ll` (vectorized over x): with u = x - v the score is
    2 l u^2 - (8 l^2 + 4 l x + 2 W) u + 8 l^2 x + 4 l W = 0; the roots with v >= 0, and v = 0."""
    x = np.asarray(x, dtype=float)
    a, b, c = 2 * l, -(8 * l * l + 4 * l * x + 2 * W), 8 * l * l * x + 4 * l * W
    disc = np.sqrt(np.maximum(b * b - 4 * a * c, 0.0))
    best = _ll(x, 0.0, l, W)
    for u in ((-b - disc) / (2 * a), (-b + disc) / (2 * a)):
        v = x - u
        best = np.where(v >= 0, np.maximum(best, _ll(x, np.maximum(v, 0.0), l, W)), best)
    return best


def _lr_interval(cat, ctrl, rate, ddof, T, n_wild, rng, alpha, boot):
    """Interval for the ratio sqrt(q) from likelihood-ratio tests of v_c = q v_0.

    The corrected variances V_x (x = c, 0; the noise from the influences ``T``) are taken
    as independent normals with mean v_x >= 0 and variance 4 v_x l_x + 2 W_xx, the
    U-statistic variance (:func:`_ustat_products`) with the linear term's l_x per unit
    spread along the estimated rates: the variance grows with the spread, which the
    likelihood uses and Fieller's fixed variance does not. LR(q) = 2 (max over (v_c, v_0) -
    max over v_0 with v_c = q v_0) of the log-likelihood. ``boot`` False: accepted where
    LR <= the chi-square(1) quantile; True: where LR <= the 1 - alpha quantile of LR in
    restricted wild-bootstrap draws (the world of :func:`_wild_interval`, v_0 the restricted
    maximum-likelihood fit); "full": the same, with each draw's own l (the likelihood's
    variance model re-estimated in the bootstrap world, as on the data); "mammen": Mammen's
    skewness-matching weights instead of signs (the linear term's skewness reproduced; the
    draws' noise term sum_g e_g^2 t_g' B t_g, W kept). q = 0 and
    q = infinity: v_c = 0 and v_0 = 0."""
    sp = _Spreads(cat, ctrl, rate, ddof, T)
    if sp.Pc <= 0 or sp.P0 <= 0:
        return np.nan, np.nan
    rate, T, B, d, N, Pc, P0 = sp.rate, sp.T, sp.B, sp.d, sp.N, sp.Pc, sp.P0
    Wc, W0 = max(sp.comp[3], 1e-30), max(sp.comp[5], 1e-30)
    Vc, V0, lc, l0 = sp.Vc, sp.V0, sp.lc, sp.l0
    g = np.concatenate([[0.0], np.geomspace(1e-8, 1.0, 300)])

    def lr(xc, x0, q, lcs=lc, l0s=l0):
        """LR(q) for arrays xc, x0 (n), and the restricted fit v_0 (n); ``lcs``, ``l0s``:
        the linear terms' l (scalars, or one per element with ``boot="full"``)."""
        full = _ll_max(xc, lcs, Wc) + _ll_max(x0, l0s, W0)
        if np.isinf(q):
            return 2 * (_ll_max(x0, l0s, W0) - _ll(x0, 0.0, l0s, W0)), np.zeros_like(x0)
        lcs_, l0s_ = np.reshape(lcs, (-1, 1)), np.reshape(l0s, (-1, 1))
        rl = _ll(xc[:, None], q * g[None], lcs_, Wc) + _ll(x0[:, None], g[None], l0s_, W0)
        j = np.argmax(rl, axis=1)
        return 2 * (full - rl[np.arange(len(xc)), j]), g[j]

    crit = stats.chi2.ppf(1 - alpha, 1)
    if boot:
        if boot == "mammen":  # Mammen's (1993) two-point weights: E e = 0, E e^2 = E e^3 = 1
            s5 = np.sqrt(5.0)
            E = np.where(rng.random((n_wild, T.shape[1])) < (s5 + 1) / (2 * s5), -(s5 - 1) / 2, (s5 + 1) / 2)
        else:
            E = rng.choice([-1.0, 1.0], size=(n_wild, T.shape[1]))
        Y = E @ T.T
        ell = [Y @ M @ rate for M in B]
        # each draw's own noise term sum_g e_g^2 t_g' B t_g (N itself for Rademacher signs)
        Q = [np.einsum("bp,pq,bq->b", Y, M, Y) - (E ** 2) @ dd for M, dd in zip(B, d)]
        if boot == "full":  # the draws' own l: t_g' B r* = s t_g' B r + t_g' B y
            At = [T.T @ (M @ rate) for M in B]
            YT = [Y @ M @ T for M in B]
            Pr = [Pc, P0]

            def l_star(x, s_):
                Pst = s_ ** 2 * Pr[x] + 2 * s_ * ell[x] + Q[x] + N[x]
                with np.errstate(invalid="ignore", divide="ignore"):
                    out = np.sum((s_ * At[x][None] + YT[x]) ** 2, axis=1) / Pst
                return np.where(np.isfinite(out) & (out > 0), out, [lc, l0][x])
    def accept(Rv):
        """The test of the ratio Rv (q = Rv^2) at level alpha."""
        q = Rv ** 2
        if q == 0:  # v_c = 0: the category's spread alone
            stat_ = 2 * (_ll_max(np.array([Vc]), lc, Wc) - _ll(Vc, 0.0, lc, Wc))[0]
            if boot:
                lcs = l_star(0, 0.0) if boot == "full" else lc
                return stat_ <= np.quantile(2 * (_ll_max(Q[0], lcs, Wc) - _ll(Q[0], 0.0, lcs, Wc)), 1 - alpha)
            return stat_ <= crit
        stat_, v0 = lr(np.array([Vc]), np.array([V0]), q)
        if not boot:
            return stat_[0] <= crit
        v0 = float(v0[0])
        vc = q * v0 if np.isfinite(q) else 0.0
        sc, s0 = np.sqrt(vc / Pc), np.sqrt(v0 / P0)
        Vc_s = vc + 2 * sc * ell[0] + Q[0]
        V0_s = v0 + 2 * s0 * ell[1] + Q[1]
        if boot == "full":
            return stat_[0] <= np.quantile(lr(Vc_s, V0_s, q, l_star(0, sc), l_star(1, s0))[0], 1 - alpha)
        return stat_[0] <= np.quantile(lr(Vc_s, V0_s, q)[0], 1 - alpha)

    R = np.concatenate([[0.0], np.geomspace(1e-2, 1e3, 120), [np.inf]])
    ok = np.array([accept(Rv) for Rv in R])
    if not ok.any():
        return np.nan, np.nan
    i, j = np.flatnonzero(ok)[[0, -1]]

    def refine(a, b):
        """Bisect (on the log scale) between an accepted ratio a and a rejected b."""
        for _ in range(_REFINE_STEPS):
            m = np.sqrt(a * b) if a > 0 and b > 0 else (a + b) / 2
            a, b = (m, b) if accept(m) else (a, m)
        return a
    lo = float(R[i]) if (i == 0 or not _REFINE_STEPS) else float(refine(R[i], R[i - 1]))
    hi = float(R[j]) if (np.isinf(R[j + 1 if j + 1 < len(R) else j]) or not _REFINE_STEPS) else float(
        refine(R[j], R[j + 1]))
    return lo, hi


def _pvals(x, v, Lam, Qd):
    """Two-sided p-values of ``x`` (n) in worlds whose D = sqrt(v) Lam + Qd (``v``: n nuisance
    values; ``Lam``, ``Qd``: shared draws)."""
    F = np.mean(np.sqrt(v)[:, None] * Lam[None] + Qd[None] <= x[:, None], axis=1)
    return 2 * np.minimum(F, 1 - F)


def _wild_prepivot_interval(cat, ctrl, rate, ddof, T, n_wild, rng, alpha):
    """Interval for the ratio sqrt(q) from restricted wild-bootstrap tests of D(q) = V_c -
    q V_0 = 0, calibrated by a second bootstrap level (Beran's 1988 prepivoting).

    The null distribution of D(q) depends on the nuisance v_0 (the controls' true spread
    under the null, v_c = q v_0) through the linear term of the corrected spreads, and the
    estimated nuisance moves the test's size by several points either way (a fit weighted
    by the data's own variances under-covers, fixed weights over-cover:
    docs/methods_ppi.md). Here v_0 is fitted by least squares, weights the spreads'
    variances 4 max(V_x, 0) l_x + 2 W_xx (l_x: the linear term's variance per unit spread
    along the estimated rates, W_xx the quadratic term's, :func:`_ustat_products`); the
    world's rates are the estimated ones shrunk to spreads (q v_0, v_0) plus sum_g e_g t_g,
    e_g Rademacher signs on the units' influences ``T``, so that D*(q) = sqrt(v_0) Lambda(q)
    + Q(q) over draws. The test's p-value is recomputed in every outer draw with v_0 refitted
    from that draw (inner draws shared across outer draws, the world's direction kept), and
    q is accepted when the data's p-value exceeds the alpha quantile of those p-values.
    q = 0 and q = infinity have no nuisance (tests of v_c = 0 and v_0 = 0). The estimate's
    V_c, V_0 use the noise sum_g t_g' B t_g of the same influences."""
    sp = _Spreads(cat, ctrl, rate, ddof, T)
    if sp.Pc <= 0 or sp.P0 <= 0:
        return np.nan, np.nan
    rate, T, B, N, Pc, P0 = sp.rate, sp.T, sp.B, sp.N, sp.Pc, sp.P0
    Wcc, W00 = max(sp.comp[3], 1e-300), max(sp.comp[5], 1e-300)
    Vc, V0, lc, l0 = sp.Vc, sp.V0, sp.lc, sp.l0

    def fit(vc, v0, q):
        """The restricted least-squares v_0 (broadcasts)."""
        wc = 4 * np.maximum(vc, 0) * lc + 2 * Wcc
        w0 = 4 * np.maximum(v0, 0) * l0 + 2 * W00
        return np.maximum((q * vc / wc + v0 / w0) / (q ** 2 / wc + 1 / w0), 0.0)

    def draws(n):
        E = rng.choice([-1.0, 1.0], size=(n, T.shape[1]))
        Y = E @ T.T
        return ([Y @ M @ rate for M in B],
                [np.einsum("bp,pq,bq->b", Y, M, Y) - nn for M, nn in zip(B, N)])
    (lc_o, l0_o), (Qc_o, Q0_o) = draws(n_wild)
    (lc_i, l0_i), (Qc_i, Q0_i) = draws(n_wild)
    R = np.concatenate([[0.0], np.geomspace(1e-2, 1e3, 200)])
    ok = np.zeros(len(R), dtype=bool)
    lo_a, hi_a = alpha / 2, 1 - alpha / 2
    for i, q in enumerate(R ** 2):
        v0 = float(fit(Vc, V0, q))
        sc, s0 = np.sqrt(q * v0 / Pc), np.sqrt(v0 / P0)
        # outer draws in the world at v0: the spreads and D*(q)
        Vc_o = q * v0 + 2 * sc * lc_o + Qc_o
        V0_o = v0 + 2 * s0 * l0_o + Q0_o
        D_o = Vc_o - q * V0_o
        Dobs = Vc - q * V0
        # inner draws: D = sqrt(v) Lam + Qd, Lam the linear term per unit sqrt(v_0)
        Lam = 2 * (np.sqrt(q / Pc) * lc_i - q * l0_i / np.sqrt(P0))
        Qd = Qc_i - q * Q0_i
        if q == 0:
            F_obs = np.mean(Qd <= Dobs)
            ok[i] = lo_a <= F_obs <= hi_a
            continue

        p_obs = _pvals(np.array([Dobs]), np.array([v0]), Lam, Qd)[0]
        p_star = _pvals(D_o, fit(Vc_o, V0_o, q), Lam, Qd)
        ok[i] = p_obs > np.quantile(p_star, alpha)
    Dinf_star = -Q0_o
    ok_inf = bool(np.quantile(Dinf_star, lo_a) <= -V0 <= np.quantile(Dinf_star, hi_a))
    if not ok.any() and not ok_inf:
        return np.nan, np.nan
    acc = R[ok]
    lo = float(acc.min()) if ok.any() else float(R[-1])
    return lo, (np.inf if ok_inf else float(acc.max()))


def _ratio_test_inversion(a: float, c: float, A: np.ndarray, C: np.ndarray, alpha: float,
                          kind: str = "normal", noise=None) -> tuple[float, float]:
    """Interval for sqrt(va / vc) by inverting tests of va - q vc = 0 (q = ratio^2; Fieller).

    ``a``, ``c``: the unfloored corrected variances of the category and the control rates
    (unbiased, possibly negative); ``A``, ``C``: their bootstrap replicates. The ratios R
    accepted are those where a - R^2 c is not significantly different from 0: the
    set is unbounded above when the control variance is not significantly positive (the
    ratio is then not bounded by the data; Gleser and Hwang 1987), and starts at 0 when
    the category's is not. ``kind``: "normal" (the bootstrap covariance of (a, c), closed
    form), "corrected" (that covariance less the bootstrap's excess second-order noise,
    4 T from :func:`_noise_products` ``noise``, but at least the 2 T normal rates have) or
    "analytic" (no bootstrap: 2 T + 4 (r'ASAr - T) at the estimated rates, at least 2 T).
    All three were measured and not adopted (docs/methods_ppi.md)."""
    if kind not in ("normal", "corrected", "analytic"):
        raise ValueError(f"unknown test-inversion kind {kind!r}")
    ok = np.isfinite(A) & np.isfinite(C)
    A, C = A[ok], C[ok]
    if len(A) < 10 or not (np.isfinite(a) and np.isfinite(c)):
        return np.nan, np.nan
    z2 = stats.norm.ppf(1 - alpha / 2) ** 2
    S = np.cov(A, C)
    if kind == "normal":
        return _fieller(a, c, S, z2)
    T = np.array([[noise[0], noise[1]], [noise[1], noise[2]]])
    if kind == "analytic":  # no bootstrap: 2 T + 4 (r'ASAr - T) at the estimated rates
        S = 4 * np.array([[noise[3], noise[4]], [noise[4], noise[5]]]) - 2 * T
    else:  # the bootstrap's, less its excess second-order noise
        S = S - 4 * T
    # the variance at q is max(S's, the floor 2 T's): accepted where either accepts
    ends = [e for e in (_fieller(a, c, S, z2), _fieller(a, c, 2 * T, z2)) if np.isfinite(e[0])]
    if not ends:
        return np.nan, np.nan
    return min(e[0] for e in ends), max(e[1] for e in ends)


def _fieller(a: float, c: float, S: np.ndarray, z2: float) -> tuple[float, float]:
    """The ratios R >= 0 with (a - R^2 c)^2 <= z2 (S_aa - 2 R^2 S_ac + R^4 S_cc): the hull of
    that set, (nan, nan) when it is empty. A quadratic in q = R^2,
    f(q) = k2 q^2 + k1 q + k0 <= 0; with k2 <= 0 (c not significantly positive) it holds for
    every large q, so the interval is unbounded above."""
    k2, k1, k0 = c * c - z2 * S[1, 1], -2 * (a * c - z2 * S[0, 1]), a * a - z2 * S[0, 0]
    disc = k1 * k1 - 4 * k2 * k0
    if k2 > 0:
        if disc < 0:
            return np.nan, np.nan
        r = np.sqrt(disc)
        q1, q2 = (-k1 - r) / (2 * k2), (-k1 + r) / (2 * k2)
        if q2 < 0:
            return np.nan, np.nan
        return float(np.sqrt(max(q1, 0.0))), float(np.sqrt(q2))
    if k0 <= 0 or disc < 0:
        return 0.0, np.inf
    if k2 == 0:  # linear: k1 q + k0 <= 0 with k0 > 0 holds for large q only when k1 < 0
        return (float(np.sqrt(-k0 / k1)), np.inf) if k1 < 0 else (np.nan, np.nan)
    r = np.sqrt(disc)
    return float(np.sqrt(max((-k1 - r) / (2 * k2), 0.0))), np.inf


def ppi_disparity(
    data: pd.DataFrame,
    category: str = "persona_group",
    control: str | Sequence[str] = "control",
    *,
    labels: str = "human",
    persona: str = "persona",
    by: str | Sequence[str] | None = None,
    ddof: int = 1,
    n_boot: int = 0,
    cluster: str | Sequence[str] | None = "auto",
    strata: str | Sequence[str] | None = None,
    conf: float = 0.95,
    seed: int | np.random.Generator | None = 0,
    refusal: str = "refusal",
) -> pd.DataFrame:
    """de Araujo & Roth's disparity from label-corrected persona rates (prediction-powered).

    Each persona's rate is its PPI++ estimate (:func:`ppi_rates` by persona); the spreads
    are noise-corrected as :func:`refusalstats.disparity`'s ``estimator="corrected"``,
    with the noise ``tr(H Sigma)`` taken from the PPI covariance of the persona rates
    (cluster sums of their influence functions; without clusters the rates are
    independent and Sigma diagonal). ``n_boot`` gives a percentile interval from a
    bootstrap that resamples clusters (Poisson weights per row without clusters) and
    recomputes the whole estimate, lam included. The interval is conservative and wide
    with tens of labels per persona (coverage 0.96-1.00, median width an order of
    magnitude; docs/methods_ppi.md).

    Parameters
    ----------
    data : DataFrame
        The response table with the detector's flag and human labels.
    category, control, persona, by, ddof, n_boot, cluster, conf, seed, refusal
        As in :func:`refusalstats.disparity`.
    labels, strata
        As in :func:`ppi_rates`.

    Returns
    -------
    DataFrame
        ``by`` columns, the category level, ``n_personas``, ``sd_corrected``,
        ``n_control``, ``control_sd_corrected``, ``disparity`` (their ratio), and
        ``ci_low``, ``ci_high`` with ``n_boot``.

    Examples
    --------
    >>> import numpy as np, refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.002, controls=True, seed=1)  # doctest: +SKIP
    >>> df["human"] = np.where(np.arange(len(df)) % 4 == 0, df["refusal"], np.nan)  # doctest: +SKIP
    >>> rs.disparity(df, labels="human")  # doctest: +SKIP
    """
    data = response_rows(data, "ppi_disparity")
    from ._validation import check_random_state

    by = _columns(by, "by")
    conf = check_conf(conf)
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    _need(data, [*by, category, persona], "disparity")
    ctrl, how = control_personas(data, control, category, persona)
    pairs = data[[persona, category]].astype(object).drop_duplicates()
    if pairs[persona].duplicated().any():
        raise ValueError(f"every persona must belong to one {category!r}")
    cat_of = dict(zip(pairs[persona], pairs[category]))
    cells, keys = _codes(data, [*by, persona])
    atoms, clusters = _build_atoms(data, cells, len(keys), labels=labels, refusal=refusal, strata=strata,
                                   cluster=cluster, where="disparity")
    g_codes, g_keys = (_codes(keys, by) if by else (np.zeros(len(keys), dtype=np.int64), pd.DataFrame(index=[0])))
    cat_order = list(pd.unique(data[category].astype(object)))
    rng = check_random_state(seed)
    alpha = 1 - conf

    def estimate(at, plugin=False, variances=None):
        """The rows of the table; with ``plugin`` each ends with the plug-in ratio as well
        (the bootstrap world's truth for the "basic-log" alternative). ``variances``
        collects each row's unfloored corrected variances (category, control)."""
        r = _linear_ppi(at, np.eye(len(keys)), None, conf, "t")
        out = []
        for g in range(len(g_keys)):
            idx = np.flatnonzero(g_codes == g)
            pers = keys[persona].astype(object).to_numpy()[idx]
            rate = r["estimate"][idx]
            is_ctrl = np.array([p in ctrl for p in pers])
            cats = np.array([cat_of[p] for p in pers], dtype=object)
            levels = [c for c in cat_order if c in set(cats[~is_ctrl])]
            sets = [is_ctrl] + [(cats == lev) & ~is_ctrl for lev in levels]
            # the rates' covariance: cluster sums of their influences; without clusters the
            # rates are independent (a persona without an s.e. adds nothing)
            if r["influence"] is not None:
                t = _dense(r["influence"][idx])
                cov = t @ t.T
            else:
                cov = np.diag(np.nan_to_num(r["std_error"][idx] ** 2))
            noise = []
            for mem in sets:
                sub = cov[np.ix_(mem, mem)]
                noise.append(np.trace(sub) - sub.sum() / max(int(mem.sum()), 1))
            csd = float(spread(rate[is_ctrl], noise[0], ddof, True))
            if variances is not None:
                cvar = float(corrected_variance(rate[is_ctrl], noise[0], ddof))
            for j, lev in enumerate(levels, start=1):
                sd = float(spread(rate[sets[j]], noise[j], ddof, True))
                with np.errstate(divide="ignore", invalid="ignore"):
                    row = (g, lev, int(sets[j].sum()), sd, int(is_ctrl.sum()), csd, np.float64(sd) / csd)
                    if plugin:
                        row += (np.float64(spread(rate[sets[j]], 0.0, ddof, False))
                                / spread(rate[is_ctrl], 0.0, ddof, False),)
                out.append(row)
                if variances is not None and wild:
                    Tw = t if r["influence"] is not None else _unit_influences(
                        at, r["lam"], factor=_DISPARITY_INTERVAL == "wild-lr-full")[idx]
                    if _DISPARITY_INTERVAL in ("lr", "wild-lr", "wild-lr-full", "wild-lr-mammen"):
                        boot = {"lr": False, "wild-lr": True, "wild-lr-full": "full",
                                "wild-lr-mammen": "mammen"}[_DISPARITY_INTERVAL]
                        variances.append(_lr_interval(sets[j], is_ctrl, rate, ddof, Tw, max(n_boot, _WILD_LR_DRAWS),
                                                      rng, alpha, boot))
                        continue
                    if _DISPARITY_INTERVAL == "wild-pp":
                        variances.append(_wild_prepivot_interval(sets[j], is_ctrl, rate, ddof, Tw,
                                                                 max(n_boot, _WILD_PP_DRAWS), rng, alpha))
                        continue
                    variances.append(_wild_interval(
                        sets[j], is_ctrl, rate, ddof, Tw, float(corrected_variance(rate[sets[j]], noise[j], ddof)),
                        cvar, max(n_boot, _WILD_DRAWS), rng, alpha,
                        studentize=_DISPARITY_INTERVAL == "wild-null-t"))
                elif variances is not None and ustat:
                    if r["influence"] is not None:
                        comp = _ustat_products(sets[j], is_ctrl, rate, ddof, T=t)
                    else:
                        comp = _ustat_products(sets[j], is_ctrl, rate, ddof,
                                               moments=[mm[idx] for mm in _unit_moments(at, r["lam"])])
                    variances.append((float(corrected_variance(rate[sets[j]], noise[j], ddof)), cvar, *comp,
                                      float(spread(rate[sets[j]], 0.0, ddof, False)) ** 2,
                                      float(spread(rate[is_ctrl], 0.0, ddof, False)) ** 2))
                elif variances is not None:
                    variances.append((float(corrected_variance(rate[sets[j]], noise[j], ddof)), cvar,
                                      *_noise_products(sets[j], is_ctrl, cov, ddof, np.nan_to_num(rate))))
        return out

    # the unfloored variances and noise terms only for the test-inversion alternatives
    ustat = _DISPARITY_INTERVAL in _USTAT_KINDS
    wild = _DISPARITY_INTERVAL in _WILD_KINDS and n_boot > 0
    fieller = _DISPARITY_INTERVAL.startswith("fieller") or ustat
    var0 = [] if (fieller or wild) else None
    rows = estimate(atoms, plugin=bool(n_boot), variances=var0)
    if wild:  # the wild draws were made inside the estimate; no re-estimation
        lo, hi = np.array([e[0] for e in var0], dtype=float), np.array([e[1] for e in var0], dtype=float)
        rows = [r_[:-1] for r_ in rows]
    elif n_boot:
        boots, boot_var = [], []
        for _ in range(n_boot):
            if atoms.cluster is not None:
                wc = rng.poisson(1.0, atoms.n_clusters).astype(float)
                m = atoms.m * wc[atoms.cluster]
            else:
                m = rng.poisson(atoms.m).astype(float)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                v = [] if fieller else None
                b = [row[-1] for row in estimate(_reweighted(atoms, m), variances=v)]
            ok = len(b) == len(rows)
            boots.append(b if ok else [np.nan] * len(rows))
            if fieller:
                boot_var.append(v if ok else [(np.nan,) * (10 if ustat else 8)] * len(rows))
        lo, hi = _disparity_interval(np.array(boots, dtype=float), np.array([r_[-2] for r_ in rows], dtype=float),
                                     np.array([r_[-1] for r_ in rows], dtype=float), alpha,
                                     np.array(var0, dtype=float) if fieller else None,
                                     np.array(boot_var, dtype=float) if fieller else None)
        rows = [r_[:-1] for r_ in rows]
    out = pd.DataFrame(rows, columns=["_g", category, "n_personas", "sd_corrected", "n_control",
                                      "control_sd_corrected", "disparity"])
    if n_boot:
        out["ci_low"], out["ci_high"] = lo, hi
    if by:
        out = pd.concat([g_keys.iloc[out["_g"]].reset_index(drop=True), out.drop(columns="_g")], axis=1)
    else:
        out = out.drop(columns="_g")
    out.attrs.update(control=sorted(ctrl, key=str), control_rule=how, estimator="corrected-ppi", labels=labels,
                     cluster=clusters, conf=conf, n_boot=n_boot)
    return out
