"""W2 estimators: contingency tables (discrete outputs) and sorted rows (continuous outputs).

Each estimator answers ``point()``, ``boot(b, rng)``, ``perm(b, rng)`` and
``jackknife(rng)`` with arrays of (xi, Var[Y]); :func:`iota` turns them into the index.
"""

from __future__ import annotations

import numpy as np

from .. import _kernels as K
from .encode import _cluster_labels, _Clusters, _Output, _Partition

#: Largest clusters x partitions x values array stored dense (else scipy.sparse).
DENSE_CLUSTER_TABLE = 25_000_000
#: Jackknife groups for the BCa acceleration of a continuous output with many rows.
JACKKNIFE_GROUPS = 100


def _count(key: np.ndarray, w: np.ndarray | None, size: int) -> np.ndarray:
    """Rows per key (int64): ``bincount`` of records, weighted by their row counts ``w``
    when the records are lines of a counts table (the same integers as counting rows)."""
    if w is None:
        return np.bincount(key, minlength=size).astype(np.int64)
    return np.rint(np.bincount(key, weights=w, minlength=size)).astype(np.int64)


def _mv_xi_batch(counts: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import ot

    n_rep, n_cells, _ = counts.shape
    xi = np.empty(n_rep)
    var = np.empty(n_rep)
    for b in range(n_rep):
        g = counts[b].sum(axis=0).astype(np.float64)
        n = g.sum()
        p = g / n
        # E||Y - EY||^2 = (1/2) E||Y - Y'||^2 = (1/2) p' C p for squared Euclidean C
        var[b] = 0.5 * p @ cost @ p
        acc = 0.0
        for c in range(n_cells):
            nc = counts[b, c].sum()
            if nc == 0:
                continue
            q = counts[b, c] / nc
            acc += (nc / n) * float(ot.emd2(p, q, cost))
        xi[b] = acc
    return xi, var



def _strata(lab: np.ndarray | None, n_clusters: int, stratified: bool):
    """Cluster groups to resample within: one per level of an item-level input when the
    bootstrap is stratified, else one group of all clusters."""
    if stratified and lab is not None:
        order = np.argsort(lab, kind="stable").astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(np.bincount(lab))]).astype(np.int64)
        return order, starts
    return np.arange(n_clusters, dtype=np.int64), np.array([0, n_clusters], dtype=np.int64)



