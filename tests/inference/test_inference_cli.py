"""`refusalstats design` and `refusalstats generate` end to end on files the test writes."""

from __future__ import annotations

import pandas as pd
import pytest

import refusalstats as rs
from refusalstats.cli import main


def _write_task_files(tmp_path):
    xnli = pd.DataFrame({
        "premise": [f"The dog ran in the park {i}." for i in range(6)],
        "hypothesis": [f"The cat is red {i}." for i in range(6)],
        "label": [0, 1, 2, 0, 1, 2],
    })
    xnli.to_json(tmp_path / "xnli.jsonl", orient="records", lines=True)
    pop = pd.DataFrame({
        "instance_id": range(10), "user_id": 0,
        "text": [f"What do you think about the weather {i}?" for i in range(10)],
        "rating": [1, 2, 3, 4, 5, 1, 2, 3, 4, 5],
    })
    pop.to_csv(tmp_path / "polite.csv", index=False)


def test_design_then_generate(tmp_path, tiny_model_dir, capsys):
    _write_task_files(tmp_path)
    prompts = tmp_path / "prompts.parquet"
    with pytest.warns(UserWarning, match="fewer than 3 items"):
        main(["design", "--task", f"nli={tmp_path / 'xnli.jsonl'}",
              "--task", f"politeness={tmp_path / 'polite.csv'}",
              "--map", "politeness:gold_label=rating", "--per-class", "3", "--k", "2",
              "--seed", "1", "-o", str(prompts)])
    design = pd.read_parquet(prompts)
    # nli: 2 per class (6 items / 3 classes) -> 6 items; politeness: 2 per rating -> 10 items
    assert design.groupby("task", observed=True)["item_id"].nunique().to_dict() == \
        {"nli": 6, "politeness": 10}
    assert len(design) == 2 * 16
    assert {"premise", "hypothesis", "text"} <= set(design.columns)
    out = tmp_path / "run"
    rc = main(["generate", str(prompts), "--model", f"tiny={tiny_model_dir}", "-o", str(out),
               "--max-new-tokens", "3", "--batch-size", "8", "--placement", "system",
               "--detector", "paper"])
    assert rc == 0
    table = rs.read_responses(out / "responses.parquet")
    assert len(table) == len(design)
    assert table.attrs["metadata"]["placement"] == "system"
    assert table.attrs["metadata"]["detector"] == "paper"
    assert table["system_text"].str.startswith("You are ").all()
    printed = capsys.readouterr().out
    assert "refusal rate" in printed and "wrote 32 rows" in printed
    # a second call without --resume refuses to overwrite; with --resume it just collects
    with pytest.raises(FileExistsError):
        main(["generate", str(prompts), "--model", f"tiny={tiny_model_dir}", "-o", str(out),
              "--max-new-tokens", "3"])
    assert main(["generate", str(prompts), "--model", f"tiny={tiny_model_dir}", "-o", str(out),
                 "--max-new-tokens", "3", "--resume", "--placement", "system",
                 "--detector", "paper"]) == 0
