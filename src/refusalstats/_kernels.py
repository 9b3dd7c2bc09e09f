"""Numba kernels for the Wasserstein-2 sensitivity indices (see ``sensitivity.py``).

Everything here works on integer counts so that the quantile breakpoints of two empirical
distributions are compared exactly (as integers over a common denominator) and the W2^2
integral is the exact one between the empirical distributions, not an index-map
approximation of it.

Two data layouts are used:

* **tables** ``counts[c, k]``: partition ``c`` x support point ``k`` of a discrete output
  (0/1, Likert, labels). Used whenever the output takes few distinct values.
* **sorted rows** for a continuous 1-d output: ``ys`` the output sorted once (and
  standardised), ``members``/``starts`` the CSR list of sorted positions of each
  partition (increasing inside a partition) and ``w`` integer weights per sorted position
  (1 for the data, bootstrap multiplicities, 0 for jackknife deletions).

Random numbers inside kernels come from a splitmix64 stream seeded per replicate, so the
results do not depend on how ``prange`` schedules replicates over threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = [
    "atom_index",
    "boot_clusters_continuous",
    "boot_continuous",
    "cells_xi_weighted",
    "cluster_weights",
    "group_sorted",
    "jack_continuous",
    "perm_clusters_continuous",
    "perm_clusters_table",
    "perm_continuous",
    "perm_within_continuous",
    "prefix_table",
    "rank_cells",
    "table_xi_1d",
    "table_xi_1d_batch",
    "table_xi_nominal_batch",
    "w2sq_discrete",
    "within_counts",
    "within_counts_par",
    "xi_from_prefix",
]


# ----------------------------------------------------------------------------------------
# random numbers: splitmix64 (Steele, Lea & Flood 2014); one independent stream per replicate
# ----------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _splitmix_next(state: np.uint64) -> tuple:
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return state, z


@njit(cache=True, inline="always")
def _randint(state: np.uint64, n: np.int64) -> tuple:
    """Uniform integer in [0, n) from 53 random bits (bias < n / 2**53)."""
    state, z = _splitmix_next(state)
    u = np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    k = np.int64(u * n)
    if k >= n:  # pragma: no cover - guards the float rounding edge
        k = n - 1
    return state, k


# ----------------------------------------------------------------------------------------
# partitions
# ----------------------------------------------------------------------------------------
@njit(cache=True)
def rank_cells(order: np.ndarray, n_cells: int) -> np.ndarray:
    """Equal-count rank partition: the r-th smallest value goes to cell floor(r * M / N).

    ``order`` is a stable argsort of the input, so ties are split by order of appearance
    (as gsaot does). Cell sizes differ by at most one.
    """
    n = order.shape[0]
    codes = np.empty(n, dtype=np.int64)
    for r in range(n):
        codes[order[r]] = (r * n_cells) // n
    return codes


@njit(cache=True)
def group_sorted(cells_sorted: np.ndarray, n_cells: int) -> tuple:
    """Stable counting sort of sorted positions by cell: CSR ``(members, starts)``."""
    n = cells_sorted.shape[0]
    starts = np.zeros(n_cells + 1, dtype=np.int64)
    for i in range(n):
        starts[cells_sorted[i] + 1] += 1
    for m in range(n_cells):
        starts[m + 1] += starts[m]
    fill = starts[:-1].copy()
    members = np.empty(n, dtype=np.int64)
    for i in range(n):
        c = cells_sorted[i]
        members[fill[c]] = i
        fill[c] += 1
    return members, starts


# ----------------------------------------------------------------------------------------
# discrete outputs: contingency tables
# ----------------------------------------------------------------------------------------
@njit(cache=True)
def w2sq_discrete(g: np.ndarray, c: np.ndarray, support: np.ndarray) -> float:
    """Exact W2^2 between two count vectors on the same sorted 1-d support.

    Merges the breakpoints of both quantile functions; positions are integers over the
    common denominator ``sum(g) * sum(c)``, so no breakpoint is rounded.
    """
    k_sup = support.shape[0]
    ng = np.int64(0)
    nc = np.int64(0)
    for k in range(k_sup):
        ng += g[k]
        nc += c[k]
    if ng == 0 or nc == 0:
        return np.nan
    i = 0
    j = 0
    bg = np.int64(g[0]) * nc  # upper end of atom i of g, in units 1 / (ng * nc)
    bc = np.int64(c[0]) * ng
    cur = np.int64(0)
    acc = 0.0
    total = ng * nc
    while cur < total:
        nxt = min(bc, bg)
        if nxt > cur:
            d = support[i] - support[j]
            acc += (nxt - cur) * d * d
            cur = nxt
        if bg == cur and i < k_sup - 1:
            i += 1
            bg += np.int64(g[i]) * nc
        if bc == cur and j < k_sup - 1:
            j += 1
            bc += np.int64(c[j]) * ng
        if bg == cur and bc == cur and i == k_sup - 1 and j == k_sup - 1:
            break
    return acc / total


@njit(cache=True)
def table_xi_1d(counts: np.ndarray, support: np.ndarray) -> tuple:
    """xi = sum_c (n_c / N) W2^2(P_Y, P_{Y|c}) and the population variance of Y.

    ``counts`` is (cells, support) with integer entries; cells with no rows are skipped.
    """
    n_cells, k_sup = counts.shape
    g = np.zeros(k_sup, dtype=np.int64)
    for c in range(n_cells):
        for k in range(k_sup):
            g[k] += counts[c, k]
    n = np.int64(0)
    s1 = 0.0
    for k in range(k_sup):
        n += g[k]
        s1 += g[k] * support[k]
    mean = s1 / n
    var = 0.0
    for k in range(k_sup):
        d = support[k] - mean
        var += g[k] * d * d
    var /= n
    xi = 0.0
    for c in range(n_cells):
        nc = np.int64(0)
        for k in range(k_sup):
            nc += counts[c, k]
        if nc == 0:
            continue
        xi += (nc / n) * w2sq_discrete(g, counts[c], support)
    return xi, var


@njit(cache=True)
def table_xi_1d_batch(counts: np.ndarray, support: np.ndarray) -> tuple:
    """``table_xi_1d`` over a stack of tables ``counts[b, c, k]``.

    Serial on purpose: a table costs O(cells x values), so 1,000 replicates take
    milliseconds, and a ``parallel=True`` kernel would cost seconds more to compile.
    """
    n_rep = counts.shape[0]
    xi = np.empty(n_rep)
    var = np.empty(n_rep)
    for b in range(n_rep):
        x, v = table_xi_1d(counts[b], support)
        xi[b] = x
        var[b] = v
    return xi, var


@njit(cache=True)
def table_xi_nominal_batch(counts: np.ndarray) -> tuple:
    """Nominal output (one-hot coding, squared Euclidean cost 2 between distinct labels).

    W2^2(P, Q) = 2 TV(P, Q) = sum_k |p_k - q_k| and Var = E||Y - EY||^2 = 1 - sum_k p_k^2.
    """
    n_rep, n_cells, k_sup = counts.shape
    xi = np.empty(n_rep)
    var = np.empty(n_rep)
    for b in range(n_rep):
        g = np.zeros(k_sup, dtype=np.int64)
        for c in range(n_cells):
            for k in range(k_sup):
                g[k] += counts[b, c, k]
        n = np.int64(0)
        for k in range(k_sup):
            n += g[k]
        v = 1.0
        for k in range(k_sup):
            p = g[k] / n
            v -= p * p
        acc = 0.0
        for c in range(n_cells):
            nc = np.int64(0)
            for k in range(k_sup):
                nc += counts[b, c, k]
            if nc == 0:
                continue
            d = 0.0
            for k in range(k_sup):
                d += abs(g[k] / n - counts[b, c, k] / nc)
            acc += (nc / n) * d
        xi[b] = acc
        var[b] = v
    return xi, var


# ----------------------------------------------------------------------------------------
# continuous 1-d output: sorted rows with integer weights
# ----------------------------------------------------------------------------------------
# Memory layout matters more than arithmetic here: the partitions interleave over the sorted
# sample, so each partition is stored contiguously (``yc``/``wc`` in ``members`` order) and the
# weighted prefix sums of the unconditional sample are packed in one (N + 1, 4) array
# [cum. weight, sum w y, sum w y^2, y] so that one search step touches one cache line.
# Cumulative weights are stored as float64 (integers below 2**53, exact) and converted back
# to int64 where the quantile level L * N / n_m is located (N * n_m <= N**2 fits in int64).
@njit(cache=True)
def prefix_table(ys: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Packed prefix sums ``pre[k] = (sum_{j<k} w_j, sum w_j y_j, sum w_j y_j^2, y_k)``."""
    n = ys.shape[0]
    pre = np.zeros((n + 1, 4))
    for j in range(n):
        wj = np.float64(w[j])
        y = ys[j]
        pre[j + 1, 0] = pre[j, 0] + wj
        pre[j + 1, 1] = pre[j, 1] + wj * y
        pre[j + 1, 2] = pre[j, 2] + wj * y * y
        pre[j, 3] = y
    return pre


