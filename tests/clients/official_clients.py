#!/usr/bin/env python3
"""Official clients against the guard: PyPI's `ollama` (the Ollama Python library) and `openai`
(the OpenAI Python SDK), as a homelab's tools use them.

Usage: official_clients.py GUARD_URL PINNED OTHER
Each call is what such a tool sends: a chat with its own num_ctx, a generate with keep_alive 0,
an OpenAI-SDK chat, and a request for another model, which the guard must refuse with 409 in
Ollama's error shape (the ollama library raises ResponseError, the SDK a ConflictError-like
APIStatusError). The caller checks that the pinned model's runner process never changed.
Prints "official clients: ok" when every call behaved; exits 1 with the first surprise.
"""
import sys


def main():
    if len(sys.argv) != 4:
        sys.exit("usage: official_clients.py GUARD_URL PINNED OTHER")
    url, pinned, other = sys.argv[1:]
    try:
        import ollama
        import openai
    except ImportError as e:
        sys.exit(f"error: {e}; install them with: python3 -m pip install ollama==0.6.1 openai")

    c = ollama.Client(host=url, timeout=60)
    r = c.chat(model=pinned, messages=[{"role": "user", "content": "hello"}], options={"num_ctx": 1024, "num_predict": 4})
    assert r.message.role == "assistant", r
    r = c.generate(model=pinned, prompt="hello", keep_alive=0, options={"num_predict": 4})
    assert r.done, r
    chunks = list(c.generate(model=pinned, prompt="hello", stream=True, keep_alive="5m", options={"num_predict": 4}))
    assert chunks and chunks[-1].done, chunks
    try:
        c.generate(model=other, prompt="hello")
        sys.exit(f"error: the guard let a request for {other} through")
    except ollama.ResponseError as e:
        assert e.status_code == 409, (e.status_code, e.error)
        assert pinned in e.error, e.error
    names = [m.model for m in c.ps().models]
    assert names == [pinned if ":" in pinned else pinned + ":latest"], names

    o = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60, max_retries=0)
    r = o.chat.completions.create(model=pinned, messages=[{"role": "user", "content": "hello"}], max_tokens=4)
    assert r.choices and r.choices[0].message.role == "assistant", r
    stream = o.chat.completions.create(model=pinned, messages=[{"role": "user", "content": "hello"}], max_tokens=4, stream=True)
    assert list(stream), "an empty stream"
    try:
        o.chat.completions.create(model=other, messages=[{"role": "user", "content": "hello"}], max_tokens=4)
        sys.exit(f"error: the guard let an OpenAI request for {other} through")
    except openai.APIStatusError as e:
        assert e.status_code == 409, e
        # The refusal in OpenAI's shape: the SDK shows its words.
        assert pinned in str(e.message), e.message
    print("official clients: ok")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        sys.exit(f"error: unexpected answer: {e}")
