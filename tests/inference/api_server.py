"""A loopback OpenAI-compatible chat server for tests: canned answers and injected faults.

``FakeChatServer(fault=...)`` serves ``GET /v1/models`` and ``POST /v1/chat/completions``
on 127.0.0.1 (a free port) in a thread. The answer is a pure function of the messages
(:func:`canned_answer`); ``fault(server, request)`` may instead return ``("status", code,
headers)``, ``"drop"`` (close the connection without a reply) or ``("sleep", seconds)``
before answering. Every request is logged (time, path, messages key, outcome). At most
``max_requests`` are served; later ones get HTTP 400, so a test cannot loop forever.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fake_backend import answer_for

#: How often a server thread looks for ``shutdown()``: ``serve_forever``'s default of 0.5 s
#: made every ``with FakeChatServer()`` block end up to half a second late.
POLL_INTERVAL = 0.01


def serve_in_thread(httpd) -> threading.Thread:
    """A daemon thread (not started) running ``httpd.serve_forever`` with a short poll."""
    return threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": POLL_INTERVAL},
                            daemon=True)


def send_json_head(handler: BaseHTTPRequestHandler, code: int, obj, headers=None) -> bytes:
    """Send a JSON reply's status line and headers; return the body for the caller to write
    (at once, or a byte at a time for a trickling server)."""
    data = json.dumps(obj).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    return data


def messages_key(messages) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()[:16]


def canned_answer(messages) -> str:
    """The server's answer to a chat (deterministic)."""
    return answer_for(json.dumps(messages, sort_keys=True))


class FakeChatServer:
    def __init__(self, *, key: str | None = None, model: str = "fake-model", fault=None,
                 answer=canned_answer, max_requests: int = 2000, list_models=True,
                 key_in_error: bool = True):
        self.key, self.model, self.fault, self.answer = key, model, fault, answer
        self.max_requests = max_requests
        self.list_models = list_models
        self.key_in_error = key_in_error
        self.log: list[dict] = []
        self.auth_seen: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, obj, headers=None):
                self.wfile.write(send_json_head(self, code, obj, headers))

            def _auth_ok(self):
                got = self.headers.get("Authorization", "")
                with server.lock:
                    server.auth_seen.add(got)
                if server.key is None or got == f"Bearer {server.key}":
                    return True
                shown = got.removeprefix("Bearer ") if server.key_in_error else "?"
                self._send(401, {"error": {"message": f"Incorrect API key provided: {shown}",
                                           "type": "invalid_request_error"}})
                return False

            def do_GET(self):
                with server.lock:
                    server.log.append({"t": time.monotonic(), "path": self.path})
                if not self._auth_ok():
                    return
                if self.path.rstrip("/") == "/v1/models" and server.list_models:
                    self._send(200, {"object": "list", "data": [
                        {"id": server.model, "object": "model", "max_model_len": 4096}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n))
                key = messages_key(body.get("messages"))
                with server.lock:
                    server.attempts[key] = server.attempts.get(key, 0) + 1
                    entry = {"t": time.monotonic(), "path": self.path, "key": key,
                             "attempt": server.attempts[key], "index": len(server.log),
                             "body": body}
                    server.log.append(entry)
                    over = len(server.log) > server.max_requests
                if over:
                    entry["outcome"] = 400
                    self._send(400, {"error": {"message": "test server: too many requests"}})
                    return
                if not self._auth_ok():
                    entry["outcome"] = 401
                    return
                action = server.fault(server, entry) if server.fault else None
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                    action = None
                if action == "drop":
                    entry["outcome"] = "drop"
                    self.close_connection = True
                    return
                if isinstance(action, tuple) and action[0] == "status":
                    entry["outcome"] = action[1]
                    self._send(action[1], {"error": {"message": f"injected {action[1]}"}},
                               action[2] if len(action) > 2 else None)
                    return
                text = server.answer(body["messages"])
                entry["outcome"] = 200
                n_prompt = sum(len(m["content"].split()) for m in body["messages"])
                self._send(200, {
                    "id": f"chatcmpl-{key}", "object": "chat.completion", "created": 0,
                    "model": server.model, "system_fingerprint": "fp_test",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(text.split()),
                              "total_tokens": n_prompt + len(text.split())},
                })

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = serve_in_thread(self.httpd)

    def posts(self):
        return [e for e in self.log if "key" in e]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        return False