@njit(cache=True)
def atom_index(w: np.ndarray) -> np.ndarray:
    """``inv[t]`` = the sorted position whose atom holds count position t (t < sum(w))."""
    n = w.shape[0]
    total = 0
    for j in range(n):
        total += w[j]
    inv = np.empty(total, dtype=np.int64)
    t = 0
    for j in range(n):
        for _ in range(w[j]):
            inv[t] = j
            t += 1
    return inv


@njit(cache=True)
def xi_from_prefix(
    pre: np.ndarray, inv: np.ndarray, yc: np.ndarray, wc: np.ndarray, starts: np.ndarray
) -> tuple:
    """xi and population variance from the packed prefix sums and per-partition atoms.

    The unconditional distribution puts mass ``w_j / N`` on ``y_j``; partition m puts mass
    ``wc[r] / n_m`` on ``yc[r]`` (``r`` in ``starts[m]:starts[m+1]``, values increasing). For each
    atom of a partition, spanning quantile levels ``[a, b]``, the integral of
    ``(F^-1(u) - z)^2`` over ``[a, b]`` is read off the prefix sums at the global atom holding
    level ``b``: in count units ``b N = L N / n_m``, whose integer part indexes ``inv`` (atoms
    start at integer counts, so the integer part lies in the same atom; no search, no rounding).
    """
    n = pre.shape[0] - 1
    n_cells = starts.shape[0] - 1
    ntot_f = pre[n, 0]
    ntot = np.int64(ntot_f)
    mean = pre[n, 1] / ntot_f
    var = pre[n, 2] / ntot_f - mean * mean
    xi = 0.0
    for m in range(n_cells):
        nc = np.int64(0)
        for r in range(starts[m], starts[m + 1]):
            nc += wc[r]
        if nc == 0:
            continue
        lcum = np.int64(0)
        a1_prev = 0.0
        a2_prev = 0.0
        acc = 0.0
        for r in range(starts[m], starts[m + 1]):
            wj = wc[r]
            if wj == 0:
                continue
            lcum += wj
            target = lcum * ntot  # level b = lcum / nc, in units 1 / (ntot * nc)
            t = target // nc
            if t >= ntot:
                a1 = pre[n, 1]
                a2 = pre[n, 2]
            else:
                k = inv[t]
                frac = (target - np.int64(pre[k, 0]) * nc) / nc  # mass of atom k below b
                yk = pre[k, 3]
                a1 = pre[k, 1] + frac * yk
                a2 = pre[k, 2] + frac * yk * yk
            z = yc[r]
            acc += ((a2 - a2_prev) - 2.0 * z * (a1 - a1_prev)) / ntot_f + z * z * (wj / nc)
            a1_prev = a1
            a2_prev = a2
        xi += (nc / ntot_f) * acc
    return xi, var


