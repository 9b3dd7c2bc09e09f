"""`refusalstats design` and `refusalstats generate` end to end on files the test writes."""

from __future__ import annotations

import pandas as pd

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
    main(["design", "--task", f"nli={tmp_path / 'xnli.jsonl'}",
              "--task", f"politeness={tmp_path / 'polite.csv'}",
              "--map", "politeness:gold_label=rating", "--per-class", "3", "--k", "2",
              "--seed", "1", "-o", str(prompts)])
    assert "fewer than 3 items" in capsys.readouterr().err
    design = pd.read_parquet(prompts)
    # nli: 2 per class (6 items / 3 classes) -> 6 items; politeness: 2 per rating -> 10 items
    assert design.groupby("task", observed=True)["item_id"].nunique().to_dict() == \
        {"nli": 6, "politeness": 10}
    assert len(design) == 2 * 16
    assert {"premise", "hypothesis", "text"} <= set(design.columns)
    out = tmp_path / "run"
    rc = main(["generate", str(prompts), "--model", f"tiny={tiny_model_dir}", "-o", str(out),
               "--max-new-tokens", "3", "--placement", "system",
               "--detector", "paper", "--shard-rows", "5", "--max-batch-size", "4",
               "--attn-implementation", "eager", "--template-date", "2024-01-31"])
    assert rc == 0
    table = rs.read_responses(out / "responses.parquet")
    assert len(table) == len(design)
    assert table.attrs["metadata"]["placement"] == "system"
    assert table.attrs["metadata"]["detector"] == "paper"
    assert table["system_text"].str.startswith("You are ").all()
    printed = capsys.readouterr().out
    assert "refusal rate" in printed and "wrote 32 rows" in printed
    meta = table.attrs["metadata"]
    assert meta["models"]["tiny"]["info"]["attn_implementation"] == "eager"
    assert meta["models"]["tiny"]["info"]["template_date"] == "2024-01-31"
    sess = meta["models"]["tiny"]["sessions"][0]
    assert sess["max_batch_rows"] <= 4
    assert len(list((out / "shards").glob("*/part-*.parquet"))) >= len(design) // 8 > 1
    # a second call without --resume refuses to overwrite; with --resume it just collects
    assert main(["generate", str(prompts), "--model", f"tiny={tiny_model_dir}", "-o", str(out),
                 "--max-new-tokens", "3"]) == 2
    assert "pass resume=True (--resume)" in capsys.readouterr().err
    assert main(["generate", str(prompts), "--model", f"tiny={tiny_model_dir}", "-o", str(out),
                 "--max-new-tokens", "3", "--resume", "--placement", "system",
                 "--detector", "paper", "--template-date", "2024-01-31"]) == 0


def test_generate_refuses_a_locked_run_in_one_line(tmp_path, tiny_model_dir, capsys):
    """Issue 12 #3: a second concurrent run gets a one-line refusal, exit 2."""
    import json
    import os
    import socket

    _write_task_files(tmp_path)
    prompts = tmp_path / "prompts.parquet"
    main(["design", "--task", f"nli={tmp_path / 'xnli.jsonl'}", "--per-class", "1", "--k", "1",
          "-o", str(prompts)])
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(),
                                           "since": "now"}))
    capsys.readouterr()
    rc = main(["generate", str(prompts), "--model", f"tiny={tiny_model_dir}", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and "is in use by another run" in err
