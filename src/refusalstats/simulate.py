"""A simulator calibrated to Plaza-del-Arco et al. (2025) — the embedded default data.

:func:`simulate_paper` reproduces P1's full design (16 models, 3 tasks with 3,000 /
5,000 / 4,701 items, 10 persona x template variations per item: 2,032,160 rows) and
draws refusals from a logistic model built from the paper's published numbers:
Table 7's coefficients, an intercept matching Table 1's overall refusal rate, an item
random intercept, and (by default) model x task offsets matching every cell of Table 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit

from ._validation import int_seed
from .design import sample_design

#: P1 Table 1: % false refusals per model and task (None = blank in the paper).
PAPER_TABLE1: dict[str, tuple[float | None, float | None, float | None]] = {
    "Llama2-7B": (8.87, 30.08, 76.54),
    "Llama2-13B": (12.56, 35.69, 87.36),
    "Llama3-8B": (0.06, 1.59, 23.45),
    "Llama3.1-8B": (0.04, 0.16, 6.12),
    "Llama3.2-1B": (0.03, 0.09, 1.90),
    "Llama3.2-3B": (0.0, 0.0, 0.10),
    "Qwen1.5-7B": (0.0, 0.02, 0.39),
    "Qwen1.5-32B": (0.15, 11.86, 17.27),
    "Qwen2-7B": (None, 0.16, 2.07),
    "Qwen2.5-7B": (None, None, 0.19),
    "Qwen2.5-32B": (0.0, 0.0, 0.0),
    "Gemma-2B": (0.0, 0.04, 0.18),
    "Gemma-7B": (0.08, 0.03, 0.19),
    "Gemma2-2B": (0.07, 0.72, 2.20),
    "Gemma2-9B": (0.05, 7.71, 13.18),
    "Gemma2-27B": (0.0, 2.02, 3.80),
}

#: Column order of PAPER_TABLE1's tuples.
PAPER_TASKS: tuple[str, ...] = ("nli", "politeness", "offensiveness")

#: P1's items per task (1,000 per class; POPQUORN offensiveness is short in one class).
PAPER_ITEMS: dict[str, int] = {"nli": 3000, "politeness": 5000, "offensiveness": 4701}

#: P1 Table 7 coefficients (log-odds), keyed by factor then by level (project level names).
#: Reference levels: persona Atheist, prompt p1, task nli, model Llama2-13B.
PAPER_TABLE7: dict[str, dict[str, float]] = {
    "persona": {
        "Black person": 2.62, "White person": 2.18, "Transgender woman": 1.37,
        "Transgender man": 1.31, "Muslim": 1.31, "Jewish": 1.08, "Asian": 0.89,
        "Physically-disabled person": 0.68, "Non-binary person": 0.69,
        "Religious person": 0.61, "Christian": 0.44, "Able-bodied person": -0.12,
        "Man": -0.06, "Woman": 0.01,
    },
    "prompt": {"p6": -1.97, "p9": -1.94, "p8": -1.93, "p5": -1.94, "p2": -1.64, "p7": -1.54,
               "p4": -1.48, "p3": -0.46},
    "task": {"offensiveness": 4.16, "politeness": 2.06},
    "model": {
        "Qwen2.5-32B": -19.34, "Qwen2.5-7B": -19.34, "Llama3.2-3B": -9.32, "Gemma-2B": -8.58,
        "Gemma-7B": -8.40, "Qwen1.5-7B": -7.98, "Llama3.2-1B": -6.35, "Qwen2-7B": -6.23,
        "Gemma2-2B": -5.93, "Gemma2-27B": -5.17, "Llama3-8B": -3.59, "Llama3.1-8B": -3.36,
        "Qwen1.5-32B": -3.11, "Gemma2-9B": -3.59, "Llama2-7B": -0.47,
    },
}

#: Reference levels of Table 7.
PAPER_REFERENCE: dict[str, str] = {"persona": "Atheist", "prompt": "p1", "task": "nli",
                                   "model": "Llama2-13B"}

#: P1's reported McFadden pseudo-R² of the Table 7 model.
PAPER_PSEUDO_R2 = 0.5733


def paper_table1() -> pd.DataFrame:
    """P1's Table 1 as a long table.

    Returns
    -------
    DataFrame
        ``model, task, rate`` (a fraction; NaN where the paper's cell is blank).
    """
    rows = [
        {"model": m, "task": t, "rate": np.nan if v is None else v / 100.0}
        for m, vals in PAPER_TABLE1.items() for t, v in zip(PAPER_TASKS, vals)
    ]
    return pd.DataFrame(rows)


def _design_items(scale: float) -> pd.DataFrame:
    frames = []
    start = 0
    for task in PAPER_TASKS:
        n = max(1, round(PAPER_ITEMS[task] * scale))
        frames.append(pd.DataFrame({"item_id": np.arange(start, start + n), "task": task}))
        start += n
    return pd.concat(frames, ignore_index=True)


def _solve_shift(eta: np.ndarray, target: float) -> float:
    """Shift s with mean(expit(eta + s)) == target (-inf for a zero target)."""
    if target <= 0:
        return -np.inf
    if target >= 1:
        return np.inf

    def f(s: float) -> float:
        return float(expit(eta + s).mean()) - target

    lo, hi = -40.0, 40.0
    return float(brentq(f, lo, hi, xtol=1e-10))


def _systematic_draw(p: np.ndarray, cell: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Systematic probability-proportional draw within cells.

    Each row refuses with marginal probability exactly ``p``; the count of a cell is
    the floor or ceiling of its expected count. Rows are visited in random order.
    """
    n = len(p)
    order = np.lexsort((rng.random(n), cell))
    ps = p[order]
    cs = cell[order]
    out = np.zeros(n, dtype=np.int8)
    bounds = np.flatnonzero(np.diff(cs)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [n]])
    for a, b in zip(starts, ends):
        cum = np.cumsum(ps[a:b])
        u = rng.random()
        before = np.concatenate([[0.0], cum[:-1]])
        out[order[a:b]] = (np.floor(cum - u) > np.floor(before - u)).astype(np.int8)
    return out


