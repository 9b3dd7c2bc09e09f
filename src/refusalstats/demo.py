"""``refusalstats demo``: simulate P1's full design and run the analyses on it.

The demo is one explicit, ordered list of steps, :data:`STEPS`. Each step takes the
simulated table and the :class:`DemoRun` (output folder, scale, seed, and the fits the
steps share); the report comes last because it reuses what the others computed.

The table is the full study ``simulate_paper(persona_free=True, controls=True,
answer_text=True)``: P1's Monte Carlo persona rows (setting ``"persona"``), its
persona-free offensiveness prompts (``"persona-free"``), de Araujo & Roth's complete
design with control personas (setting ``"persona"``, column ``design`` ``"complete"``) and
answer text. The model fits (W2,
logistic regression, hierarchical model) use the rows with a persona, the rows the
report analyses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .vocabulary import PERSONA_FREE


@dataclass
class DemoRun:
    """What the demo steps share: where to write, how it was simulated, and the fits."""

    out: Path
    scale: float = 1.0
    seed: int = 0
    #: fits the steps share (the report reuses "w2", "logit" and "hierarchical")
    results: dict[str, Any] = field(default_factory=dict)


def _persona_rows(data: pd.DataFrame) -> pd.DataFrame:
    """The rows with a persona (persona-free prompts left out), as the report analyses."""
    if "setting" not in data.columns:
        return data
    return data[data["setting"].astype(str) != PERSONA_FREE]


def _p1_rows(data: pd.DataFrame) -> pd.DataFrame:
    """P1's Monte Carlo persona rows (setting 'persona', not the complete design)."""
    d = data[data["setting"] == "persona"] if "setting" in data.columns else data
    return d[d["design"] == "p1"] if "design" in d.columns else d


def _complete_rows(data: pd.DataFrame) -> pd.DataFrame:
    """The complete-design rows (column design 'complete'), unused levels dropped."""
    if "design" not in data.columns:
        return data.iloc[:0]
    d = data[data["design"] == "complete"]
    return d.assign(**{c: d[c].cat.remove_unused_categories() for c in ("persona", "persona_group")
                       if isinstance(d[c].dtype, pd.CategoricalDtype)})


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

    p1 = _p1_rows(data)
    rates = refusal_rates(p1, by=["model", "task"])
    pd.set_option("display.width", 140)
    pd.set_option("display.max_rows", 200)
    show = rates[["model", "task", "n", "refusals", "rate", "ci_low", "ci_high"]].copy()
    for c in ("rate", "ci_low", "ci_high"):
        show[c] = (100 * show[c]).round(2)
    print("\nRefusal rate (%) by model x task on P1's persona rows (its Table 1), 95% Wilson CIs "
          "clustered by item:")
    print(show.to_string(index=False))
    counts = p1[p1["model"] == p1["model"].cat.categories[0]].groupby(
        ["persona", "task"], observed=True).size().unstack("task")
    print("\nRows per persona and task (one model; P1's Table 5):")
    print(counts.to_string())


def demo_persona_free(data: pd.DataFrame, run: DemoRun) -> None:
    """Persona minus persona-free refusal rate on offensiveness (P1's Fig. 1, §4.4).

    Parameters
    ----------
    data : DataFrame
        The simulated response table.
    run : DemoRun
        Where to write, the seed, and the fits the steps share.
    """
    from .rates import persona_effect
    from .simulate import PAPER_PERSONA_FREE_DELTA

    off = data[data["task"] == "offensiveness"]
    if "design" in off.columns:
        off = off[off["design"] == "p1"]
    eff = persona_effect(off, by="model")
    show = pd.DataFrame({
        "model": eff["model"].astype(str),
        "persona %": (100 * eff["rate_persona"]).round(2),
        "persona-free %": (100 * eff["rate_persona_free"]).round(2),
        "difference pp": (100 * eff["difference"]).round(2),
        "95% CI (pp)": [f"{100 * a:.2f} to {100 * b:.2f}" for a, b in zip(eff["ci_low"], eff["ci_high"])],
        "P1 §4.4 pp": [PAPER_PERSONA_FREE_DELTA.get(str(m), float("nan")) for m in eff["model"]],
    })
    print("\nWith and without a persona, offensiveness (P1's Fig. 1): persona minus persona-free "
          "refusal rate, Newcombe 95% CI clustered by item (P1 §4.4's published differences "
          "alongside; blank = not reported):")
    print(show.to_string(index=False, na_rep=""))


