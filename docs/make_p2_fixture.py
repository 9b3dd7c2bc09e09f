"""Write a synthetic dump in the exact layout of peluz/persona-behavior (P2).

The real repository (de Araujo & Roth 2024) holds its refusal matrices under
``results/zero/<model>/<dataset>_refusals.csv`` (control personas under
``results/control/zero/``), the raw generations as JSON per persona, and the persona
categories in ``data/persona_cat.json``. This script writes the same files, filled with
simulated refusals whose truth is known, so the reanalysis guide (docs/reanalysis.md)
can be run end to end where the real dump cannot be downloaded.

Truth built in: every (model, dataset) has persona effects (refusal odds differ by
persona category and by persona), except zephyr-7b-beta on ``rac``, where no persona
matters (P2 report p = .49 for Zephyr on racism). Control personas differ only a little.
The baseline row ``empty`` (no persona, as in P2) has effect 0 while most categories
shift refusal up, so in every cell but Zephyr on ``rac`` the personas' expected refusal
rate is above the baseline's (for seed 0: mean persona effect +0.35 on the log-odds
scale, controls about 0). The importer reads that row as the persona-free setting, which
the report's "With and without a persona" section compares with the personas.

Usage::

    python docs/make_p2_fixture.py /tmp/p2-fixture            # about 20 MB, ~10 s
    python docs/make_p2_fixture.py /tmp/p2-fixture --items 0.5  # fewer items per dataset

Everything here is simulated: the persona names follow P2's file-name style, but the
numbers are not P2's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

MODELS = {  # folder name -> baseline log-odds of refusing
    "gemma-2b-it": -3.0,
    "gemma-7b-it": -2.6,
    "Mistral-7B-Instruct-v0.2": -3.6,
    "Mixtral-8x7B-Instruct-v0.1": -3.8,
    "zephyr-7b-beta": -3.3,
    "gpt-3.5-turbo-0125": -3.4,
    "gpt-4-0125-preview": -2.8,
}
DATASETS = {  # name -> (items, baseline shift); attitude: 27 statements x 31 paraphrases
    "off": (300, 0.6),
    "rac": (300, 0.9),
    "truthfulqa": (200, -0.4),
    "mmlu": (400, -1.0),
    "bbq": (300, 0.2),
    "attitude": (27, 0.4),
}
ATTITUDE_WIDTH = 31
CATEGORIES = {  # category -> (log-odds shift, personas in P2's file-name style)
    "race": (0.5, ["a_white_person", "a_black_person", "a_Hispanic_person", "an_Asian_person"]),
    "sexuality": (0.7, ["a_straight_person", "a_gay_person", "a_bisexual_person"]),
    "gender": (0.3, ["a_man", "a_woman", "a_transgender_person", "a_nonbinary_person"]),
    "religious": (0.6, ["a_person_of_Islam_belief", "a_person_of_Judaism_belief",
                        "a_person_of_atheism_belief"]),
    "ideology": (0.9, ["a_person_with_fascism_ideology", "a_person_with_liberalism_ideology",
                       "a_person_with_communism_ideology"]),
    "health": (0.2, ["a_person_with_cancer", "a_person_with_mental_disorders",
                     "a_person_with_no_disabilities"]),
    "education": (0.0, ["an_uneducated_person", "a_person_with_graduate_level_education"]),
    "social_class": (0.1, ["an_upper-class_person", "a_lower_class_person"]),
    "profession_generic": (-0.1, ["a_person_in_medical_industry", "a_person_in_government"]),
    "profession_specific": (-0.2, ["a_doctor", "a_lawyer", "a_waiter", "a_comedian"]),
    "name_from_country": (0.0, ["Yumi_from_Japan", "Gustavo_from_Brazil"]),
    "political_figure": (1.4, ["Adolf_Hitler", "Golda_Meir", "John_F._Kennedy"]),
    "empty": (0.0, ["empty"]),
}
CONTROL = ["a_helpful_assistant", "a_supportive_aide", "a_useful_helper", "a_handy_collaborator",
           "an_efficient_aid", "a_productive_partner", "a_beneficial_ally", "an_effective_helper"]
GENERATED = ("gemma-2b-it", "zephyr-7b-beta")  # models that also get raw generations

REFUSAL_TEXTS = (
    "I'm sorry, but I cannot provide an answer to that question.",
    "As an AI, I am not able to answer this question.",
    "I'm sorry, I can't engage with this statement.",
)


def _matrix_csv(path: Path, personas: list[str], flags: np.ndarray) -> None:
    """Write a persona x item matrix: header ',0,1,...', one row per persona."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = flags.shape[1]
    lines = [",".join([""] + [str(i) for i in range(n)])]
    for p, row in zip(personas, flags):
        if row.ndim == 1:
            cells = [str(int(v)) for v in row]
        else:  # attitude: one numpy-printed vector of paraphrase flags per statement
            cells = ["[" + " ".join(str(int(v)) for v in vec) + "]" for vec in row]
        lines.append(",".join([p] + cells))
    path.write_text("\n".join(lines) + "\n")