#: Fixed part of the pooled main-effects logistic fit whose population limit
#: ``attrs["truth"]["marginal"]`` holds (P1's Table 7 model).
MARGINAL_FORMULA = "refusal ~ persona + prompt + task + model"


def _gauss_hermite(item_sd: float, n: int = 61) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of E[f(u)], u ~ N(0, item_sd^2) (probabilists' Gauss-Hermite)."""
    if item_sd <= 0:
        return np.zeros(1), np.ones(1)
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return item_sd * z, w / w.sum()


def _weighted_logistic(X: np.ndarray, p: np.ndarray, n: np.ndarray, tol: float = 1e-11,
                       max_iter: int = 200) -> np.ndarray:
    """Maximise sum n_c [p_c log q_c + (1 - p_c) log(1 - q_c)], q = expit(X b) (Newton, halving).

    The population limit of a Bernoulli logistic fit when cell c holds a share n_c of
    the rows and its rows refuse with probability p_c.
    """
    from scipy.special import log_expit

    def objective(b):
        eta = X @ b
        return float(np.sum(n * (p * log_expit(eta) + (1 - p) * log_expit(-eta))))

    b = np.zeros(X.shape[1])
    f = objective(b)
    for _ in range(max_iter):
        q = expit(X @ b)
        grad = X.T @ (n * (p - q))
        H = (X * (n * q * (1 - q))[:, None]).T @ X
        step = np.linalg.solve(H + 1e-12 * np.eye(len(b)), grad)
        t = 1.0
        while True:
            f_new = objective(b + t * step)
            if f_new >= f - 1e-12 or t < 1e-8:
                break
            t /= 2
        b, f_old, f = b + t * step, f, f_new
        small = np.max(np.abs(t * step)) < tol or abs(f - f_old) < tol * (1 + abs(f)) * 1e-3
        if small and np.max(np.abs(grad)) < 1e-6 * n.sum():
            break
    return b


def _marginal_truth(design: pd.DataFrame, models: list[str], coef: dict, intercept: float,
                    offsets: dict, item_sd: float) -> dict:
    """Population-averaged (item intercept integrated out) rates and pooled coefficients.

    Every row of a (persona, prompt, task, model) cell shares its linear predictor
    ``eta_c`` up to the item intercept ``u ~ N(0, item_sd^2)``, so the cell's marginal
    rate is ``E_u[expit(eta_c + u)]`` (61-node Gauss-Hermite). A pooled logistic fit of
    :data:`MARGINAL_FORMULA` (no item term) on an ever larger table with this design
    converges to the maximiser of the expected log-likelihood, i.e. the weighted
    logistic fit to those marginal cell rates with the design's cell counts as weights,
    computed here exactly (Newton). With ``calibrate="table1"`` the main-effects model
    lacks the model x task offsets, so these are its pseudo-true (KL-projection) values.
    A level whose cells all have rate exactly 0 has coefficient -inf (separation): it is
    listed in ``separated`` with value None and its cells are left out of the fit.
    """
    factors = ["persona", "prompt", "task"]
    cells = design.groupby(factors, observed=True).size().rename("n").reset_index()
    cells = cells.merge(pd.DataFrame({"model": models}), how="cross")
    for f in factors:
        cells[f] = cells[f].astype(str)
    eta = np.full(len(cells), float(intercept))
    for f in (*factors, "model"):
        eta += cells[f].map(coef[f]).fillna(0.0).to_numpy()
    if offsets:
        eta += np.array([offsets[(m, t)] for m, t in zip(cells["model"], cells["task"])])
    z, w = _gauss_hermite(item_sd)
    with np.errstate(over="ignore"):
        p = (expit(eta[:, None] + z[None, :]) * w[None, :]).sum(1)
    p = np.where(np.isneginf(eta), 0.0, p)
    cells["p"] = p
    n = cells["n"].to_numpy(dtype=float)
    rates = {}
    for (m, t), g in cells.groupby(["model", "task"], sort=False):
        rates[f"{m}|{t}"] = float(np.average(g["p"], weights=g["n"]))
    # pooled main-effects fit to the marginal cell rates
    separated = []
    keep = np.ones(len(cells), dtype=bool)
    for f in (*factors, "model"):
        tot = cells.groupby(f, sort=False)["p"].sum()
        for lev in tot.index[tot.to_numpy() == 0]:
            separated.append(f"{f}[T.{lev}]")
            keep &= cells[f].to_numpy() != lev
    names, cols = ["Intercept"], [np.ones(keep.sum())]
    sub = cells[keep]
    for f in (*factors, "model"):
        levels = [lv for lv in (models if f == "model" else list(coef[f]) + [PAPER_REFERENCE[f]])
                  if lv != PAPER_REFERENCE[f] and f"{f}[T.{lv}]" not in separated
                  and (sub[f] == lv).any()]
        for lv in levels:
            names.append(f"{f}[T.{lv}]")
            cols.append((sub[f] == lv).to_numpy(dtype=float))
    X = np.column_stack(cols)
    b = _weighted_logistic(X, sub["p"].to_numpy(), n[keep])
    est = dict(zip(names, map(float, b)))
    return {
        "formula": MARGINAL_FORMULA,
        "intercept": est.pop("Intercept"),
        "coefficients": {**est, **{s: None for s in separated}},
        "separated": separated,
        "rates": rates,
        "overall_rate": float(np.average(p, weights=n)),
        "method": "Gauss-Hermite (61 nodes) over u ~ N(0, item_sd^2); pooled fit = weighted "
                  "logistic regression on the marginal cell rates (population limit)",
    }


def simulate_paper(
    scale: float = 1.0,
    seed: int | np.random.Generator | None = 0,
    calibrate: str = "table1",
    item_sd: float = 1.0,
    *,
    exact_rates: bool | None = None,
) -> pd.DataFrame:
    """Simulate P1's experiment as a tidy response table.

    The logit of refusal is ``intercept + Table-7 coefficients (persona, prompt, task,
    model) + item intercept ~ N(0, item_sd²)`` and, with ``calibrate="table1"``, a
    model x task offset per cell so each cell's expected refusal rate equals Table 1
    (blank and 0.00 cells get probability exactly 0). The intercept makes the overall
    rate equal to Table 1's row-weighted mean (blank cells counted as 0).

    Parameters
    ----------
    scale : float
        Fraction of P1's items per task (1.0: 3,000 / 5,000 / 4,701 items, 2,032,160 rows).
    seed : int, None or numpy.random.Generator
        Seed for the design, item effects and draws.
    calibrate : {"table1", "table7"}
        "table1": Table 7 effects plus per-cell offsets matching Table 1.
        "table7": Table 7 effects only (for coefficient-recovery checks).
    item_sd : float
        Standard deviation of the item random intercept (logit scale); 0 disables it.
    exact_rates : bool, optional
        Draw refusals systematically within model x task cells so each row keeps its
        exact marginal probability and every cell total is within one refusal of its
        expectation (rows of a cell are then slightly negatively dependent). Default:
        True for "table1", False (independent Bernoulli draws) for "table7".

    Returns
    -------
    DataFrame
        item_id, model, task, persona, persona_group, prompt, response_type, setting,
        refusal; categorical columns; ``df.attrs["truth"]`` holds the generating values:
        ``coefficients`` (term name -> value, formulaic/statsmodels treatment names such
        as ``"persona[T.Black person]"``), ``intercept``, ``offsets`` ((model, task) ->
        value keyed ``"model|task"``, "table1" only), ``item_sd``, ``reference``,
        ``target_rates`` (``"model|task"`` -> Table 1 rate) and ``marginal``: the
        population-averaged targets of a pooled fit without an item term (the item
        intercept integrated out): ``marginal["rates"]`` (``"model|task"`` -> rate),
        ``marginal["coefficients"]`` and ``marginal["intercept"]`` (the limit of a pooled
        logistic fit of :data:`MARGINAL_FORMULA` on this design; None for separated
        levels), ``marginal["overall_rate"]``. ``coefficients`` and ``intercept`` are
        *conditional* on the item (the hierarchical model with ``(1|item_id)`` targets
        those); a pooled fit targets ``marginal``. All keys are strings (Parquet-safe).

    Examples
    --------
    >>> import refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.01, seed=1)
    >>> len(df)
    20320
    """
    if calibrate not in ("table1", "table7"):
        raise ValueError(f"calibrate must be 'table1' or 'table7', got {calibrate!r}")
    if not (0 < scale <= 10):
        raise ValueError(f"scale must be in (0, 10], got {scale}")
    if item_sd < 0:
        raise ValueError(f"item_sd must be >= 0, got {item_sd}")
    if exact_rates is None:
        exact_rates = calibrate == "table1"
    seed = int_seed(seed)  # recorded in attrs, so an int (a Generator draws one)
    rng = np.random.default_rng(seed)
    items = _design_items(scale)
    design = sample_design(items, k=10, seed=int(rng.integers(2**31)))
    models = list(PAPER_TABLE1)
    n_d, n_m = len(design), len(models)

    # Per-design-row linear predictor (persona + prompt + task + item), then per model.
    coef = PAPER_TABLE7
    d_eta = (
        design["persona"].astype(str).map(coef["persona"]).fillna(0.0).to_numpy()
        + design["prompt"].astype(str).map(coef["prompt"]).fillna(0.0).to_numpy()
        + design["task"].astype(str).map(coef["task"]).fillna(0.0).to_numpy()
    )
    n_items = len(items)
    u = rng.normal(0.0, item_sd, n_items) if item_sd > 0 else np.zeros(n_items)
    item_pos = pd.Index(items["item_id"]).get_indexer(design["item_id"])
    d_eta = d_eta + u[item_pos]
    m_eff = np.array([coef["model"].get(m, 0.0) for m in models])
    eta = (d_eta[None, :] + m_eff[:, None]).ravel()  # model-major
    model_idx = np.repeat(np.arange(n_m), n_d)
    task_codes = design["task"].cat.codes.to_numpy()
    task_names = list(design["task"].cat.categories)
    task_idx = np.tile(task_codes, n_m)

    rows_per_task = design["task"].value_counts()
    t1 = paper_table1()
    t1["rows"] = t1["task"].map(rows_per_task).astype(float)
    target_overall = float((t1["rate"].fillna(0.0) * t1["rows"]).sum() / t1["rows"].sum())
    intercept = _solve_shift(eta, target_overall)
    eta = eta + intercept

    offsets: dict[tuple[str, str], float] = {}
    if calibrate == "table1":
        target = {(r.model, r.task): (0.0 if np.isnan(r.rate) else r.rate) for r in t1.itertuples()}
        cell = model_idx * len(task_names) + task_idx
        order = np.argsort(cell, kind="stable")
        bounds = np.searchsorted(cell[order], np.arange(n_m * len(task_names) + 1))
        for mi, m in enumerate(models):
            for ti, t in enumerate(task_names):
                c = mi * len(task_names) + ti
                idx = order[bounds[c]:bounds[c + 1]]
                off = _solve_shift(eta[idx], target[(m, t)])
                offsets[(m, t)] = off
                eta[idx] = eta[idx] + off
    p = expit(eta)
    if exact_rates:
        refusal = _systematic_draw(p, model_idx * len(task_names) + task_idx, rng)
    else:
        refusal = (rng.random(len(p)) < p).astype(np.int8)

    def rep(col: str) -> pd.Categorical:
        c = design[col]
        return pd.Categorical.from_codes(np.tile(c.cat.codes.to_numpy(), n_m), categories=c.cat.categories)

    df = pd.DataFrame({
        "item_id": np.tile(design["item_id"].to_numpy(), n_m),
        "model": pd.Categorical.from_codes(model_idx, categories=models),
        "task": rep("task"),
        "persona": rep("persona"),
        "persona_group": rep("persona_group"),
        "prompt": rep("prompt"),
        "response_type": rep("response_type"),
        "setting": rep("setting"),
        "refusal": refusal,
    })
    terms = {}
    for factor, levels in coef.items():
        for level, value in levels.items():
            terms[f"{factor}[T.{level}]"] = value
    marginal = _marginal_truth(design, models, coef, intercept, offsets, item_sd)
    df.attrs["truth"] = {
        "coefficients": terms,
        "intercept": intercept,
        "offsets": {f"{m}|{t}": v for (m, t), v in offsets.items()},
        "item_sd": item_sd,
        "item_effects": u.tolist(),
        "reference": dict(PAPER_REFERENCE),
        "target_rates": {f"{m}|{t}": (None if v is None else v / 100.0)
                         for m, vals in PAPER_TABLE1.items() for t, v in zip(PAPER_TASKS, vals)},
        "marginal": marginal,
        "overall_rate": target_overall,
        "calibrate": calibrate,
        "scale": scale,
        "seed": seed,
    }
    return df


def simulate_items(
    n_items: int = 200,
    k: int = 10,
    *,
    item_sd: float = 1.0,
    intercept: float = -1.0,
    item_levels: int = 3,
    row_levels: int = 5,
    item_effect: float | Sequence[float] = 0.0,
    row_effect: float | Sequence[float] = 0.0,
    seed: int | np.random.Generator | None = 0,
) -> pd.DataFrame:
    """Small clustered table for calibration: items answered ``k`` times each.

    The shape of every study here — each item answered many times — without the paper's
    size: ``n_items`` items, each belonging to one level of an *item-level* input
    ``task`` (constant within item, levels ``t0, t1, ...`` assigned in turn) and answered
    ``k`` times, each answer under a level of a *row-level* input ``persona`` (varies
    within item, levels ``p0, p1, ...`` in turn, starting at a random level per item)
    and a ``prompt`` (``q0, q1`` alternating, no effect). Refusals are Bernoulli with

        logit P(refusal) = intercept + item_effect[task] + row_effect[persona] + u_item,
        u_item ~ Normal(0, item_sd^2).

    Parameters
    ----------
    n_items, k : int
        Items and answers per item (``n_items * k`` rows).
    item_sd : float
        Standard deviation of the item random intercept (logit scale); 0 for independent rows.
    intercept : float
        Log-odds of the reference cell for an average item (u = 0).
    item_levels, row_levels : int
        Levels of ``task`` and ``persona``.
    item_effect, row_effect : float or sequence of float
        Log-odds effect per level (level 0 is the reference; a scalar ``b`` means levels
        ``0, b, 2b, ...``; 0 everywhere is the null of no effect).
    seed : int, None or numpy.random.Generator
        Seed for the item effects, level offsets and draws.

    Returns
    -------
    DataFrame
        item_id, task, persona, prompt, refusal; ``attrs["truth"]`` holds the conditional
        (given the item) effects, ``item_sd``, and the population-averaged rate of each
        ``task`` and ``persona`` level (by numerical integration over u).

    Examples
    --------
    >>> import refusalstats as rs
    >>> df = rs.simulate_items(n_items=50, k=4, seed=1)
    >>> df.shape
    (200, 5)
    """
    if n_items < 1 or k < 1:
        raise ValueError(f"n_items and k must be >= 1, got n_items={n_items}, k={k}")
    if item_levels < 1 or row_levels < 1:
        raise ValueError("item_levels and row_levels must be >= 1")
    if item_sd < 0:
        raise ValueError(f"item_sd must be >= 0, got {item_sd}")

    def effects(value, n, name):
        if np.ndim(value) == 0:
            return float(value) * np.arange(n)
        arr = np.asarray(value, dtype=float)
        if arr.shape != (n,):
            raise ValueError(f"{name} needs {n} values (one per level), got {arr.shape[0]}")
        return arr

    b_item = effects(item_effect, item_levels, "item_effect")
    b_row = effects(row_effect, row_levels, "row_effect")
    seed = int_seed(seed)  # recorded in attrs, so an int (a Generator draws one)
    rng = np.random.default_rng(seed)
    item = np.repeat(np.arange(n_items), k)
    task = item % item_levels
    start = rng.integers(row_levels, size=n_items)
    persona = (start[item] + np.tile(np.arange(k), n_items)) % row_levels
    prompt = np.tile(np.arange(k) % 2, n_items)
    u = rng.normal(0.0, item_sd, n_items) if item_sd > 0 else np.zeros(n_items)
    eta = intercept + b_item[task] + b_row[persona] + u[item]
    refusal = (rng.random(len(eta)) < expit(eta)).astype(np.int8)

    # population-averaged rates: integrate over u with Gauss-Hermite quadrature
    z, w = np.polynomial.hermite_e.hermegauss(61)
    w = w / w.sum()

    def marginal(lin):
        return float(np.sum(w * expit(lin + item_sd * z)))

    df = pd.DataFrame({
        "item_id": item,
        "task": pd.Categorical.from_codes(task, [f"t{i}" for i in range(item_levels)]),
        "persona": pd.Categorical.from_codes(persona, [f"p{i}" for i in range(row_levels)]),
        "prompt": pd.Categorical.from_codes(prompt, ["q0", "q1"]),
        "refusal": refusal,
    })
    df.attrs["truth"] = {
        "intercept": float(intercept),
        "item_sd": float(item_sd),
        "task": {f"t{i}": float(b) for i, b in enumerate(b_item)},
        "persona": {f"p{i}": float(b) for i, b in enumerate(b_row)},
        "marginal_rate_task_persona": {
            f"t{i}|p{j}": marginal(intercept + bi + bj)
            for i, bi in enumerate(b_item) for j, bj in enumerate(b_row)
        },
    }
    return df
