"""A scriptable OpenAI-compatible HTTP server on loopback, for fault-injection tests.

The real llama.cpp server cannot be told to rate-limit, crash or hang on demand, so the LLM
wrapper's retry, timeout and pass-through logic is tested against this small stdlib server.
It answers ``POST /v1/chat/completions`` and ``POST /v1/completions`` with valid OpenAI-style
JSON, unless the next entry of its *script* says otherwise (429 with ``Retry-After``, 500, a
hang, malformed JSON, 400). Every request is recorded (path, headers, JSON body) and the peak
number of simultaneous requests is tracked.

Bounds: it binds 127.0.0.1 only, reads at most 1 MiB per request body, and a hang ends when
its delay elapses or the server stops, whichever comes first.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "FaultServer",
    "RecordedRequest",
    "Reply",
    "bad_request",
    "hang",
    "malformed",
    "ok",
    "rate_limited",
    "running_fault_server",
    "server_error",
]

MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    Attributes:
        status: HTTP status code to send.
        body: Raw body bytes; ``None`` sends a valid completion built from the request.
        headers: Extra response headers (e.g. ``Retry-After``).
        delay_s: Seconds to wait before answering (a hang when longer than the client timeout).
    """

    status: int = 200
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0


def ok(delay_s: float = 0.0) -> Reply:
    """A valid completion, optionally after ``delay_s`` seconds."""
    return Reply(delay_s=delay_s)


def rate_limited(retry_after: str = "1") -> Reply:
    """HTTP 429 with a ``Retry-After`` header."""
    body = _error_body("rate limit reached, slow down", "rate_limit_exceeded")
    return Reply(status=429, body=body, headers=(("Retry-After", retry_after),))


def server_error() -> Reply:
    """HTTP 500 with an OpenAI-style error body."""
    return Reply(status=500, body=_error_body("the server had an error", "server_error"))


def bad_request() -> Reply:
    """HTTP 400: the request itself is wrong, so retrying cannot help."""
    return Reply(status=400, body=_error_body("unsupported parameter", "invalid_request_error"))


def hang(delay_s: float = 30.0) -> Reply:
    """Accept the request and answer only after ``delay_s`` seconds."""
    return Reply(delay_s=delay_s)


def malformed() -> Reply:
    """HTTP 200 whose body is truncated JSON."""
    return Reply(status=200, body=b'{"id": "broken", "choices": [{"message": ')


def _error_body(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": code, "code": code}}).encode()


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the server saw it (header names lower-cased).

    ``client_port`` identifies the TCP connection it came on (to count pooled connections).
    """

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    client_port: int = 0


@dataclass
class FaultServer:
    """State shared by the handler threads: the script, the record and the in-flight count.

    Attributes:
        host: Bound address (always loopback).
        port: Bound port (chosen by the OS).
        script: Replies still to send, in order; once empty every request gets :func:`ok`.
        default_delay_s: Delay of the implicit ``ok`` replies (to make requests overlap).
        requests: Every request received, in arrival order.
        max_in_flight: Peak number of requests being handled at the same time.
    """

    host: str = "127.0.0.1"
    port: int = 0
    script: deque[Reply] = field(default_factory=deque)
    default_delay_s: float = 0.0
    requests: list[RecordedRequest] = field(default_factory=list)
    max_in_flight: int = 0
    _in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def api_base(self) -> str:
        """OpenAI-style base URL of the server."""
        return f"http://{self.host}:{self.port}/v1"

    def push(self, replies: Iterable[Reply]) -> None:
        """Append replies to the script."""
        with self._lock:
            self.script.extend(replies)

    def reset(self) -> None:
        """Forget the script, the recorded requests and the peak concurrency."""
        with self._lock:
            self.script.clear()
            self.requests.clear()
            self.max_in_flight = 0

    def _begin(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            return self.script.popleft() if self.script else ok(self.default_delay_s)

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _wait(self, seconds: float) -> None:
        self._stopping.wait(seconds)


def _completion_body(path: str, request: dict[str, Any], index: int) -> bytes:
    """A valid chat or text completion echoing the request's last input."""
    model = str(request.get("model", "fault-model"))
    prompt = request.get("prompt")
    messages = request.get("messages") or [{"content": ""}]
    echoed = prompt if isinstance(prompt, str) else str(messages[-1].get("content", ""))
    text = f"reply {index} to: {echoed}"
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    base = {"id": f"fault-{index}", "created": int(time.time()), "model": model, "usage": usage}
    wants_logprobs = bool(request.get("logprobs"))
    if path.endswith("/chat/completions"):
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        if wants_logprobs:
            first = {"token": "reply", "logprob": -0.5, "bytes": None, "top_logprobs": []}
            choice["logprobs"] = {"content": [first]}
        return json.dumps({**base, "object": "chat.completion", "choices": [choice]}).encode()
    logprobs = {"tokens": ["reply"], "token_logprobs": [-0.5], "top_logprobs": None}
    choice = {"index": 0, "text": text, "finish_reason": "stop"}
    choice["logprobs"] = {**logprobs, "text_offset": [0]} if wants_logprobs else None
    return json.dumps({**base, "object": "text_completion", "choices": [choice]}).encode()


class _Handler(BaseHTTPRequestHandler):
    """Serves one request according to the shared :class:`FaultServer` script."""

    state: FaultServer  # set on a per-server subclass
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr logging
        return

    def do_POST(self) -> None:
        if self.path not in ("/v1/chat/completions", "/v1/completions"):
            self._send(404, _error_body(f"no route {self.path}", "not_found"), ())
            return
        body = self._read_json()
        port = int(self.client_address[1])
        reply = self.state._begin(RecordedRequest(self.path, self._headers(), body, port))
        try:
            self._answer(reply, body)
        finally:
            self.state._end()

    def _answer(self, reply: Reply, body: dict[str, Any]) -> None:
        if reply.delay_s:
            self.state._wait(reply.delay_s)
        if self.state._stopping.is_set():
            self.close_connection = True
            return
        index = len(self.state.requests) - 1
        payload = reply.body or _completion_body(self.path, body, index)
        self._send(reply.status, payload, reply.headers)

    def _read_json(self) -> dict[str, Any]:
        length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY_BYTES)
        raw = self.rfile.read(length) if length else b"{}"
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            return {"_unparsed": raw.decode(errors="replace")}
        return parsed if isinstance(parsed, dict) else {"_value": parsed}

    def _headers(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.headers.items()}

    def _send(self, status: int, payload: bytes, headers: Iterable[tuple[str, str]]) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. it timed out on a hang): nothing left to tell it


@contextmanager
def running_fault_server(default_delay_s: float = 0.0) -> Iterator[FaultServer]:
    """Start a :class:`FaultServer` on a free loopback port; stop it on exit."""
    state = FaultServer(default_delay_s=default_delay_s)
    handler = type("_BoundHandler", (_Handler,), {"state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-server", daemon=True
    )
    thread.start()
    try:
        yield state
    finally:
        state._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
