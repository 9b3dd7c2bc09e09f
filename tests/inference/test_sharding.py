"""--shard I/N and collect: disjoint shards of whole items, merged back exactly once."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from refusalstats.inference import (
    ShardSpec,
    collect_runs,
    resolve_shard,
    run_generation,
    shard_assignment,
)

import refusalstats as rs
from refusalstats.cli import main

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from fake_backend import EchoBackend
from test_runner import _items


def _design(n_nli=5, n_text=7, k=3):
    return rs.sample_design(_items(n_nli, n_text), k=k, seed=0)


def _run(design, out, shard=None, models=("echo",), resume=False):
    return run_generation(design, list(models), out, backend_factory=lambda s: EchoBackend(),
                          progress=False, detector="paper", batch_size=4, shard=shard,
                          resume=resume)


def _rows(table):
    return table.drop(columns=["batch_id"]).reset_index(drop=True)


# ---------------------------------------------------------------------------- the split
def test_shard_assignment_keeps_items_whole_balanced_and_stable():
    design = _design(20, 20, k=3)
    for count in (1, 2, 3, 7):
        a = shard_assignment(design, count)
        assert a.min() >= 0 and a.max() < count
        # whole items: one shard per item
        assert (design.assign(s=a).groupby("item_id")["s"].nunique() == 1).all()
        sizes = np.bincount(a, minlength=count)
        assert sizes.max() - sizes.min() <= 2 * 3  # within about one item of even
        # a pure function of the table: same in a shuffled copy, row by row
        perm = np.random.default_rng(count).permutation(len(design))
        b = shard_assignment(design.iloc[perm].reset_index(drop=True), count)
        assert (b == a[perm]).all()
    # tasks are mixed across shards (hash order, not the table's order)
    a = shard_assignment(design, 2)
    assert design.assign(s=a).groupby("s")["task"].nunique().min() == 2
    # no item_id: row by row
    plain = pd.DataFrame({"task": ["nli"] * 10})
    assert np.bincount(shard_assignment(plain, 5)).tolist() == [2] * 5


def test_resolve_shard_sources_and_precedence():
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1",
             "SLURM_ARRAY_TASK_COUNT": "8", "RANK": "1", "WORLD_SIZE": "2"}
    s = resolve_shard(None, slurm)
    assert (s.index, s.count) == (4, 8) and s.source.startswith("SLURM_ARRAY_TASK_ID")
    s = resolve_shard("3/4", slurm)  # the flag wins
    assert (s.index, s.count, s.source) == (3, 4, "--shard")
    assert resolve_shard("0/1", slurm) is None  # explicitly unsharded
    s = resolve_shard(None, {"RANK": "1", "WORLD_SIZE": "2"})
    assert (s.index, s.count, s.source) == (1, 2, "RANK/WORLD_SIZE")
    assert resolve_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert resolve_shard(None, {}) is None
    stepped = {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "0",
               "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve_shard(None, stepped).index == 3
    for bad in ("4/4", "-1/3", "1/0", "a/b", "2"):
        with pytest.raises(ValueError, match="shard|--shard"):
            resolve_shard(bad, {})
    with pytest.raises(ValueError, match="not an integer"):
        resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"})
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_COUNT"):
        resolve_shard(None, {"SLURM_ARRAY_TASK_ID": "1"})
    assert str(ShardSpec.parse(" 2 / 8 ")) == "2/8"


# ---------------------------------------------------------------------------- collect
def test_three_shards_collect_to_the_unsharded_run_exactly(tmp_path):
    design = _design()
    whole = _run(design, tmp_path / "whole")
    parts = [_run(design, tmp_path / "sharded", shard=f"{i}/3") for i in range(3)]
    assert sum(len(p) for p in parts) == len(design)
    ids = [set(p["row_id"]) for p in parts]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == \
        ["shard-0-of-3", "shard-1-of-3", "shard-2-of-3"]
    merged = collect_runs([tmp_path / "sharded"], detector="paper")
    pd.testing.assert_frame_equal(_rows(merged), _rows(whole), check_like=False)
    assert merged["batch_id"].str.match(r"^[012]/3:s00-b\d+$").all()
    # the unsharded run collects to itself too
    pd.testing.assert_frame_equal(_rows(collect_runs([tmp_path / "whole"], detector="paper")),
                                  _rows(whole))
    # written through the CLI
    out = tmp_path / "table.parquet"
    assert main(["collect", str(tmp_path / "sharded"), "-o", str(out), "--detector", "paper"]) == 0
    back = rs.read_responses(out)
    pd.testing.assert_frame_equal(_rows(back), _rows(whole), check_categorical=False)
    assert back.attrs["metadata"]["n_missing"] == {}


def test_a_missing_shard_is_an_error_naming_the_count(tmp_path, capsys):
    design = _design()
    for i in (0, 2):
        _run(design, tmp_path / "run", shard=f"{i}/3")
    n_missing = int((shard_assignment(design, 3) == 1).sum())
    with pytest.raises(ValueError, match=rf"{n_missing} of {len(design)} prompts have no answer"
                                         r".*shard\(s\) 1/3 not found"):
        collect_runs([tmp_path / "run"])
    out = tmp_path / "t.parquet"
    capsys.readouterr()
    assert main(["collect", str(tmp_path / "run"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"{n_missing} of {len(design)} prompts have no answer" in err and not out.exists()
    assert main(["collect", str(tmp_path / "run"), "-o", str(out), "--allow-missing"]) == 0
    err = capsys.readouterr().err
    assert f"{n_missing} prompt(s) have no answer" in err
    table = rs.read_responses(out)
    assert len(table) == len(design) - n_missing
    assert table.attrs["metadata"]["n_missing"] == {"echo": n_missing}


def test_an_unfinished_shard_is_missing_rows_and_resume_finishes_it(tmp_path):
    design = _design()
    for i in range(3):
        _run(design, tmp_path / "run", shard=f"{i}/3")
    folder = next((tmp_path / "run" / "shard-1-of-3" / "shards").iterdir())
    parts = sorted(folder.glob("part-*.parquet"))
    lost = len(pd.read_parquet(parts[-1]))
    parts[-1].unlink()
    with pytest.raises(ValueError, match=rf"{lost} of {len(design)} .*unfinished"):
        collect_runs([tmp_path / "run"])
    _run(design, tmp_path / "run", shard="1/3", resume=True)
    assert len(collect_runs([tmp_path / "run"], detector=None)) == len(design)


def test_duplicated_prompts_are_an_error(tmp_path, capsys):
    design = _design()
    for i in range(2):
        _run(design, tmp_path / "run", shard=f"{i}/2")
    _run(design, tmp_path / "run", shard="0/3")  # the same run sharded another way
    with pytest.raises(ValueError, match=r"answered more than once .*shard-0-of-2 and .*shard-0-of-3"):
        collect_runs([tmp_path / "run"])
    # a shard copied under another name is a duplicate too; naming one directory twice is not
    shutil.rmtree(tmp_path / "run" / "shard-0-of-3")
    assert len(collect_runs([tmp_path / "run", tmp_path / "run" / "shard-0-of-2"],
                            detector=None)) == len(design)
    shutil.copytree(tmp_path / "run" / "shard-1-of-2", tmp_path / "copy")
    assert main(["collect", str(tmp_path / "run"), str(tmp_path / "copy"),
                 "-o", str(tmp_path / "t.parquet")]) == 2
    assert "answered more than once" in capsys.readouterr().err


def test_several_runs_and_models_merge_and_each_model_is_checked(tmp_path):
    design = _design()
    a = _run(design, tmp_path / "a", models=["m1=echo"])
    for i in range(2):
        _run(design, tmp_path / "b", shard=f"{i}/2", models=["m2=echo"])
    merged = collect_runs([tmp_path / "a", tmp_path / "b"], detector="paper")
    assert merged["model"].cat.categories.tolist() == ["m1", "m2"]
    assert merged.groupby("model", observed=True).size().tolist() == [len(design)] * 2
    m1 = merged[merged["model"] == "m1"].drop(columns=["model"])
    pd.testing.assert_frame_equal(_rows(m1), _rows(a.drop(columns=["model"])),
                                  check_categorical=False)
    only = collect_runs([tmp_path / "a", tmp_path / "b"], models=["m2"], detector=None)
    assert set(only["model"]) == {"m2"}
    with pytest.raises(KeyError, match="nope"):
        collect_runs([tmp_path / "a"], models=["nope"])
    everything = collect_runs([tmp_path], detector=None)  # both runs, one level further down
    assert len(everything) == 2 * len(design)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no run"):
        collect_runs([tmp_path / "empty"])


def test_an_empty_shard_is_refused(tmp_path):
    design = _design(1, 1, k=2)  # 2 items: 3 shards of whole items leave one empty
    counts = np.bincount(shard_assignment(design, 3), minlength=3)
    empty = int(np.flatnonzero(counts == 0)[0])
    with pytest.raises(ValueError, match="has no prompts"):
        _run(design, tmp_path / "run", shard=f"{empty}/3")


# ---------------------------------------------------------------------------- the CLI
def _cli_design(tmp_path):
    path = tmp_path / "design.parquet"
    d = _design(3, 4, k=2)
    d.assign(gold_label=d["gold_label"].astype(str)).to_parquet(path)
    return path, d


def test_cli_shards_from_slurm_and_flag_then_collect(tmp_path, tiny_model_dir, monkeypatch,
                                                     capsys):
    path, design = _cli_design(tmp_path)
    out = tmp_path / "run"
    base = ["generate", str(path), "--model", f"tiny={tiny_model_dir}", "-o", str(out),
            "--max-new-tokens", "2", "--detector", "paper", "--device", "cpu"]
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "5")  # SLURM wins over torchrun variables
    for task in (1, 2):
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
        assert main(base) == 0
        err = capsys.readouterr().err
        assert f"shard {task - 1}/3 (from SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT)" in err
    assert main(base + ["--shard", "2/3"]) == 0  # the flag wins over SLURM's task 2
    captured = capsys.readouterr()
    assert "shard 2/3 (from --shard)" in captured.err
    assert "refusalstats collect" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["shard-0-of-3", "shard-1-of-3",
                                                    "shard-2-of-3"]
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"):
        monkeypatch.delenv(var)
    table = tmp_path / "table.parquet"
    assert main(["collect", str(out), "-o", str(table), "--detector", "paper"]) == 0
    assert "collected" in capsys.readouterr().out
    merged = rs.read_responses(table)
    assert sorted(merged["row_id"]) == list(range(len(design)))
    # the same prompts unsharded (explicit 0/1 beats WORLD_SIZE) give the same answers
    whole = tmp_path / "whole"
    assert main(base[:5] + [str(whole)] + base[6:] + ["--shard", "0/1"]) == 0
    single = rs.read_responses(whole / "responses.parquet")
    pd.testing.assert_frame_equal(_rows(merged), _rows(single), check_categorical=False)


def test_a_requeued_slurm_task_takes_over_its_own_lock_from_another_node(tmp_path, monkeypatch):
    import json

    from refusalstats.inference import RunLockedError

    design = _design(2, 2, k=2)
    out = tmp_path / "run"
    out.mkdir()
    lock = {"host": "dead-node-17", "pid": 4242, "since": "then", "slurm_job": "777",
            "slurm_restart": "0"}
    (out / ".lock").write_text(json.dumps(lock))
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the same incarnation: a live run elsewhere
    with pytest.raises(RunLockedError, match="dead-node-17"):
        _run(design, out)
    monkeypatch.setenv("SLURM_JOB_ID", "778")  # another job: not ours to take
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(RunLockedError):
        _run(design, out)
    monkeypatch.setenv("SLURM_JOB_ID", "777")  # requeued: restart 1 of job 777
    assert len(_run(design, out)) == len(design)
    assert not (out / ".lock").exists()