def demo_answers(data: pd.DataFrame, run: DemoRun) -> None:
    """The answer text: how well refusal detectors read it (a labelled sample of 20,000).

    Parameters
    ----------
    data : DataFrame
        The simulated response table.
    run : DemoRun
        Where to write, the seed, and the fits the steps share.
    """
    if "response" not in data.columns:
        print("\n(no answer text in this table: the detector section needs a 'response' column)")
        return
    from .detect import detector, evaluate_detector

    sample = data.sample(n=min(20_000, len(data)), random_state=run.seed)
    rows = []
    for name in ("default", "paper"):
        for task, g in sample.groupby("task", observed=True):
            det = detector(name, labels=str(task)) if name == "default" else detector(name)
            m = evaluate_detector(det, g["response"].astype(str), g["refusal"]).metrics
            m = m.set_index("metric")
            rows.append({"detector": name, "task": str(task), "answers": len(g),
                         "refusals": int(g["refusal"].sum()),
                         "sensitivity": m.loc["recall", "estimate"],
                         "specificity": m.loc["specificity", "estimate"],
                         "kappa": m.loc["kappa", "estimate"]})
    truth = data.attrs.get("truth", {}).get("responses", {})
    miss, false_alarm = truth.get("miss", float("nan")), truth.get("false_alarm", float("nan"))
    print(f"\nRefusal detectors on {len(sample):,} answers drawn at random, against the simulated "
          f"refusal (the text is written so that the default detector misses {100 * miss:.3g}% of "
          f"refusals and flags {100 * false_alarm:.3g}% of answers; P1's prefix list misses the "
          "'As an AI, I cannot ...' refusals):")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    ex = sample.groupby("refusal", observed=True).head(2)[["model", "task", "persona", "refusal",
                                                           "response"]]
    print("\nA few answers:")
    print(ex.to_string(index=False))


