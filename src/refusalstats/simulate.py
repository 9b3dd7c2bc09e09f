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

from ._blas import single_blas
from ._validation import int_seed
from .design import CONTROL_PERSONAS, NO_PERSONA, PERSONAS, TASKS, TEMPLATES, sample_design

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

#: P1 §4.4, offensiveness: refusal rate with a persona minus without one, percentage
#: points, for the five models whose persona effect P1 reports.
PAPER_PERSONA_FREE_DELTA: dict[str, float] = {
    "Llama2-13B": 12.38, "Llama3-8B": 14.08, "Qwen1.5-32B": 17.27, "Gemma2-9B": 13.15,
    "Gemma2-27B": 3.78,
}

#: P1 §4.4: six models refuse in neither setting; here the six whose Table 1
#: offensiveness rate is below 0.5% (their persona-free rate is 0).
PAPER_REFUSE_IN_NEITHER: tuple[str, ...] = (
    "Llama3.2-3B", "Qwen1.5-7B", "Qwen2.5-7B", "Qwen2.5-32B", "Gemma-2B", "Gemma-7B",
)

#: Levels of the ``design`` column that ``simulate_paper(controls=True)`` adds: P1's rows
#: (its Monte Carlo persona prompts and persona-free prompts) and the complete-block rows
#: (every item under every persona, controls included: de Araujo & Roth's design).
DESIGN_LEVELS: tuple[str, str] = ("p1", "complete")

#: sd (logit scale) of the control personas' effects: they differ only in wording.
CONTROL_EFFECT_SD = 0.15

#: Default ``response_error``: P(answer text the default detector misses | refusal) and
#: P(answer text the default detector flags | no refusal).
RESPONSE_ERROR: tuple[float, float] = (0.03, 0.002)


def paper_persona_free_rates() -> dict[str, float]:
    """Offensiveness refusal rate without a persona per model (fractions), as simulated.

    Table 1's offensiveness rate minus P1 §4.4's persona effect for the five models it
    reports (:data:`PAPER_PERSONA_FREE_DELTA`); 0 for the six that refuse in neither
    setting (:data:`PAPER_REFUSE_IN_NEITHER`); for the other five, whose persona effect
    is not among the published numbers this project holds, Table 1's rate (no persona
    effect assumed).

    Returns
    -------
    dict
        model -> rate.
    """
    out = {}
    for m, vals in PAPER_TABLE1.items():
        off = vals[PAPER_TASKS.index("offensiveness")] or 0.0
        if m in PAPER_REFUSE_IN_NEITHER:
            out[m] = 0.0
        else:
            out[m] = max(0.0, off - PAPER_PERSONA_FREE_DELTA.get(m, 0.0)) / 100.0
    return out


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


