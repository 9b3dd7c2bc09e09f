"""The runner: batching, end-to-end on the tiny model, OOM back-off, kill and resume."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from refusalstats.inference import (
    DecodingParams,
    TransformersBackend,
    chat_messages,
    collect_responses,
    padded_tokens,
    plan_batches,
    run_generation,
)

import refusalstats as rs
from refusalstats.design import TASKS
from refusalstats.detect import detector

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from fake_backend import EchoBackend, answer_for, run_echo_child
from tiny_model import corpus_sentences


def _items(n_nli=3, n_text=3, seed=1):
    s = corpus_sentences(2 * n_nli + n_text, seed=seed)
    nli = pd.DataFrame({"item_id": [f"n{i}" for i in range(n_nli)], "task": "nli",
                        "premise": s[:n_nli], "hypothesis": s[n_nli:2 * n_nli],
                        "gold_label": [["entailment", "neutral", "contradiction"][i % 3]
                                       for i in range(n_nli)]})
    txt = pd.DataFrame({"item_id": [f"t{i}" for i in range(n_text)], "task": "politeness",
                        "text": s[2 * n_nli:], "gold_label": [1 + i % 5 for i in range(n_text)]})
    return pd.concat([nli, txt], ignore_index=True)


# ---------------------------------------------------------------------------- batching
def test_plan_batches_respects_budget_and_covers_every_row_once():
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(1, 300))
        lengths = rng.integers(5, 400, size=n)
        budget = int(rng.integers(300, 5000))
        mnt = int(rng.integers(1, 64))
        batches = plan_batches(lengths, mnt, token_budget=budget, max_batch_size=32)
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == list(range(n))
        for b in batches:
            cost = len(b) * (int(lengths[b].max()) + mnt)
            assert cost <= budget or len(b) == 1
            assert len(b) <= 32
        # longest first, and batches are maximal: the next row would break the budget
        sorted_len = lengths[flat]
        assert np.all(np.diff(sorted_len) <= 0)
        for b in batches[:-1]:
            if len(b) < 32:
                assert (len(b) + 1) * (int(lengths[b].max()) + mnt) > budget


def test_fixed_batch_size_and_padding_saved_by_sorting():
    rng = np.random.default_rng(3)
    lengths = rng.integers(20, 300, size=500)
    sorted_b = plan_batches(lengths, 16, batch_size=25)
    arrival = plan_batches(lengths, 16, batch_size=25, sort=False)
    assert [len(b) for b in sorted_b] == [25] * 20
    # brute force: padded tokens = sum of batch size x longest prompt
    brute = sum(25 * max(lengths[i * 25:(i + 1) * 25]) for i in range(20))
    assert padded_tokens(lengths, arrival) == brute
    assert padded_tokens(lengths, sorted_b) < padded_tokens(lengths, arrival)
    assert padded_tokens(lengths, sorted_b) >= lengths.sum()
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        plan_batches(lengths, 16, batch_size=0)


# ---------------------------------------------------------------------------- end to end
def test_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path):
    design = rs.sample_design(_items(), k=2, seed=0, setting="both")
    opened = []

    def factory(spec):
        be = TransformersBackend(spec.model, device="cpu")
        opened.append(be)
        return be

    out = tmp_path / "run"
    params = DecodingParams(max_new_tokens=4)
    run_generation(design, [f"tiny-a={tiny_model_dir}", f"tiny-b={tiny_model_dir}"], out,
                   params=params, token_budget=1500, backend_factory=factory,
                   progress=False, placement="template")
    assert all(be.model is None for be in opened)  # each model freed after its turn
    back = rs.read_responses(out / "responses.parquet")
    assert len(back) == 2 * len(design)
    assert back.groupby(["model", "row_id"], observed=True).size().eq(1).all()
    assert set(back["model"].cat.categories) == {"tiny-a", "tiny-b"}
    for c in ("task", "persona", "persona_group", "prompt", "response_type", "setting",
              "item_id"):
        a = back[back["model"] == "tiny-a"].sort_values("row_id")[c].astype(str).to_numpy()
        assert (a == design[c].astype(str).to_numpy()).all(), c
    assert (back["n_new_tokens"] <= 4).all() and (back["n_new_tokens"] >= 1).all()
    # refusal is the default detector applied to the kept raw text, per task label set
    for task, g in back.groupby("task", observed=True):
        det = detector("default", labels=TASKS[task].labels)
        assert (g["refusal"].to_numpy() == det(g["response"].tolist()).astype(int)).all()
    # the answers are the model's: re-generate a few rows one at a time
    be = TransformersBackend(str(tiny_model_dir), device="cpu")
    sub = back[back["model"] == "tiny-b"].sample(4, random_state=0)
    for _, row in sub.iterrows():
        msgs, _, _ = chat_messages(row["prompt_text"], None, True)
        one = be.generate([be.render(msgs)], params)[0]
        assert one.text == row["response"] and one.n_new_tokens == row["n_new_tokens"]
    meta = back.attrs["metadata"]
    assert meta["decoding"]["max_new_tokens"] == 4 and meta["decoding"]["do_sample"] is False
    info = meta["models"]["tiny-a"]["info"]
    assert info["commit"].startswith("local-sha256:") and info["dtype"] == "float32"
    assert "torch" in info["versions"] and meta["seed"] == 0 and meta["placement"] == "template"
    assert meta["models"]["tiny-b"]["started"] <= meta["models"]["tiny-b"]["finished"]
    sess = meta["models"]["tiny-a"]["sessions"][0]
    assert sess["rows"] == len(design) and sess["token_budget"] == 1500


def test_existing_run_needs_resume_and_the_same_inputs(tmp_path):
    design = rs.sample_design(_items(2, 2), k=2, seed=0)
    out = tmp_path / "run"
    calls = []

    def factory(spec):
        calls.append(spec.label)
        return EchoBackend()

    t1 = run_generation(design, ["echo"], out, backend_factory=factory, progress=False,
                        detector="paper")
    with pytest.raises(FileExistsError, match="pass resume=True"):
        run_generation(design, ["echo"], out, backend_factory=factory, progress=False)
    other = rs.sample_design(_items(2, 2), k=2, seed=1)
    with pytest.raises(ValueError, match="different prompts table"):
        run_generation(other, ["echo"], out, backend_factory=factory, progress=False,
                       resume=True)
    with pytest.raises(ValueError, match="resume with the same settings"):
        run_generation(design, ["echo"], out, backend_factory=factory, progress=False,
                       resume=True, params=DecodingParams(max_new_tokens=5))
    t2 = run_generation(design, ["echo"], out, backend_factory=factory, progress=False,
                        resume=True, detector="paper")
    assert calls == ["echo"]  # nothing left to generate: the model is not even loaded
    pd.testing.assert_frame_equal(t1.drop(columns=[]), t2)
    # refusals follow P1's detector on the fake answers
    expected = [answer_for(EchoBackend().render(chat_messages(u, None, True)[0])).startswith(
        "I'm sorry") for u in t1["prompt_text"]]
    assert t1["refusal"].tolist() == [int(x) for x in expected]


# ---------------------------------------------------------------------------- OOM
def test_out_of_memory_halves_the_batch_and_retries(tmp_path):
    design = rs.sample_design(_items(3, 5), k=3, seed=0)
    backend = EchoBackend(oom_once_above=4)
    with pytest.warns(UserWarning, match=r"out of memory with 8 prompts \(\d+ tokens\); "
                      r"retrying with batches of at most \d+ tokens"):
        table = run_generation(design, ["echo"], tmp_path / "r", backend_factory=lambda s: backend,
                               batch_size=8, progress=False, detector="paper")
    assert len(table) == len(design) and table["row_id"].is_unique
    assert backend.batch_sizes[0] < 8 and sum(backend.batch_sizes) == len(design)
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    sess = meta["models"]["echo"]["sessions"][0]
    assert sess["oom_retries"] == 1
    assert all(c <= sess["oom_token_budget"] or n == 1
               for c, n in zip(backend.batch_costs, backend.batch_sizes))
    for _, row in table.iterrows():
        assert row["response"] == answer_for(
            backend.render(chat_messages(row["prompt_text"], None, True)[0]))


def test_out_of_memory_on_a_single_prompt_is_reported(tmp_path):
    design = rs.sample_design(_items(1, 1), k=1, seed=0)
    with pytest.raises(RuntimeError, match="out of memory generating a single prompt"), \
            pytest.warns(UserWarning):
        run_generation(design, ["echo"], tmp_path / "r",
                       backend_factory=lambda s: EchoBackend(oom_always_above=0),
                       batch_size=2, progress=False)


def test_other_errors_propagate_and_keep_written_shards(tmp_path):
    design = rs.sample_design(_items(2, 2), k=2, seed=0)

    class Breaks(EchoBackend):
        def generate(self, prompts, params):
            if len(self.batch_sizes) == 2:
                raise ValueError("engine broke")
            return super().generate(prompts, params)

    with pytest.raises(ValueError, match="engine broke"):
        run_generation(design, ["echo"], tmp_path / "r", backend_factory=lambda s: Breaks(),
                       batch_size=2, shard_rows=2, progress=False)
    with pytest.raises(RuntimeError, match="have no answer yet; rerun with resume=True"):
        collect_responses(tmp_path / "r")
    part = collect_responses(tmp_path / "r", allow_partial=True, detector=None)
    assert len(part) == 4  # two batches of two made it to disk


# ---------------------------------------------------------------------------- kill + resume
# The child runs are forks of this process, which has imported refusalstats, pandas, pyarrow
# and torch already (a fresh `python -c` per test spent ~2.4 CPU s importing them), and the
# child holds at a known batch (EchoBackend(hold_after=k)) until the parent signals it,
# instead of sleeping per batch and racing the parent's polling. A fork copies only the
# forking thread; what the child uses is fork-safe (Python's import lock and logging are
# reset after fork, Arrow and jemalloc register at-fork handlers), and a child that got
# stuck anyway fails the test at _wait_for's timeout rather than hanging the suite.
_MP = multiprocessing.get_context("fork")


class _Child:
    """A child process running :func:`fake_backend.run_echo_child` (Popen-like methods)."""

    def __init__(self, tmp_path, **kwargs):
        tag = time.monotonic_ns()
        self.progress = tmp_path / f"progress-{tag}.txt"
        self.stderr_path = tmp_path / f"stderr-{tag}.txt"
        self.process = _MP.Process(
            target=run_echo_child, args=(kwargs.pop("design"), kwargs.pop("out"),
                                         str(self.progress), str(self.stderr_path)),
            kwargs=kwargs, daemon=True)
        with warnings.catch_warnings():  # Python >= 3.12 warns on any fork with threads
            warnings.filterwarnings("ignore", message=".*use of fork\\(\\) may lead to deadlocks",
                                    category=DeprecationWarning)
            self.process.start()
        self.pid = self.process.pid

    def poll(self):
        return self.process.exitcode

    def wait(self, timeout=None):
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise TimeoutError(f"child {self.pid} still running after {timeout} s")
        return self.process.exitcode

    def kill(self):
        self.process.kill()
        self.process.join()

    def stderr(self):
        return self.stderr_path.read_text()[-2000:] if self.stderr_path.exists() else ""


def _spawn(tmp_path, design, out, hold_after, shard_rows=3, resume=True):
    """Start a child run of ``design`` into ``out`` that holds after ``hold_after`` batches."""
    dpath = tmp_path / "design.parquet"
    design.assign(gold_label=design["gold_label"].astype(str)).to_parquet(dpath)
    proc = _Child(tmp_path, design=str(dpath), out=str(out), hold_after=hold_after,
                  shard_rows=shard_rows, resume=resume)
    return proc, proc.progress


def _wait_for(cond, proc, what, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"child ended before {what}: {proc.stderr()}")
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _batches_done(prog):
    return sum(w.isdigit() for w in prog.read_text().split()) if prog.exists() else 0


def _held(prog):
    """The child answered its batches and now blocks in the next one."""
    return prog.exists() and "hold" in prog.read_text().split()


def test_sigkill_mid_run_then_resume_gives_every_row_once(tmp_path, children):
    design = rs.sample_design(_items(4, 6), k=3, seed=0)
    n = len(design)
    out = tmp_path / "run"
    proc, prog = _spawn(tmp_path, design, out, hold_after=2, resume=False)
    children.append(proc)
    _wait_for(lambda: _held(prog), proc, "two batches")  # in generate(), mid-run
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    (shards,) = (out / "shards").iterdir()
    done_before = sum(len(pd.read_parquet(p)) for p in shards.glob("part-*.parquet"))
    assert done_before == 2 * 3 and 0 < done_before < n  # two batches of 3, one shard each
    assert not (out / "responses.parquet").exists()
    # a shard being written when the kill came leaves only a temporary file: ignored
    (shards / ".part-000099.parquet.tmp").write_bytes(b"half a parquet file")
    backend = EchoBackend()
    table = run_generation(design, ["echo"], out, backend_factory=lambda s: backend,
                           batch_size=3, shard_rows=3, progress=False, detector="paper",
                           resume=True)
    assert sum(backend.batch_sizes) == n - done_before  # only the missing rows were generated
    assert len(table) == n
    assert sorted(table["row_id"].tolist()) == list(range(n))
    assert not list(shards.glob(".*.tmp"))
    for _, row in table.iterrows():
        assert row["response"] == answer_for(
            backend.render(chat_messages(row["prompt_text"], None, True)[0]))
    meta = json.loads((out / "run.json").read_text())
    assert meta["models"]["echo"]["sessions"][-1]["rows"] == n - done_before


def test_design_level_order_survives_the_run(tmp_path):
    design = rs.sample_design(_items(2, 3), k=3, seed=0, setting="both")
    table = run_generation(design, ["b=echo", "a=echo"], tmp_path / "r",
                           backend_factory=lambda s: EchoBackend(), progress=False,
                           detector="paper")
    for c in ("persona", "persona_group", "prompt", "response_type", "setting", "task"):
        assert list(table[c].cat.categories) == list(design[c].cat.categories), c
    assert list(table["model"].cat.categories) == ["b", "a"]  # run order, not alphabetical


def test_a_task_of_ones_own(tmp_path):
    """Any other task: its own labels, templates and text field, through the whole runner."""
    from refusalstats.design import Task, Template

    tasks = {"stance": Task("stance", "stance", ("favor", "against"))}
    templates = [
        Template("stance", "p1", "unforced", "Would {persona} say this claim is {label1} or "
                 "{label2} of the policy?", "Is this claim {label1} or {label2} of the policy?"),
        Template("stance", "p2", "forced", "{Persona} must label the claim: {label1} or "
                 "{label2}. Only answer with the label.",
                 "Label the claim: {label1} or {label2}. Only answer with the label."),
    ]
    items = pd.DataFrame({"item_id": ["c1", "c2"], "task": "stance",
                          "claim": ["Taxes fund schools.", "Roads are too wide."],
                          "gold_label": ["favor", "against"]})
    design = rs.sample_design(items, k=2, seed=0, tasks=tasks, templates=templates)
    table = run_generation(design, ["echo"], tmp_path / "r", placement="system",
                           backend_factory=lambda s: EchoBackend(), progress=False,
                           detector="default", tasks=tasks, templates=templates,
                           fields={"stance": ["claim"]})
    assert len(table) == 4
    assert table["prompt_text"].str.contains(r"\n\nClaim: ").all()
    assert table["system_text"].str.match(r"You are an? ").all()
    assert not table["prompt_text"].str.contains("person").any()
    det = detector("default", labels=("favor", "against"))
    assert (table["refusal"].to_numpy() == det(table["response"].tolist())).all()


def test_model_spec_parsing():
    from refusalstats.inference import ModelSpec

    s = ModelSpec.parse("Llama2-13B=meta-llama/Llama-2-13b-chat-hf@abc123")
    assert (s.label, s.model, s.revision) == ("Llama2-13B", "meta-llama/Llama-2-13b-chat-hf",
                                              "abc123")
    assert ModelSpec.parse("Qwen/Qwen2.5-7B-Instruct").label == "Qwen2.5-7B-Instruct"
    with pytest.raises(ValueError, match="needs a hub id or a path"):
        ModelSpec.parse("name=")
    with pytest.raises(ValueError, match="appear twice"):
        run_generation(pd.DataFrame(), ["x=a", "x=b"], "unused")


# ---------------------------------------------------------------------------- issue 12
def _shard_rows(out):
    parts = sorted((out / "shards").glob("*/part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts]) if parts else pd.DataFrame(
        {"row_id": []})


def test_a_second_concurrent_run_is_refused_and_a_stale_lock_taken_over(tmp_path, children):
    """Regression (issue 12, #3): two runs on one directory generated rows twice."""
    from refusalstats.inference import RunLockedError

    design = rs.sample_design(_items(4, 6), k=3, seed=0)
    out = tmp_path / "run"
    proc, prog = _spawn(tmp_path, design, out, hold_after=1)
    children.append(proc)
    # the first shard on disk, not just the first batch generated: a shard is labelled and
    # written after its batch, and the kill below must come after one session wrote one
    _wait_for(lambda: _held(prog), proc, "the first batch")
    assert len(list((out / "shards").glob("*/part-*.parquet"))) == 1
    backend = EchoBackend()
    with pytest.raises(RunLockedError, match=r"is in use by another run \(pid \d+ on "):
        run_generation(design, ["echo"], out, backend_factory=lambda s: backend,
                       batch_size=3, progress=False, resume=True)
    assert backend.batch_sizes == []  # refused before generating anything
    os.kill(proc.pid, signal.SIGKILL)  # leaves a stale lock behind
    proc.wait(timeout=60)
    assert (out / ".lock").exists()
    table = run_generation(design, ["echo"], out, backend_factory=lambda s: backend,
                           batch_size=3, progress=False, resume=True, detector="paper")
    assert sorted(table["row_id"].tolist()) == list(range(len(design)))
    assert not (out / ".lock").exists()
    names = [p.name for p in (out / "shards").glob("*/part-*.parquet")]
    assert all(re.fullmatch(r"part-\d{6}-s\d{2}-[0-9a-f]{6}\.parquet", n) for n in names)
    assert len({n.split("-")[2] for n in names}) == 2  # two sessions wrote shards


def test_a_lock_held_by_a_live_process_is_not_stale(tmp_path):
    import socket

    from refusalstats.inference import RunLockedError

    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(),
                                           "since": "earlier"}))
    design = rs.sample_design(_items(1, 1), k=1, seed=0)
    with pytest.raises(RunLockedError, match="wait for it to end, or remove"):
        run_generation(design, ["echo"], out, backend_factory=lambda s: EchoBackend(),
                       progress=False)
    (out / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "x"}))
    with pytest.raises(RunLockedError, match="on elsewhere"):
        run_generation(design, ["echo"], out, backend_factory=lambda s: EchoBackend(),
                       progress=False)