@njit(cache=True)
def cells_xi_weighted(
    ys: np.ndarray, members: np.ndarray, starts: np.ndarray, w: np.ndarray
) -> tuple:
    """xi and population variance of a weighted sample given on sorted positions.

    ``ys`` sorted, ``members``/``starts`` the CSR list of each partition's sorted positions,
    ``w`` integer weights per sorted position.
    """
    n = ys.shape[0]
    yc = np.empty(n)
    wc = np.empty(n, dtype=np.int64)
    for r in range(n):
        yc[r] = ys[members[r]]
        wc[r] = w[members[r]]
    return xi_from_prefix(prefix_table(ys, w), atom_index(w), yc, wc, starts)


@njit(cache=True, parallel=True)
def boot_continuous(
    ys: np.ndarray, members: np.ndarray, starts: np.ndarray, seeds: np.ndarray
) -> tuple:
    """Stratified bootstrap: each partition resampled with replacement at its own size."""
    n = ys.shape[0]
    n_cells = starts.shape[0] - 1
    n_rep = seeds.shape[0]
    yc = np.empty(n)
    for r in range(n):
        yc[r] = ys[members[r]]
    xi = np.empty(n_rep)
    var = np.empty(n_rep)
    for b in prange(n_rep):
        state = np.uint64(seeds[b])
        wc = np.zeros(n, dtype=np.int64)
        for m in range(n_cells):
            s = starts[m]
            nm = starts[m + 1] - s
            for _ in range(nm):
                state, idx = _randint(state, nm)
                wc[s + idx] += 1
        w = np.empty(n, dtype=np.int64)
        for r in range(n):
            w[members[r]] = wc[r]
        x, v = xi_from_prefix(prefix_table(ys, w), atom_index(w), yc, wc, starts)
        xi[b] = x
        var[b] = v
    return xi, var