def demo_p2(data: pd.DataFrame, run: DemoRun) -> None:
    """de Araujo & Roth's tests on the complete design: Cochran's Q across personas per
    model, the disparity ratio against the control personas, and Kendall's W / tau of the
    models' persona rankings.

    Parameters
    ----------
    data : DataFrame
        The simulated response table.
    run : DemoRun
        Where to write, the seed, and the fits the steps share.
    """
    import warnings

    from .agreement import cochran_q, rank_agreement
    from .persona_disparity import disparity

    comp = _complete_rows(data)
    if comp.empty:
        print("\n(no complete design in this table: Cochran's Q needs every item under every persona)")
        return
    n_items = comp["item_id"].nunique()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the clustering notes; the text below says it
        q = cochran_q(comp, condition="persona", by="model", seed=run.seed, adjust="holm")
        disp = disparity(comp, control="control", n_boot=999, seed=run.seed)
        agree = rank_agreement(_p1_rows(data))
    print(f"\nde Araujo & Roth's design ({n_items:,} items, each answered under all "
          f"{comp['persona'].nunique()} personas, 10 of them controls, template p1):")
    print("Cochran's Q across personas, items as blocks, per model (Holm-adjusted):")
    print(q.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print("\nDisparity: sd of the personas' refusal rates within a group over the sd among the "
          "control personas (noise-corrected; 95% cluster-bootstrap CI, 999 replicates):")
    cols = ["persona_group", "n_personas", "sd", "control_sd", "disparity_plugin", "disparity",
            "ci_low", "ci_high"]
    print(disp[[c for c in cols if c in disp.columns]].to_string(
        index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nDo the models rank P1's personas alike? Kendall's W (persona rows):")
    print(agree.concordance.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    note = agree.constant_raters_note("model", "persona")
    if note:
        print(note)


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
    res = w2_sensitivity(_persona_rows(data), inputs=["model", "task", "persona", "prompt"], n_boot=1000,
                         n_perm=200, seed=run.seed)
    print(f"\nW2 sensitivity of refusal (P1's Fig. 5), 95% {res.ci_method} CIs (1,000 bootstrap replicates), "
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
    cluster = "auto"  # the one rule (counts.choose_cluster): item_id when items repeat
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = _persona_rows(data)
        fit = logit(formula, d, reference=PAPER_REFERENCE, penalty="firth", cluster=cluster)
    print(f"\nLogistic regression, P1's Table 7 model with Firth's penalty ({len(d):,} rows with a "
          f"persona, the control personas' included, in "
          f"{fit.n_patterns:,} covariate patterns, {time.perf_counter() - t0:.1f} s):")
    print(fit.summary())
    print(f"(P1 reports McFadden pseudo-R2 {PAPER_PSEUDO_R2}; this simulated table gives {fit.pseudo_r2:.4f})")
    run.results["logit"] = fit


def _bayes_defaults() -> dict:
    """chains, tune and draws of ``HierarchicalModel.fit`` (their one home)."""
    import inspect

    from .bayes import HierarchicalModel

    params = inspect.signature(HierarchicalModel.fit).parameters
    return {k: params[k].default for k in ("chains", "tune", "draws")}


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
    # with the item term (answers share their item): method="auto" fits it by the nested
    # Laplace approximation above 20,000 patterns (issue 24), NUTS below
    formula = "refusal ~ task + prompt + (1|model) + (1|persona) + (1|persona:model) + (1|item_id)"
    d = _persona_rows(data)
    bayes = _bayes_defaults()
    print(f"\nBayesian hierarchical model: {formula}\n(method='auto': NUTS (nutpie, "
          f"{DEMO_BAYES['chains']} chains x ({DEMO_BAYES['tune']} tune + {DEMO_BAYES['draws']} "
          f"draws)) up to 20,000 covariate patterns, the nested Laplace approximation with "
          f"{DEMO_BAYES['draws']} draws above; `refusalstats bayes` defaults to {bayes['chains']} x "
          f"({bayes['tune']} tune + {bayes['draws']} draws)) ...", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the diagnostics are printed with the summary
        fit = hierarchical(formula, d, reference={"task": "nli", "prompt": "p1"}, seed=run.seed,
                           progress=False, **DEMO_BAYES)
    print(fit)
    print(f"(fitted by: {fit.sampler})")
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
    from .reporting import report

    t0 = time.perf_counter()
    print("\nWriting the report ...", flush=True)
    results = {k: v for k, v in run.results.items() if k in ("logit", "w2", "hierarchical")}
    # The report reuses the demo's hierarchical fit; it never fits a second one here (at
    # report()'s default of 4 x 1000 draws that alone takes ~2.5 min on 2 cores).
    rep = report(data, out=run.out, seed=run.seed, results=results,
                 hierarchical="hierarchical" in results,
                 source=f"simulated: refusalstats.simulate_paper(scale={run.scale}, "
                        f"seed={run.seed}, persona_free=True, controls=True, answer_text=True); also in {run.out / 'responses.parquet'}")
    rep.print_summary(time.perf_counter() - t0)


#: What the demo simulates beyond P1's persona rows (see :func:`refusalstats.simulate_paper`).
FULL_STUDY = {"persona_free": True, "controls": True, "answer_text": True}

#: The demo's steps, in the order they run after simulating; the report is last because it
#: reuses the W2, logit and hierarchical fits.
STEPS = (demo_rates, demo_persona_free, demo_answers, demo_p2, demo_sensitivity, demo_logit,
         demo_hierarchical, demo_report)


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
    print(f"simulating the paper's design (scale {scale}, seed {seed}) with its persona-free "
          "prompts, de Araujo & Roth's control personas and answer text ...", flush=True)
    data = simulate_paper(scale=scale, seed=seed, **FULL_STUDY)
    path = write_responses(data, run.out / "responses.parquet",
                           metadata={"source": "refusalstats.simulate_paper", "scale": scale,
                                     "seed": seed, **FULL_STUDY})
    print(f"wrote {len(data):,} rows to {path} ({time.perf_counter() - t0:.1f} s)")
    for step in STEPS if steps is None else steps:
        step(data, run)
    print(f"demo finished in {time.perf_counter() - t0:.1f} s")
    return run
