"""(Quasi-)complete separation: detection by linear programming and a description in levels."""

from __future__ import annotations

import numpy as np

from .design_matrix import _Design


class SeparationWarning(UserWarning):
    """Complete or quasi-complete separation: some MLE coefficients diverge."""

def _separation(d: _Design, beta: np.ndarray | None = None, bse: np.ndarray | None = None
                ) -> tuple[list[str], list[str]]:
    """Detect (quasi-)complete separation; returns (descriptions, separated term names).

    A linear program looks for a direction ``b != 0`` with ``x'b >= 0`` on patterns
    that are all refusals, ``x'b <= 0`` on patterns with none and ``x'b = 0`` on mixed
    ones (Konis 2007): one exists exactly when the MLE does not. The patterns the
    direction moves are described by the factor levels (or two-factor cells) whose
    rows they contain, with their row counts.
    """
    from scipy.optimize import linprog

    X, s, n = d.X, d.s, d.n
    K, p = X.shape
    succ = s >= n - 1e-9
    fail = s <= 1e-9
    mixed = ~(succ | fail)
    direction = None
    if not (succ.any() or fail.any()):
        return [], []  # every pattern mixed: x'b = 0 on all of them forces b = 0
    N = np.eye(p)  # directions b = N z allowed by the mixed patterns (x'b = 0 on each)
    if mixed.any():
        Xm = X[mixed]
        # with fewer mixed patterns than coefficients the thin SVD has fewer than p right
        # singular vectors and would hide the null space: take the full p x p basis then
        # (cheap: Xm has fewer than p rows); otherwise the thin one (Xm may be tall)
        _, sv, Vt = np.linalg.svd(Xm, full_matrices=Xm.shape[0] < p)
        tol = (sv.max() if sv.size else 0.0) * max(Xm.shape) * np.finfo(float).eps
        rank = int(np.sum(sv > tol))
        if rank == p:
            return [], []  # they span every direction: b = 0, no separation
        N = Vt[rank:].T  # orthonormal basis of their null space (p - rank columns)
    if K <= 100_000:
        # the linear program in the m = p - rank coordinates z of the null space: the same
        # feasible set (N z in the box, x'N z >= 0 on all-refusal patterns, <= 0 on none),
        # with repeated constraint rows dropped: a few rows instead of thousands
        G = np.vstack([-X[succ], X[fail]]) @ N
        G = np.unique(np.round(G, 12), axis=0)
        G = G[np.abs(G).max(1) > 1e-12]
        m = N.shape[1]
        c = -((X[succ].sum(0) - X[fail].sum(0)) @ N)
        A_ub = np.vstack([G, N, -N])
        b_ub = np.concatenate([np.zeros(len(G)), np.ones(2 * p)])
        res = linprog(c, A_ub=A_ub, b_ub=b_ub, bounds=[(None, None)] * m, method="highs")
        if res.status == 0 and -res.fun > 1e-7:
            direction = N @ res.x
        elif res.status != 0:
            direction = None
    sep_terms: list[str] = []
    if direction is not None:
        moved = np.abs(X @ direction) > 1e-7
        sep_terms = [nm for nm, v in zip(d.names, direction) if abs(v) > 1e-7]
    elif beta is not None and bse is not None:  # heuristic for very large designs
        big = (np.abs(beta) > 10) & ((bse > 100) | ~np.isfinite(bse))
        if not big.any():
            return [], []
        sep_terms = [nm for nm, b in zip(d.names, big) if b]
        moved = np.abs(d.X[:, big]).sum(1) > 0
        moved &= (succ | fail)
    else:
        return [], []
    pats = d.patterns
    desc: list[str] = []
    covered = np.zeros(K, bool)
    facs = list(d.factors)

    def describe(mask_rows, label):
        rows = float(n[mask_rows].sum())
        ref = float(s[mask_rows].sum())
        if ref == 0:
            return f"{label} has 0 refusals in {rows:,.0f} rows"
        return f"{label} has only refusals ({rows:,.0f} of {rows:,.0f} rows)"

    for f in facs:
        codes = pats[f].cat.codes.to_numpy()
        for li, lv in enumerate(d.factors[f]):
            m = codes == li
            if m.any() and moved[m].all() and (fail[m].all() or succ[m].all()):
                desc.append(describe(m, f"{f}={lv}"))
                covered |= m
    pairs = set()
    for fs in d.term_factors.values():
        fs = [x for x in fs if x in d.factors]
        for a in range(len(fs)):
            for b in range(a + 1, len(fs)):
                pairs.add((fs[a], fs[b]))
    for f1, f2 in sorted(pairs):
        c1 = pats[f1].cat.codes.to_numpy()
        c2 = pats[f2].cat.codes.to_numpy()
        for li in np.unique(c1[moved & ~covered]):
            for lj in np.unique(c2[moved & ~covered & (c1 == li)]):
                m = (c1 == li) & (c2 == lj)
                if moved[m].all() and (fail[m].all() or succ[m].all()):
                    desc.append(describe(m, f"{f1}={d.factors[f1][li]} & {f2}={d.factors[f2][lj]}"))
                    covered |= m
    rest = moved & ~covered
    if rest.any():
        desc.append(
            f"{int(rest.sum())} further covariate pattern(s) ({float(n[rest].sum()):,.0f} rows) are "
            f"separated along term(s) {sep_terms[:8]}{' ...' if len(sep_terms) > 8 else ''}"
        )
    return desc, sep_terms
