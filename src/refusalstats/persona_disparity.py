"""de Araujo & Roth's disparity: persona spread within a category over control spread.

:func:`disparity` divides the standard deviation of a category's persona refusal rates
by that of the control personas' rates, noise-corrected by default (the plug-in ratio
of the paper on request), with an item (cluster) or binomial bootstrap interval. It
also takes a Parquet file, a folder of shards, a glob or a list of them: the table is
streamed into counts per persona (x cluster) by :func:`refusalstats.collapse`, with the
same result as on the rows.

Examples
--------
>>> import pandas as pd, refusalstats as rs
>>> df = pd.DataFrame({
...     "persona": ["a", "a", "b", "b", "c", "c", "d", "d"],
...     "persona_group": ["G", "G", "G", "G", "control", "control", "control", "control"],
...     "refusal": [1, 1, 0, 0, 1, 0, 1, 1]})
>>> rs.disparity(df, control="control", estimator="plug-in")["disparity"].tolist()
[2.0]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ._validation import check_conf, check_random_state, cluster_from_block
from .counts import N_COLUMN, REFUSALS_COLUMN, effective_clusters, one_way_cluster
from .rates import _auto_off, _columns, _columns_of, _counts, _groups, _plain, _restore_dtypes
from .spread import control_personas as _control_personas
from .spread import spread as _spread

__all__ = ["disparity"]


DISPARITY_ESTIMATORS = ("corrected", "plug-in")

#: Fewer effective items than this (Kish's number over the bootstrap's clusters) flag a
#: group: its item-bootstrap interval is not calibrated there.
FEW_CLUSTERS = 10.0

def _cluster_rates_noise(s_mat, c_mat, w, sets):
    """Persona rates and each set's noise term under cluster weights ``w``.

    ``s_mat``/``c_mat`` (clusters x personas) hold refusals and rows per cluster; ``w``
    (replicates x clusters) weights the clusters (all ones: the data; multinomial counts:
    an item bootstrap replicate, each draw its own cluster). The rates' covariance is the
    cluster-robust (ratio-estimator) one of :func:`refusal_rates`,
    ``C/(C-1) sum_c w_c e_ci e_cj`` with ``e_ci = (y_ci - r_i m_ci) / n_i``; the noise of a
    set S of k personas is ``tr(H Sigma_S)`` (H the centring matrix), the expected excess
    of their sum of squared deviations over the true one.
    """
    nb, npers = s_mat.shape
    n = w @ c_mat
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = (w @ s_mat) / n
    noise = np.full((len(w), len(sets)), np.nan)
    if nb < 2:
        return rate, noise
    f = nb / (nb - 1)
    chunk = max(1, 4_000_000 // (nb * npers))
    for a in range(0, len(w), chunk):
        rb, nbk, wb = np.nan_to_num(rate[a : a + chunk]), n[a : a + chunk], w[a : a + chunk]
        inv = np.where(nbk > 0, 1.0 / np.where(nbk > 0, nbk, 1.0), 0.0)
        e = (s_mat[None] - rb[:, None, :] * c_mat[None]) * inv[:, None, :]
        for j, members in enumerate(sets):
            es = e[:, :, members]
            k = np.maximum((nbk[:, members] > 0).sum(1), 1)
            q = (es**2).sum(-1) - es.sum(-1) ** 2 / k[:, None]
            noise[a : a + chunk, j] = f * np.einsum("bc,bc->b", wb, q)
    return rate, noise


def _binomial_noise(rate, n, sets):
    """Each set's noise term ``(1 - 1/k) sum v_i`` with independent rows, v = r(1-r)/(n-1)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        v = np.where(n > 1, rate * (1 - rate) / np.maximum(n - 1, 1), 0.0)
    return np.stack([(1 - 1 / max(int(m.sum()), 1)) * v[..., m].sum(-1) for m in sets], axis=-1)


