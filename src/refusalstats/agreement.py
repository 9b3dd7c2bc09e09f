"""Agreement tests: Cochran's Q across conditions and Kendall's rank agreement.

* :func:`cochran_q` — Cochran's Q across conditions with items as complete blocks
  (de Araujo & Roth's test that refusals differ across personas), with chi-squared,
  exact conditional or permutation p-values;
* :func:`rank_agreement` — Kendall's tau between raters' (models') rankings of items
  (personas), and Kendall's W across all of them (:class:`RankAgreement`).

Both also take a Parquet file, a folder of shards, a glob or a list of them: the table
is streamed into counts (per block x condition, per rater x item) by
:func:`refusalstats.collapse` and the analysis runs on those counts, with the same
result as on the rows.

Examples
--------
>>> import pandas as pd, refusalstats as rs
>>> df = pd.DataFrame({"item_id": [1, 1, 2, 2], "persona": ["a", "b"] * 2,
...                    "refusal": [1, 0, 1, 0]})
>>> rs.cochran_q(df)[["Q", "df"]].values.tolist()
[[2.0, 1.0]]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ._summary import Summary
from ._validation import AUTO_CLUSTER_COLUMN, check_random_state, cluster_from_block
from .counts import N_COLUMN, REFUSALS_COLUMN, one_way_cluster
from .multiplicity import adjust_pvalues
from .rates import _columns, _columns_of, _counts, _groups, _plain, _restore_dtypes

__all__ = ["RankAgreement", "cochran_q", "rank_agreement"]


# --------------------------------------------------------------------------------------
# Cochran's Q
# --------------------------------------------------------------------------------------


def cochran_q(
    data: pd.DataFrame,
    condition: str = "persona",
    cluster: str | Sequence[str] = "item_id",
    by: str | Sequence[str] | None = None,
    *,
    method: str = "auto",
    n_perm: int = 9999,
    seed: int | np.random.Generator | None = 0,
    adjust: str | None = None,
    refusal: str = "refusal",
    block: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """Cochran's Q test: do refusal rates differ across conditions, items as blocks?

    de Araujo & Roth's test that refusals differ across personas: every item
    (block) is answered under every persona (condition) once, and Q compares the
    persona totals against the within-item variation (Cochran 1950). Q is
    asymptotically chi-squared with k - 1 degrees of freedom for k conditions.

    Parameters
    ----------
    data : DataFrame or path
        The tidy response table; or a Parquet file, a folder of Parquet shards, a glob
        or a list of them, streamed into counts per block x condition by
        :func:`refusalstats.collapse` (the result, p-values of a seeded permutation test
        included, equals the in-memory one).
    condition : str
        The within-block factor (default ``"persona"``).
    cluster : str
        The block: the item column whose rows form one complete block, the unit
        within which the conditions are permuted (default ``"item_id"``, as ``cluster``
        names the item everywhere in refusalstats; ``"auto"`` means the same). A list
        of columns is refused: elsewhere it means two-way clustering, which Q has no
        form of. When each item is shown with several templates, make one block column
        of both, ``df["item_prompt"] = df["item_id"].astype(str) + "|" +
        df["prompt"].astype(str)``,
        and pass ``cluster="item_prompt"``.
    by : str or list of str, optional
        Separate tests per group, e.g. ``["model", "task"]``.
    method : {"auto", "chi2", "exact", "permutation"}
        How the p-value is computed. Only blocks whose answers differ across
        conditions (neither all refusals nor none) carry information; Q does not
        change when the others are dropped. ``"chi2"``: the asymptotic chi-squared
        distribution with k - 1 degrees of freedom, which needs many informative
        blocks (a warning says so below 20). ``"exact"``: the exact conditional
        (permutation) distribution: given each block's number of refusals, the
        refusals fall uniformly on the block's conditions, independently across
        blocks; p = P(Q >= Q_obs), enumerated by convolving the blocks' placements
        over the (sorted, by symmetry) vector of condition totals, on which Q depends
        only through the sum of its squares. Exact enumeration is feasible for small
        problems; beyond 5 x 10^6 placements it raises. ``"permutation"``: the same
        null distribution by Monte Carlo, ``n_perm`` draws, p = (1 + #{Q* >= Q_obs}) /
        (1 + n_perm). ``"auto"`` (default): chi2 when at least 20 blocks are
        informative; with fewer, exact when the enumeration is small, else
        permutation. With k = 2 conditions the exact test is McNemar's exact test
        (the binomial test on the discordant pairs).
    n_perm : int
        Monte Carlo draws for ``method="permutation"``.
    seed : int, None or numpy.random.Generator
        Seed of the permutation draws (default 0: reproducible; None: fresh entropy).
    adjust : {"holm", "bh"}, optional
        Adjust the p-values for the number of groups tested (Holm's step-down, or
        Benjamini–Hochberg's false discovery rate); adds ``p_adjusted``.
    refusal : str
        The 0/1 outcome column.
    block : str, optional
        Deprecated name of ``cluster`` (a FutureWarning; removed in the next release).

    Returns
    -------
    DataFrame
        ``by`` columns, then ``n_blocks``, ``n_informative`` (blocks that are not
        constant), ``n_conditions``, ``Q``, ``df`` (k - 1 degrees of freedom),
        ``p_value``, ``method`` (the one used) (and ``p_adjusted``). Q is NaN when no block varies (all refusals
        or none); such groups are left out of the adjustment.

    Raises
    ------
    ValueError
        When blocks are incomplete (some block lacks a condition, or has more than one
        row under one), the same rule for rows and for streamed counts.
        P1's Monte Carlo design shows each item to only a few personas; there the
        persona effect is tested with the likelihood-ratio test of the persona term
        of a logistic regression: ``rs.logit("refusal ~ model + task + prompt +
        persona", df).anova()`` (the last row tests persona given the other terms).

    Examples
    --------
    >>> import pandas as pd, refusalstats as rs
    >>> df = pd.DataFrame({"item_id": [1, 1, 2, 2, 3, 3, 4, 4],
    ...                    "persona": ["a", "b"] * 4,
    ...                    "refusal": [1, 0, 1, 0, 1, 1, 0, 0]})
    >>> rs.cochran_q(df)[["Q", "df", "p_value", "method"]].values.tolist()
    [[2.0, 1, 0.5, 'exact']]
    """
    if not isinstance(condition, str):
        raise TypeError("condition must be one column name")
    if adjust not in (None, "holm", "bh"):
        raise ValueError(f"adjust must be 'holm', 'bh' or None, got {adjust!r}")
    if method not in Q_METHODS:
        raise ValueError(f"method must be one of {list(Q_METHODS)}, got {method!r}")
    if isinstance(n_perm, bool) or not isinstance(n_perm, (int, np.integer)) or n_perm < 1:
        raise ValueError(f"n_perm must be a positive integer, got {n_perm!r}")
    rng = check_random_state(seed)
    cluster = one_way_cluster(cluster_from_block("cochran_q", cluster, block, "item_id"),
                              where="cochran_q", unit="block")
    if cluster is None:
        raise ValueError("Cochran's Q needs blocks (each answered once under every condition): "
                         "cluster='item_id' names them; cluster=None has none")
    auto = isinstance(cluster, str) and cluster == "auto"
    if auto or (cluster == AUTO_CLUSTER_COLUMN and AUTO_CLUSTER_COLUMN not in _columns_of(data)):
        from .counts import choose_cluster  # the one "auto" rule; and where the blocks may be

        choice = choose_cluster(data, "auto", where="cochran_q", note=False)
        if auto and choice.column is not None:
            cluster = choice.column
        else:
            cands = choice.candidates
            hint = (f"; column(s) that look like item ids: {cands[:3]}: pass "
                    f"cluster={cands[0]!r}" if cands else "; pass cluster=<the item column>")
            why = ("which never repeats" if AUTO_CLUSTER_COLUMN in _columns_of(data)
                   else "which the table lacks")
            raise ValueError(f"cochran_q: the blocks (items) come from '{AUTO_CLUSTER_COLUMN}' by "
                             f"default, {why}{hint}")
    blocks = _columns(cluster, "cluster")
    by = _columns(by, "by")
    if not blocks:
        raise ValueError("cluster must name at least one column")
    overlap = set(blocks) & ({condition} | set(by)) or ({condition} & set(by))
    if overlap:
        raise ValueError(
            f"condition, cluster and by must be different columns; {sorted(overlap)} repeat"
        )
    counts, _ = _counts(data, [*by, condition, *blocks], refusal, where="cochran_q")
    hint_setting = "setting" in _columns_of(data)
    rows, few = [], []
    for key, sub in _groups(counts, by):
        x = _cochran_matrix(sub, condition, blocks, by, key, hint_setting)
        row = _cochran_test(x, method, n_perm, rng)
        if row[-1] == "chi2" and row[1] < FEW_BLOCKS and np.isfinite(row[3]):
            few.append((key, row[1]))
        rows.append((*key, *row))
    if few:
        key, n_inf = few[0]
        where = ", ".join(f"{c}={_plain(v)!r}" for c, v in zip(by, key)) or "the table"
        warnings.warn(
            f"cochran_q: in {len(few)} test(s) fewer than {FEW_BLOCKS} blocks carry information "
            f"(not all refusals or none; e.g. {n_inf} in {where}): the chi-squared p-value is "
            "unreliable there; use method='exact' or method='permutation' (or 'auto')",
            RuntimeWarning,
            stacklevel=2,
        )
    out = pd.DataFrame(
        rows,
        columns=[*by, "n_blocks", "n_informative", "n_conditions", "Q", "df", "p_value", "method"],
    )
    for c in ("n_blocks", "n_informative", "n_conditions"):
        out[c] = out[c].astype("int64")
    if adjust is not None:
        out["p_adjusted"] = adjust_pvalues(out["p_value"], adjust)
    return _restore_dtypes(out, counts, by)


Q_METHODS = ("auto", "chi2", "exact", "permutation")
#: Below this many informative blocks the chi-squared approximation is not trusted.
FEW_BLOCKS = 20
#: Largest enumeration (states x placements, summed over blocks) method="exact" runs.
EXACT_BUDGET = 5_000_000
#: The enumeration "auto" tries before switching to permutations.
AUTO_EXACT_BUDGET = 500_000


def _cochran_test(x: np.ndarray, method: str, n_perm: int, rng) -> tuple:
    """Cochran's Q of a complete (blocks x conditions) 0/1 matrix, with its p-value."""
    b, k = x.shape
    row = x.sum(axis=1)
    informative = (row > 0) & (row < k)
    n_inf = int(informative.sum())
    col = x.sum(axis=0).astype(float)
    total = float(row.sum())
    denom = k * total - float(np.sum(row.astype(float) ** 2))
    used = "chi2" if method == "auto" and n_inf >= FEW_BLOCKS else method
    if denom == 0:
        return b, n_inf, k, np.nan, k - 1, np.nan, "none" if used == "auto" else used
    q = (k - 1) * (k * np.sum(col**2) - total**2) / denom
    if used == "chi2":
        return b, n_inf, k, q, k - 1, float(stats.chi2.sf(q, k - 1)), "chi2"
    r = row[informative]
    # Q depends on the placement only through sum_j C_j^2 (C_j the condition totals of
    # the informative blocks; constant blocks add the same to every C_j and cancel)
    c_inf = x[informative].sum(axis=0)
    s_obs = int(np.sum(c_inf.astype(np.int64) ** 2))
    p = None
    if used in ("exact", "auto"):
        budget = EXACT_BUDGET if used == "exact" else AUTO_EXACT_BUDGET
        p = _cochran_exact(r, k, s_obs, budget)
        if p is None and used == "exact":
            raise ValueError(
                f"cochran_q: the exact distribution of this table ({n_inf} informative blocks, "
                f"{k} conditions) is too large to enumerate; use method='permutation'"
            )
        used = "exact" if p is not None else "permutation"
    if p is None:
        p = _cochran_permutation(r, k, s_obs, n_perm, rng)
    return b, n_inf, k, q, k - 1, p, used


def _cochran_exact(r: np.ndarray, k: int, s_obs: int, budget: int) -> float | None:
    """P(sum_j C_j^2 >= s_obs) when each block puts its r_i refusals uniformly at random.

    The convolution runs over sorted condition-total vectors: every block's placement
    is exchangeable across conditions, so the distribution of the sorted totals after a
    block depends only on the sorted totals before it. Returns None past ``budget``.
    """
    from itertools import combinations
    from math import comb, factorial

    # about as many sorted total vectors as partitions of the total into k parts: when
    # even the last block's placements from those would pass the budget, do not start
    last = comb(k, int(np.median(r))) if len(r) else 1
    if comb(int(np.sum(r)) + k - 1, k - 1) / factorial(k) * last > budget:
        return None
    states = np.zeros((1, k), dtype=np.int64)
    probs = np.ones(1)
    base = len(r) + 1  # a condition total never exceeds the number of blocks
    exact_code = k * np.log2(base) < 62
    if exact_code:
        code = base ** np.arange(k, dtype=np.int64)
    else:  # random odd multipliers; integer overflow wraps, which a hash may do
        code = np.random.default_rng(0).integers(1, 2**62, k, dtype=np.int64) | 1
    placements: dict[int, np.ndarray] = {}
    work = 0
    for ri in np.sort(r)[::-1]:
        ri = int(ri)
        work += len(states) * comb(k, ri)
        if work > budget:
            return None
        if ri not in placements:
            idx = list(combinations(range(k), ri))
            m = np.zeros((len(idx), k), dtype=np.int64)
            for i, cmb in enumerate(idx):
                m[i, list(cmb)] = 1
            placements[ri] = m
        m = placements[ri]
        new = (states[:, None, :] + m[None, :, :]).reshape(-1, k)
        new.sort(axis=1)
        pr = np.repeat(probs / len(m), len(m))
        # one integer per sorted state (exact base-(b+1) digits, or a 64-bit hash whose
        # collisions are checked) makes the unique a fast 1-D one
        _, first, inv = np.unique(new @ code, return_index=True, return_inverse=True)
        inv = inv.ravel()
        states = new[first]
        if not exact_code and not np.array_equal(states[inv], new):
            states, inv = np.unique(new, axis=0, return_inverse=True)
        probs = np.bincount(inv.ravel(), weights=pr, minlength=len(states))
    stat = np.sum(states**2, axis=1)
    return float(min(1.0, probs[stat >= s_obs].sum() / probs.sum()))


def _cochran_permutation(r: np.ndarray, k: int, s_obs: int, n_perm: int, rng) -> float:
    """Monte Carlo p-value (1 + #{S* >= S_obs}) / (1 + n_perm) under the same null."""
    nb = len(r)
    chunk = max(1, min(n_perm, 2_000_000 // max(nb * k, 1)))
    hits, done = 0, 0
    while done < n_perm:
        m = min(chunk, n_perm - done)
        rank = rng.random((m, nb, k)).argsort(axis=2).argsort(axis=2)
        c = (rank < r[None, :, None]).sum(axis=1)
        hits += int(np.count_nonzero(np.sum(c.astype(np.int64) ** 2, axis=1) >= s_obs))
        done += m
    return (1 + hits) / (1 + n_perm)


def _cochran_matrix(sub, condition, blocks, by, key, setting_hint) -> np.ndarray:
    """The (blocks x conditions) 0/1 matrix of one group's counts; a clear error if incomplete.

    ``sub`` holds counts ``_n``/``_k`` per condition x block (see
    :func:`refusalstats.rates._counts`); a complete design has exactly one row (n = 1)
    in every cell, as the rows must have. Conditions and blocks are in sorted (level)
    order, the same for a DataFrame and for the Parquet files it was written to.
    """
    cond_codes, cond_levels = pd.factorize(sub[condition], sort=True)
    if len(blocks) == 1:
        block_codes, block_levels = pd.factorize(sub[blocks[0]], sort=True)
    else:
        mi = pd.MultiIndex.from_frame(sub[blocks])
        block_codes, block_levels = pd.factorize(mi, sort=True)
    k, b = len(cond_levels), len(block_levels)
    where = ", ".join(f"{c}={_plain(v)!r}" for c, v in zip(by, key))
    where = f" (in {where})" if where else ""
    if k < 2:
        raise ValueError(
            f"cochran_q needs at least two levels of {condition!r}{where}; found {list(cond_levels)}"
        )
    cell = block_codes.astype(np.int64) * k + cond_codes
    counts = np.bincount(cell, weights=sub[N_COLUMN].to_numpy(), minlength=b * k).reshape(b, k)
    if (counts != 1).any():
        bad_blocks = np.flatnonzero((counts != 1).any(axis=1))
        i = bad_blocks[0]
        missing = [cond_levels[j] for j in np.flatnonzero(counts[i] == 0)]
        repeated = [cond_levels[j] for j in np.flatnonzero(counts[i] > 1)]
        bname = "+".join(blocks)
        detail = []
        if missing:
            detail.append(f"lacks {len(missing)} of {k} {condition} level(s), e.g. {missing[:3]}")
        if repeated:
            detail.append(
                f"has {repeated[:3]} more than once (if each item is shown with several "
                f"templates, make one block column of item and template, e.g. "
                f"df['item_prompt'] = df[{blocks[0]!r}].astype(str) + '|' + "
                "df['prompt'].astype(str), and pass cluster='item_prompt')"
            )
        hint = ""
        if "none" in map(str, cond_levels) and setting_hint:
            hint = (
                f" The {condition!r} level 'none' holds persona-free rows; test personas only "
                "with df[df['setting'] == 'persona']."
            )
        problem = " and ".join(detail)
        raise ValueError(
            f"cochran_q needs complete blocks{where}: every {bname} must appear exactly once "
            f"under each {condition}, but {len(bad_blocks)} of {b} blocks do not; "
            f"{bname}={_plain(block_levels[i])!r} {problem}.{hint} A Monte Carlo design (each "
            "item shown to a few personas, as P1's) has incomplete blocks: test the "
            f"{condition} term with the likelihood-ratio test of a logistic regression "
            f"instead, e.g. rs.logit('refusal ~ model + task + prompt + {condition}', "
            f"df).anova() (sequential: {condition} last is tested given the other terms; "
            ".drop1() tests every term that way)."
        )
    x = np.zeros((b, k), dtype=np.int64)
    x[block_codes, cond_codes] = sub[REFUSALS_COLUMN].to_numpy()
    return x

# --------------------------------------------------------------------------------------
# Rank agreement
# --------------------------------------------------------------------------------------


@dataclass
class RankAgreement:
    """Agreement between raters' rankings of items by refusal rate.

    Attributes
    ----------
    pairs : DataFrame
        One row per pair of raters (columns ``{rater}_1``, ``{rater}_2``, ``n_items``,
        ``tau``, ``p_value``): Kendall's tau-b between their item rates, its two-sided
        p-value and the number of items.
    concordance : DataFrame
        One row per group (columns ``n_{rater}s``, ``n_{item}s``, ``W``, ``chi2``,
        ``df``, ``p_value``, ``mean_tau``): Kendall's W (tie-corrected) across all
        raters, the Friedman chi-square it implies, its degrees of freedom and
        p-value, and the mean pairwise tau.
    rates : DataFrame
        The item x rater refusal rates the rankings come from (long: ``rater``,
        ``item``, ``rate``).
    """

    pairs: pd.DataFrame
    concordance: pd.DataFrame
    rates: pd.DataFrame = field(repr=False)

    def __repr__(self) -> str:
        c = self.concordance
        w = ", ".join(f"{v:.3f}" for v in c["W"].head(4)) + (", ..." if len(c) > 4 else "")
        return (f"<RankAgreement: Kendall's W {w} ({len(c)} group(s))\n"
                f"  {len(self.pairs)} pair(s) of raters, mean tau-b "
                f"{float(self.pairs['tau'].mean()):.3f}; .to_frame(), .pairs, .summary()>")

    def constant_raters_note(self, rater: str = "model", item: str = "item_id") -> str:
        """A note naming the raters whose rates do not vary across items (blank taus).

        Parameters
        ----------
        rater, item : str
            The rater and item columns the agreement was computed for.

        Returns
        -------
        str
            The note, or ``""`` when every rater's rates vary.
        """
        rates = self.rates
        if rates is None or rater not in rates.columns or "rate" not in rates.columns:
            return ""
        spread = rates.groupby(rater, observed=True)["rate"].agg(lambda r: r.nunique(dropna=True))
        flat = [str(k) for k, v in spread.items() if v <= 1]
        if not flat:
            return ""
        rate = (rates[rates[rater].astype(str).isin(flat)]
                .groupby(rater, observed=True)["rate"].first())
        what = ", ".join(f"{k} ({100 * v:.3g}%)" for k, v in rate.items())
        return (f"Note: blank tau = undefined: {len(flat)} {rater}(s) give every {item} the same "
                f"refusal rate ({what}), so they rank no {item} above another and Kendall's tau "
                "with them has no value (a model that never refuses is the usual case).")

    def _text(self) -> str:
        with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 120):
            return (
                "Kendall's W across raters\n"
                + self.concordance.to_string(index=False)
                + "\n\nKendall's tau-b between pairs of raters\n"
                + self.pairs.to_string(index=False)
            )

    def to_frame(self) -> pd.DataFrame:
        """The tidy table: Kendall's W per group (a copy of :attr:`concordance`).

        Returns
        -------
        DataFrame
            One row per group: the ``by`` columns, ``n_{rater}s``, ``n_{item}s`` (e.g.
            ``n_models``, ``n_personas``), ``W``, the Friedman ``chi2``, its ``df``,
            ``p_value``, ``mean_tau``. The pairwise taus are :attr:`pairs`.
        """
        return self.concordance.copy()

    def summary(self) -> Summary:
        """Kendall's W and the pairwise taus as text and, in notebooks, an HTML table.

        Returns
        -------
        Summary
            A string that prints as text and renders as HTML (``_repr_html_``).
        """
        return Summary("Rank agreement between raters (Kendall's W)", self._text(), self.concordance,
                       notes=[f"{len(self.pairs)} pair(s) of raters: see .pairs for Kendall's tau-b"])


def _kendall_w(x: np.ndarray) -> tuple[float, float, int, float]:
    """Kendall's W for an (m raters x n items) matrix, tie-corrected."""
    m, n = x.shape
    ranks = np.apply_along_axis(stats.rankdata, 1, x)
    r = ranks.sum(axis=0)
    s = float(np.sum((r - r.mean()) ** 2))
    ties = 0.0
    for row in x:
        _, t = np.unique(row, return_counts=True)
        ties += float(np.sum(t**3 - t))
    denom = m**2 * (n**3 - n) - m * ties
    w = 12 * s / denom if denom > 0 else np.nan
    chi2 = m * (n - 1) * w
    return w, chi2, n - 1, float(stats.chi2.sf(chi2, n - 1)) if np.isfinite(chi2) else np.nan


def rank_agreement(
    data: pd.DataFrame,
    item: str = "persona",
    rater: str = "model",
    *,
    by: str | Sequence[str] | None = None,
    adjust: str | None = None,
    refusal: str = "refusal",
) -> RankAgreement:
    """Do models rank personas alike? Kendall's tau between pairs and Kendall's W.

    Each rater's (model's) refusal rate per item (persona) ranks the items; Kendall's
    tau-b compares two raters' rankings (ties handled, two-sided p-value from
    :func:`scipy.stats.kendalltau`), and Kendall's coefficient of concordance W
    (tie-corrected) summarizes all raters at once, with the Friedman chi-square
    test m (n - 1) W ~ chi2(n - 1). de Araujo & Roth report tau between models'
    persona rankings.

    Parameters
    ----------
    data : DataFrame or path
        The tidy response table; or a Parquet file, a folder of Parquet shards, a glob
        or a list of them, streamed into counts per rater x item by
        :func:`refusalstats.collapse` (the result equals the in-memory one).
    item : str
        What is ranked (default ``"persona"``).
    rater : str
        Who ranks (default ``"model"``).
    by : str or list of str, optional
        Separate analyses per group (e.g. ``"task"``).
    adjust : {"holm", "bh"}, optional
        Adjust the pairwise p-values for the number of pairs (all groups together);
        adds ``p_adjusted`` to ``.pairs``.
    refusal : str
        The 0/1 outcome column.

    Returns
    -------
    RankAgreement
        ``.pairs``: the ``by`` columns, ``{rater}_1``, ``{rater}_2`` (``model_1``,
        ``model_2`` by default), ``n_items``, ``tau``, ``p_value`` (and ``p_adjusted``);
        ``.concordance`` (also ``.to_frame()``): the ``by`` columns, ``n_{rater}s``,
        ``n_{item}s`` (``n_models``, ``n_personas`` by default), ``W``, ``chi2``, ``df``
        (n_items - 1), ``p_value``, ``mean_tau``; ``.rates``: the ``by`` columns,
        ``rater``, ``item`` and ``rate``. A rater whose rates do not vary has an
        undefined tau (NaN) with every other rater.

    Examples
    --------
    >>> import pandas as pd, refusalstats as rs
    >>> df = pd.DataFrame({"model": ["m1"] * 3 + ["m2"] * 3, "persona": ["a", "b", "c"] * 2,
    ...                    "refusal": [0, 1, 1, 0, 0, 1]})
    >>> ra = rs.rank_agreement(df)
    >>> round(ra.pairs["tau"].item(), 3)
    0.5
    """
    by = _columns(by, "by")
    if adjust not in (None, "holm", "bh"):
        raise ValueError(f"adjust must be 'holm', 'bh' or None, got {adjust!r}")
    if item == rater:
        raise ValueError("item and rater must be different columns")
    counts, _ = _counts(data, [*by, rater, item], refusal, where="rank_agreement")
    pair_rows, conc_rows, rate_frames = [], [], []
    for key, sub in _groups(counts, by):
        where = ", ".join(f"{c}={v!r}" for c, v in zip(by, key))
        where = f" in {where}" if where else ""
        cells = sub.groupby([rater, item], observed=True, sort=True)[[REFUSALS_COLUMN, N_COLUMN]].sum()
        mat = (cells[REFUSALS_COLUMN] / cells[N_COLUMN]).unstack(item)
        if mat.shape[0] < 2:
            raise ValueError(
                f"rank_agreement needs at least two {rater}s{where}; found {list(mat.index)}"
            )
        if mat.shape[1] < 2:
            raise ValueError(f"rank_agreement needs at least two {item}s{where} to rank")
        if mat.isna().any().any():
            gaps = mat.isna().stack()
            gaps = gaps[gaps].index.tolist()
            raise ValueError(
                f"every {rater} must have rows for every {item}{where}; {len(gaps)} combination(s) "
                f"have none, e.g. {gaps[:3]}. Drop those {item}s or {rater}s first"
            )
        x = mat.to_numpy(dtype=float)
        taus = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input: tau is NaN
            for i in range(len(mat.index)):
                for j in range(i + 1, len(mat.index)):
                    res = stats.kendalltau(x[i], x[j])
                    tau, p = float(res.statistic), float(res.pvalue)
                    taus.append(tau)
                    pair_rows.append((*key, mat.index[i], mat.index[j], x.shape[1], tau, p))
        w, chi2, w_df, p = _kendall_w(x)
        mean_tau = float(np.nanmean(taus)) if np.isfinite(taus).any() else np.nan
        conc_rows.append((*key, x.shape[0], x.shape[1], w, chi2, w_df, p, mean_tau))
        long = mat.stack().rename("rate").reset_index()
        for c, v in zip(by, key):
            long[c] = v
        rate_frames.append(long[[*by, rater, item, "rate"]])
    pairs = pd.DataFrame(
        pair_rows, columns=[*by, f"{rater}_1", f"{rater}_2", "n_items", "tau", "p_value"]
    )
    conc = pd.DataFrame(
        conc_rows,
        columns=[*by, f"n_{rater}s", f"n_{item}s", "W", "chi2", "df", "p_value", "mean_tau"],
    )
    if adjust is not None:
        pairs["p_adjusted"] = adjust_pvalues(pairs["p_value"], adjust)
    for c in (f"{rater}_1", f"{rater}_2"):
        if isinstance(counts[rater].dtype, pd.CategoricalDtype):
            pairs[c] = pd.Categorical(pairs[c], categories=counts[rater].cat.categories)
    return RankAgreement(
        pairs=_restore_dtypes(pairs, counts, by),
        concordance=_restore_dtypes(conc, counts, by),
        rates=pd.concat(rate_frames, ignore_index=True),
    )