class _BreaksAfter(EchoBackend):
    def __init__(self, n_batches, **kw):
        super().__init__(**kw)
        self.n_batches = n_batches

    def generate(self, prompts, params):
        if len(self.batch_sizes) == self.n_batches:
            raise ValueError("engine broke")
        return super().generate(prompts, params)


def test_resume_with_another_model_is_refused(tmp_path):
    """Regression (issue 12, #4): resuming with a different model mixed its answers in."""
    design = rs.sample_design(_items(2, 2), k=2, seed=0)
    out = tmp_path / "r"
    with pytest.raises(ValueError, match="engine broke"):
        run_generation(design, ["m=x"], out, backend_factory=lambda s: _BreaksAfter(
            1, model_id="model-a"), batch_size=2, shard_rows=1, progress=False)
    other = EchoBackend(model_id="model-b")
    with pytest.raises(ValueError, match=r"was started with another model \(model_id: "
                       r"'model-a' -> 'model-b'\)"):
        run_generation(design, ["m=x"], out, backend_factory=lambda s: other, batch_size=2,
                       progress=False, resume=True)
    assert other.batch_sizes == []
    same = EchoBackend(model_id="model-a")
    table = run_generation(design, ["m=x"], out, backend_factory=lambda s: same, batch_size=2,
                           progress=False, resume=True, detector="paper")
    assert len(table) == len(design) and sum(same.batch_sizes) == len(design) - 2


