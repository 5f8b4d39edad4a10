"""The official OpenAI and Anthropic Python SDKs, unchanged, against a running `pylon demo`.

Usage: sdk_check.py BASE_URL   (e.g. http://127.0.0.1:18080)
Prints one line per check and a closing 'N passed, N failed' line; exits non-zero on failure.
"""

import json
import sys
import traceback

import anthropic
import openai

BASE = sys.argv[1]
oai = openai.OpenAI(base_url=f"{BASE}/v1", api_key="client-key-unused", max_retries=0)
ant = anthropic.Anthropic(base_url=BASE, api_key="client-key-unused", max_retries=0)
HELLO = [{"role": "user", "content": "hello"}]
results = []


def check(name):
    def wrap(fn):
        try:
            fn()
            results.append((name, None))
            print(f"ok   {name}")
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
            results.append((name, e))
            print(f"FAIL {name}: {e!r}")
            traceback.print_exc()
        return fn

    return wrap


@check("openai: models.list")
def _():
    ids = [m.id for m in oai.models.list()]
    assert "chat" in ids and "claude-sonnet" in ids, ids


@check("openai: chat non-stream through every provider")
def _():
    for model in ["gpt-4o-mini", "claude-sonnet", "gemini-flash"]:
        r = oai.chat.completions.create(model=model, messages=HELLO)
        assert r.choices[0].message.content.endswith("You said: hello"), r
        assert r.usage.completion_tokens > 0, r


@check("openai: chat stream with usage through every provider")
def _():
    for model in ["gpt-4o-mini", "claude-sonnet", "gemini-flash"]:
        text, usage = "", None
        for chunk in oai.chat.completions.create(
            model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}
        ):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
        assert text.endswith("You said: hello"), (model, text)
        assert usage and usage.completion_tokens > 0, (model, usage)


@check("openai: a cached answer replays as a stream the SDK parses, and vice versa")
def _():
    import uuid

    msgs = [{"role": "user", "content": f"cache me {uuid.uuid4()}"}]
    first = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=msgs, temperature=0)
    assert first.headers["x-pylon-cache"] == "miss", first.headers
    whole = first.parse().choices[0].message.content
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=msgs, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    assert raw.headers["x-pylon-cache"] == "hit", raw.headers
    text, usage, finish = "", None, None
    for chunk in raw.parse():
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert text == whole and finish == "stop" and usage.completion_tokens > 0, (text, whole, finish, usage)
    # A stream stored first serves a later non-stream request.
    msgs = [{"role": "user", "content": f"stream first {uuid.uuid4()}"}]
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in oai.chat.completions.create(model="claude-sonnet", messages=msgs, temperature=0, stream=True)
        if c.choices
    )
    again = oai.chat.completions.with_raw_response.create(model="claude-sonnet", messages=msgs, temperature=0)
    assert again.headers["x-pylon-cache"] == "hit", again.headers
    assert again.parse().choices[0].message.content == streamed


@check("openai: tool calls")
def _():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    for model in ["gpt-4o-mini", "claude-sonnet", "gemini-flash"]:
        r = oai.chat.completions.create(model=model, messages=HELLO, tools=tools)
        call = r.choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather", r
        assert json.loads(call.function.arguments)["input"] == "hello", r
        assert r.choices[0].finish_reason == "tool_calls", r


@check("openai: embeddings")
def _():
    r = oai.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 64, r


@check("openai: unknown model raises NotFoundError")
def _():
    try:
        oai.chat.completions.create(model="no-such-model", messages=HELLO)
    except openai.NotFoundError as e:
        assert "no-such-model" in str(e), e
    else:
        raise AssertionError("no error")


@check("openai: invalid request raises BadRequestError")
def _():
    try:
        oai.chat.completions.create(model="chat", messages=[])
    except openai.BadRequestError:
        pass
    else:
        raise AssertionError("no error")


MODELS = ["gpt-4o-mini", "claude-sonnet", "gemini-flash", "azure-gpt", "bedrock-claude"]
TOOL = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"input": {"type": "string"}}}}]


@check("openai: responses non-stream through every provider, kept and continued")
def _():
    for model in MODELS:
        r = oai.responses.create(model=model, input="hello", instructions="Be brief.")
        assert r.status == "completed" and r.output_text.endswith("You said: hello"), r
        assert r.usage.output_tokens > 0 and r.usage.input_tokens > 0, r
        again = oai.responses.retrieve(r.id)
        assert again.output_text == r.output_text, again
        nxt = oai.responses.create(model=model, input="and again", previous_response_id=r.id)
        assert nxt.output_text.endswith("You said: and again"), nxt
        # The earlier turn was sent along: the provider counted more input.
        assert nxt.usage.input_tokens > r.usage.input_tokens, (nxt.usage, r.usage)
        items = oai.responses.input_items.list(nxt.id)
        assert len(items.data) >= 3, items
        oai.responses.delete(r.id)
        try:
            oai.responses.retrieve(r.id)
        except openai.NotFoundError:
            pass
        else:
            raise AssertionError("deleted response still readable")


