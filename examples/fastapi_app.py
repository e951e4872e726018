"""An existing FastAPI app with its own OpenAI-compatible route, cached by semproxy in one line.

Run it:  uvicorn examples.fastapi_app:app --port 8000
Then:    curl localhost:8000/v1/chat/completions -H 'content-type: application/json' \
              -d '{"model": "echo", "messages": [{"role": "user", "content": "hello"}]}' -i
The second identical call answers from the cache (`x-semproxy-cache: exact`); a reworded one can answer
semantically. Settings come from SEMPROXY_* variables or a TOML file named by SEMPROXY_CONFIG.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from semproxy import SemanticCacheMiddleware, load_settings

app = FastAPI(title="my model server")


def _answer(prompt: str) -> str:
    """Stands in for your model: slow and costly in real life."""
    time.sleep(0.05)
    return f"You said: {prompt}"


@app.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Any:
    body = await request.json()
    text = _answer(body["messages"][-1]["content"])
    completion = {
        "id": f"chatcmpl-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
        "model": body["model"],
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    }
    if body.get("stream"):
        return StreamingResponse(_as_events(completion), media_type="text/event-stream")
    return JSONResponse(completion)


def _as_events(completion: dict[str, Any]) -> Iterator[str]:
    head = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    for word in completion["choices"][0]["message"]["content"].split(" "):
        yield f"data: {json.dumps(head | {'choices': [{'index': 0, 'delta': {'content': word + ' '}}]})}\n\n"
    yield f"data: {json.dumps(head | {'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'stop'}]})}\n\n"
    yield "data: [DONE]\n\n"


# The one line: every POST to /v1/chat/completions, /v1/completions and /v1/embeddings is now cached.
app.add_middleware(SemanticCacheMiddleware, settings=load_settings())
