"""An OpenAI-compatible chat-completions backend: GPT-style APIs and local servers.

:class:`OpenAIBackend` sends each prompt as one ``POST {base_url}/chat/completions``
request with the chat messages, ``temperature: 0`` (greedy) and ``max_tokens``, so the
same design runs on the OpenAI API (de Araujo & Roth used GPT-3.5/GPT-4) and on the
servers that speak that protocol — vLLM (``vllm serve``), SGLang, TGI, llama.cpp's
``llama-server``. The server applies the model's chat template; the runner still builds
the messages (persona placement, system role) and records them.

* **Key**: read from the environment (``OPENAI_API_KEY``, or the variable named by
  ``api_key_env`` / ``--api-key-env``) when the backend is made, sent as a bearer token,
  and never written anywhere: not in the metadata, the shards, errors or ``repr``. A
  local server usually needs none.
* **Concurrency**: up to ``concurrency`` requests in flight (threads; the runner's batch
  is the unit written to a shard, ``max_batch_rows`` = 8 x concurrency).
* **Retries**: HTTP 408/409/429/5xx, timeouts, refused or dropped connections and
  truncated bodies are retried up to ``max_retries`` times with exponential backoff and
  jitter (``backoff * 2**attempt``, at most ``max_backoff``, drawn from its upper half),
  waiting at least what ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``
  asks for. ``timeout`` is a total deadline per attempt (connect, headers and body
  together): a server trickling bytes cannot hold a request longer.
* **Client errors**: 401, 402, 403, 404, 405, 407 and 422 (bad key, unknown model or
  address, a body the server's schema rejects), and any 4xx whose error names a request
  parameter other than the messages (``"param": "max_tokens"``: a setting), stop the run
  at once with the server's message; the rows finished before are on disk, and
  ``--resume`` continues. Any other 4xx (a prompt too long, a usage-policy rejection) is
  about one prompt: it comes back as a :class:`~.backends.Completion` with ``error`` set
  (or ``provider_refusal`` for a policy rejection) and the run goes on; the runner's
  ``on_error`` (``--on-error record|stop``) decides what happens to it.
* **Redirects** are refused (a one-line error naming the target): urllib would resend the
  ``Authorization`` header to whatever host a 30x names and replay a POST as a GET.
* **Provider refusals** (the mapping to the table, see ``docs``/the runner):
  ``finish_reason == "content_filter"``, a ``message.refusal`` field (OpenAI's structured
  refusal, or a content part of type ``refusal``), a choice without a message, and a 4xx
  whose error code, type or message names a content/usage policy are provider refusals:
  ``provider_refusal`` holds the reason and the runner records ``refusal = 1`` with
  ``refusal_source = "provider"``. Content sent as a list of parts is joined as text.
* **Per row**: the server's ``system_fingerprint``, the model name it answered as
  (``api_model``), usage (``n_prompt_tokens``, ``n_new_tokens`` from
  ``prompt_tokens``/``completion_tokens``) and the attempts the request took
  (``request_attempts``).
* **Identity** (checked on resume): engine, model name and ``extra_body``; not the URL,
  so a restarted server on another port, or eight servers behind eight shards, are the
  same model.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from .backends import Backend, Completion, DecodingParams, package_versions

__all__ = ["APIError", "OpenAIBackend", "RedirectRefused", "is_policy_rejection", "message_text",
           "parse_retry_after"]

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})
#: 4xx answers that concern the whole run (key, permissions, address, model, a request body
#: the server's schema rejects), not a prompt.
RUN_ERROR_STATUS = frozenset({401, 402, 403, 404, 405, 407, 422})
#: ``error.param`` values that point at the prompt; any other named parameter is a setting.
_PROMPT_PARAMS = frozenset({"", "messages", "prompt", "input"})
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}
#: Words in a 4xx error's code, type or message that mark a content/usage-policy rejection.
_POLICY_WORDS = ("content_filter", "content_policy", "content policy", "usage polic",
                 "safety system", "responsible_ai", "responsibleai", "content management polic",
                 "moderation", "flagged")


class APIError(OSError):
    """A request the server refused (4xx), or that failed after every retry."""


class RedirectRefused(APIError):
    """The server answered with a redirect; it is not followed (the key would go along)."""


class _PromptRejected(APIError):
    """A 4xx about one prompt (not the key, model or address): recorded as a row."""

    def __init__(self, message: str, *, policy: bool):
        super().__init__(message)
        self.policy = policy


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise RedirectRefused(
            f"{req.full_url} answered HTTP {code} redirecting to {newurl}; redirects are not "
            "followed (the API key would be sent along): set --base-url to the final address")


def _tracked(cls, req):
    """A connection factory that leaves the socket on ``req`` once connected (the deadline).

    urllib drops the connection's own reference to the socket once the headers are in;
    the response keeps reading from it, so the socket itself is what the deadline cuts.
    """
    class Tracked(cls):
        def connect(self):
            super().connect()
            req.rs_socket = self.sock

    def make(host, **kw):
        return Tracked(host, **kw)
    return make


class _TrackedHTTP(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_tracked(http.client.HTTPConnection, req), req)


class _TrackedHTTPS(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_tracked(http.client.HTTPSConnection, req), req,
                            context=getattr(self, "_context", None))


def _cut_connection(req) -> None:
    """Shut the request's socket down: a blocked read returns at once (the deadline)."""
    import socket

    sock = getattr(req, "rs_socket", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def message_text(content) -> str:
    """The text of a chat message's ``content``: a string, or a list of parts joined.

    Parts are strings or objects with a ``text`` (``{"type": "text", "text": ...}``);
    other parts (images, refusals) add no text.

    Examples
    --------
    >>> message_text([{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}])
    'Hello there'
    >>> message_text(None)
    ''
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
        return "".join(out)
    return str(content)


def _parts_refusal(content) -> str | None:
    if isinstance(content, list):
        texts = [p.get("refusal") for p in content
                 if isinstance(p, dict) and p.get("type") == "refusal"]
        if texts:
            return " ".join(str(t) for t in texts if t) or "refusal"
    return None


def is_policy_rejection(error) -> bool:
    """Whether an API error object (or its text) is a content/usage-policy rejection.

    Examples
    --------
    >>> is_policy_rejection({"code": "content_policy_violation", "message": "rejected"})
    True
    >>> is_policy_rejection({"code": "context_length_exceeded"})
    False
    """
    if isinstance(error, dict):
        text = " ".join(str(error.get(k, "")) for k in ("code", "type", "message", "param"))
        inner = error.get("innererror")
        if isinstance(inner, dict):
            text += " " + " ".join(str(v) for v in inner.values())
    else:
        text = str(error)
    text = text.lower()
    return any(w in text for w in _POLICY_WORDS)


def parse_retry_after(headers) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date).

    Examples
    --------
    >>> parse_retry_after({"Retry-After": "3"})
    3.0
    >>> parse_retry_after({"retry-after-ms": "250"})
    0.25
    >>> parse_retry_after({}) is None
    True
    """
    if headers is None:
        return None
    get = headers.get
    ms = get("retry-after-ms") or get("Retry-After-Ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    ra = get("Retry-After") or get("retry-after")
    if not ra:
        return None
    try:
        return max(0.0, float(ra))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _check_base_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--base-url must be an http(s) URL such as http://127.0.0.1:8000/v1, "
                         f"got {url!r}")
    if parts.username or parts.password:
        raise ValueError("--base-url must not carry credentials; put the key in an environment "
                         "variable (OPENAI_API_KEY or --api-key-env NAME)")
    if parts.query or parts.fragment:
        raise ValueError(f"--base-url takes no query or fragment, got {url!r}")
    return url.rstrip("/")


class _Stopped(Exception):
    pass


class OpenAIBackend(Backend):
    """Chat completions from an OpenAI-compatible HTTP server.

    Parameters
    ----------
    model : str
        The model name the server knows (``gpt-4o-2024-08-06``,
        ``meta-llama/Llama-3.1-8B-Instruct`` as served by vLLM...).
    base_url : str, optional
        Up to and including ``/v1``; default ``$OPENAI_BASE_URL`` or the OpenAI API.
    api_key_env : str, optional
        Environment variable holding the key (default ``OPENAI_API_KEY``; when named
        explicitly it must be set). The key itself is never stored with the results.
    concurrency : int
        Requests in flight at most (default 8).
    timeout : float
        Seconds one attempt may take in all (connect, headers and body: a deadline, not a
        limit per read) before it is retried.
    max_retries : int
        Retries of one request after the first attempt (default 8).
    backoff, max_backoff : float
        Exponential backoff: ``backoff * 2**attempt`` seconds, at most ``max_backoff``.
    extra_body : dict, optional
        Fields added to every request (e.g. ``{"chat_template_kwargs": {...}}`` for vLLM);
        recorded and part of the model's identity.
    check_model : bool
        Ask ``GET /models`` first and stop when the server lists models without this one.

    Examples
    --------
    >>> be = OpenAIBackend("Qwen/Qwen2.5-7B-Instruct", base_url="http://127.0.0.1:8000/v1")  # doctest: +SKIP
    """

    engine = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 8, timeout: float = 120.0, max_retries: int = 8,
                 backoff: float = 1.0, max_backoff: float = 60.0,
                 extra_body: dict | None = None, check_model: bool = True):
        if not model:
            raise ValueError("the openai backend needs a model name, e.g. --model gpt-4o-mini")
        if int(concurrency) < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if not float(timeout) > 0 or int(max_retries) < 0:
            raise ValueError(f"timeout must be > 0 and max_retries >= 0, got {timeout}, "
                             f"{max_retries}")
        self.model_id = str(model)
        self.base_url = _check_base_url(base_url or os.environ.get("OPENAI_BASE_URL")
                                        or DEFAULT_BASE_URL)
        env_name = api_key_env or "OPENAI_API_KEY"
        key = os.environ.get(env_name, "")
        if api_key_env and not key:
            raise ValueError(f"environment variable {api_key_env} (--api-key-env) is not set "
                             "or empty")
        self.api_key_env = env_name
        self._key = key or None  # only ever in the Authorization header
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self.extra_body = dict(extra_body or {})
        for k in ("model", "messages"):
            if k in self.extra_body:
                raise ValueError(f"extra_body must not set {k!r}")
        host = urllib.parse.urlsplit(self.base_url).hostname
        handlers: list = [urllib.request.ProxyHandler({})] if host in _LOOPBACK else []
        handlers += [_NoRedirects(), _TrackedHTTP(), _TrackedHTTPS()]
        self._opener = urllib.request.build_opener(*handlers)
        self._rng = random.Random()
        self._rng_lock = threading.Lock()
        self.served: dict[str, Any] | None = None
        self.requests = 0  # attempts sent, all requests together
        if check_model:
            self._check_model()

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.model_id!r}, base_url={self.base_url!r})"

    # -- HTTP -------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json",
             "User-Agent": "refusalstats"}
        if self._key:
            h["Authorization"] = f"Bearer {self._key}"
        return h

    def _request(self, method: str, path: str, body: dict | None,
                 stop: threading.Event | None = None) -> tuple[dict, int]:
        """Send with retries; return (the JSON reply, attempts)."""
        url = self.base_url + path
        data = None if body is None else json.dumps(body).encode()
        last = ""
        for attempt in range(self.max_retries + 1):
            if stop is not None and stop.is_set():
                raise _Stopped
            retry_after = None
            req = urllib.request.Request(url, data=data, method=method, headers=self._headers())
            self.requests += 1
            expired = threading.Event()

            def _expire(req=req, expired=expired):
                expired.set()
                _cut_connection(req)

            watchdog = threading.Timer(self.timeout, _expire)
            watchdog.daemon = True
            watchdog.start()
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                reply = json.loads(raw)
                if not isinstance(reply, dict):
                    raise ValueError("the reply is not a JSON object")  # noqa: TRY004 - retried
                return reply, attempt + 1
            except urllib.error.HTTPError as exc:
                try:
                    detail = exc.read(4000).decode("utf-8", "replace")
                except (OSError, http.client.HTTPException):
                    detail = ""
                err: Any = detail
                try:
                    err = json.loads(detail)["error"]
                    msg = err.get("message", err) if isinstance(err, dict) else err
                except (ValueError, KeyError, TypeError):
                    msg = detail
                msg = self._scrub(" ".join(str(msg).split())[:300])
                if exc.code not in RETRY_STATUS:
                    text = f"HTTP {exc.code} from {url}: {msg or exc.reason}"
                    setting = isinstance(err, dict) and str(err.get("param") or "") \
                        not in _PROMPT_PARAMS
                    if 400 <= exc.code < 500 and exc.code not in RUN_ERROR_STATUS \
                            and method == "POST" and not setting:
                        raise _PromptRejected(
                            text, policy=is_policy_rejection(err) or is_policy_rejection(msg)
                        ) from None
                    raise APIError(text) from None
                retry_after = parse_retry_after(exc.headers)
                last = f"HTTP {exc.code} {msg}".strip()
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                    TimeoutError, ValueError, OSError) as exc:
                if isinstance(exc, APIError):
                    raise
                reason = getattr(exc, "reason", None) or exc
                if expired.is_set():
                    reason = f"no complete answer within {self.timeout:g} s (--request-timeout)"
                last = self._scrub(f"{type(exc).__name__}: {reason}")
            finally:
                watchdog.cancel()
            if attempt == self.max_retries:
                break
            delay = min(self.max_backoff, self.backoff * 2 ** attempt)
            with self._rng_lock:
                delay = self._rng.uniform(delay / 2, delay)
            if retry_after is not None:
                delay = max(delay, min(retry_after, 600.0))
            if stop is not None:
                if stop.wait(delay):
                    raise _Stopped
            else:
                time.sleep(delay)
        raise APIError(f"{url}: no answer after {self.max_retries + 1} attempts (last: {last}); "
                       "the finished rows are written, continue with --resume")

    def _check_model(self) -> None:
        try:
            reply, _ = self._request("GET", "/models", None)
        except APIError as exc:
            if "HTTP 4" in str(exc) and "HTTP 401" not in str(exc) and "HTTP 403" not in str(exc):
                return  # a server without /models: nothing to check
            raise
        data = reply.get("data")
        if not isinstance(data, list):
            return
        ids = [m.get("id") for m in data if isinstance(m, dict)]
        if ids and self.model_id not in ids:
            shown = ", ".join(map(str, ids[:10])) + (" ..." if len(ids) > 10 else "")
            raise ValueError(f"{self.base_url} does not serve model {self.model_id!r}; it serves "
                             f"{shown}")
        for m in data:
            if isinstance(m, dict) and m.get("id") == self.model_id:
                self.served = {k: m[k] for k in ("id", "owned_by", "root", "max_model_len")
                               if k in m}

    # -- the seam ---------------------------------------------------------------------------
    def render(self, messages: Sequence[dict]) -> str:
        """The chat as canonical JSON: the server applies the chat template."""
        return json.dumps([{"role": m["role"], "content": m["content"]} for m in messages],
                          ensure_ascii=False, separators=(",", ":"))

    def count_tokens(self, prompts: Sequence[str]) -> list[int]:
        """An estimate (characters / 4) for batch planning; rows record the server's usage."""
        return [max(1, len(p) // 4) for p in prompts]

    def token_budget(self, params: DecodingParams) -> int:
        return 1 << 40  # no device memory here: the row cap decides

    def max_batch_rows(self) -> int | None:
        """8 requests per worker: few idle workers at a batch's end, little work per shard lost."""
        return 8 * self.concurrency

    def _body(self, prompt: str, params: DecodingParams) -> dict:
        body = dict(self.extra_body)
        body.update(model=self.model_id, messages=json.loads(prompt), temperature=0,
                    max_tokens=int(params.max_new_tokens))
        return body

    def _complete(self, prompt: str, params: DecodingParams, stop: threading.Event) -> Completion:
        body = self._body(prompt, params)
        for _ in range(self.max_retries + 1):
            try:
                reply, attempts = self._request("POST", "/chat/completions", body, stop)
            except _PromptRejected as exc:
                # about this prompt alone: a row, not the end of the run
                reason = self._scrub(str(exc))
                return Completion(text="", n_prompt_tokens=0, n_new_tokens=0,
                                  finish_reason="rejected",
                                  extra={"system_fingerprint": None, "api_model": None,
                                         "request_attempts": 1},
                                  provider_refusal=f"policy rejection: {reason}" if exc.policy
                                  else None,
                                  error=None if exc.policy else reason)
            choices = reply.get("choices")
            if isinstance(choices, list) and choices and isinstance(choices[0], dict):
                break
            if "error" in reply:
                raise APIError(f"{self.base_url}/chat/completions: "
                               f"{self._scrub(str(reply['error'])[:300])}")
        else:
            raise APIError(f"{self.base_url}/chat/completions answered without choices")
        choice = choices[0]
        message = choice.get("message")
        finish = str(choice.get("finish_reason") or "unknown")
        refusal = None
        if not isinstance(message, dict):
            refusal, message = "choice without a message", {}
        content = message.get("content")
        text = message_text(content)
        said = message.get("refusal") or _parts_refusal(content)
        if said:
            refusal = "message.refusal"
            text = text or message_text(said)
        if finish == "content_filter":
            refusal = "finish_reason content_filter"
        usage = reply.get("usage") or {}
        n_new = usage.get("completion_tokens")
        return Completion(
            text=str(text),
            n_prompt_tokens=int(usage.get("prompt_tokens") or 0),
            n_new_tokens=int(n_new) if n_new is not None else 0,
            finish_reason=finish,
            extra={"system_fingerprint": reply.get("system_fingerprint"),
                   "api_model": reply.get("model"), "request_attempts": int(attempts)},
            provider_refusal=refusal,
        )

    def generate(self, prompts: Sequence[str], params: DecodingParams) -> list[Completion]:
        """Send the prompts with ``concurrency`` requests in flight; answers in order.

        The first request that fails for good stops the others (no new requests start) and
        raises; nothing of the batch is returned, so it is redone on resume.
        """
        if params.stop_token_ids:
            raise ValueError("the openai backend takes no stop_token_ids (they are token ids of "
                             "a local tokenizer)")
        n = len(prompts)
        if n == 0:
            return []
        results: list[Completion | None] = [None] * n
        errors: list[BaseException] = []
        stop = threading.Event()
        lock = threading.Lock()
        cursor = iter(range(n))

        def work():
            while not stop.is_set():
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                try:
                    results[i] = self._complete(prompts[i], params, stop)
                except _Stopped:
                    return
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    with lock:
                        errors.append(exc)
                    stop.set()
                    return

        # daemon threads: an interrupted run does not wait for requests in flight to end
        threads = [threading.Thread(target=work, daemon=True, name=f"openai-{k}")
                   for k in range(min(self.concurrency, n))]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(0.05)
        except BaseException:
            stop.set()
            raise
        if errors:
            raise errors[0]
        return results  # type: ignore[return-value]

    # -- metadata ---------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Engine, model name and extra request fields (not the URL: servers move)."""
        return {"engine": self.engine, "model": self.model_id,
                "extra_body": json.dumps(self.extra_body, sort_keys=True)}

    def info(self) -> dict[str, Any]:
        """Model name, URL, client settings and what the server says about the model.

        The key is not part of it; only the name of the variable it came from.
        """
        return {
            "engine": self.engine, "model_id": self.model_id, "base_url": self.base_url,
            "api_key_env": self.api_key_env, "api_key_set": self._key is not None,
            "concurrency": self.concurrency, "timeout": self.timeout,
            "max_retries": self.max_retries, "extra_body": self.extra_body,
            "served": self.served, "system_role": self.supports_system_role(),
            "versions": package_versions(),
        }