def test_resume_checks_the_real_models_identity(tmp_path, tiny_model_dir):
    from tiny_model import build_tiny_model

    other_dir = build_tiny_model(tmp_path / "other", seed=1)
    design = rs.sample_design(_items(2, 2), k=2, seed=0)
    out = tmp_path / "r"
    params = DecodingParams(max_new_tokens=2)

    def factory(path, broken):
        class B(TransformersBackend):
            calls = 0

            def generate(self, prompts, p):
                B.calls += 1
                if broken and B.calls > 1:
                    raise ValueError("engine broke")
                return super().generate(prompts, p)
        return lambda spec: B(str(path), device="cpu")

    with pytest.raises(ValueError, match="engine broke"):
        run_generation(design, [f"tiny={tiny_model_dir}"], out, params=params, batch_size=2,
                       shard_rows=1, progress=False, backend_factory=factory(tiny_model_dir, True))
    with pytest.raises(ValueError, match="was started with another model.*commit"):
        run_generation(design, [f"tiny={other_dir}"], out, params=params, batch_size=2,
                       progress=False, resume=True, backend_factory=factory(other_dir, False))
    run_generation(design, [f"tiny={tiny_model_dir}"], out, params=params, batch_size=2,
                   progress=False, resume=True, backend_factory=factory(tiny_model_dir, False))
    ident = json.loads((out / "run.json").read_text())["models"]["tiny"]["identity"]
    assert ident["model"] == str(Path(tiny_model_dir).resolve())
    assert {"commit", "config_sha256", "dtype"} <= set(ident)


