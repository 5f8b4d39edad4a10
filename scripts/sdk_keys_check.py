"""Official SDKs against a keys-mode Pylon: 401/403/429 raise the right exception classes,
and the SDKs' own retry honours Pylon's Retry-After.

Usage: sdk_keys_check.py BASE_URL ADMIN_TOKEN
"""

import json
import sys
import time
import traceback
import urllib.request

import anthropic
import openai

BASE, ADMIN = sys.argv[1], sys.argv[2]
HELLO = [{"role": "user", "content": "hello"}]
results = []


def new_key(**body):
    req = urllib.request.Request(
        f"{BASE}/admin/v1/keys",
        data=json.dumps({"name": "sdk", **body}).encode(),
        headers={"authorization": f"Bearer {ADMIN}", "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req) as r:
        return json.load(r)["key"]


def check(name):
    def wrap(fn):
        try:
            fn()
            results.append((name, None))
            print(f"ok   {name}")
        except Exception as e:  # noqa: BLE001 - every failure is reported
            results.append((name, e))
            print(f"FAIL {name}: {e!r}")
            traceback.print_exc()
        return fn

    return wrap


def expect(exc, fn):
    try:
        fn()
    except exc as e:
        return e
    raise AssertionError(f"expected {exc.__name__}")


@check("a valid key works in both SDKs")
def _():
    key = new_key()
    o = openai.OpenAI(base_url=f"{BASE}/v1", api_key=key, max_retries=0)
    assert o.chat.completions.create(model="chat", messages=HELLO).choices[0].message.content
    a = anthropic.Anthropic(base_url=BASE, api_key=key, max_retries=0)
    assert a.messages.create(model="chat", max_tokens=16, messages=HELLO).content[0].text


@check("401: AuthenticationError in both SDKs")
def _():
    o = openai.OpenAI(base_url=f"{BASE}/v1", api_key="pk-wrong", max_retries=0)
    expect(openai.AuthenticationError, lambda: o.chat.completions.create(model="chat", messages=HELLO))
    a = anthropic.Anthropic(base_url=BASE, api_key="pk-wrong", max_retries=0)
    expect(anthropic.AuthenticationError, lambda: a.messages.create(model="chat", max_tokens=8, messages=HELLO))


@check("403: PermissionDeniedError for a model the key may not use")
def _():
    key = new_key(allowed_models=["chat"])
    o = openai.OpenAI(base_url=f"{BASE}/v1", api_key=key, max_retries=0)
    expect(openai.PermissionDeniedError, lambda: o.chat.completions.create(model="other", messages=HELLO))
    a = anthropic.Anthropic(base_url=BASE, api_key=key, max_retries=0)
    expect(anthropic.PermissionDeniedError, lambda: a.messages.create(model="other", max_tokens=8, messages=HELLO))


@check("429: RateLimitError with Retry-After in both SDKs")
def _():
    key = new_key(limits={"rpm": 1})
    o = openai.OpenAI(base_url=f"{BASE}/v1", api_key=key, max_retries=0)
    o.chat.completions.create(model="chat", messages=HELLO)
    e = expect(openai.RateLimitError, lambda: o.chat.completions.create(model="chat", messages=HELLO))
    assert int(e.response.headers["retry-after"]) >= 1, e.response.headers
    a = anthropic.Anthropic(base_url=BASE, api_key=key, max_retries=0)
    e = expect(anthropic.RateLimitError, lambda: a.messages.create(model="chat", max_tokens=8, messages=HELLO))
    assert int(e.response.headers["retry-after"]) >= 1


@check("the SDK's retry waits for Retry-After, then succeeds")
def _():
    key = new_key(limits={"rpm": 60})  # a burst of 60, then one request per second
    fast = openai.OpenAI(base_url=f"{BASE}/v1", api_key=key, max_retries=0)
    for _ in range(60):
        fast.chat.completions.create(model="chat", messages=HELLO)
    o = openai.OpenAI(base_url=f"{BASE}/v1", api_key=key, max_retries=2)
    started = time.monotonic()
    raw = o.chat.completions.with_raw_response.create(model="chat", messages=HELLO)
    waited = time.monotonic() - started
    r = raw.parse()
    # The first try was refused (the burst is spent); the SDK waited as told and retried.
    assert r.choices[0].message.content and raw.retries_taken >= 1, (raw.retries_taken, waited)
    assert waited > 0.01, waited


@check("spent budget: RateLimitError that the SDK does not retry")
def _():
    key = new_key(budget={"amount_usd": 0.000001, "period": "daily"})
    o = openai.OpenAI(base_url=f"{BASE}/v1", api_key=key, max_retries=3)
    o.chat.completions.create(model="chat", messages=HELLO)
    for _ in range(50):  # spend is settled just after the response
        started = time.monotonic()
        try:
            o.chat.completions.create(model="chat", messages=HELLO)
            time.sleep(0.05)
            continue
        except openai.RateLimitError as e:
            assert e.code == "insufficient_quota", e
            assert time.monotonic() - started < 1.0, "not retried"
            return
    raise AssertionError("budget never enforced")


failed = sum(1 for _, e in results if e)
print(f"sdk-keys: {len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