@check("openai: responses stream through every provider")
def _():
    for model in MODELS:
        kinds, text, final = [], "", None
        with oai.responses.stream(model=model, input="hello") as stream:
            for event in stream:
                kinds.append(event.type)
                if event.type == "response.output_text.delta":
                    text += event.delta
            final = stream.get_final_response()
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
        assert text.endswith("You said: hello") and final.output_text == text, (text, final)
        assert final.usage.total_tokens > 0, final
        assert oai.responses.retrieve(final.id).output_text == text


@check("openai: responses function tools, stream and non-stream, through every provider")
def _():
    for model in MODELS:
        r = oai.responses.create(model=model, input="weather in Oslo?", tools=TOOL)
        call = [o for o in r.output if o.type == "function_call"][0]
        assert call.name == "get_weather" and json.loads(call.arguments)["input"], call
        done = oai.responses.create(
            model=model,
            previous_response_id=r.id,
            tools=TOOL,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        )
        assert done.output_text, done
        args = ""
        for event in oai.responses.create(model=model, input="weather?", tools=TOOL, stream=True):
            if event.type == "response.function_call_arguments.delta":
                args += event.delta
            if event.type == "response.completed":
                streamed = [o for o in event.response.output if o.type == "function_call"][0]
        assert json.loads(args) == json.loads(streamed.arguments), (args, streamed)


@check("openai: responses with a built-in tool to a translated provider raises BadRequestError")
def _():
    try:
        oai.responses.create(model="claude-sonnet", input="x", tools=[{"type": "web_search_preview"}])
    except openai.BadRequestError as e:
        assert "web_search_preview" in str(e), e
    else:
        raise AssertionError("no error")


@check("openai: completions (legacy) to an OpenAI provider; refused by name elsewhere")
def _():
    r = oai.completions.create(model="gpt-4o-mini", prompt="hello", max_tokens=16)
    assert r.choices[0].text and r.usage.completion_tokens > 0, r
    try:
        oai.completions.create(model="claude-sonnet", prompt="hello")
    except openai.BadRequestError as e:
        assert "completions" in str(e), e
    else:
        raise AssertionError("no error")


@check("openai: models.retrieve")
def _():
    assert oai.models.retrieve("claude-sonnet").id == "claude-sonnet"
    try:
        oai.models.retrieve("no-such-model")
    except openai.NotFoundError:
        pass
    else:
        raise AssertionError("no error")


@check("openai-agents: a one-tool agent run through every provider")
def _():
    import asyncio

    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    seen = []

    @function_tool
    def get_weather(input: str) -> str:
        """The weather for a place."""
        seen.append(input)
        return "sunny"

    async def run_all():
        client = openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key="client-key-unused", max_retries=0)
        for model in MODELS:
            agent = Agent(
                name="weather",
                instructions="Answer with the tool.",
                tools=[get_weather],
                model=OpenAIResponsesModel(model=model, openai_client=client),
            )
            result = await Runner.run(agent, "weather in Oslo?")
            assert result.final_output, result

    asyncio.run(run_all())
    assert len(seen) == len(MODELS), seen


@check("anthropic: count_tokens through every provider")
def _():
    for model in MODELS:
        n = ant.messages.count_tokens(model=model, messages=HELLO)
        assert n.input_tokens > 0, n



@check("anthropic: messages non-stream through every provider")
def _():
    for model in ["claude-sonnet", "gpt-4o-mini", "gemini-flash"]:
        m = ant.messages.create(model=model, max_tokens=64, system="be brief", messages=HELLO)
        assert m.content[0].text.endswith("You said: hello"), m
        assert m.stop_reason == "end_turn" and m.usage.output_tokens > 0, m


@check("anthropic: messages stream through every provider")
def _():
    for model in ["claude-sonnet", "gpt-4o-mini", "gemini-flash"]:
        with ant.messages.stream(model=model, max_tokens=64, messages=HELLO) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert text.endswith("You said: hello"), (model, text)
        assert final.usage.output_tokens > 0, final


@check("anthropic: tool use")
def _():
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    for model in ["claude-sonnet", "gpt-4o-mini"]:
        m = ant.messages.create(model=model, max_tokens=64, messages=HELLO, tools=tools)
        block = [b for b in m.content if b.type == "tool_use"][0]
        assert block.name == "get_weather" and block.input["input"] == "hello", m
        assert m.stop_reason == "tool_use", m


@check("anthropic: unknown model raises NotFoundError")
def _():
    try:
        ant.messages.create(model="no-such-model", max_tokens=8, messages=HELLO)
    except anthropic.NotFoundError:
        pass
    else:
        raise AssertionError("no error")


@check("anthropic: invalid request raises BadRequestError")
def _():
    try:
        ant.messages.create(model="claude-sonnet", max_tokens=8, messages=[])
    except anthropic.BadRequestError:
        pass
    else:
        raise AssertionError("no error")


failed = sum(1 for _, e in results if e)
print(f"sdk: {len(results) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