def test_names_that_slug_alike_get_their_own_shard_folders(tmp_path):
    """Regression (issue 12, #4): "Llama 2" and "Llama_2" shared a shard folder."""
    design = rs.sample_design(_items(2, 2), k=2, seed=0)
    made = {}

    def factory(spec):
        made[spec.label] = EchoBackend(model_id=spec.label)
        return made[spec.label]

    table = run_generation(design, ["Llama 2=x", "Llama_2=y"], tmp_path / "r",
                           backend_factory=factory, progress=False, detector="paper")
    assert {k: sum(v.batch_sizes) for k, v in made.items()} == {"Llama 2": len(design),
                                                                "Llama_2": len(design)}
    assert table.groupby("model", observed=True).size().tolist() == [len(design)] * 2
    assert len(list((tmp_path / "r" / "shards").iterdir())) == 2


def test_rows_carry_the_rendered_prompt_hash_and_batch_id(tmp_path):
    """Regression (issue 12, #5): the exact prompt a row was answered from is recorded."""
    import hashlib

    design = rs.sample_design(_items(3, 3), k=2, seed=0)
    be = EchoBackend()
    table = run_generation(design, ["echo"], tmp_path / "r", backend_factory=lambda s: be,
                           batch_size=4, progress=False, detector="paper",
                           template_date="2023-05-06")
    for _, row in table.iterrows():
        text = be.render(chat_messages(row["prompt_text"], None, True)[0])
        assert row["prompt_sha256"] == hashlib.sha256(text.encode()).hexdigest()[:16]
    sizes = table.groupby("batch_id").size()
    assert sorted(sizes.tolist(), reverse=True) == sorted(be.batch_sizes, reverse=True)
    assert table["batch_id"].str.fullmatch(r"s00-b\d{6}").all()
    assert be.template_date == "2023-05-06"
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["template_date"] == "2023-05-06"
    with pytest.raises(ValueError, match="same date"):
        run_generation(design, ["echo"], tmp_path / "r", backend_factory=lambda s: be,
                       progress=False, resume=True)


