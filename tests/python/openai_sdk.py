"""Drives a bulkhead gateway with the official `openai` Python package.

Run by tests/tests/openai_sdk.rs with the virtual environment that
scripts/setup.sh creates. Reads BULKHEAD_BASE_URL (the gateway's `/v1` URL)
and BULKHEAD_API_KEY (a tenant key). Prints one `ok ...` line per check and
exits 0; the first failed check exits non-zero with a message.
"""

import json
import os
import sys
import traceback

try:
    import openai
    from openai import OpenAI
except ImportError as e:
    sys.exit(f"{e}: run scripts/setup.sh to install the pinned openai package")

MODEL = "smollm2"
MESSAGES = [{"role": "user", "content": "Say hello in one word."}]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def models(client):
    ids = [m.id for m in client.models.list()]
    check(MODEL in ids, f"{MODEL!r} not in /v1/models: {ids}")
    print(f"ok models: {', '.join(ids)}")


def chat(client):
    resp = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0
    )
    check(resp.object == "chat.completion", f"object {resp.object!r}")
    check(len(resp.choices) == 1, f"{len(resp.choices)} choices")
    choice = resp.choices[0]
    content = choice.message.content
    check(bool(content and content.strip()), f"empty content: {resp!r}")
    check(choice.message.role == "assistant", f"role {choice.message.role!r}")
    check(choice.finish_reason in ("stop", "length"), f"finish {choice.finish_reason!r}")
    usage = resp.usage
    check(usage is not None and usage.total_tokens > 0, f"usage {usage!r}")
    check(
        usage.total_tokens == usage.prompt_tokens + usage.completion_tokens,
        f"usage does not add up: {usage!r}",
    )
    print(f"ok chat: {content!r} total_tokens={usage.total_tokens}")


def stream(client, extra_headers=None, label="stream"):
    chunks = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=extra_headers,
    )
    text, deltas, finish, last = "", 0, None, None
    usages = []  # (whether the chunk had choices, its usage)
    for chunk in chunks:
        check(chunk.object == "chat.completion.chunk", f"object {chunk.object!r}")
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
                deltas += 1
            if choice.finish_reason:
                finish = choice.finish_reason
        if chunk.usage is not None:
            usages.append((bool(chunk.choices), chunk.usage))
        last = chunk
    check(deltas > 0 and text.strip(), f"no content deltas (text {text!r})")
    check(finish in ("stop", "length"), f"finish {finish!r}")
    # OpenAI's include_usage contract: the last chunk before [DONE] carries the
    # usage of the whole request and an empty `choices`.
    check(last is not None and last.usage is not None, f"last chunk has no usage: {last!r}")
    check(not last.choices, f"the usage chunk carries choices: {last!r}")
    usage = last.usage
    check(usage.total_tokens > 0, f"final usage {usage!r}")
    check(
        usage.total_tokens == usage.prompt_tokens + usage.completion_tokens,
        f"usage does not add up: {usage!r}",
    )
    check(all(u == usage for _, u in usages), f"chunks disagree on usage: {usages!r}")
    print(f"ok {label}: {deltas} deltas {text!r} total_tokens={usage.total_tokens}")
    # OpenAI sends usage only on the last chunk; a client that sums usage
    # over chunks must not count a request twice.
    check(len(usages) == 1, f"{len(usages)} chunks carry a usage: {usages!r}")


def session(client):
    # The SDK's raw request helper, as a client would use for a non-OpenAI route.
    created = client.post("/sessions", body={"title": "sdk"}, cast_to=object)
    sid = created["id"]
    check(isinstance(sid, str) and sid, f"session {created!r}")
    stream(client, extra_headers={"X-Session-ID": sid, "X-User-ID": "sdk-user"}, label="session stream")
    turns = client.get(f"/sessions/{sid}/messages", cast_to=object)["data"]
    check(len(turns) == 2, f"the session holds {len(turns)} turns, not 2: {turns!r}")
    print(f"ok session transcript: {len(turns)} turns")