def disparity(
    data: pd.DataFrame,
    category: str = "persona_group",
    control: str | Sequence[str] = "control",
    *,
    persona: str = "persona",
    by: str | Sequence[str] | None = None,
    ddof: int = 1,
    n_boot: int = 0,
    cluster: str | Sequence[str] | None = "auto",
    conf: float = 0.95,
    seed: int | np.random.Generator | None = 0,
    refusal: str = "refusal",
    block: str | Sequence[str] | None = None,
    estimator: str = "corrected",
    labels: str | None = None,
    strata: str | Sequence[str] | None = None,
) -> pd.DataFrame:
    """de Araujo & Roth's disparity: persona spread within a category over control spread.

    For each category (e.g. Gender, Race), the standard deviation of its personas'
    refusal rates is divided by the standard deviation of the control personas'
    rates (paraphrases of "a helpful assistant"). A ratio well above 1 means the
    personas of that category differ more than mere rewordings of a neutral persona.

    Estimated rates carry sampling noise, which inflates every sd, the small control
    sd most: the plain ratio of sds (``estimator="plug-in"``, the paper's number) is
    biased low, and its bootstrap interval covers the population ratio too rarely
    (0.91 at 95% with 200 items, 0.70-0.72 with 120 items; docs/methods_rates.md). The
    default ``estimator="corrected"`` subtracts each spread's expected noise
    (method of moments: the sum of squared deviations less the trace of the centred
    covariance matrix of the rates, cluster-robust as in :func:`refusal_rates`,
    floored at 5% of itself) before taking the ratio, and bootstraps that; its interval
    covers 0.95. The plug-in ratio stays in column ``disparity_plugin``.

    Parameters
    ----------
    data : DataFrame or path
        The tidy response table, control personas included; or a Parquet file, a folder
        of Parquet shards, a glob or a list of them, streamed into counts per persona
        (x cluster) by :func:`refusalstats.collapse` (the result, a seeded bootstrap
        interval included, equals the in-memory one).
    category : str
        Column that groups personas into categories; each persona must belong to one.
    control : str or list of str
        The control personas: a list of persona names, a level of ``category``
        (P2's dumps use ``"control"``), or the name of a True/False column marking
        control rows. Control personas are left out of every category's spread.
    persona : str
        The persona column.
    by : str or list of str, optional
        Separate ratios per group, e.g. ``["model", "task"]``.
    ddof : int
        Delta degrees of freedom of the standard deviations (1: sample sd).
    n_boot : int
        Bootstrap replicates for a percentile interval of each ratio (0: none), of the
        chosen ``estimator``.
        With clusters (e.g. ``"item_id"``) whole items are resampled, which keeps
        the correlation between personas answering the same item (P2's complete
        design); with ``cluster=None`` each persona's refusal count is redrawn from
        its binomial, which treats rows as independent.
    cluster : "auto", str or None
        The column identifying items, the bootstrap's resampling unit. ``"auto"``
        (default): ``item_id`` when the table has it and items repeat (a
        :class:`~refusalstats.ClusterNote` says so); ``None``: independent rows. The
        bootstrap and the corrected estimator's noise use it; the plug-in ratio without
        ``n_boot`` does not. A list of columns is refused (elsewhere it means two-way
        clustering, which this bootstrap has no form of); to resample combinations of
        columns, make one key column of them and pass its name.
    conf : float
        Confidence level of the bootstrap interval.
    seed : int, None or numpy.random.Generator
        Seed of the bootstrap (default 0: reproducible; None: fresh entropy).
    refusal : str
        The 0/1 outcome column.
    block : str, optional
        Deprecated name of ``cluster`` (a FutureWarning; removed in the next release).
    estimator : {"corrected", "plug-in"}
        ``"corrected"`` (default): the noise-corrected ratio
        ``sd_corrected / control_sd_corrected``, for the ratio of the personas' true
        (population) rates; ``"plug-in"``: the ratio of the sds of the observed rates,
        as in de Araujo & Roth (its interval under-covers, see above).
    labels : str, optional
        A column of human labels (0/1, NaN where unlabelled): the persona rates are then
        corrected for the detector's errors by prediction-powered inference and the
        noise correction uses their PPI covariance (:func:`refusalstats.ppi_disparity`;
        the noise-corrected estimator only; its interval is conservative and wide with
        tens of labels per persona: docs/methods_ppi.md).
    strata : str or list of str, optional
        With ``labels``: the strata the labels were drawn in.

    Returns
    -------
    DataFrame
        One row per group and category, categories in the column's level order (sorted,
        or a categorical's own order): ``by`` columns, ``category`` (its level),
        ``n_personas``, ``sd``,
        ``n_control``, ``control_sd`` (sds of the observed rates), with the corrected
        estimator ``sd_corrected``, ``control_sd_corrected`` and ``disparity_plugin``
        (= ``sd / control_sd``), then ``disparity`` (the chosen estimator) and
        ``ci_low``, ``ci_high`` with ``n_boot``; with clusters ``effective_clusters``
        (Kish's number of items) and ``few_clusters`` (fewer than 10, with a warning
        naming the groups). ``attrs["estimator"]`` names the estimator. A category with
        fewer than ``ddof + 1`` personas has NaN sd; a control sd of 0 gives an infinite
        (or NaN) ratio, with a warning.

    Examples
    --------
    >>> import pandas as pd, refusalstats as rs
    >>> df = pd.DataFrame({
    ...     "persona": ["a", "a", "b", "b", "c", "c", "d", "d"],
    ...     "persona_group": ["G", "G", "G", "G", "control", "control", "control", "control"],
    ...     "refusal": [1, 1, 0, 0, 1, 0, 1, 1]})
    >>> out = rs.disparity(df, control="control")
    >>> out[["persona_group", "disparity_plugin"]].values.tolist()
    [['G', 2.0]]
    >>> rs.disparity(df, control="control", estimator="plug-in")["disparity"].tolist()
    [2.0]
    """
    cluster = one_way_cluster(cluster, where="disparity")  # a list is two-way elsewhere
    if labels is not None:  # the detector's error carried in by human labels (#22)
        from .ppi import ppi_disparity

        if estimator != "corrected" or block is not None:
            raise ValueError("disparity(labels=...) gives the noise-corrected estimator; drop estimator= "
                             "and block=")
        return ppi_disparity(data, category, control, labels=labels, persona=persona, by=by, ddof=ddof,
                             n_boot=n_boot, cluster=cluster, strata=strata, conf=conf, seed=seed,
                             refusal=refusal)
    by = _columns(by, "by")
    cluster = one_way_cluster(cluster_from_block("disparity", cluster, block, "auto"),
                              where="disparity")
    if not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative integer, got {ddof!r}")
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    if estimator not in DISPARITY_ESTIMATORS:
        raise ValueError(f"estimator must be one of {DISPARITY_ESTIMATORS}, got {estimator!r}")
    conf = check_conf(conf)
    if category == persona:
        raise ValueError("category and persona must be different columns")
    if not (n_boot or estimator == "corrected") and isinstance(cluster, str) and cluster == "auto":
        cluster = None  # the plug-in ratio does not depend on clustering
    extra = [control] if isinstance(control, str) and control in _columns_of(data) else []
    counts, blocks = _counts(data, [*by, category, persona, *extra], refusal,
                             _auto_off(cluster, by), where="disparity")
    if not (n_boot or estimator == "corrected"):
        blocks = []  # named cluster columns are checked, but not needed
    ctrl, how = _control_personas(counts, control, category, persona)
    # each persona belongs to one category
    pairs = counts[[persona, category]].astype(object).drop_duplicates()
    multi = pairs[pairs.duplicated(persona, keep=False)]
    if len(multi):
        ex = multi.groupby(persona)[category].apply(list).head(3).to_dict()
        raise ValueError(
            f"every persona must belong to one {category!r}; found persona(s) in several: {ex}"
        )
    cat_of = dict(zip(pairs[persona], pairs[category]))
    cat_order = list(pd.unique(counts[category].astype(object)))
    rng = check_random_state(seed)
    alpha = 1 - conf
    corrected = estimator == "corrected"
    rows, degenerate, few = [], [], []
    for key, sub in _groups(counts, by):
        # personas in the counts' (category, persona) order, clusters sorted: the same
        # arrays, and so the same bootstrap draws, for a DataFrame and its Parquet files
        p_codes, p_levels = pd.factorize(sub[persona].astype(object), sort=False)
        n_p = np.bincount(p_codes, weights=sub[N_COLUMN].to_numpy(), minlength=len(p_levels))
        k_p = np.bincount(p_codes, weights=sub[REFUSALS_COLUMN].to_numpy(), minlength=len(p_levels))
        rate = k_p / n_p
        is_ctrl = np.array([p in ctrl for p in p_levels])
        if is_ctrl.sum() <= ddof:
            where = ", ".join(f"{k}={_plain(v)!r}" for k, v in zip(by, key)) or "the table"
            raise ValueError(
                f"disparity needs at least {ddof + 1} control personas with rows in {where} "
                f"(control = {how}); found {int(is_ctrl.sum())}"
            )
        cats = np.array([cat_of[p] for p in p_levels], dtype=object)
        levels = [c for c in cat_order if c in set(cats[~is_ctrl])]
        sets = [is_ctrl] + [(cats == lev) & ~is_ctrl for lev in levels]
        boot = noise = boot_noise = None
        eff = np.nan
        if blocks:
            b_codes, b_levels = pd.factorize(
                pd.MultiIndex.from_frame(sub[blocks]) if len(blocks) > 1 else sub[blocks[0]],
                sort=True,
            )
            nb, npers = len(b_levels), len(p_levels)
            cell = b_codes.astype(np.int64) * npers + p_codes
            c_mat = np.bincount(cell, weights=sub[N_COLUMN].to_numpy(), minlength=nb * npers)
            c_mat = c_mat.reshape(nb, npers)
            s_mat = np.bincount(cell, weights=sub[REFUSALS_COLUMN].to_numpy(), minlength=nb * npers)
            s_mat = s_mat.reshape(nb, npers)
            eff = effective_clusters(c_mat.sum(axis=1))
            if eff < FEW_CLUSTERS:
                few.append(", ".join(f"{k}={_plain(v)!r}" for k, v in zip(by, key)) or "the table")
            if corrected:
                noise = _cluster_rates_noise(s_mat, c_mat, np.ones((1, nb)), sets)[1][0]
            if n_boot:
                w = rng.multinomial(nb, np.full(nb, 1 / nb), size=n_boot).astype(float)
                if corrected:
                    boot, boot_noise = _cluster_rates_noise(s_mat, c_mat, w, sets)
                else:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        boot = (w @ s_mat) / (w @ c_mat)
        else:
            if corrected:
                noise = _binomial_noise(rate, n_p, sets)
            if n_boot:
                boot = rng.binomial(n_p.astype(np.int64), rate, size=(n_boot, len(rate))) / n_p
                if corrected:
                    boot_noise = _binomial_noise(boot, n_p, sets)
        csd = float(np.std(rate[is_ctrl], ddof=ddof))
        if corrected:
            csd_c = float(_spread(rate[is_ctrl], noise[0], ddof, True))
        if boot is not None:
            boot_csd = _spread(
                boot[:, is_ctrl], None if boot_noise is None else boot_noise[:, 0], ddof, corrected
            )
        for j, lev in enumerate(levels, start=1):
            members = sets[j]
            r = rate[members]
            sd = float(np.std(r, ddof=ddof)) if len(r) > ddof else np.nan
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.float64(sd) / csd
            if csd == 0:
                degenerate.append(key)
            row = [*key, lev, len(r), sd, int(is_ctrl.sum()), csd]
            if corrected:
                sd_c = float(_spread(r, noise[j], ddof, True))
                with np.errstate(divide="ignore", invalid="ignore"):
                    row += [sd_c, csd_c, ratio, np.float64(sd_c) / csd_c]
            else:
                row += [ratio]
            if boot is not None:
                num = _spread(
                    boot[:, members], None if boot_noise is None else boot_noise[:, j], ddof,
                    corrected,
                )  # fmt: skip
                with np.errstate(divide="ignore", invalid="ignore"):
                    dist = num / boot_csd
                dist = dist[~np.isnan(dist)]
                if len(r) > ddof and len(dist):
                    with np.errstate(invalid="ignore"):  # inf ratios when controls agree
                        row += list(np.quantile(dist, [alpha / 2, 1 - alpha / 2]))
                else:
                    row += [np.nan, np.nan]
            if blocks:
                row += [eff, bool(eff < FEW_CLUSTERS)]
            rows.append(tuple(row))
    if degenerate:
        warnings.warn(
            f"the control personas' refusal rates do not vary in {len(set(degenerate))} group(s) "
            f"(e.g. {degenerate[0] or 'the table'}); their disparity is infinite or undefined",
            RuntimeWarning,
            stacklevel=2,
        )
    columns = [*by, category, "n_personas", "sd", "n_control", "control_sd"]
    if corrected:
        columns += ["sd_corrected", "control_sd_corrected", "disparity_plugin"]
    columns += ["disparity"]
    if n_boot:
        columns += ["ci_low", "ci_high"]
    if blocks:
        columns += ["effective_clusters", "few_clusters"]
    if few:
        warnings.warn(
            f"disparity: {len(few)} group(s) have fewer than {FEW_CLUSTERS:g} effective items "
            f"(Kish's (sum m)^2 / sum m^2 over the {'+'.join(blocks)} clusters): "
            f"{', '.join(few[:5])}{' and more' if len(few) > 5 else ''}; the item bootstrap's "
            "interval may be too narrow there (column few_clusters)", RuntimeWarning, stacklevel=2)
    out = pd.DataFrame(rows, columns=columns)
    out.attrs["control"] = sorted(ctrl, key=str)
    out.attrs["estimator"] = estimator
    if blocks:
        out.attrs["cluster"] = blocks
    if n_boot:
        out.attrs.update(n_boot=n_boot, conf=conf, bootstrap="clusters" if blocks else "binomial")
    return _restore_dtypes(out, counts, by)

