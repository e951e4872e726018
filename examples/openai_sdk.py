"""The official OpenAI SDK through semproxy: only `base_url` changes.

Start the proxy first (`semproxy serve`), then:  OPENAI_API_KEY=sk-... python examples/openai_sdk.py
"""

from __future__ import annotations

import time

from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8080/v1")  # the API key still comes from OPENAI_API_KEY

for question in ("What is the capital of France?", "What is the capital of France?",
                 "What's the capital city of France?"):
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": question}], temperature=0)
    answer = raw.parse().choices[0].message.content
    elapsed = (time.perf_counter() - started) * 1000
    print(f"{raw.headers.get('x-semproxy-cache'):>8}  {elapsed:7.1f} ms  {question!r} -> {answer!r}")

# Streaming works the same way; a cached answer is replayed as a stream.
for chunk in client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0, stream=True):
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
