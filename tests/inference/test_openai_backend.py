"""--backend openai against a real HTTP server on 127.0.0.1: retries, exactly-once, no key on disk."""

from __future__ import annotations

import itertools
import json
import secrets
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from refusalstats.inference import DecodingParams, ModelSpec, run_generation
from refusalstats.inference.openai_compat import APIError, OpenAIBackend, parse_retry_after
from refusalstats.inference.runner import PromptError

import refusalstats as rs
from refusalstats.cli import main

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from api_server import FakeChatServer, canned_answer, messages_key
from test_runner import _items


def _design(n_nli=4, n_text=6, k=3):
    return rs.sample_design(_items(n_nli, n_text), k=k, seed=0)


def _user_messages(text):
    return [{"role": "user", "content": text}]


def _backend(server, **kw):
    kw = {"concurrency": 4, "backoff": 0.01, "max_backoff": 0.05, "max_retries": 5,
          "timeout": 5.0, **kw}
    return OpenAIBackend(server.model, base_url=server.url, **kw)


def _files_contain(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def _shard_rows(out):
    parts = sorted(Path(out).glob("**/shards/*/part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


# ---------------------------------------------------------------------------- units
def test_retry_after_forms():
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"Retry-After": "0.5", "retry-after-ms": "1500"}) == 1.5
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < parse_retry_after({"Retry-After": date}) <= 31
    assert parse_retry_after({"Retry-After": "soon"}) is None


def test_bad_settings_are_one_line_errors(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR .* not set"):
        OpenAIBackend("m", base_url="http://127.0.0.1:9/v1", api_key_env="NO_SUCH_KEY_VAR",
                      check_model=False)
    with pytest.raises(ValueError, match="must not carry credentials"):
        OpenAIBackend("m", base_url="http://u:sk-x@127.0.0.1:9/v1", check_model=False)
    with pytest.raises(ValueError, match="http"):
        OpenAIBackend("m", base_url="ftp://x/v1", check_model=False)
    with pytest.raises(ValueError, match="no revision"):
        ModelSpec("m", revision="main", backend="openai")
    assert ModelSpec.parse("x=org/m@1", backend="openai").model == "org/m@1"


# ---------------------------------------------------------------------------- faults
def test_429_storm_drops_and_500s_give_every_row_exactly_once_and_no_key_on_disk(
        tmp_path, monkeypatch):
    key = "sk-test-" + secrets.token_hex(12)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    hits = {"storm": 0}

    def fault(server, req):
        h = int(req["key"], 16)
        if hits["storm"] < 10:  # the first 10 requests: a 429 storm, all workers at once
            hits["storm"] += 1
            return ("status", 429, {"Retry-After": "0.3"})  # seconds; backoff is <= 0.05 s
        if h % 5 == 1 and req["attempt"] == 1:
            return "drop"
        if h % 5 == 2 and req["attempt"] == 1:
            return ("status", 500)
        if h % 5 == 3 and req["attempt"] == 1:
            return ("status", 503, {"retry-after-ms": "50"})
        return None

    design = _design()
    out = tmp_path / "run"
    with FakeChatServer(key=key, fault=fault) as server:
        table = run_generation(design, [f"api={server.model}"], out, progress=False,
                               detector="paper", shard_rows=7,
                               backend_factory=lambda s: _backend(server))
        posts = server.posts()
        assert server.auth_seen == {f"Bearer {key}"}
    rows = _shard_rows(out)
    assert sorted(rows["row_id"]) == list(range(len(design)))  # exactly once
    assert len(table) == len(design)
    expected = [canned_answer(_user_messages(t)) for t in table["prompt_text"]]
    assert table["response"].tolist() == expected
    assert (table["system_fingerprint"] == "fp_test").all()
    assert (table["api_model"] == "fake-model").all()
    assert table["n_new_tokens"].tolist() == [len(t.split()) for t in expected]
    outcomes = pd.Series([p.get("outcome") for p in posts]).value_counts().to_dict()
    assert outcomes[429] == 10 and outcomes.get("drop", 0) > 0 and outcomes.get(500, 0) > 0
    assert outcomes[200] == len(design)  # no prompt answered twice by the server
    assert (table["request_attempts"] > 1).sum() >= 10
    # Retry-After honoured: a prompt throttled at t is not asked again before t + 0.3 s
    by_key: dict[str, list] = {}
    for p in posts:
        by_key.setdefault(p["key"], []).append(p)
    waited = 0
    for seq in by_key.values():
        for a, b in itertools.pairwise(seq):
            if a["outcome"] == 429:
                assert b["t"] - a["t"] >= 0.3
                waited += 1
    assert waited >= 4
    # requests are greedy and carry max_tokens
    body = posts[-1]["body"]
    assert body["temperature"] == 0 and body["max_tokens"] == 64 and body["model"] == "fake-model"
    # the key is nowhere on disk (shards, run.json, prompts, the table) nor in the metadata
    assert list(out.rglob("part-*.parquet")) and _files_contain(tmp_path, key) == []
    assert key not in json.dumps(table.attrs["metadata"], default=str)
    info = json.loads((out / "run.json").read_text())["models"]["api"]["info"]
    assert info["api_key_env"] == "OPENAI_API_KEY" and info["engine"] == "openai"


def test_a_timeout_is_retried(tmp_path):
    def fault(server, req):
        return ("sleep", 0.75) if req["attempt"] == 1 and int(req["key"], 16) % 3 == 0 else None

    design = _design(2, 2, k=2)
    with FakeChatServer(fault=fault) as server:
        table = run_generation(design, [server.model], tmp_path / "run", progress=False,
                               detector="paper", backend_factory=lambda s: _backend(
                                   server, timeout=0.25))
    assert len(table) == len(design) and (table["request_attempts"] >= 1).all()
    assert (table["request_attempts"] == 2).any()


def test_client_errors_stop_at_once_without_the_key(monkeypatch):
    key = "sk-wrong-" + secrets.token_hex(8)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with FakeChatServer(key="sk-right") as server:
        with pytest.raises(APIError, match="HTTP 401") as err:
            OpenAIBackend(server.model, base_url=server.url)
        assert key not in str(err.value) and "***" in str(err.value)
        assert len(server.log) == 1  # not retried
    with FakeChatServer(model="served") as server, \
            pytest.raises(ValueError, match="does not serve model 'other'; it serves served"):
        OpenAIBackend("other", base_url=server.url)
    with FakeChatServer(list_models=False) as server:  # no /models: nothing to check
        OpenAIBackend(server.model, base_url=server.url)


def test_gives_up_after_the_retries_and_says_so():
    with FakeChatServer(fault=lambda s, r: ("status", 503)) as server:
        be = _backend(server, max_retries=2)
        with pytest.raises(APIError, match="no answer after 3 attempts .*HTTP 503"):
            be.generate([be.render(_user_messages("hi"))], DecodingParams(max_new_tokens=4))
        assert len(server.posts()) == 3


def test_a_failed_run_resumes_with_every_row_once_and_nothing_asked_twice(tmp_path):
    design = _design(5, 7, k=3)
    out = tmp_path / "run"
    broken = {"on": True}

    def fault(server, req):
        # the first run breaks for good after 20 answers (a bad request: not retried)
        if broken["on"] and req["index"] >= 20:
            return ("status", 400)
        return None

    with FakeChatServer(fault=fault) as server:
        def factory(spec):
            return _backend(server, concurrency=2)  # batches of 16 rows

        with pytest.raises(PromptError, match="HTTP 400"):
            run_generation(design, ["fake-model"], out, progress=False, shard_rows=1,
                           backend_factory=factory, on_error="stop")
        first = _shard_rows(out)
        assert 0 < len(first) < len(design)
        n_before = len(server.posts())
        broken["on"] = False
        table = run_generation(design, ["fake-model"], out, progress=False, resume=True,
                               detector="paper", backend_factory=factory)
        second = server.posts()[n_before:]
    rows = _shard_rows(out)
    assert sorted(rows["row_id"]) == list(range(len(design)))
    written_keys = {messages_key(_user_messages(t)) for t in first["prompt_text"]}
    assert written_keys.isdisjoint({p["key"] for p in second})
    assert len(second) == len(design) - len(first)
    sessions = json.loads((out / "run.json").read_text())["models"]["fake-model"]["sessions"]
    assert [s["status"] for s in sessions] == ["failed: PromptError", "complete"]
    assert table["response"].tolist() == [canned_answer(_user_messages(t))
                                          for t in table["prompt_text"]]


def test_resume_with_another_served_model_is_refused(tmp_path):
    design = _design(2, 2, k=2)
    out = tmp_path / "run"
    with FakeChatServer(model="model-a") as a, FakeChatServer(model="model-b") as b:
        run_generation(design, ["x=model-a"], out, progress=False,
                       backend_factory=lambda s: _backend(a), shard_rows=2, batch_size=2)
        max(out.glob("shards/*/part-*.parquet")).unlink()
        with pytest.raises(ValueError, match="started with another model"):
            run_generation(design, ["x=model-b"], out, progress=False, resume=True,
                           backend_factory=lambda s: OpenAIBackend(
                               s.model, base_url=b.url, backoff=0.01))


# ---------------------------------------------------------------------------- the CLI
def test_cli_openai_backend_sharded_then_collect(tmp_path, monkeypatch, capsys):
    key = "sk-cli-" + secrets.token_hex(12)
    monkeypatch.setenv("MY_KEY", key)
    for var in ("SLURM_ARRAY_TASK_ID", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    design = _design()
    path = tmp_path / "design.parquet"
    design.assign(gold_label=design["gold_label"].astype(str)).to_parquet(path)
    with FakeChatServer(key=key) as server:
        common = ["--model", f"api={server.model}", "--backend", "openai", "--base-url",
                  server.url, "--api-key-env", "MY_KEY", "--concurrency", "3",
                  "--detector", "paper", "--max-new-tokens", "16"]
        for i in range(3):
            assert main(["generate", str(path), "-o", str(tmp_path / "sharded"), "--shard",
                         f"{i}/3", *common]) == 0
        assert main(["generate", str(path), "-o", str(tmp_path / "whole"), *common]) == 0
        # a missing key variable is a one-line error
        monkeypatch.delenv("MY_KEY")
        capsys.readouterr()
        assert main(["generate", str(path), "-o", str(tmp_path / "x"), *common]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "MY_KEY (--api-key-env) is not set" in err
    assert main(["collect", str(tmp_path / "sharded"), "-o", str(tmp_path / "t.parquet"),
                 "--detector", "paper"]) == 0
    merged = rs.read_responses(tmp_path / "t.parquet")
    whole = rs.read_responses(tmp_path / "whole" / "responses.parquet")
    drop = ["batch_id", "request_attempts"]
    pd.testing.assert_frame_equal(merged.drop(columns=drop), whole.drop(columns=drop),
                                  check_categorical=False)
    assert merged["response"].tolist() == [canned_answer(_user_messages(t))
                                           for t in merged["prompt_text"]]
    assert _files_contain(tmp_path, key) == []
    assert {p["body"]["max_tokens"] for p in server.posts()} == {16}