def test_prompts_longer_than_the_context_are_an_error_or_cut(tmp_path):
    """Regression (issue 12, #6): a prompt longer than the context was answered silently."""
    design = rs.sample_design(_items(3, 3), k=2, seed=0)
    lengths = [len(EchoBackend().render(chat_messages(u, None, True)[0]).split())
               for u in build_user_prompts_for(design)]
    limit = int(np.median(lengths)) + 8
    with pytest.raises(ValueError, match=rf"prompt\(s\) do not fit echo's context of {limit} "
                       r"positions.*truncate='middle'"):
        run_generation(design, ["echo"], tmp_path / "a", params=DecodingParams(max_new_tokens=8),
                       backend_factory=lambda s: EchoBackend(context=limit), progress=False)
    be = EchoBackend(context=limit)
    with pytest.warns(UserWarning, match="were cut in the middle"):
        table = run_generation(design, ["echo"], tmp_path / "b",
                               params=DecodingParams(max_new_tokens=8), truncate="middle",
                               backend_factory=lambda s: be, progress=False, detector="paper")
    too_long = np.asarray(lengths) + 8 > limit
    assert table.sort_values("row_id")["truncated"].tolist() == too_long.tolist()
    assert (table["n_prompt_tokens"] <= limit - 8).all()
    with pytest.raises(ValueError, match="truncate must be one of"):
        run_generation(design, ["echo"], tmp_path / "c", truncate="left", progress=False)