@njit(cache=True, parallel=True)
def perm_continuous(
    ys: np.ndarray, cells_sorted: np.ndarray, n_cells: int, seeds: np.ndarray
) -> tuple:
    """Permutation null: shuffle partition labels (sizes fixed), recompute xi (Fisher-Yates)."""
    n = ys.shape[0]
    n_rep = seeds.shape[0]
    xi = np.empty(n_rep)
    var = np.empty(n_rep)
    ones = np.ones(n, dtype=np.int64)
    pre = prefix_table(ys, ones)
    inv = np.arange(n)
    for b in prange(n_rep):
        state = np.uint64(seeds[b])
        lab = cells_sorted.copy()
        for i in range(n - 1, 0, -1):
            state, jdx = _randint(state, i + 1)
            t = lab[i]
            lab[i] = lab[jdx]
            lab[jdx] = t
        members, starts = group_sorted(lab, n_cells)
        yc = np.empty(n)
        for r in range(n):
            yc[r] = ys[members[r]]
        x, v = xi_from_prefix(pre, inv, yc, ones, starts)
        xi[b] = x
        var[b] = v
    return xi, var


@njit(cache=True, parallel=True)
def jack_continuous(
    ys: np.ndarray, members: np.ndarray, starts: np.ndarray, groups: np.ndarray, n_groups: int
) -> tuple:
    """Delete-a-group jackknife: replicate g drops the sorted positions with ``groups == g``."""
    n = ys.shape[0]
    xi = np.empty(n_groups)
    var = np.empty(n_groups)
    for g in prange(n_groups):
        w = np.ones(n, dtype=np.int64)
        for j in range(n):
            if groups[j] == g:
                w[j] = 0
        x, v = cells_xi_weighted(ys, members, starts, w)
        xi[g] = x
        var[g] = v
    return xi, var


# ----------------------------------------------------------------------------------------
# clustered data (answers grouped by item): cluster bootstrap and cluster-aware permutations
# ----------------------------------------------------------------------------------------
@njit(cache=True)
def perm_clusters_table(lab: np.ndarray, h: np.ndarray, n_cells: int, seeds: np.ndarray):
    """Permutation null of an input constant within cluster: shuffle the clusters' labels.

    ``lab[g]`` is cluster g's partition, ``h[g, k]`` its count of output value k. Replicate
    b permutes ``lab`` (Fisher-Yates) and returns the table ``sum_g [lab'(g) = c] h[g, k]``.
    """
    n_g, k_sup = h.shape
    n_rep = seeds.shape[0]
    out = np.zeros((n_rep, n_cells, k_sup), dtype=np.int64)
    for b in range(n_rep):
        state = np.uint64(seeds[b])
        perm = lab.copy()
        for i in range(n_g - 1, 0, -1):
            state, j = _randint(state, i + 1)
            t = perm[i]
            perm[i] = perm[j]
            perm[j] = t
        for g in range(n_g):
            c = perm[g]
            for k in range(k_sup):
                out[b, c, k] += h[g, k]
    return out


