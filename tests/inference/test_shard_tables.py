"""Shards as tidy-table fragments: a run directory (finished or not, sharded or not) is
analysed directly, with the same numbers as the table `collect` writes (issue 15)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from refusalstats.inference import DecodingParams, TransformersBackend, run_generation
from refusalstats.inference.collect import collect_runs
from refusalstats.inference.runner import _SHARD_COLUMNS, SHARD_METADATA_KEY, collect_responses

import refusalstats as rs

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from fake_backend import EchoBackend
from test_runner import _items


def _even(texts):
    """A detector whose labels vary on random text: refusal when the answer's length is even."""
    return [len(t) % 2 == 0 for t in texts]


def _parts(folder: Path) -> list[Path]:
    return sorted(folder.rglob("shards/**/part-*.parquet"))


def _shard_rows(folder: Path) -> pd.DataFrame:
    df = pd.concat([pd.read_parquet(p) for p in _parts(folder)], ignore_index=True)
    return df.sort_values(["model", "row_id"], kind="stable").reset_index(drop=True)


def _assert_same_rows(shards: pd.DataFrame, table: pd.DataFrame, columns) -> None:
    """Equal values column by column; categoricals with equal levels in equal order.

    Text columns that collect's ``validate`` turns into categoricals with sorted levels
    (gold_label) stay text in the shards, where one batch sees only some values; the scan
    sorts text levels the same way. Missing text is None or NaN by how pandas concatenates
    the shards: both are missing.
    """
    assert len(shards) == len(table)
    for c in columns:
        a, b = shards[c], table[c]
        if isinstance(b.dtype, pd.CategoricalDtype):
            if isinstance(a.dtype, pd.CategoricalDtype):
                assert list(a.cat.categories) == list(b.cat.categories), c
            else:
                assert list(b.cat.categories) == sorted(b.cat.categories), c
        elif pd.api.types.is_numeric_dtype(b.dtype) or pd.api.types.is_bool_dtype(b.dtype):
            assert a.dtype == b.dtype, c
        va = [None if pd.isna(x) else x for x in a.astype(object)]
        vb = [None if pd.isna(x) else x for x in b.astype(object)]
        assert va == vb, c


def _tiny(tiny_model_dir):
    opened = {}

    def factory(spec):  # one backend per model: loading the tiny model is the slow part
        if spec.label not in opened:
            opened[spec.label] = TransformersBackend(spec.model, device="cpu")
        be = opened[spec.label]
        be.close = lambda: None
        return be
    return factory


def _rates(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rs.ClusterNote)
        warnings.simplefilter("ignore", RuntimeWarning)  # few items per cell in these tiny runs
        return rs.refusal_rates(data, by=["model", "task"])


@pytest.fixture(scope="module")
def tiny_runs(tiny_model_dir, tmp_path_factory):
    """One run of two tiny models, and the same design as shards 0/2 and 1/2 in one folder."""
    tmp = tmp_path_factory.mktemp("tiny-runs")
    design = rs.sample_design(_items(3, 3), k=2, seed=0, setting="both")
    kw = {"params": DecodingParams(max_new_tokens=3), "batch_size": 8, "shard_rows": 10,
          "progress": False, "detector": _even, "backend_factory": _tiny(tiny_model_dir)}
    models = [f"tiny-a={tiny_model_dir}", f"tiny-b={tiny_model_dir}"]
    table = run_generation(design, models, tmp / "run", **kw)
    for shard in ("0/2", "1/2"):
        run_generation(design, models, tmp / "sharded", shard=shard, **kw)
    return {"design": design, "run": tmp / "run", "table": table, "sharded": tmp / "sharded"}


def test_shards_hold_the_rows_collect_writes(tiny_runs):
    run = tiny_runs["run"]
    table = pd.read_parquet(run / "responses.parquet")  # collect's table, as written
    parts = _parts(run)
    assert len(parts) > 2
    shards = _shard_rows(run)
    assert set(shards.columns) == set(table.columns)
    assert 0 < table["refusal"].mean() < 1  # the detector's labels vary: the test can see them
    _assert_same_rows(shards, table, table.columns)
    # small on disk: the model and the design factors are dictionary-encoded
    schema = pq.read_schema(parts[0])
    for c in ("model", "task", "persona", "prompt"):
        assert pa.types.is_dictionary(schema.field(c).type), c
    info = json.loads(schema.metadata[SHARD_METADATA_KEY])
    assert info["detector"] == "custom" and {"model", "refusal", "persona"} <= set(info["added"])
    # a collect of the sharded folder gives the same rows as the shards there
    collected = collect_runs([tiny_runs["sharded"]], detector=_even)
    shards = _shard_rows(tiny_runs["sharded"])
    cols = [c for c in collected.columns if c != "batch_id"]  # collect prefixes it with the shard
    _assert_same_rows(shards, collected, cols)


def test_run_directory_and_folder_of_shard_runs_are_read_directly(tiny_runs):
    run, table, sharded = tiny_runs["run"], tiny_runs["table"], tiny_runs["sharded"]
    collected = collect_runs([sharded], detector=_even)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete run: no partial-run warning
        for data, ref in ((run, table), (sharded, collected), (str(sharded), table)):
            pd.testing.assert_frame_equal(_rates(data), _rates(ref))
            for by, cluster in ((["model", "persona", "task"], "item_id"), (["prompt"], None)):
                got = rs.collapse(data, by=by, cluster=cluster)
                want = rs.collapse(ref, by=by, cluster=cluster)
                pd.testing.assert_frame_equal(got, want)
    # the folder holds prompts.parquet and responses.parquet in every shard run: not read
    files = rs.sources.parquet_files(sharded)
    assert files and all(f.name.startswith("part-") for f in files)
    assert len(files) == len(_parts(sharded))
    fit_rows = rs.logit("refusal ~ task + model", table, cluster=None)
    fit_dir = rs.logit("refusal ~ task + model", sharded, cluster=None)
    assert abs(fit_rows.params - fit_dir.params.reindex(fit_rows.params.index)).max() < 1e-10