def build_user_prompts_for(design):
    from refusalstats.inference import build_user_prompts

    return build_user_prompts(design, "template")["user_text"].tolist()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_write_the_finished_rows(tmp_path, sig, children):
    """Regression (issue 12, #7): buffered rows were lost on SIGTERM / Ctrl-C."""
    design = rs.sample_design(_items(4, 6), k=3, seed=0)
    out = tmp_path / "run"
    proc, prog = _spawn(tmp_path, design, out, hold_after=3, shard_rows=10**9)
    children.append(proc)
    _wait_for(lambda: _held(prog), proc, "three batches")  # 9 rows buffered, none on disk
    assert _shard_rows(out).empty
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    written = _shard_rows(out)
    assert len(written) == 3 * _batches_done(prog) == 9  # every finished row, written
    assert written["row_id"].is_unique
    meta = json.loads((out / "run.json").read_text())
    sess = meta["models"]["echo"]["sessions"]
    assert sess[-1]["status"] == "interrupted" and sess[-1]["rows_written"] == len(written)
    assert not (out / ".lock").exists()
    be = EchoBackend()
    table = run_generation(design, ["echo"], out, backend_factory=lambda s: be, batch_size=3,
                           progress=False, resume=True, detector="paper")
    assert sum(be.batch_sizes) == len(design) - len(written)
    assert sorted(table["row_id"].tolist()) == list(range(len(design)))


