"""Linear algebra for the logistic solvers: SPD solves and inverses, one BLAS thread,
and the ELLPACK (nonzeros-per-row) form of dummy-coded designs.

The matrices the solvers meet are small (p x p) or tall and mostly zeros (K patterns x
p dummy columns); :class:`_Ell` makes ``X'WX``, ``Xb``, ``X'v`` and the hat diagonal
cost O(K r^2) for r nonzeros per row instead of O(K p^2).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg
from scipy.linalg import lapack

from .._blas import single_blas as _single_blas  # noqa: F401  (one home: refusalstats._blas)


def _chol(A: np.ndarray):
    """Cholesky factor of a symmetric positive definite matrix, or None."""
    try:
        return linalg.cho_factor(A, lower=True, check_finite=False)
    except (linalg.LinAlgError, ValueError):
        return None


def _solve_spd(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    c = _chol(A)
    if c is not None:
        return linalg.cho_solve(c, b, check_finite=False)
    return np.linalg.lstsq(A, b, rcond=None)[0]


def _inv_chol(c) -> np.ndarray:
    """Inverse of a matrix from its (lower) Cholesky factor (LAPACK potri)."""
    inv, info = lapack.dpotri(c[0], lower=1)
    if info != 0:  # pragma: no cover - potri failing after a successful potrf
        return linalg.cho_solve(c, np.eye(len(c[0])), check_finite=False)
    return np.tril(inv) + np.tril(inv, -1).T


def _inv_spd(A: np.ndarray) -> np.ndarray:
    c = _chol(A)
    if c is not None:
        return _inv_chol(c)
    return np.linalg.pinv(A, hermitian=True)


class _Ell:
    """A design matrix stored by its nonzeros per row (ELLPACK): ``idx``/``val`` (K x r).

    Dummy-coded designs have r = 1 + (number of factors) nonzeros per row, so
    ``X'WX``, ``Xb``, ``X'v`` and the hat diagonal cost O(K r^2) with plain NumPy
    gathers and bincounts instead of O(K p^2). Padding entries point at column p with
    value 0.
    """

    def __init__(self, idx: np.ndarray, val: np.ndarray, p: int):
        self.idx, self.val, self.p = idx, val, p
        r = idx.shape[1]
        # X'WX is symmetric: its upper triangle (r (r + 1) / 2 products per row, not r^2)
        a, b = np.triu_indices(r)
        lo, hi = np.minimum(idx[:, a], idx[:, b]), np.maximum(idx[:, a], idx[:, b])
        self._upairs = (lo * (p + 1) + hi).ravel()
        self._uvv = val[:, a] * val[:, b]

    @property
    def _pairs(self) -> np.ndarray:
        """Flat (column, column) index of every product of two nonzeros of a row (K x r^2)."""
        idx, r = self.idx, self.idx.shape[1]
        return (idx[:, :, None] * (self.p + 1) + idx[:, None, :]).reshape(len(idx), r * r)

    @classmethod
    def from_dense(cls, X: np.ndarray) -> _Ell:
        K, p = X.shape
        rows, cols = np.nonzero(X)  # row by row, columns in increasing order
        cnt = np.bincount(rows, minlength=K)
        r = max(int(cnt.max(initial=0)), 1)
        pos = np.arange(len(rows)) - (np.cumsum(cnt) - cnt)[rows]  # slot of each nonzero in its row
        idx = np.full((K, r), p, dtype=np.int64)  # padding: column p, value 0
        val = np.zeros((K, r))
        idx[rows, pos] = cols
        val[rows, pos] = X[rows, cols]
        return cls(idx, val, p)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.idx), self.p)

    def __matmul__(self, b: np.ndarray) -> np.ndarray:
        bp = np.append(np.asarray(b, float), 0.0)
        return np.einsum("kr,kr->k", self.val, bp[self.idx])

    @property
    def T(self) -> _EllT:
        return _EllT(self)

    def rmatvec(self, v: np.ndarray) -> np.ndarray:
        return np.bincount(self.idx.ravel(), weights=(self.val * v[:, None]).ravel(),
                           minlength=self.p + 1)[: self.p]

    def xtwx(self, w: np.ndarray) -> np.ndarray:
        vv = self._uvv * w[:, None]
        P = self.p + 1
        upper = np.bincount(self._upairs, weights=vv.ravel(), minlength=P * P).reshape(P, P)[: self.p, : self.p]
        out = upper + upper.T
        np.fill_diagonal(out, np.diagonal(upper))
        return out

    def quad(self, V: np.ndarray) -> np.ndarray:
        """diag(X V X') without forming X V."""
        P = self.p + 1
        Vp = np.zeros((P, P))
        Vp[: self.p, : self.p] = V
        g = Vp.ravel()[self._pairs].reshape(len(self.idx), self.idx.shape[1], -1)
        return np.einsum("kr,krs,ks->k", self.val, g, self.val)

    def colabs(self) -> np.ndarray:
        return np.bincount(self.idx.ravel(), weights=np.abs(self.val).ravel(), minlength=self.p + 1)[: self.p]

    def toarray(self) -> np.ndarray:
        out = np.zeros((len(self.idx), self.p + 1))
        np.put_along_axis(out, self.idx, self.val, axis=1)
        return out[:, : self.p]

    def __getitem__(self, key):
        if isinstance(key, tuple):  # (rows, columns)
            rows, cols = key
            sub = self if (isinstance(rows, slice) and rows == slice(None)) else self[rows]
            cols = list(cols)
            remap = np.full(self.p + 1, len(cols), dtype=np.int64)
            remap[cols] = np.arange(len(cols))
            idx = remap[sub.idx]
            val = np.where(idx < len(cols), sub.val, 0.0)
            return _Ell(idx, val, len(cols))
        return _Ell(self.idx[key], self.val[key], self.p)


class _EllT:
    def __init__(self, X: _Ell):
        self.X = X

    def __matmul__(self, v: np.ndarray) -> np.ndarray:
        return self.X.rmatvec(np.asarray(v, float))


def _xtwx(X, w: np.ndarray) -> np.ndarray:
    """X' diag(w) X."""
    if isinstance(X, _Ell):
        return X.xtwx(w)
    return (X * w[:, None]).T @ X


def _fast(X: np.ndarray):
    """The nonzeros-per-row form of a mostly-zero design (dummy coding), else X itself."""
    if X.size > 5_000 and np.count_nonzero(X, axis=1).max() <= X.shape[1] // 3:
        return _Ell.from_dense(X)
    return X


def _colabs(X) -> np.ndarray:
    return X.colabs() if isinstance(X, _Ell) else np.abs(X).sum(0)
