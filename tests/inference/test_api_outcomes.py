"""Issue 20: what an OpenAI-compatible server's outcomes become in the table, and key hygiene.

Loopback HTTP servers that misbehave on purpose: redirects to another origin (the key
must never reach it), provider refusals in their four forms, a 4xx for one prompt (a row,
not the end of the run), a server trickling its answer byte by byte (the request timeout
is a total deadline), and content sent as a list of parts.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from refusalstats.inference import DecodingParams, run_generation
from refusalstats.inference.openai_compat import APIError, OpenAIBackend, RedirectRefused
from refusalstats.inference.runner import PromptError

import refusalstats as rs
from refusalstats.cli import main

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from api_server import send_json_head, serve_in_thread
from test_runner import _items


class ScriptedServer:
    """Answers ``POST /v1/chat/completions`` with ``script(body) -> (status, obj, headers)``.

    ``GET /v1/models`` lists ``model`` unless ``models`` says otherwise. Every request's
    path and Authorization header is logged.
    """

    def __init__(self, script=None, *, model="m", models=None, trickle=None):
        self.script, self.model, self.models, self.trickle = script, model, models, trickle
        self.log: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, obj, headers=None):
                data = send_json_head(self, code, obj, headers)
                if server.trickle is None:
                    self.wfile.write(data)
                    return
                for k in range(len(data)):  # one byte at a time
                    try:
                        self.wfile.write(data[k:k + 1])
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(server.trickle)

            def _log(self, body=None):
                server.log.append({"method": self.command, "path": self.path, "body": body,
                                   "auth": self.headers.get("Authorization")})

            def do_GET(self):
                self._log()
                if server.models is not None:
                    code, obj, headers = server.models(self)
                    self._send(code, obj, headers)
                    return
                self._send(200, {"object": "list", "data": [{"id": server.model}]})

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n)) if n else None
                self._log(body)
                code, obj, headers = server.script(body)
                self._send(code, obj, headers)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = serve_in_thread(self.httpd)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        return False


def _reply(message=None, finish="stop", **extra):
    choice = {"index": 0, "finish_reason": finish, **extra}
    if message is not None:
        choice["message"] = message
    return {"id": "x", "object": "chat.completion", "model": "m", "choices": [choice],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


def _design(n_nli=2, n_text=3, k=2):
    return rs.sample_design(_items(n_nli, n_text), k=k, seed=0)


def _user(messages) -> str:
    return messages[-1]["content"]


# ---------------------------------------------------------------------------- 1. redirects
@pytest.mark.parametrize("where", ["chat", "models"])
def test_a_redirect_never_carries_the_key_to_another_origin(monkeypatch, where):
    key = "sk-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with ScriptedServer(lambda b: (200, _reply({"role": "assistant", "content": "hi"}), None)
                        ) as other:
        target = other.url + "/chat/completions"

        def chat(body):
            return 303, {}, {"Location": target}

        def models(handler):
            if where == "models":
                return 302, {}, {"Location": other.url + "/models"}
            return 200, {"object": "list", "data": [{"id": "m"}]}, None

        with ScriptedServer(chat, models=models) as first:
            with pytest.raises(RedirectRefused) as err:
                be = OpenAIBackend("m", base_url=first.url, max_retries=0, backoff=0.01)
                be.generate([be.render([{"role": "user", "content": "q"}])],
                            DecodingParams(max_new_tokens=4))
            assert first.log and first.log[-1]["auth"] == f"Bearer {key}"  # sent to the origin
        # the key never reached the other origin; it never heard from us at all
        assert [e["auth"] for e in other.log if e["auth"]] == []
        assert other.log == []
        msg = str(err.value)
        assert "\n" not in msg and other.url in msg and "redirect" in msg
        assert key not in msg


# ---------------------------------------------------------------------------- 2. refusals
def test_provider_refusals_become_refusals_with_their_source(tmp_path):
    """content_filter, message.refusal, a refusal part, no message: refusal 1, 'provider';
    an empty answer is flagged; a list of text parts is joined (not its repr)."""
    design = _design()
    kinds = ["filter", "refusal_field", "refusal_part", "no_message", "empty", "parts", "plain"]
    assigned: dict[str, str] = {}

    def script(body):
        text = _user(body["messages"])
        kind = assigned.setdefault(text, kinds[len(assigned) % len(kinds)])
        if kind == "filter":
            return 200, _reply({"role": "assistant", "content": None}, "content_filter"), None
        if kind == "refusal_field":
            return 200, _reply({"role": "assistant", "content": None,
                                "refusal": "I can't help with that."}), None
        if kind == "refusal_part":
            return 200, _reply({"role": "assistant", "content": [
                {"type": "refusal", "refusal": "Not able to."}]}), None
        if kind == "no_message":
            return 200, _reply(None, "stop"), None
        if kind == "empty":
            return 200, _reply({"role": "assistant", "content": ""}), None
        if kind == "parts":
            return 200, _reply({"role": "assistant", "content": [
                {"type": "text", "text": "neutral "}, {"type": "text", "text": "it is"}]}), None
        return 200, _reply({"role": "assistant", "content": "neutral"}), None

    with ScriptedServer(script) as server:
        table = run_generation(design, ["m"], tmp_path / "run", progress=False,
                               detector="paper", backend_factory=lambda s: OpenAIBackend(
                                   "m", base_url=server.url, concurrency=1))
    kind = table["prompt_text"].map(assigned)
    src = table["refusal_source"].astype(str)
    provider = kind.isin(["filter", "refusal_field", "refusal_part", "no_message"])
    assert provider.sum() >= 4
    assert (table.loc[provider, "refusal"] == 1).all()
    assert (src[provider] == "provider").all() and (src[~provider] == "detector").all()
    assert table.loc[kind == "refusal_field", "response"].eq("I can't help with that.").all()
    assert table.loc[kind == "parts", "response"].eq("neutral it is").all()
    assert table.loc[kind == "empty", "empty_response"].all()
    assert not table.loc[kind.isin(["parts", "plain"]), "empty_response"].any()
    assert (table.loc[kind == "empty", "refusal"] == 0).all()  # flagged, not a refusal
    # the rate counts the provider refusals
    assert table["refusal"].mean() >= provider.mean()


def test_a_policy_rejection_is_a_provider_refusal(tmp_path):
    design = _design()
    first = {}

    def script(body):
        text = _user(body["messages"])
        first.setdefault("text", text)
        if text == first["text"]:
            return 400, {"error": {"message": "Your request was rejected as a result of our "
                                              "safety system.", "type": "invalid_request_error",
                                   "code": "content_policy_violation"}}, None
        return 200, _reply({"role": "assistant", "content": "neutral"}), None

    with ScriptedServer(script) as server:
        table = run_generation(design, ["m"], tmp_path / "run", progress=False,
                               detector="paper", backend_factory=lambda s: OpenAIBackend(
                                   "m", base_url=server.url, concurrency=1, max_retries=0))
    row = table[table["prompt_text"] == first["text"]].iloc[0]
    assert row["refusal"] == 1 and row["refusal_source"] == "provider"
    assert "content_policy_violation" not in str(row["error"])  # not an error row
    assert "safety system" in row["provider_refusal"]
    assert len(table) == len(design)


# ---------------------------------------------------------------------------- 3. rejections
def _one_bad_prompt_server(design):
    bad = {}

    def script(body):
        text = _user(body["messages"])
        bad.setdefault("text", text)
        if text == bad["text"]:
            return 400, {"error": {"message": "This model's maximum context length is 8 "
                                              "tokens", "code": "context_length_exceeded"}}, None
        return 200, _reply({"role": "assistant", "content": "neutral"}), None

    return script, bad


def test_a_rejected_prompt_is_an_error_row_and_the_run_completes(tmp_path):
    design = _design()
    script, bad = _one_bad_prompt_server(design)
    out = tmp_path / "run"
    with ScriptedServer(script) as server:
        with pytest.warns(UserWarning, match="m: 1 prompt.* got no answer .* 0 were refused"):
            table = run_generation(design, ["m"], out, progress=False, detector="paper",
                                   backend_factory=lambda s: OpenAIBackend(
                                       "m", base_url=server.url, concurrency=2, max_retries=0))
        n_posts = sum(1 for e in server.log if e["method"] == "POST")
    assert len(table) == len(design) and n_posts == len(design)  # asked once each
    err = table["refusal_source"].astype(str) == "error"
    assert err.sum() == 1
    row = table[err].iloc[0]
    assert row["prompt_text"] == bad["text"] and pd.isna(row["refusal"])
    assert "HTTP 400" in row["error"] and "maximum context length" in row["error"]
    assert table.loc[~err, "refusal"].notna().all()
    # analyses leave it out and say so
    with pytest.warns(UserWarning, match="1 of .* left out as errors"):
        valid = rs.validate(table)
    assert len(valid) == len(design) - 1 and valid.attrs["n_error_rows"] == 1
    with pytest.warns(UserWarning, match="left out as errors"):
        back = rs.read_responses(out / "responses.parquet")
    assert len(back) == len(design) - 1 and back["refusal"].dtype == np.int8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = rs.read_responses(out / "responses.parquet", error_rows="keep")
    assert len(kept) == len(design)
    # the run summary says so
    sessions = json.loads((out / "run.json").read_text())["models"]["m"]["sessions"]
    assert sessions[-1]["error_rows"] == 1 and sessions[-1]["status"] == "complete"


def test_on_error_stop_stops_and_resume_with_record_gets_past(tmp_path):
    design = _design()
    script, _bad = _one_bad_prompt_server(design)
    out = tmp_path / "run"
    with ScriptedServer(script) as server:
        def factory(s):
            return OpenAIBackend("m", base_url=server.url, concurrency=1, max_retries=0)

        with pytest.raises(PromptError, match="row_id .* got no answer .*HTTP 400"):
            run_generation(design, ["m"], out, progress=False, detector="paper",
                           backend_factory=factory, on_error="stop", batch_size=4)
        table = run_generation(design, ["m"], out, progress=False, detector="paper",
                               backend_factory=factory, resume=True)
    assert len(table) == len(design)
    assert (table["refusal_source"].astype(str) == "error").sum() == 1


def test_cli_generate_records_a_rejected_prompt_and_prints_the_counts(tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    design = _design()
    dpath = tmp_path / "design.parquet"
    design.assign(gold_label=design["gold_label"].astype(str)).to_parquet(dpath)
    script, _bad = _one_bad_prompt_server(design)
    with ScriptedServer(script) as server:
        rc = main(["generate", str(dpath), "--backend", "openai", "--model", "m",
                   "--base-url", server.url, "--max-retries", "0", "-o", str(tmp_path / "r"),
                   "--detector", "paper"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "1 prompt(s) without an answer" in out and "0 provider refusal(s)" in out


# ---------------------------------------------------------------------------- 7. timeout
def test_request_timeout_is_a_total_deadline_not_per_read():
    """A server trickling one byte every 0.05 s answers in ~12 s: with a 0.3 s timeout the
    attempt ends after ~0.3 s (before: each read got its byte in time, ~12 s)."""
    reply = _reply({"role": "assistant", "content": "x" * 100})
    with ScriptedServer(lambda b: (200, reply, None), trickle=0.05) as server:
        be = OpenAIBackend("m", base_url=server.url, timeout=0.3, max_retries=0,
                           check_model=False)
        t0 = time.monotonic()
        with pytest.raises(APIError, match=r"within 0\.3 s"):
            be.generate([be.render([{"role": "user", "content": "q"}])],
                        DecodingParams(max_new_tokens=4))
        took = time.monotonic() - t0
    assert took < 3.0, took


def test_message_text_joins_parts():
    from refusalstats.inference.openai_compat import message_text

    assert message_text([{"type": "text", "text": "a"}, "b", {"type": "image_url"}]) == "ab"
    assert message_text("plain") == "plain"


def test_a_4xx_about_a_setting_stops_the_run_instead_of_filling_it_with_error_rows(tmp_path):
    """A 400 naming a request parameter (max_tokens) concerns every prompt: not error rows."""
    design = _design()

    def script(body):
        return 400, {"error": {"message": "max_tokens is too large: 99999.",
                               "type": "invalid_request_error", "param": "max_tokens",
                               "code": None}}, None

    with ScriptedServer(script) as server:
        with pytest.raises(APIError, match="HTTP 400 .*max_tokens is too large"):
            run_generation(design, ["m"], tmp_path / "run", progress=False, detector="paper",
                           backend_factory=lambda s: OpenAIBackend(
                               "m", base_url=server.url, concurrency=1, max_retries=0))
        assert sum(1 for e in server.log if e["method"] == "POST") == 1  # stopped at once