def test_out_of_memory_backoff_relaxes_for_shorter_prompts_and_frees_outside_except(tmp_path):
    """Regression (issue 12, #8): after one OOM every later batch stayed at half the rows,
    and the cache was cleared while the traceback still held the batch's tensors."""
    s = corpus_sentences(40, seed=3)
    long_txt = [" ".join(s[i:i + 8]) for i in range(8)]
    items = pd.DataFrame({"item_id": [f"t{i}" for i in range(16)], "task": "politeness",
                          "text": long_txt + s[20:28], "gold_label": 3})
    design = rs.sample_design(items, k=1, seed=0)
    params = DecodingParams(max_new_tokens=4)
    be = EchoBackend()
    lengths = be.count_tokens([be.render(chat_messages(u, None, True)[0])
                               for u in build_user_prompts_for(design)])
    lengths = sorted(lengths, reverse=True)
    first_cost = 8 * (lengths[0] + 4)
    assert 8 * (lengths[8] + 4) < first_cost // 2  # short prompts: 8 of them fit half
    be = EchoBackend(oom_above_tokens=first_cost - 1)
    with pytest.warns(UserWarning, match="out of memory with 8 prompts"):
        run_generation(design, ["echo"], tmp_path / "r", params=params, batch_size=8,
                       backend_factory=lambda sp: be, progress=False, detector="paper")
    assert be.batch_sizes[-1] == 8  # the short batch runs whole again
    assert max(be.batch_sizes[:-1]) < 8
    assert be.cleared_in_except == [False]


def test_run_json_keeps_every_session_and_says_resuming(tmp_path, capsys):
    """Regression (issue 12, #9): only the last session was recorded; no resume message."""
    design = rs.sample_design(_items(2, 2), k=2, seed=0)
    out = tmp_path / "r"
    with pytest.raises(ValueError, match="engine broke"):
        run_generation(design, ["echo"], out, backend_factory=lambda s: _BreaksAfter(2),
                       batch_size=2, shard_rows=2, progress=False)
    run_generation(design, ["echo"], out, backend_factory=lambda s: EchoBackend(),
                   batch_size=2, progress=True, resume=True, detector="paper")
    assert f"echo: resuming: 4 of {len(design)} done" in capsys.readouterr().err
    sessions = json.loads((out / "run.json").read_text())["models"]["echo"]["sessions"]
    assert [x["status"] for x in sessions] == ["failed: ValueError", "complete"]
    assert [x["rows"] for x in sessions] == [4, len(design) - 4]
    assert [x["rows_done_before"] for x in sessions] == [0, 4]
    for x in sessions:
        assert {"host", "pid", "started", "finished", "new_tokens", "prompt_tokens",
                "versions", "identity"} <= set(x)
        assert "pandas" in x["versions"] or "refusalstats" in x["versions"]