class _TableEstimator:
    """A categorical (or binned) input with a discrete output: counts[partition, value].

    Without clusters the bootstrap draws multinomial counts (per partition when stratified,
    over the whole table otherwise) and the null multivariate hypergeometric tables. With
    clusters, ``A[g, c * K + k]`` holds cluster g's counts: a bootstrap replicate is the
    cluster multiplicities times ``A`` (one matrix product for a chunk of replicates) and
    the null permutes the clusters' labels (input constant within cluster, numba kernel) or
    shuffles each cluster's answers among its own rows, drawn from the cluster's per-cell
    counts (``_perm_within``; memory independent of the rows).
    """

    def __init__(self, out: _Output, part: _Partition, clus: _Clusters | None = None,
                 stratified: bool = True):
        self.out = out
        self.clus = clus
        self.stratified = stratified
        k_sup = out.n_support
        n_cells = part.n_cells
        self.w = out.w  # records are rows (None) or lines of a counts table (weights)
        flat = _count(part.codes * k_sup + out.codes, self.w, n_cells * k_sup)
        self.counts = flat.reshape(n_cells, k_sup)
        self.sizes = self.counts.sum(axis=1)
        self.scheme = "rows"
        self.boot_scheme = "rows within partitions" if stratified else "rows"
        self.lab = None  # each cluster's partition (input constant within clusters)
        if clus is None:
            return
        self.part_codes = part.codes
        n_g = clus.n
        self.lab = _cluster_labels(part.codes, clus)
        self.scheme = "items" if self.lab is not None else "within items"
        self.sgroups, self.sstarts = _strata(self.lab, n_g, stratified)
        self.boot_scheme = "items within levels" if len(self.sstarts) > 2 else "items"
        key = clus.codes * n_cells  # (cluster, cell, value) of each record, built in place
        key += part.codes
        key *= k_sup
        key += out.codes
        width = n_cells * k_sup
        if n_g * width <= DENSE_CLUSTER_TABLE:
            # the rows per key as floats (whole numbers): one G x width array, no int64
            # round trip (the same values as _count(...).astype(float))
            a = np.bincount(key, weights=self.w, minlength=n_g * width)
            if self.w is not None:
                np.rint(a, out=a)
            self.A = a.astype(float, copy=False).reshape(n_g, width)
            del a
            self.sparse = False
        else:
            from scipy import sparse

            if self.w is None:
                uk, cnt = np.unique(key, return_counts=True)
            else:
                uk, inv = np.unique(key, return_inverse=True)
                cnt = _count(inv.ravel(), self.w, len(uk))
            self.A = sparse.csc_matrix((cnt.astype(float), (uk // width, uk % width)),
                                       shape=(n_g, width)).T.tocsr()  # (width, G)
            self.sparse = True
        del key
        self.h = _count(clus.codes * k_sup + out.codes, self.w, n_g * k_sup).reshape(n_g, k_sup)
        self.base = None  # within-cluster permutation arrays: built on first use

    def _within_setup(self) -> None:
        """Per-(item, cell) sizes for the within-item null: only the (item, cell) pairs that
        occur, from the per-cluster counts ``A`` (memory O(pairs), never O(rows))."""
        n_g = self.clus.n
        n_cells, k_sup = self.counts.shape
        h = self.h
        moves = (h > 0).sum(axis=1) >= 2  # the item's output is not constant
        if self.sparse:
            coo = self.A.tocoo()  # (width, G)
            g, col, val = coo.col.astype(np.int64), coo.row.astype(np.int64), coo.data
            pair = g * n_cells + col // k_sup
            del g, col
            upair, inv = np.unique(pair, return_inverse=True)  # sorted by (item, cell)
            psize = np.rint(np.bincount(inv.ravel(), weights=val, minlength=len(upair)))
            pg, pc = upair // n_cells, upair % n_cells
            del coo, val, pair, upair, inv
            # an item's answers move when it spans two cells and its output is not constant
            is_act = (np.bincount(pg, minlength=n_g) >= 2) & moves
            keep = is_act[pg]
            pg, pc, psize = pg[keep], pc[keep], psize[keep].astype(np.int64)
            pstart = np.searchsorted(pg, np.r_[np.flatnonzero(is_act), n_g]).astype(np.int64)
            del pg, keep
        else:
            # rows per (item, cell) as a G x cells array: the pairs that occur are its
            # nonzeros, already in (item, cell) order; only the active items' pairs are
            # taken out (no index arrays per nonzero of A, no filtered copies: #15)
            per = self.A.reshape(n_g, n_cells, k_sup).sum(axis=2)
            occupied = per > 0
            n_occ = occupied.sum(axis=1)
            is_act = (n_occ >= 2) & moves
            occupied &= is_act[:, None]
            pstart = np.r_[0, np.cumsum(n_occ[is_act])].astype(np.int64)
            flat = np.flatnonzero(occupied)
            del occupied
            pc = flat % n_cells
            psize = np.rint(per.ravel()[flat]).astype(np.int64)
            del per, flat
        self.active = np.flatnonzero(is_act).astype(np.int64)
        self.pcell, self.psize = pc.astype(np.int64, copy=False), psize
        self.pstart = pstart
        # every active item starts at its most frequent value; the others are placed
        h_act = h[is_act].astype(np.int64)
        self.kmaj = np.argmax(h_act, axis=1).astype(np.int64)
        self.hmin = h_act.copy()
        self.hmin[np.arange(len(self.active)), self.kmaj] = 0
        base = self.counts.copy()
        if self.sparse:
            act_counts = (self.A @ is_act.astype(float)).reshape(n_cells, k_sup)
        else:
            act_counts = (is_act.astype(float) @ self.A).reshape(n_cells, k_sup)
        base -= np.rint(act_counts).astype(np.int64)
        np.add.at(base, (pc, np.repeat(self.kmaj, np.diff(self.pstart))), psize)
        self.base = base
        self.work = int(self.hmin.sum())

    def _perm_within(self, b: int, rng: np.random.Generator) -> np.ndarray:
        """(b, cells, values) tables of the within-item null from per-(item, cell) counts.

        Shuffling an item's answers among its rows, with the input's cell sizes fixed, gives
        the item a (cell x value) table with both margins fixed (multivariate
        hypergeometric). It is drawn from the item's cell sizes alone: each answer other
        than the item's most frequent value in turn takes one of the item's free rows
        uniformly at random, i.e. cell c with probability (free rows of c) / (free rows);
        O(minority answers x cells of the item) per replicate, memory O((item, cell) pairs),
        never O(rows). Same law as shuffling the rows (not the same draws as the row-slot
        kernel of earlier versions); the in-memory and streamed paths hold the same counts,
        so they give the same tables for a seed (one splitmix64 stream per replicate).
        """
        kern = K.within_counts_par if self.work * b > 2_000_000 else K.within_counts
        return kern(self.pstart, self.pcell, self.psize, self.kmaj, self.hmin, self.base,
                    self._seeds(b, rng))

    def xi_var(self, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.out.kind == "ordinal":
            return K.table_xi_1d_batch(counts, self.out.support)
        if self.out.kind == "nominal":
            return K.table_xi_nominal_batch(counts)
        return _mv_xi_batch(counts, self.out.cost)

    def point(self) -> tuple[float, float]:
        xi, var = self.xi_var(self.counts[None])
        return float(xi[0]), float(var[0])

    def chunk(self) -> int:
        per = self.counts.size if self.clus is None else max(self.clus.n, self.counts.size)
        return int(max(1, min(1000, 2_000_000 // max(per, 1))))

    def cluster_weights(self, b: int, rng: np.random.Generator) -> np.ndarray:
        """(b, G) multiplicities of the clusters (float): each stratum's clusters drawn with
        replacement at the stratum's size (numba, one splitmix64 stream per replicate)."""
        return K.cluster_weights(self.sgroups, self.sstarts, self.clus.n, self._seeds(b, rng))

    def boot(self, b: int, rng: np.random.Generator, with_se: bool = False) -> tuple:
        """``(xi, var)`` of ``b`` bootstrap tables, and with ``with_se`` their linearization
        standard errors of iota (:meth:`se`; the same draws either way)."""
        n_cells, k_sup = self.counts.shape
        w = None
        if self.clus is not None:
            w = self.cluster_weights(b, rng)
            tabs = (self.A @ w.T).T if self.sparse else w @ self.A
            draws = np.rint(tabs).astype(np.int64).reshape(b, n_cells, k_sup)
        elif not self.stratified:
            n = int(self.counts.sum())
            flat = rng.multinomial(n, self.counts.ravel() / n, size=b)
            draws = flat.reshape(b, n_cells, k_sup).astype(np.int64)
        else:
            draws = np.empty((b, n_cells, k_sup), dtype=np.int64)
            for c in range(n_cells):
                nc = int(self.sizes[c])
                draws[:, c, :] = rng.multinomial(nc, self.counts[c] / nc, size=b)
        xi, var = self.xi_var(draws)
        if not with_se:
            return xi, var
        return xi, var, self.se(draws, w)

    @property
    def studentizable(self) -> bool:
        """Whether :meth:`se` applies: a 0/1 output (the gradient of iota is closed form)."""
        return self.out.kind == "ordinal" and self.out.n_support == 2

    def se(self, tables: np.ndarray | None = None, w: np.ndarray | None = None) -> np.ndarray:
        """Linearization (delta-method) standard error of iota for each table.

        ``iota`` is a function of the table, homogeneous of degree 0, so its influence
        values sum to zero (Euler): the unit's value is the gradient dotted with the unit's
        own counts (a cluster's table; a row's cell without clusters), and the variance is
        the sum of squared values, centred within each stratum of the bootstrap, times
        ``n_s / (n_s - 1)``. ``tables``: (b, cells, 2) bootstrap tables (default: the data's
        table); ``w``: (b, G) cluster multiplicities of those tables (clusters only).
        """
        if tables is None:
            tables = self.counts[None]
            if self.clus is not None:
                w = np.ones((1, self.clus.n))
        b = tables.shape[0]
        grad = _iota_gradient(tables.astype(np.float64)).reshape(b, -1)
        if self.clus is None:
            t = tables.reshape(b, -1).astype(np.float64)
            if self.stratified:  # rows within partitions: each partition a stratum
                g3 = grad.reshape(tables.shape)
                n_c = tables.sum(axis=2).astype(np.float64)
                s1 = (tables * g3).sum(axis=2)
                s2 = (tables * g3 ** 2).sum(axis=2)
                with np.errstate(divide="ignore", invalid="ignore"):
                    per = np.where(n_c > 1, n_c / (n_c - 1) * (s2 - s1 ** 2 / n_c), 0.0)
                var = per.sum(axis=1)
            else:
                n = t.sum(axis=1)
                var = n / (n - 1) * (t * grad ** 2).sum(axis=1)
            return np.sqrt(np.maximum(var, 0.0))
        infl = (self.A.T @ grad.T).T if self.sparse else grad @ self.A.T  # (b, G)
        infl = np.asarray(infl)
        wg = w[:, self.sgroups]
        vg = infl[:, self.sgroups]
        starts = self.sstarts[:-1]
        n_s = np.diff(self.sstarts).astype(np.float64)
        s1 = np.add.reduceat(wg * vg, starts, axis=1)
        s2 = np.add.reduceat(wg * vg ** 2, starts, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            per = np.where(n_s > 1, n_s / (n_s - 1) * (s2 - s1 ** 2 / n_s), 0.0)
        return np.sqrt(np.maximum(per.sum(axis=1), 0.0))

    @staticmethod
    def _seeds(b: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, np.iinfo(np.uint64).max, size=b, dtype=np.uint64, endpoint=True)

    def perm(self, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Tables under the null. Without clusters: both margins fixed, a multivariate
        hypergeometric draw per row. With clusters: labels permuted across clusters (input
        constant within cluster) or within each cluster (``_perm_within``: each cluster's
        table drawn from its per-cell counts, the law of shuffling its rows)."""
        n_cells, k_sup = self.counts.shape
        if self.clus is not None:
            if self.lab is not None:
                draws = K.perm_clusters_table(self.lab, self.h, n_cells, self._seeds(b, rng))
            else:
                if self.base is None:
                    self._within_setup()
                draws = self._perm_within(b, rng)
            return self.xi_var(draws)
        remaining = np.repeat(self.counts.sum(axis=0)[None, :], b, axis=0)
        draws = np.empty((b, n_cells, k_sup), dtype=np.int64)
        for c in range(n_cells):
            if c == n_cells - 1:
                draws[:, c, :] = remaining
                break
            need = np.full(b, int(self.sizes[c]), dtype=np.int64)
            left = remaining.sum(axis=1)
            for k in range(k_sup - 1):
                left = left - remaining[:, k]
                x = rng.hypergeometric(remaining[:, k], left, need)
                draws[:, c, k] = x
                need = need - x
            draws[:, c, k_sup - 1] = need
            remaining = remaining - draws[:, c, :]
        return self.xi_var(draws)

    def jackknife(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Exact leave-one-out: deleting any row of cell (c, k) gives the same table. With
        clusters: delete-a-group of clusters (at most ``JACKKNIFE_GROUPS`` groups)."""
        if self.clus is not None:
            n_g = self.clus.n
            g = min(n_g, JACKKNIFE_GROUPS)
            grp = (rng.permutation(n_g) % g)[self.clus.codes]
            n_cells, k_sup = self.counts.shape
            width = n_cells * k_sup
            cell = self.part_codes * k_sup + self.out.codes
            drop = _count(grp * width + cell, self.w, g * width).reshape(g, n_cells, k_sup)
            xi, var = self.xi_var(self.counts[None] - drop)
            return xi, var, np.ones(g, dtype=np.int64)
        cells, ks = np.nonzero(self.counts)
        mult = self.counts[cells, ks]
        xi_all = np.empty(len(cells))
        var_all = np.empty(len(cells))
        step = max(1, 4_000_000 // max(self.counts.size, 1))
        for s in range(0, len(cells), step):
            sl = slice(s, s + step)
            tabs = np.repeat(self.counts[None], len(cells[sl]), axis=0)
            tabs[np.arange(len(cells[sl])), cells[sl], ks[sl]] -= 1
            xi_all[sl], var_all[sl] = self.xi_var(tabs)
        return xi_all, var_all, mult


class _RowEstimator:
    """A continuous 1-d output: the sorted sample with integer weights, in numba."""

    def __init__(self, out: _Output, part: _Partition, clus: _Clusters | None = None,
                 stratified: bool = True):
        self.out = out
        self.clus = clus
        self.stratified = stratified
        self.n_cells = part.n_cells
        self.cells_sorted = np.ascontiguousarray(part.codes[out.order]).astype(np.int64)
        self.members, self.starts = K.group_sorted(self.cells_sorted, part.n_cells)
        self.scheme = "rows"
        self.lab = None
        if clus is not None:
            self.clus_sorted = np.ascontiguousarray(clus.codes[out.order]).astype(np.int64)
            self.n_clusters = clus.n
            self.lab = _cluster_labels(part.codes, clus)
            self.scheme = "items" if self.lab is not None else "within items"
            self.cmembers, self.cstarts = K.group_sorted(self.clus_sorted, clus.n)
        elif not stratified:  # the ordinary bootstrap: every row its own cluster
            self.clus_sorted = np.arange(out.n, dtype=np.int64)
            self.n_clusters = out.n
        self.boot_scheme = "rows within partitions" if stratified else "rows"
        if clus is not None or not stratified:
            self.sgroups, self.sstarts = _strata(self.lab, self.n_clusters, stratified)
        if clus is not None:
            self.boot_scheme = "items within levels" if len(self.sstarts) > 2 else "items"

    def point(self) -> tuple[float, float]:
        w = np.ones(self.out.n, dtype=np.int64)
        return K.cells_xi_weighted(self.out.ys, self.members, self.starts, w)

    def chunk(self) -> int:
        return int(max(8, min(250, 20_000_000 // self.out.n)))

    @staticmethod
    def _seeds(b: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, np.iinfo(np.uint64).max, size=b, dtype=np.uint64, endpoint=True)

    def boot(self, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.clus is None and self.stratified:
            return K.boot_continuous(self.out.ys, self.members, self.starts, self._seeds(b, rng))
        return K.boot_clusters_continuous(self.out.ys, self.members, self.starts,
                                          self.clus_sorted, self.n_clusters, self.sgroups,
                                          self.sstarts, self._seeds(b, rng))

    def perm(self, b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.clus is None:
            return K.perm_continuous(self.out.ys, self.cells_sorted, self.n_cells,
                                     self._seeds(b, rng))
        if self.lab is not None:
            return K.perm_clusters_continuous(self.out.ys, self.clus_sorted, self.lab,
                                              self.n_cells, self._seeds(b, rng))
        return K.perm_within_continuous(self.out.ys, self.cells_sorted, self.cmembers,
                                        self.cstarts, self.n_cells, self._seeds(b, rng))

    def jackknife(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.out.n
        if self.clus is not None:
            g = min(self.clus.n, JACKKNIFE_GROUPS)
            groups = (rng.permutation(self.clus.n) % g).astype(np.int64)[self.clus_sorted]
        else:
            g = n if n <= 1000 else JACKKNIFE_GROUPS
            groups = (rng.permutation(n) % g).astype(np.int64)
        xi, var = K.jack_continuous(self.out.ys, self.members, self.starts, groups, g)
        return xi, var, np.ones(g, dtype=np.int64)



def _iota(xi: np.ndarray, var: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(var > 0, xi / (2.0 * var), np.nan)


def _iota_gradient(tables: np.ndarray) -> np.ndarray:
    """Gradient of iota with respect to the counts of (b, cells, 2) tables of a 0/1 output.

    With ``n_c = a_c + r_c`` (answers 0 and 1 in cell c), ``N``, ``p = R / N``,
    ``U = sum_c |r_c - n_c p|`` and ``iota = U / (2 N p (1 - p))``:
    ``dU/dr_c = (s_c - m / N)(1 - p)``, ``dU/da_c = -(s_c - m / N) p`` with
    ``s_c = sign(r_c - n_c p)``, ``m = sum_c s_c n_c``; then
    ``d iota/dr_c = dU/dr_c / (2 N p (1 - p)) - iota (1 - p) / (N p)`` and
    ``d iota/da_c = dU/da_c / (2 N p (1 - p)) - iota p / (N (1 - p))``.
    """
    a, r = tables[..., 0], tables[..., 1]
    n_c = a + r
    n = n_c.sum(axis=1)
    p = r.sum(axis=1) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        d = r - n_c * p[:, None]
        s = np.sign(d)
        u = np.abs(d).sum(axis=1)
        m = (s * n_c).sum(axis=1)
        den = 2.0 * n * p * (1.0 - p)
        iota = u / den
        shift = (s - (m / n)[:, None])
        g_r = shift * (1.0 - p)[:, None] / den[:, None] - (iota * (1.0 - p) / (n * p))[:, None]
        g_a = -shift * p[:, None] / den[:, None] - (iota * p / (n * (1.0 - p)))[:, None]
    out = np.stack([g_a, g_r], axis=-1)
    return np.where(np.isfinite(out), out, 0.0)


def _replicates(fn, total: int, step: int, rng: np.random.Generator, bar,
                with_se: bool = False):
    """Run ``total`` replicates of ``fn`` in chunks of ``step`` (progress per chunk): iota,
    and with ``with_se`` also the replicates' standard errors (``fn(b, rng, True)``)."""
    vals, ses = [], []
    for s in range(0, total, step):
        b = min(step, total - s)
        if with_se:
            x, v, se = fn(b, rng, True)
            ses.append(se)
        else:
            x, v = fn(b, rng)
        vals.append(_iota(x, v))
        bar.update(b)
    iota = np.concatenate(vals) if vals else np.empty(0)
    if not with_se:
        return iota
    return iota, (np.concatenate(ses) if ses else np.empty(0))