@njit(cache=True, parallel=True)
def boot_clusters_continuous(
    ys: np.ndarray, members: np.ndarray, starts: np.ndarray, clus_sorted: np.ndarray,
    n_clusters: int, sgroups: np.ndarray, sstarts: np.ndarray, seeds: np.ndarray,
) -> tuple:
    """Cluster bootstrap of a continuous output: whole clusters drawn with replacement.

    ``clus_sorted[j]`` is the cluster of sorted position j. Clusters are drawn within strata
    (``sgroups[sstarts[s]:sstarts[s+1]]`` the clusters of stratum s; one stratum for the
    plain cluster bootstrap), each stratum at its own size; a row's weight is its cluster's
    multiplicity. With one cluster per row this is the ordinary (unstratified) bootstrap.
    """
    n = ys.shape[0]
    n_rep = seeds.shape[0]
    n_str = sstarts.shape[0] - 1
    yc = np.empty(n)
    for r in range(n):
        yc[r] = ys[members[r]]
    xi = np.empty(n_rep)
    var = np.empty(n_rep)
    for b in prange(n_rep):
        state = np.uint64(seeds[b])
        cw = np.zeros(n_clusters, dtype=np.int64)
        for s in range(n_str):
            a = sstarts[s]
            m = sstarts[s + 1] - a
            for _ in range(m):
                state, k = _randint(state, m)
                cw[sgroups[a + k]] += 1
        w = np.empty(n, dtype=np.int64)
        for j in range(n):
            w[j] = cw[clus_sorted[j]]
        wc = np.empty(n, dtype=np.int64)
        for r in range(n):
            wc[r] = w[members[r]]
        x, v = xi_from_prefix(prefix_table(ys, w), atom_index(w), yc, wc, starts)
        xi[b] = x
        var[b] = v
    return xi, var


@njit(cache=True)
def _xi_of_labels(ys: np.ndarray, lab: np.ndarray, n_cells: int, pre: np.ndarray,
                  inv: np.ndarray, ones: np.ndarray) -> tuple:
    members, starts = group_sorted(lab, n_cells)
    n = ys.shape[0]
    yc = np.empty(n)
    for r in range(n):
        yc[r] = ys[members[r]]
    return xi_from_prefix(pre, inv, yc, ones, starts)


@njit(cache=True, parallel=True)
def perm_clusters_continuous(
    ys: np.ndarray, clus_sorted: np.ndarray, clab: np.ndarray, n_cells: int, seeds: np.ndarray
) -> tuple:
    """Permutation null of an input constant within cluster (continuous output).

    ``clab[g]`` is cluster g's partition; replicate b shuffles ``clab`` and gives every row
    its cluster's new label.
    """
    n = ys.shape[0]
    n_g = clab.shape[0]
    n_rep = seeds.shape[0]
    xi = np.empty(n_rep)
    var = np.empty(n_rep)
    ones = np.ones(n, dtype=np.int64)
    pre = prefix_table(ys, ones)
    inv = np.arange(n)
    for b in prange(n_rep):
        state = np.uint64(seeds[b])
        perm = clab.copy()
        for i in range(n_g - 1, 0, -1):
            state, j = _randint(state, i + 1)
            t = perm[i]
            perm[i] = perm[j]
            perm[j] = t
        lab = np.empty(n, dtype=np.int64)
        for j in range(n):
            lab[j] = perm[clus_sorted[j]]
        x, v = _xi_of_labels(ys, lab, n_cells, pre, inv, ones)
        xi[b] = x
        var[b] = v
    return xi, var