def _texts(flags: np.ndarray, rng: np.random.Generator, mc: bool) -> list[str]:
    out = []
    for f in flags:
        if f:
            out.append(REFUSAL_TEXTS[rng.integers(len(REFUSAL_TEXTS))])
        elif mc:
            out.append(f"{'ABCD'[rng.integers(4)]}. This option is the correct one.")
        else:
            out.append(f"({rng.integers(1, 6)}) That is my rating of the statement.")
    return out


def _write_generations(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([[{"generated_text": t}] for t in texts]))


def build(out: Path, seed: int = 0, items: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    personas = [p for _, ps in CATEGORIES.values() for p in ps]
    cat_of = {p: c for c, (_, ps) in CATEGORIES.items() for p in ps}
    (out / "data").mkdir(exist_ok=True)
    (out / "data" / "persona_cat.json").write_text(json.dumps(cat_of, indent=8))
    (out / "data" / "control_personas.json").write_text(
        json.dumps({"personas": [c.replace("_", " ") for c in CONTROL]}, indent=4))
    persona_fx = {p: CATEGORIES[cat_of[p]][0] + rng.normal(0, 0.35) for p in personas}
    persona_fx["empty"] = 0.0
    control_fx = {c: rng.normal(0, 0.08) for c in CONTROL}
    n_rows = 0
    for model, base in MODELS.items():
        for d, (n_items, shift) in DATASETS.items():
            n = n_items if d == "attitude" else max(20, round(n_items * items))
            shape = (n, ATTITUDE_WIDTH) if d == "attitude" else (n,)
            item_fx = rng.normal(0, 1.0, size=shape)
            null = model == "zephyr-7b-beta" and d == "rac"
            for setting, who, fx in (("regular", personas, persona_fx),
                                     ("control", CONTROL, control_fx)):
                eta = np.stack([base + shift + item_fx + (0.0 if null else fx[p]) for p in who])
                refusal = (rng.random(eta.shape) < 1 / (1 + np.exp(-eta))).astype(np.int8)
                # hedges include every refusal plus hedged answers from which an answer was
                # still extracted (P2: refusal = hedge and not extracted)
                hedge = refusal | (rng.random(eta.shape) < 0.03).astype(np.int8)
                base_dir = out / "results" / ("zero" if setting == "regular" else "control/zero") / model
                _matrix_csv(base_dir / f"{d}_refusals.csv", who, refusal)
                _matrix_csv(base_dir / f"{d}_hedges.csv", who, hedge)
                n_rows += refusal.size
                if model in GENERATED and d in ("off", "rac", "mmlu"):
                    for p, flags in zip(who, refusal):
                        texts = _texts(flags, rng, mc=d == "mmlu")
                        if d == "mmlu":
                            _write_generations(base_dir / "mmlu" / f"{p}.json", texts)
                        else:  # toxicity/<persona>.json: offensiveness answers, then racism
                            f = base_dir / "toxicity" / f"{p}.json"
                            prev = json.loads(f.read_text()) if f.exists() else []
                            _write_generations(f, [x[0]["generated_text"] for x in prev] + texts)
    truth = {"null_cells": [["zephyr-7b-beta", "rac"]], "rows": n_rows,
             "personas": len(personas), "control_personas": len(CONTROL),
             "persona_effects": {p: round(v, 4) for p, v in persona_fx.items()}, "seed": seed}
    (out / "fixture_truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder to write (the fake repository root)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--items", type=float, default=1.0, help="fraction of the default item counts")
    args = ap.parse_args()
    truth = build(args.out, seed=args.seed, items=args.items)
    print(f"wrote a P2-layout fixture to {args.out}: {len(MODELS)} models, {len(DATASETS)} "
          f"datasets, {truth['personas']} personas + {truth['control_personas']} control, "
          f"{truth['rows']:,} persona-item cells; no persona effect in {truth['null_cells']}")


if __name__ == "__main__":
    main()
