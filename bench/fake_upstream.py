"""An instant OpenAI-compatible upstream for benchmarks: what a proxy adds is measured on top of it.

Raw ASGI under uvicorn (httptools, keep-alive), so the upstream itself costs as little as possible.
Answers POST /v1/chat/completions (JSON, or SSE with "stream": true), POST /v1/embeddings, GET /v1/models.
A chat whose last message is ECHO_SYSTEM is answered with the system prompt the upstream received (what a
compressing proxy sent).

    .venv/bin/python bench/fake_upstream.py --port 18080      # base URL http://127.0.0.1:18080/v1
    .venv/bin/python bench/fake_upstream.py --delay-ms 50     # completions take 50 ms, like a fast model
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

DELAY = {"seconds": 0.0}  # set by --delay-ms
ECHO_SYSTEM = "Echo the system prompt."
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream")]


def _completion(body: dict[str, Any]) -> dict[str, Any]:
    messages = body.get("messages", [{}])
    prompt = messages[-1].get("content", "")
    answer = f"Answer to: {prompt[:200]}"
    if prompt == ECHO_SYSTEM:
        answer = next((m.get("content", "") for m in messages if m.get("role") in ("system", "developer")), "")
    return {
        "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()),
        "model": body.get("model", "bench-model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 12, "total_tokens": 32},
    }


def _events(completion: dict[str, Any]) -> bytes:
    head = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"]}
    text = completion["choices"][0]["message"]["content"]
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                    "finish_reason": None}]},
              {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]
    return b"".join(f"data: {json.dumps(c)}\n\n".encode() for c in chunks) + b"data: [DONE]\n\n"


async def request_body(receive: Any) -> bytes:
    """The whole body of an ASGI request."""
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            return raw


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    raw = await request_body(receive)
    status, headers, body = _answer(scope["method"], scope["path"], raw)
    if DELAY["seconds"] and scope["path"].endswith("completions"):
        await asyncio.sleep(DELAY["seconds"])
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _answer(method: str, path: str, raw: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    if method == "POST" and path.endswith("/chat/completions"):
        body = json.loads(raw)
        completion = _completion(body)
        if body.get("stream"):
            return 200, _SSE, _events(completion)
        return 200, _JSON, json.dumps(completion).encode()
    if method == "POST" and path.endswith("/embeddings"):
        return 200, _JSON, json.dumps({"object": "list", "data": [{"object": "embedding", "index": 0,
                                                                   "embedding": [0.1] * 8}]}).encode()
    if method == "GET" and path.endswith("/models"):
        return 200, _JSON, json.dumps({"object": "list", "data": [{"id": "bench-model", "object": "model"}]}).encode()
    return 404, _JSON, b'{"error": {"message": "not found", "type": "invalid_request_error"}}'


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="time a completion takes")
    args = parser.parse_args()
    DELAY["seconds"] = args.delay_ms / 1000
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