@njit(cache=True, parallel=True)
def perm_within_continuous(
    ys: np.ndarray, cells_sorted: np.ndarray, cmembers: np.ndarray, cstarts: np.ndarray,
    n_cells: int, seeds: np.ndarray,
) -> tuple:
    """Stratified permutation null (continuous output): labels shuffled within each cluster.

    ``cmembers[cstarts[g]:cstarts[g+1]]`` are the sorted positions of cluster g.
    """
    n = ys.shape[0]
    n_g = cstarts.shape[0] - 1
    n_rep = seeds.shape[0]
    xi = np.empty(n_rep)
    var = np.empty(n_rep)
    ones = np.ones(n, dtype=np.int64)
    pre = prefix_table(ys, ones)
    inv = np.arange(n)
    for b in prange(n_rep):
        state = np.uint64(seeds[b])
        lab = cells_sorted.copy()
        for g in range(n_g):
            s0 = cstarts[g]
            m = cstarts[g + 1] - s0
            for i in range(m - 1, 0, -1):
                state, j = _randint(state, i + 1)
                p = cmembers[s0 + i]
                q = cmembers[s0 + j]
                t = lab[p]
                lab[p] = lab[q]
                lab[q] = t
        x, v = _xi_of_labels(ys, lab, n_cells, pre, inv, ones)
        xi[b] = x
        var[b] = v
    return xi, var


@njit(cache=True, parallel=True)
def cluster_weights(sgroups: np.ndarray, sstarts: np.ndarray, n_clusters: int,
                    seeds: np.ndarray) -> np.ndarray:
    """(replicates, clusters) bootstrap multiplicities, as float64 for a matrix product.

    Replicate b draws, for every stratum s, ``sstarts[s+1] - sstarts[s]`` clusters with
    replacement from ``sgroups[sstarts[s]:sstarts[s+1]]`` (one splitmix64 stream per
    replicate, as ``boot_clusters_continuous``).
    """
    n_rep = seeds.shape[0]
    n_str = sstarts.shape[0] - 1
    w = np.zeros((n_rep, n_clusters))
    for b in prange(n_rep):
        state = np.uint64(seeds[b])
        for s in range(n_str):
            a = sstarts[s]
            m = sstarts[s + 1] - a
            for _ in range(m):
                state, k = _randint(state, m)
                w[b, sgroups[a + k]] += 1.0
    return w


# ----------------------------------------------------------------------------------------
# within-item permutation null from per-(item, cell) counts
# ----------------------------------------------------------------------------------------
@njit(cache=True)
def within_counts_one(pstart, pcell, psize, kmaj, hmin, base, max_m, state):
    tab = base.copy()
    cap = np.empty(max_m, dtype=np.int64)
    k_sup = hmin.shape[1]
    for a in range(kmaj.shape[0]):
        s0 = pstart[a]
        m = pstart[a + 1] - s0
        free = 0
        for j in range(m):
            cap[j] = psize[s0 + j]
            free += cap[j]
        km = kmaj[a]
        for k in range(k_sup):
            for _ in range(hmin[a, k]):
                state, u = _randint(state, free)
                j = 0
                while u >= cap[j]:
                    u -= cap[j]
                    j += 1
                cap[j] -= 1
                free -= 1
                c = pcell[s0 + j]
                tab[c, k] += 1
                tab[c, km] -= 1
    return tab


@njit(cache=True)
def within_counts(pstart, pcell, psize, kmaj, hmin, base, seeds):
    """Within-item null tables from per-(item, cell) counts (``sensitivity.estimators._TableEstimator._perm_within``);
    serial (small problems: no thread start-up)."""
    n_rep = seeds.shape[0]
    max_m = max(1, np.max(np.diff(pstart))) if pstart.shape[0] > 1 else 1
    out = np.empty((n_rep, base.shape[0], base.shape[1]), dtype=np.int64)
    for b in range(n_rep):
        out[b] = within_counts_one(pstart, pcell, psize, kmaj, hmin, base, max_m,
                                    np.uint64(seeds[b]))
    return out


@njit(cache=True, parallel=True)
def within_counts_par(pstart, pcell, psize, kmaj, hmin, base, seeds):
    """``within_counts`` with replicates over threads (same numbers)."""
    n_rep = seeds.shape[0]
    max_m = max(1, np.max(np.diff(pstart))) if pstart.shape[0] > 1 else 1
    out = np.empty((n_rep, base.shape[0], base.shape[1]), dtype=np.int64)
    for b in prange(n_rep):
        out[b] = within_counts_one(pstart, pcell, psize, kmaj, hmin, base, max_m,
                                    np.uint64(seeds[b]))
    return out