@single_blas  # 6,075 x 39: two OpenBLAS threads made this 200x slower on a busy machine
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
    persona_free: bool = False,
    controls: bool = False,
    answer_text: bool = False,
    control_items: int | None = None,
    response_error: tuple[float, float] = RESPONSE_ERROR,
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
    persona_free : bool
        Add P1's persona-free setting (§4.4): every offensiveness item once per template
        without a persona (persona and persona_group ``"none"``, setting
        ``"persona-free"``; 9 rows per item and model). The item intercepts are the
        persona rows'. With "table1" each model's persona-free rate is
        :func:`paper_persona_free_rates` (Table 1 minus P1's persona effect: +12.38 pp
        Llama2-13B, +14.08 Llama3-8B, +17.27 Qwen1.5-32B, +13.15 Gemma2-9B, +3.78
        Gemma2-27B; 0 for the six models that refuse in neither setting); with "table7"
        the rows follow Table 7 with the reference persona's effect (0).
    controls : bool
        Add de Araujo & Roth's complete design with control personas: ``control_items``
        items per task, each answered under every persona (P1's 15 and the 10
        :data:`~refusalstats.design.CONTROL_PERSONAS`, group ``"control"``) with template
        p1; setting ``"persona"`` and a column ``design`` telling them (``"complete"``) from
        P1's rows (``"p1"``). These blocks are complete, so Cochran's Q and the disparity
        ratio apply to them (``df[df["design"] == "complete"]``; on the command line
        ``--where design=complete``). The control
        personas' effects are fixed normal quantiles with mean 0 (the reference persona's)
        and sd :data:`CONTROL_EFFECT_SD`; the other terms, Table 1 offsets included, are
        those of the persona rows.
    answer_text : bool
        Add a ``response`` column of answer text (categorical). A refusal reads as an
        explicit refusal, except that with probability ``response_error[0]`` it is a
        hedge without refusal words; an answer gives one of the task's labels, except
        that with probability ``response_error[1]`` it opens with an apology. The default
        detector (``refusalstats.detect.flag_refusals(df)``) flags exactly the explicit
        refusals and the apologies, so its sensitivity is ``1 - response_error[0]`` and its
        specificity ``1 - response_error[1]`` in expectation (tested). ``refusal`` stays the true,
        simulated refusal.
    control_items : int, optional
        Items per task in the complete design (default ``max(5, round(100 * scale))``).
    response_error : (float, float)
        Miss and false-alarm probabilities of the answer text (default (0.03, 0.002)).

    Returns
    -------
    DataFrame
        item_id, model, task, persona, persona_group, prompt, response_type, setting,
        (design,) refusal (and response); categorical columns; the persona rows come first and are
        the same with or without the options above; ``df.attrs["truth"]`` holds the generating values:
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
        those); a pooled fit targets ``marginal``. With the options: ``persona_free``
        (``target_rates`` and ``offsets`` per model), ``controls`` (``effects`` per control
        persona, ``items`` per task) and ``answer_text`` (``miss``, ``false_alarm``). All
        keys are strings (Parquet-safe).

    Examples
    --------
    >>> import refusalstats as rs
    >>> df = rs.simulate_paper(scale=0.01, seed=1)
    >>> len(df)
    20320
    >>> full = rs.simulate_paper(scale=0.01, seed=1, persona_free=True, controls=True,
    ...                          answer_text=True)
    >>> full.groupby(["design", "setting"], observed=True).size().to_dict()
    {('p1', 'persona'): 20320, ('p1', 'persona-free'): 6768, ('complete', 'persona'): 6000}
    """
    if calibrate not in ("table1", "table7"):
        raise ValueError(f"calibrate must be 'table1' or 'table7', got {calibrate!r}")
    if not (0 < scale <= 10):
        raise ValueError(f"scale must be in (0, 10], got {scale}")
    if item_sd < 0:
        raise ValueError(f"item_sd must be >= 0, got {item_sd}")
    miss, false_alarm = _check_response_error(response_error)
    if control_items is None:
        control_items = max(5, round(100 * scale))
    if isinstance(control_items, bool) or not isinstance(control_items, (int, np.integer)) \
            or control_items < 1:
        raise ValueError(f"control_items must be a whole number >= 1, got {control_items!r}")
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
    if not (persona_free or controls or answer_text):
        return df
    # The options' rows and text are drawn after the persona rows, from the same
    # generator, so the persona rows are the same with or without them.
    truth = df.attrs["truth"]
    parts = [df]
    base = {"items": items, "u": u, "models": models, "m_eff": m_eff,
            "intercept": intercept, "offsets": offsets, "rng": rng, "exact": exact_rates}
    if persona_free:
        part, truth["persona_free"] = _persona_free_rows(calibrate=calibrate, **base)
        parts.append(part)
    if controls:
        part, truth["controls"] = _complete_rows(n_per_task=int(control_items), **base)
        parts.append(part)
    out = _concat_parts(parts) if len(parts) > 1 else df
    out.attrs["truth"] = truth
    if answer_text:
        out["response"] = _response_text(out, rng, miss, false_alarm)
        truth["responses"] = {"miss": miss, "false_alarm": false_alarm, "detector": "default"}
    return out


def _check_response_error(value) -> tuple[float, float]:
    try:
        miss, false_alarm = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError("response_error must be two probabilities (miss, false_alarm), "
                         f"e.g. (0.03, 0.002); got {value!r}") from None
    if not (0 <= miss <= 1 and 0 <= false_alarm <= 1):
        raise ValueError(f"response_error must be two probabilities in [0, 1], got {value!r}")
    return miss, false_alarm


def _draw(p: np.ndarray, cell: np.ndarray, rng: np.random.Generator, exact: bool) -> np.ndarray:
    if exact:
        return _systematic_draw(p, cell, rng)
    return (rng.random(len(p)) < p).astype(np.int8)


def _part(item_id, model_idx, refusal, **columns) -> dict:
    """One block of rows: item_id, model codes, refusal, and each categorical column as
    ``(levels, index)`` (a small array of values and each row's position in it) or one
    value for every row; codes are resolved in :func:`_concat_parts`."""
    return {"item_id": item_id, "model": model_idx, "refusal": refusal, **columns}


def _persona_free_rows(items, u, models, m_eff, intercept, offsets, rng, exact, calibrate):
    """P1's persona-free setting: every offensiveness item once per template, per model."""
    fam = [t for t in TEMPLATES if t.family == TASKS["offensiveness"].family]
    sub = items[items["task"] == "offensiveness"]
    n_i, n_t, n_m = len(sub), len(fam), len(models)
    pos = np.repeat(np.flatnonzero((items["task"] == "offensiveness").to_numpy()), n_t)
    tmpl = np.tile(np.arange(n_t), n_i)
    prompt_eff = np.array([PAPER_TABLE7["prompt"].get(t.prompt, 0.0) for t in fam])
    d_eta = PAPER_TABLE7["task"]["offensiveness"] + prompt_eff[tmpl] + u[pos]
    n_d = len(d_eta)
    eta = (d_eta[None, :] + m_eff[:, None]).ravel() + intercept
    targets = paper_persona_free_rates()
    free_offsets = {}
    if calibrate == "table1":
        for mi, m in enumerate(models):
            sl = slice(mi * n_d, (mi + 1) * n_d)
            free_offsets[m] = _solve_shift(eta[sl], targets[m])
            eta[sl] = eta[sl] + free_offsets[m]
    model_idx = np.repeat(np.arange(n_m), n_d)
    with np.errstate(over="ignore"):
        p = expit(eta)
    refusal = _draw(p, model_idx, rng, exact)
    tile = np.tile(tmpl, n_m)
    part = _part(
        item_id=np.tile(np.repeat(sub["item_id"].to_numpy(), n_t), n_m), model_idx=model_idx,
        refusal=refusal, task="offensiveness", persona=NO_PERSONA, persona_group=NO_PERSONA,
        prompt=(np.array([t.prompt for t in fam], dtype=object), tile),
        response_type=(np.array([t.response_type for t in fam], dtype=object), tile),
        setting="persona-free")
    truth = {"task": "offensiveness",
             "target_rates": ({m: float(v) for m, v in targets.items()}
                              if calibrate == "table1" else {}),
             "offsets": {m: float(v) for m, v in free_offsets.items()},
             "delta_pp": dict(PAPER_PERSONA_FREE_DELTA),
             "refuse_in_neither": list(PAPER_REFUSE_IN_NEITHER)}
    return part, truth


def control_effects() -> dict[str, float]:
    """The simulated control personas' effects (logit scale, vs the reference persona).

    Normal quantiles at (i + 0.5) / 10 scaled to sd :data:`CONTROL_EFFECT_SD`: mean 0,
    fixed (not drawn), so the true control spread is known.

    Returns
    -------
    dict
        control persona name -> effect.
    """
    from scipy.stats import norm

    n = len(CONTROL_PERSONAS)
    q = norm.ppf((np.arange(n) + 0.5) / n)
    q = (q - q.mean()) / q.std(ddof=1) * CONTROL_EFFECT_SD
    return {p.name: float(v) for p, v in zip(CONTROL_PERSONAS, q)}


def _complete_rows(items, u, models, m_eff, intercept, offsets, rng, exact, n_per_task):
    """de Araujo & Roth's complete design: the first ``n_per_task`` items of each task under
    every persona (P1's and the controls) with template p1, per model."""
    personas = (*PERSONAS, *CONTROL_PERSONAS)
    ctrl = control_effects()
    p_eff = np.array([PAPER_TABLE7["persona"].get(p.name, ctrl.get(p.name, 0.0))
                      for p in personas])
    pos = np.concatenate([np.flatnonzero((items["task"] == t).to_numpy())[:n_per_task]
                          for t in PAPER_TASKS])
    n_p, n_m = len(personas), len(models)
    item_pos = np.repeat(pos, n_p)
    pers = np.tile(np.arange(n_p), len(pos))
    tasks = items["task"].to_numpy()[item_pos].astype(object)
    task_eff = np.array([PAPER_TABLE7["task"].get(t, 0.0) for t in tasks])
    d_eta = p_eff[pers] + task_eff + u[item_pos]
    n_d = len(d_eta)
    eta = (d_eta[None, :] + m_eff[:, None]).ravel() + intercept
    model_idx = np.repeat(np.arange(n_m), n_d)
    task_all = np.tile(tasks, n_m)
    if offsets:
        off = np.array([offsets[(models[mi], t)] for mi in range(n_m) for t in tasks])
        with np.errstate(invalid="ignore"):
            eta = eta + off
    with np.errstate(over="ignore"):
        p = np.where(np.isneginf(eta), 0.0, expit(eta))
    task_code = pd.Index(PAPER_TASKS).get_indexer(task_all)
    refusal = _draw(p, model_idx * len(PAPER_TASKS) + task_code, rng, exact)
    p1 = next(t for t in TEMPLATES if t.prompt == "p1")
    pers_all = np.tile(pers, n_m)
    part = _part(
        item_id=np.tile(items["item_id"].to_numpy()[item_pos], n_m), model_idx=model_idx,
        refusal=refusal, task=(np.array(PAPER_TASKS, dtype=object), task_code),
        persona=(np.array([p.name for p in personas], dtype=object), pers_all),
        persona_group=(np.array([p.group for p in personas], dtype=object), pers_all),
        prompt="p1", response_type=p1.response_type, setting="persona",
        design=DESIGN_LEVELS[1])
    truth = {"design": DESIGN_LEVELS[1], "items_per_task": int(n_per_task), "prompt": "p1",
             "effects": ctrl, "effect_sd": CONTROL_EFFECT_SD}
    return part, truth


def _concat_parts(parts: list) -> pd.DataFrame:
    """The persona rows (a DataFrame) and the options' blocks (see :func:`_part`) as one
    table; categories are the persona rows' with the new levels appended."""
    df = parts[0]
    cols = {}
    for c in ("task", "persona", "persona_group", "prompt", "response_type", "setting"):
        cats = list(df[c].cat.categories)
        codes = [df[c].cat.codes.to_numpy().astype(np.int32)]
        for part in parts[1:]:
            levels, idx = part[c] if isinstance(part[c], tuple) else \
                (np.array([part[c]], dtype=object), np.zeros(len(part["refusal"]), np.int64))
            cats += [v for v in pd.unique(levels) if v not in cats]
            codes.append(pd.Index(cats).get_indexer(levels).astype(np.int32)[idx])
        cols[c] = pd.Categorical.from_codes(np.concatenate(codes), categories=cats)
    models = list(df["model"].cat.categories)
    cols["model"] = pd.Categorical.from_codes(
        np.concatenate([df["model"].cat.codes.to_numpy()] + [p["model"] for p in parts[1:]]),
        categories=models)
    cols["item_id"] = np.concatenate([df["item_id"].to_numpy()] + [p["item_id"] for p in parts[1:]])
    cols["refusal"] = np.concatenate([df["refusal"].to_numpy()]
                                     + [p["refusal"] for p in parts[1:]]).astype(np.int8)
    out = pd.DataFrame({c: cols[c] for c in df.columns})
    if any("design" in p for p in parts[1:]):
        codes = [np.zeros(len(df), np.int8)] + [
            np.full(len(p["refusal"]), DESIGN_LEVELS.index(p.get("design", DESIGN_LEVELS[0])),
                    np.int8) for p in parts[1:]]
        out.insert(out.columns.get_loc("setting") + 1, "design", pd.Categorical.from_codes(
            np.concatenate(codes), categories=list(DESIGN_LEVELS)))
    return out


# Answer texts: (text, intended default-detector flag). "{persona}" is the persona's noun
# phrase, "{Persona}" the same capitalised, "{label}" one of the task's answer labels.
# No refusal text contains a label word (the detector would read it as an answer).
_TEXTS: dict[str, tuple[str, ...]] = {
    # explicit refusals: the default detector flags them
    "refusal": (
        "I'm sorry, but I cannot help with this request.",
        "As an AI, I cannot give an opinion on this.",
        "It is not appropriate for me to make this judgment.",
        "I'm sorry, but I cannot answer how {persona} would see this.",
        "I cannot make assumptions about how {persona} would perceive this.",
        "As an AI, I cannot speak for {persona} or any group of people.",
    ),
    # hedges without refusal words: a refusal the default detector misses
    "missed": (
        "This touches on a sensitive topic, and different people may perceive it differently.",
        "Perceptions of this vary widely between individuals and cultures.",
    ),
    # answers
    "answer": (
        "{Label}",
        "{Label}.",
        "The answer is: {label}.",
        "{Persona} would likely choose: {label}.",
    ),
    # answers that open with an apology: the default detector flags them
    "false_alarm": (
        "I'm sorry, but I would say it is {label}.",
        "I apologize, but I would classify it as {label}.",
    ),
}
_KINDS = ("refusal", "missed", "answer", "false_alarm")


def _response_text(df: pd.DataFrame, rng: np.random.Generator, miss: float,
                   false_alarm: float) -> pd.Categorical:
    """A categorical answer text per row (see ``answer_text`` in :func:`simulate_paper`)."""
    n = len(df)
    refusal = df["refusal"].to_numpy().astype(bool)
    u_kind, u_tmpl, u_label = rng.random(n), rng.random(n), rng.random(n)
    kind = np.where(refusal, np.where(u_kind < miss, 1, 0), np.where(u_kind < false_alarm, 3, 2))
    personas = {p.name: p for p in (*PERSONAS, *CONTROL_PERSONAS)}
    pcats = list(df["persona"].cat.categories)
    has_persona = np.array([c in personas for c in pcats])[df["persona"].cat.codes.to_numpy()]
    # templates with {persona} last, so rows without a persona draw among the first ones
    order = {k: sorted(_TEXTS[k], key=lambda t: "{persona}" in t.lower()) for k in _KINDS}
    n_all = np.array([len(order[k]) for k in _KINDS])
    n_plain = np.array([sum("{persona}" not in t.lower() for t in order[k]) for k in _KINDS])
    tmpl = np.floor(u_tmpl * np.where(has_persona, n_all[kind], n_plain[kind])).astype(np.int64)
    tcats = list(df["task"].cat.categories)
    n_labels = np.array([len(TASKS[t].labels) if t in TASKS else 1 for t in tcats])
    t_codes = df["task"].cat.codes.to_numpy().astype(np.int64)
    label = np.floor(u_label * n_labels[t_codes]).astype(np.int64)
    p_codes = df["persona"].cat.codes.to_numpy().astype(np.int64)
    uses_persona = np.zeros(n, dtype=bool)
    uses_label = np.zeros(n, dtype=bool)
    for k, name in enumerate(_KINDS):
        has_p = np.array(["{persona}" in t.lower() for t in order[name]])
        has_l = np.array(["{label}" in t.lower() for t in order[name]])
        sel = kind == k
        uses_persona[sel] = has_p[tmpl[sel]]
        uses_label[sel] = has_l[tmpl[sel]]
    n_p, n_lab, n_t = len(pcats) + 1, int(n_labels.max()), int(n_all.max())
    key = (((t_codes * len(_KINDS) + kind) * n_t + tmpl) * n_lab
           + np.where(uses_label, label, 0)) * n_p + np.where(uses_persona, p_codes, n_p - 1)
    # the key space is small (tasks x kinds x templates x labels x personas): number the
    # keys that occur by a lookup table instead of sorting millions of rows (np.unique)
    present = np.zeros(len(tcats) * len(_KINDS) * n_t * n_lab * n_p, dtype=bool)
    present[key] = True
    uniq = np.flatnonzero(present)
    inverse = (np.cumsum(present) - 1)[key]
    texts = []
    for k in uniq.tolist():
        k, p_code = divmod(k, n_p)
        k, lab = divmod(k, n_lab)
        k, j = divmod(k, n_t)
        t_code, kd = divmod(k, len(_KINDS))
        task = tcats[t_code]
        text = order[_KINDS[kd]][j]
        labels = TASKS[task].labels if task in TASKS else ("yes",)
        phrase = personas[pcats[p_code]].phrase if p_code < n_p - 1 else ""
        texts.append(text.format(persona=phrase, Persona=phrase[:1].upper() + phrase[1:],
                                 label=labels[lab], Label=labels[lab].capitalize()))
    # equal texts of different keys (the same answer in two tasks) share one category
    cats, first = np.unique(np.array(texts, dtype=object), return_inverse=True)
    return pd.Categorical.from_codes(first[inverse.ravel()], categories=list(cats))


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
