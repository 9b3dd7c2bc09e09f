"""Issue 20 (smaller findings): a truncated shard is named and resumed past; a SIGKILLed
session is not left "running"."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
from refusalstats.inference import collect_responses, run_generation
from refusalstats.inference.runner import ShardError, session_status

import refusalstats as rs

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from fake_backend import EchoBackend
from test_runner import _held, _items, _spawn, _wait_for


def test_a_truncated_shard_is_named_and_resume_gets_past_it(tmp_path):
    design = rs.sample_design(_items(3, 4), k=2, seed=0)
    out = tmp_path / "run"
    run_generation(design, ["echo"], out, backend_factory=lambda s: EchoBackend(),
                   batch_size=3, shard_rows=3, progress=False, detector="paper")
    parts = sorted(out.glob("shards/*/part-*.parquet"))
    assert len(parts) >= 3
    bad = parts[1]
    n_bad = len(rs.read_table(bad))
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # a copy cut short (a full disk, a partial rsync)
    with pytest.raises(ShardError, match=rf"shard .*{bad.name} cannot be read .*--resume"):
        collect_responses(out, detector="paper")
    backend = EchoBackend()
    with pytest.warns(UserWarning, match=rf"{bad.name}.*set aside"):
        table = run_generation(design, ["echo"], out, backend_factory=lambda s: backend,
                               batch_size=3, shard_rows=3, progress=False, detector="paper",
                               resume=True)
    assert sum(backend.batch_sizes) == n_bad  # only the lost rows again
    assert sorted(table["row_id"]) == list(range(len(design)))
    assert (bad.parent / (bad.name + ".corrupt")).exists() and not bad.exists()


def test_a_sigkilled_session_is_not_left_running(tmp_path, children):
    design = rs.sample_design(_items(4, 6), k=3, seed=0)
    out = tmp_path / "run"
    proc, prog = _spawn(tmp_path, design, out, hold_after=1)
    children.append(proc)
    _wait_for(lambda: _held(prog), proc, "the first shard")
    assert [s["status"] for s in session_status(out)] == ["running"]  # alive: running
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    meta = json.loads((out / "run.json").read_text())
    assert meta["models"]["echo"]["sessions"][0]["status"] == "running"  # as the kill left it
    # a reader tells the dead session apart at once (stale lock: its pid is gone) ...
    assert [s["status"] for s in session_status(out)] == ["died"]
    # ... and the next session records it
    run_generation(design, ["echo"], out, backend_factory=lambda s: EchoBackend(),
                   batch_size=3, progress=False, resume=True, detector="paper")
    sessions = json.loads((out / "run.json").read_text())["models"]["echo"]["sessions"]
    assert [s["status"] for s in sessions] == ["died", "complete"]
    assert "killed" in sessions[0]["note"]
