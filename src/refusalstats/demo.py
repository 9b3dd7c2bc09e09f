"""``refusalstats demo``: simulate P1's full design and run the analyses on it.

The demo is one explicit, ordered list of steps, :data:`STEPS`. Each step takes the
simulated table and the :class:`DemoRun` (output folder, scale, seed, and the fits the
steps share); the report comes last because it reuses what the others computed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


@dataclass
class DemoRun:
    """What the demo steps share: where to write, how it was simulated, and the fits."""

    out: Path
    scale: float = 1.0
    seed: int = 0
    #: fits the steps share (the report reuses "w2", "logit" and "hierarchical")
    results: dict[str, Any] = field(default_factory=dict)


def demo_rates(data: pd.DataFrame, run: DemoRun) -> None:
    """Refusal rates by model x task with Wilson CIs, and the rows per persona and task.

    Parameters
    ----------
    data : DataFrame
        The simulated response table.
    run : DemoRun
        Where to write, the seed, and the fits the steps share.
    """
    from .rates import refusal_rates

    rates = refusal_rates(data, by=["model", "task"])
    pd.set_option("display.width", 140)
    pd.set_option("display.max_rows", 200)
    show = rates.copy()
    for c in ("rate", "ci_low", "ci_high"):
        show[c] = (100 * show[c]).round(2)
    print("\nRefusal rate (%) by model x task, 95% Wilson CIs:")
    print(show.to_string(index=False))
    counts = data[data["model"] == data["model"].cat.categories[0]].groupby(
        ["persona", "task"], observed=True).size().unstack("task")
    print("\nRows per persona and task (one model; P1's Table 5):")
    print(counts.to_string())


def demo_sensitivity(data: pd.DataFrame, run: DemoRun) -> None:
    """W2 sensitivity indices of refusal (P1's Fig. 5) with bootstrap CIs and the null.

    Parameters
    ----------
    data : DataFrame
        The simulated response table.
    run : DemoRun
        Where to write, the seed, and the fits the steps share.
    """
    from .sensitivity import w2_sensitivity

    t0 = time.perf_counter()
    res = w2_sensitivity(data, inputs=["model", "task", "persona", "prompt"], n_boot=1000,
                         n_perm=200, seed=run.seed)
    print(f"\nW2 sensitivity of refusal (P1's Fig. 5), 95% percentile CIs (1,000 bootstrap replicates), "
          f"permutation null (200); {time.perf_counter() - t0:.1f} s:")
    print(res.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    run.results["w2"] = res


def demo_logit(data: pd.DataFrame, run: DemoRun) -> None:
    """P1's Table 7 model (Firth, paper reference levels, CR1 by item) on the full table.

    Parameters
    ----------
    data : DataFrame
        The simulated response table.
    run : DemoRun
        Where to write, the seed, and the fits the steps share.
    """
    import warnings

    from .regression import logit
    from .simulate import PAPER_PSEUDO_R2, PAPER_REFERENCE

    t0 = time.perf_counter()
    formula = "refusal ~ persona + task + prompt + model"
    cluster = "item_id" if "item_id" in data.columns else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = logit(formula, data, reference=PAPER_REFERENCE, penalty="firth", cluster=cluster)
    print(f"\nLogistic regression, P1's Table 7 model with Firth's penalty ({len(data):,} rows in "
          f"{fit.n_patterns:,} covariate patterns, {time.perf_counter() - t0:.1f} s):")
    print(fit.summary())
    print(f"(P1 reports McFadden pseudo-R2 {PAPER_PSEUDO_R2}; this simulated table gives {fit.pseudo_r2:.4f})")
    run.results["logit"] = fit


#: Draws of the demo's hierarchical fit (chains x (tune + draws)): short enough for the
#: 3-minute demo, long enough that its printed R-hat / ESS are honest about it.
DEMO_BAYES = {"chains": 4, "tune": 500, "draws": 700}


def demo_hierarchical(data: pd.DataFrame, run: DemoRun) -> None:
    """Persona within model effects from the hierarchical model (issue 5).

    Parameters
    ----------
    data : DataFrame
        The simulated response table.
    run : DemoRun
        Where to write, the seed, and the fits the steps share.
    """
    import warnings

    from .bayes import hierarchical

    t0 = time.perf_counter()
    formula = "refusal ~ task + prompt + (1|model) + (1|persona) + (1|persona:model)"
    d = data[data["setting"] == "persona"] if "setting" in data.columns else data
    print(f"\nBayesian hierarchical model: {formula}\n(nutpie, {DEMO_BAYES['chains']} chains x "
          f"({DEMO_BAYES['tune']} tune + {DEMO_BAYES['draws']} draws); `refusalstats bayes` "
          "defaults to 4 x (1000 + 1000)) ...", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the diagnostics are printed with the summary
        fit = hierarchical(formula, d, reference={"task": "nli", "prompt": "p1"}, seed=run.seed,
                           progress=False, **DEMO_BAYES)
    print(fit)
    eff = fit.effects("persona", within="model")
    spread = eff.groupby("model", observed=True)["prob_effect"].std().sort_values(ascending=False)
    top = list(spread.index[:4])
    print("\nPersona effects within the four most persona-sensitive models (largest sd of the "
          "personas' effects on the refusal probability): change in refusal probability vs an "
          "average persona in that model, percentage points, 95% HDI, P(effect > 0):")
    for mdl in top:
        sub = eff[eff["model"] == mdl].sort_values("prob_effect", ascending=False)
        rate = (sub["observed_rate"] * sub["n"]).sum() / sub["n"].sum()
        print(f"\n  {mdl} (observed refusal rate {100 * rate:.2f}%):")
        for r in sub.itertuples():
            print(f"    {r.persona!s:28s} {100 * r.prob_effect:+7.2f} pp  "
                  f"[{100 * r.prob_ci_low:+6.2f}, {100 * r.prob_ci_high:+6.2f}]  P>0 {r.p_gt_0:.3f}")
    print(f"(hierarchical step: {time.perf_counter() - t0:.1f} s)")
    run.results["hierarchical"] = fit


def demo_report(data: pd.DataFrame, run: DemoRun) -> None:
    """The HTML report of the simulated table, reusing the fits in ``run.results``.

    Parameters
    ----------
    data : DataFrame
        The simulated response table.
    run : DemoRun
        Where to write, the seed, and the fits the steps share.
    """
    from .cli import _print_report
    from .reporting import report

    t0 = time.perf_counter()
    print("\nWriting the report ...", flush=True)
    results = {k: v for k, v in run.results.items() if k in ("logit", "w2", "hierarchical")}
    # The report reuses the demo's hierarchical fit; it never fits a second one here (at
    # report()'s default of 4 x 1000 draws that alone takes ~2.5 min on 2 cores).
    rep = report(data, out=run.out, seed=run.seed, results=results,
                 hierarchical="hierarchical" in results,
                 source=f"simulated: refusalstats.simulate_paper(scale={run.scale}, "
                        f"seed={run.seed}); also in {run.out / 'responses.parquet'}")
    _print_report(rep, time.perf_counter() - t0)


#: The demo's steps, in the order they run after simulating; the report is last because it
#: reuses the W2, logit and hierarchical fits.
STEPS = (demo_rates, demo_sensitivity, demo_logit, demo_hierarchical, demo_report)


def run_demo(out: str | Path = "demo", scale: float = 1.0, seed: int = 0,
             steps: Sequence[Callable[[pd.DataFrame, DemoRun], None]] | None = None) -> DemoRun:
    """Simulate P1's design, write ``<out>/responses.parquet`` and run ``steps`` on it.

    Parameters
    ----------
    out : str or Path
        Output folder (created if missing).
    scale : float
        Fraction of the paper's items.
    seed : int
        Random seed of the simulation and of every step.
    steps : sequence of callables, optional
        Each takes ``(table, run)``; default :data:`STEPS`.

    Returns
    -------
    DemoRun
        The run, with the fits the steps stored in ``results``.
    """
    from .simulate import simulate_paper
    from .table import write_responses

    run = DemoRun(out=Path(out), scale=scale, seed=seed)
    run.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"simulating the paper's design (scale {scale}, seed {seed}) ...", flush=True)
    data = simulate_paper(scale=scale, seed=seed)
    path = write_responses(data, run.out / "responses.parquet",
                           metadata={"source": "refusalstats.simulate_paper", "scale": scale,
                                     "seed": seed})
    print(f"wrote {len(data):,} rows to {path} ({time.perf_counter() - t0:.1f} s)")
    for step in STEPS if steps is None else steps:
        step(data, run)
    print(f"demo finished in {time.perf_counter() - t0:.1f} s")
    return run
