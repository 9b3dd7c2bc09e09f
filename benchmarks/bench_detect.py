"""Refusal detector throughput at the paper's scale (2,032,160 answers).

Compares refusalstats' detectors (RE2 through pyarrow.compute, one pass per regex
over all answers) with the way the papers' code runs them: a Python loop calling
``str.startswith`` (P1/XSTest) or ``re.search`` per answer (de Araujo & Roth), and
with pandas' ``.str.match`` on one compiled alternation. Every peer's flags are
checked against refusalstats' on the same answers before timing counts.

Run:  nice .venv/bin/python benchmarks/bench_detect.py [--n 2032160] [--peer-n 200000]

Prints a markdown table. Peers that loop in Python are timed on ``--peer-n`` answers
and scaled linearly to ``--n`` (marked "scaled").
"""

from __future__ import annotations

import argparse
import re
import time

import numpy as np
import pandas as pd

import refusalstats as rs
from refusalstats import detect

PERSONAS = ["a Black person", "an Atheist person", "a woman", "a transgender man",
            "a Muslim person", "an able-bodied person", "a Jewish person", "a man"]  # fmt: skip
LABELS = ("entailment", "contradiction", "neutral")

REFUSALS = [
    "I'm sorry, but I cannot make assumptions about how {p} would classify this (item {i}).",
    "As an AI language model, I do not have personal opinions, so I can't answer for {p} ({i}).",
    "I cannot determine how {p} would label the relationship between these sentences ({i}).",
    "It is not appropriate to generalize how {p} would interpret text #{i}.",
    "Sorry, I'm not able to speak for {p}. Item {i}.",
]
ANSWERS = [
    "{lab}",
    "{Lab}.",
    "The relationship is {lab}.",
    "As {p}, I would classify it as {lab}. (item {i})",
    "No, the hypothesis does not follow from the premise in item {i}, so: {lab}.",
    "**{Lab}** - the premise and hypothesis of item {i} agree on the key facts.",
]


def make_answers(n: int, refusal_rate: float = 0.07, seed: int = 0) -> list[str]:
    """Short classification answers, ~7% refusals, nearly all distinct."""
    rng = np.random.default_rng(seed)
    is_ref = rng.random(n) < refusal_rate
    tmpl = rng.integers(0, 1000, n)
    pers = rng.integers(0, len(PERSONAS), n)
    labs = rng.integers(0, 3, n)
    out = []
    for i in range(n):
        if is_ref[i]:
            t = REFUSALS[tmpl[i] % len(REFUSALS)]
        else:
            t = ANSWERS[tmpl[i] % len(ANSWERS)]
        lab = LABELS[labs[i]]
        out.append(t.format(p=PERSONAS[pers[i]], i=i, lab=lab, Lab=lab.capitalize()))
    return out


def timed(fn, *args, repeat: int = 1):
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        res = fn(*args)
        best = min(best, time.perf_counter() - t)
    return best, res


# --- peers: the papers' per-answer loops and a pandas alternation ---


def loop_prefix(texts, phrases):
    phrases = tuple(phrases)
    return np.array([t.lower().lstrip().startswith(phrases) for t in texts])


def pandas_prefix(texts, phrases):
    rx = re.compile(r"\s*(?:" + "|".join(re.escape(p) for p in phrases) + ")")
    return pd.Series(texts, dtype=object).str.lower().str.match(rx).to_numpy()


P2 = [re.compile(p) for p in detect.HEDGE_PATTERNS.values()]


def loop_hedge(texts, labels):
    alts = sorted(labels, key=len, reverse=True)
    lab = re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(a) for a in alts) + r")(?![\w-])")
    out = []
    for t in texts:
        lo = t.lower()
        hedge = any(p.search(lo) for p in P2)
        out.append(hedge and len(set(lab.findall(lo))) != 1)
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2_032_160)
    ap.add_argument("--peer-n", type=int, default=200_000)
    args = ap.parse_args()

    t0 = time.perf_counter()
    texts = make_answers(args.n)
    series = pd.Series(texts, dtype="string[pyarrow]")  # what read_responses gives
    build = time.perf_counter() - t0
    peer = texts[: args.peer_n]
    scale = args.n / len(peer)
    print(f"{args.n:,} answers built in {build:.1f} s; {len(set(texts[:100000]))/1000:.1f}% of the "
          f"first 100,000 distinct; mean length {np.mean([len(t) for t in texts[:100000]]):.0f}")  # fmt: skip

    dets = {
        "paper": rs.detector("paper"),
        "xstest": rs.detector("xstest"),
        "hedge": rs.detector("hedge", labels=LABELS),
        "default": rs.detector("default", labels=LABELS),
    }
    rows = []
    for name, det in dets.items():
        t_series, flags = timed(det, series, repeat=2)
        t_list, flags_list = timed(det, texts)
        assert (flags == flags_list).all()
        row = {"detector": name, "series_s": t_series, "list_s": t_list,
               "rate": flags.mean(), "peer": "", "peer_s": np.nan, "note": ""}  # fmt: skip
        if name in ("paper", "xstest"):
            phrases = detect.PAPER_PREFIXES if name == "paper" else detect.XSTEST_PREFIXES
            t_peer, ref = timed(loop_prefix, texts, phrases)
            assert (ref == flags).all(), "Python loop disagrees"
            t_pd, ref_pd = timed(pandas_prefix, texts, phrases)
            assert (ref_pd == flags).all(), "pandas .str.match disagrees"
            row.update(peer="Python loop str.startswith", peer_s=t_peer)
            rows.append(row)
            rows.append({**row, "detector": f"{name} (vs pandas)", "peer": "pandas .str.match",
                         "peer_s": t_pd})  # fmt: skip
        elif name == "hedge":
            t_peer, ref = timed(loop_hedge, peer, LABELS)
            assert (ref == flags[: len(peer)]).all(), "P2-style loop disagrees"
            row.update(peer="P2 loop re.search x8 + labels", peer_s=t_peer * scale,
                       note=f"peer scaled from {len(peer):,}")  # fmt: skip
            rows.append(row)
        else:
            rows.append(row)

    print()
    print("| detector | refusalstats, Arrow strings (s) | from a Python list (s) | "
          "answers/s | flagged | peer | peer (s) | speed-up |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        speed = r["peer_s"] / r["series_s"] if np.isfinite(r["peer_s"]) else np.nan
        peer_s = f"{r['peer_s']:.2f}" + (" (scaled)" if r["note"] else "") if r["peer"] else "-"
        print(f"| {r['detector']} | {r['series_s']:.2f} | {r['list_s']:.2f} | "
              f"{args.n / r['series_s'] / 1e6:.1f} M | {r['rate']:.3f} | {r['peer'] or '-'} | "
              f"{peer_s} | {'-' if np.isnan(speed) else f'{speed:.0f}x'} |")  # fmt: skip


if __name__ == "__main__":
    main()