# ---------------------------------------------------------------------------- partial runs
class _Breaks(EchoBackend):
    def __init__(self, after: int):
        super().__init__()
        self.after = after

    def generate(self, prompts, params):
        if len(self.batch_sizes) == self.after:
            raise ValueError("engine broke")
        return super().generate(prompts, params)


def test_a_killed_run_is_analysed_with_a_warning_naming_the_numbers(tmp_path):
    design = rs.sample_design(_items(2, 3), k=2, seed=0)
    n = len(design)
    with pytest.raises(ValueError, match="engine broke"):
        run_generation(design, ["a=echo", "b=echo"], tmp_path / "r",
                       backend_factory=lambda s: _Breaks(2), batch_size=2, shard_rows=2,
                       progress=False, detector="paper")
    assert not (tmp_path / "r" / "responses.parquet").exists()
    with pytest.warns(UserWarning, match=rf"4 of {2 * n} rows \(2 model\(s\) x {n} prompts\).*"
                                         "incomplete"):
        counts = rs.collapse(tmp_path / "r", by="model")
    assert counts["n"].tolist() == [4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rs.collapse(tmp_path / "r", by="model")  # once per run state, not on every read
    # the same run, sharded, with one shard missing from the folder
    run_generation(design, ["a=echo"], tmp_path / "s", shard="1/2",
                   backend_factory=lambda s: EchoBackend(), progress=False, detector="paper")
    done = len(pd.read_parquet(tmp_path / "s" / "shard-1-of-2" / "responses.parquet"))
    with pytest.warns(UserWarning, match=rf"{done} of {n} rows .*incomplete"):
        rs.collapse(tmp_path / "s", by="task")


def test_old_shards_resume_and_collect_and_unlabelled_runs_say_collect(tmp_path):
    design = rs.sample_design(_items(2, 3), k=2, seed=0)
    out = tmp_path / "r"
    with pytest.raises(ValueError, match="engine broke"):
        run_generation(design, ["echo"], out, backend_factory=lambda s: _Breaks(2),
                       batch_size=2, shard_rows=2, progress=False, detector="paper")
    for p in _parts(out):  # rewrite as a shard of before: raw columns only, no metadata
        raw = pd.read_parquet(p)[list(_SHARD_COLUMNS)]
        raw.to_parquet(p, index=False)
        assert SHARD_METADATA_KEY not in (pq.read_schema(p).metadata or {})
    with pytest.raises(ValueError, match="generation run directory.*Run `refusalstats collect`"
                                         ".*responses.parquet"):
        rs.collapse(out, by="model")
    backend = EchoBackend()
    table = run_generation(design, ["echo"], out, backend_factory=lambda s: backend,
                           batch_size=2, shard_rows=2, progress=False, detector="paper",
                           resume=True)
    assert sum(backend.batch_sizes) == len(design) - 4  # the old shards' rows were kept
    fresh = run_generation(design, ["echo"], tmp_path / "fresh",
                           backend_factory=lambda s: EchoBackend(), batch_size=2, progress=False,
                           detector="paper")
    cols = [c for c in fresh.columns if c != "batch_id"]
    assert list(table.columns) == list(fresh.columns)  # no model_x / refusal_y from a join
    _assert_same_rows(table, fresh, cols)
    # old and new shards mixed: read through the collected table, never the shards
    assert rs.sources.parquet_files(out) == [out / "responses.parquet"]
    assert rs.collapse(out, by="model")["n"].tolist() == [len(design)]


def test_runs_without_labels_or_with_two_detectors_or_next_to_other_files(tmp_path):
    design = rs.sample_design(_items(2, 2), k=2, seed=0)
    kw = {"backend_factory": lambda s: EchoBackend(), "progress": False, "batch_size": 2,
          "shard_rows": 2}
    raw = run_generation(design, ["echo"], tmp_path / "raw", detector=None, **kw)
    assert {"model", "persona"} <= set(pd.read_parquet(_parts(tmp_path / "raw")[0]).columns)
    assert "refusal" not in raw.columns
    with pytest.raises(ValueError, match="without a detector.*collect"):
        rs.collapse(tmp_path / "raw", by="model")
    run_generation(design, ["echo"], tmp_path / "two", shard="0/2", detector="paper", **kw)
    run_generation(design, ["echo"], tmp_path / "two", shard="1/2", detector=_even, **kw)
    with pytest.raises(ValueError, match="different detectors.*'paper'.*'custom'"):
        rs.collapse(tmp_path / "two", by="model")
    (tmp_path / "mixed").mkdir()
    run_generation(design, ["echo"], tmp_path / "mixed" / "run", detector="paper", **kw)
    rs.write_responses(collect_responses(tmp_path / "mixed" / "run", detector="paper"),
                       tmp_path / "mixed" / "table.parquet")
    with pytest.raises(ValueError, match="holds generation run directories.*table.parquet"):
        rs.collapse(tmp_path / "mixed", by="model")
    counts = rs.collapse(tmp_path / "mixed" / "run", by="model")
    assert counts["n"].tolist() == [len(design)]