def errors(base_url):
    bad = OpenAI(base_url=base_url, api_key="bk_not_a_key", max_retries=0, timeout=60)
    try:
        bad.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    except openai.AuthenticationError as e:
        check(e.status_code == 401, f"status {e.status_code}")
        print(f"ok bad key: AuthenticationError {e.status_code} code={e.code}")
    else:
        raise AssertionError("a bad key was accepted")


def unknown_model(client):
    try:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=4)
    except openai.NotFoundError as e:
        check(e.status_code == 404, f"status {e.status_code}")
        print(f"ok unknown model: NotFoundError {e.status_code} code={e.code}")
    else:
        raise AssertionError("an unknown model was accepted")


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCED = {"type": "function", "function": {"name": "get_weather"}}


def check_call(name, arguments, what):
    check(name == "get_weather", f"{what}: called {name!r}")
    args = json.loads(arguments)
    check(isinstance(args.get("city"), str), f"{what}: arguments {arguments!r}")
    return args


def tools(client):
    # The SDK's tool-calling example, whole: a forced call of get_weather.
    resp = client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=TOOLS, tool_choice=FORCED,
        max_tokens=48, temperature=0,
    )
    choice = resp.choices[0]
    check(choice.finish_reason == "tool_calls", f"finish {choice.finish_reason!r}: {resp!r}")
    calls = choice.message.tool_calls or []
    check(len(calls) == 1 and calls[0].type == "function", f"tool_calls {calls!r}")
    args = check_call(calls[0].function.name, calls[0].function.arguments, "whole")
    check(calls[0].id.startswith("call_"), f"id {calls[0].id!r}")
    print(f"ok tool call: get_weather({args}) id={calls[0].id}")
    # Streamed: the call arrives as delta.tool_calls, assembled by index.
    chunks = client.chat.completions.create(
        model=MODEL, messages=ASK_WEATHER, tools=TOOLS, tool_choice=FORCED,
        max_tokens=48, temperature=0, stream=True,
    )
    parts, finish = {}, None
    for chunk in chunks:
        for c in chunk.choices:
            for d in c.delta.tool_calls or []:
                part = parts.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                part["id"] = d.id or part["id"]
                if d.function is not None:
                    part["name"] += d.function.name or ""
                    part["arguments"] += d.function.arguments or ""
            finish = c.finish_reason or finish
    check(finish == "tool_calls", f"streamed finish {finish!r}")
    check(list(parts) == [0], f"streamed calls {parts!r}")
    streamed = check_call(parts[0]["name"], parts[0]["arguments"], "streamed")
    check(streamed == args, f"streamed {streamed!r} differs from whole {args!r}")
    print(f"ok streamed tool call: {parts[0]['name']}({streamed})")
    # The tool's result goes back as a `tool` message; the model answers.
    follow = ASK_WEATHER + [
        {"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump()]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": json.dumps({"temp_c": 21})},
    ]
    resp = client.chat.completions.create(
        model=MODEL, messages=follow, tools=TOOLS, tool_choice="none",
        max_tokens=16, temperature=0,
    )
    answer = resp.choices[0]
    check(answer.finish_reason in ("stop", "length"), f"finish {answer.finish_reason!r}")
    check(bool(answer.message.content) and not answer.message.tool_calls, f"answer {resp!r}")
    print(f"ok tool result answered: {answer.message.content!r}")
    # A tool_choice naming no given tool is a 400 that names the field.
    try:
        client.chat.completions.create(
            model=MODEL, messages=ASK_WEATHER, tools=TOOLS, max_tokens=4,
            tool_choice={"type": "function", "function": {"name": "send_email"}},
        )
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.param == "tool_choice", f"{e.status_code} {e.param!r}")
        print(f"ok unknown tool_choice: BadRequestError param={e.param}")
    else:
        raise AssertionError("a tool_choice naming no given tool was accepted")


def main():
    base_url = os.environ["BULKHEAD_BASE_URL"]
    client = OpenAI(
        base_url=base_url, api_key=os.environ["BULKHEAD_API_KEY"], max_retries=0, timeout=60
    )
    print(f"openai {openai.__version__} against {base_url}")
    models(client)
    chat(client)
    stream(client)
    session(client)
    tools(client)
    errors(base_url)
    unknown_model(client)
    print("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        print("FAILED", file=sys.stderr)
        sys.exit(1)
