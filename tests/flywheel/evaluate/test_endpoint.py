"""The chat-completions client and endpoint generator against a real local OpenAI-compatible server.

Request shape, authorization, bounded concurrency with order preserved, retries (503, 429 with
Retry-After, timeouts, dropped connections), failures that must not be retried (400, 404, a malformed
body) and the generator turning a request that keeps failing into ``Generation.error``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from flywheel.config import EndpointConfig, GenerationConfig
from flywheel.evaluate.endpoint import ChatClient, EndpointError, EndpointGenerator
from flywheel.evaluate.generation import Prompt

if TYPE_CHECKING:
    from openai_server import OpenAIServer

# The fixture; loading the module as a plugin (not importing it here) lets pytest rewrite its asserts.
pytest_plugins = ["openai_server"]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order",
            "description": "Look up an order.",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        },
    }
]


def endpoint(server: OpenAIServer, **overrides: Any) -> EndpointConfig:
    """A fast-failing endpoint config pointing at the test server."""
    settings: dict[str, Any] = {
        "base_url": server.base_url,
        "model": server.model,
        "concurrency": 4,
        "timeout_s": 2.0,
        "max_retries": 2,
        "retry_backoff_s": 0.01,
    }
    return EndpointConfig(**{**settings, **overrides})


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def test_request_shape_tools_and_authorization(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    openai_server.api_key = "s3cret-key"
    monkeypatch.setenv("FLYWHEEL_TEST_ENDPOINT_KEY", "s3cret-key")
    call = {"function": {"name": "get_order", "arguments": {"order_id": "A-17"}}}
    openai_server.responder = lambda body: (
        {"tool_calls": [call]} if body.get("tools") else {"content": "plain"}
    )
    config = endpoint(openai_server, api_key_env="FLYWHEEL_TEST_ENDPOINT_KEY", extra_body={"top_k": 1})
    generation = GenerationConfig(max_new_tokens=64, temperature=0.2, tool_choice="required")
    history = [
        user("where is my order A-17?"),
        {  # an earlier turn whose arguments are a dict: must go out as JSON text
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_order", "arguments": {"order_id": "A-1"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"status": "shipped"}'},
        user("and A-17?"),
    ]
    caplog.set_level(logging.DEBUG)
    with EndpointGenerator(config, generation) as generator:
        with_tools, without_tools = generator.generate([Prompt(history, TOOLS), Prompt([user("hi")], [])])

    assert with_tools.error is None
    assert with_tools.message["tool_calls"][0]["function"] == {
        "name": "get_order",
        "arguments": '{"order_id": "A-17"}',
    }
    assert with_tools.text == ""  # content None
    assert with_tools.tokens_in > 0 and with_tools.tokens_out > 0 and with_tools.latency_s > 0
    assert without_tools.text == "plain"

    bodies = {json.dumps(r.body["messages"][-1]): r for r in openai_server.requests}
    first = bodies[json.dumps(user("and A-17?"))]
    assert first.headers["authorization"] == "Bearer s3cret-key"
    body = first.body
    assert body["model"] == openai_server.model
    assert body["tools"] == TOOLS and body["tool_choice"] == "required"
    assert body["temperature"] == 0.2 and body["max_tokens"] == 64 and body["top_k"] == 1
    assert body["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"order_id": "A-1"}'
    second = bodies[json.dumps(user("hi"))].body
    assert "tools" not in second and "tool_choice" not in second
    assert "s3cret-key" not in caplog.text


def test_missing_api_key_env_names_the_variable(
    openai_server: OpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLYWHEEL_TEST_ABSENT_KEY", raising=False)
    with pytest.raises(EndpointError, match="FLYWHEEL_TEST_ABSENT_KEY"):
        ChatClient(endpoint(openai_server, api_key_env="FLYWHEEL_TEST_ABSENT_KEY"))
    # An explicit key wins over the environment.
    with ChatClient(endpoint(openai_server, api_key_env="FLYWHEEL_TEST_ABSENT_KEY"), api_key="k") as client:
        assert client.complete({"messages": [user("x")]}).message["content"] == "echo: x"
    assert openai_server.requests[-1].headers["authorization"] == "Bearer k"


def test_order_preserved_and_concurrency_bounded(openai_server: OpenAIServer) -> None:
    def slow_echo(body: dict[str, Any]) -> dict[str, Any]:
        index = int(body["messages"][-1]["content"])
        time.sleep(0.01 * (index % 4) + 0.02)  # later prompts may finish first
        return {"content": f"answer {index}"}

    openai_server.responder = slow_echo
    prompts = [Prompt([user(str(i))], []) for i in range(24)]
    with EndpointGenerator(endpoint(openai_server, concurrency=3), GenerationConfig()) as generator:
        generations = generator.generate(prompts)

    assert [g.text for g in generations] == [f"answer {i}" for i in range(24)]
    assert len(openai_server.requests) == 24
    assert 2 <= openai_server.max_concurrent <= 3


def test_progress_logged_every_fifty(openai_server: OpenAIServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flywheel.evaluate.endpoint")
    with EndpointGenerator(endpoint(openai_server), GenerationConfig()) as generator:
        generator.generate([Prompt([user(str(i))], []) for i in range(60)])
    progress = [r.getMessage() for r in caplog.records if "requests done" in r.getMessage()]
    assert any("50/60 requests done" in line for line in progress), progress
    assert "60/60 requests done, 0 failed" in progress[-1]


def test_retries_503_and_429_with_retry_after(
    openai_server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    openai_server.faults.extend([{"status": 503}, {"status": 429, "retry_after": "0.3"}])
    caplog.set_level(logging.WARNING, logger="flywheel.evaluate.endpoint")
    with ChatClient(endpoint(openai_server, max_retries=3)) as client:
        started = time.perf_counter()
        result = client.complete({"messages": [user("ping")]})
        elapsed = time.perf_counter() - started

    assert result.attempts == 3
    assert result.message == {"role": "assistant", "content": "echo: ping", "tool_calls": []}
    assert result.finish_reason == "stop"
    assert elapsed >= 0.3  # the Retry-After was honoured, not only the 0.01 s backoff
    assert result.latency_s < elapsed
    assert len(openai_server.requests) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "HTTP 503" in warnings[0] and "HTTP 429" in warnings[1]


def test_timeout_retried_then_succeeds(openai_server: OpenAIServer) -> None:
    openai_server.faults.append({"delay_s": 2.0})
    with ChatClient(endpoint(openai_server, timeout_s=0.3)) as client:
        result = client.complete({"messages": [user("slow")]})
    assert result.attempts == 2
    assert result.message["content"] == "echo: slow"
    assert result.latency_s < 0.3


def test_dropped_connection_retried(openai_server: OpenAIServer) -> None:
    openai_server.faults.append({"drop": True})
    with ChatClient(endpoint(openai_server)) as client:
        assert client.complete({"messages": [user("x")]}).attempts == 2


def test_retries_exhausted(openai_server: OpenAIServer) -> None:
    openai_server.faults.extend([{"status": 503}] * 3)
    with ChatClient(endpoint(openai_server, max_retries=2)) as client, pytest.raises(EndpointError) as caught:
        client.complete({"messages": [user("x")]})
    assert "after 3 attempts" in str(caught.value) and "HTTP 503" in str(caught.value)
    assert caught.value.status == 503 and caught.value.attempts == 3
    assert len(openai_server.requests) == 3


def test_exhausted_request_becomes_generation_error(openai_server: OpenAIServer) -> None:
    openai_server.faults.extend([{"status": 502}] * 2)  # the first prompt's two attempts
    config = endpoint(openai_server, concurrency=1, max_retries=1)
    with EndpointGenerator(config, GenerationConfig()) as generator:
        failed, answered = generator.generate([Prompt([user("a")], []), Prompt([user("b")], [])])

    assert failed.text is None and failed.message is None
    assert failed.tokens_in == 0 and failed.tokens_out == 0
    assert "after 2 attempts" in failed.error and "HTTP 502" in failed.error
    assert answered.error is None and answered.text == "echo: b"


def test_timeouts_exhausted_become_generation_error(openai_server: OpenAIServer) -> None:
    openai_server.faults.extend([{"delay_s": 2.0}] * 2)
    config = endpoint(openai_server, concurrency=1, max_retries=1, timeout_s=0.2)
    with EndpointGenerator(config, GenerationConfig()) as generator:
        (generation,) = generator.generate([Prompt([user("a")], [])])
    assert generation.text is None and "timed out after 0.2 s" in generation.error
    assert generation.latency_s >= 0.4


@pytest.mark.parametrize(
    ("body", "fault", "expected"),
    [
        pytest.param({"messages": [user("x")]}, {"status": 400}, "HTTP 400", id="scripted-400"),
        pytest.param(
            {  # a real validation error: dict arguments sent as they are
                "messages": [
                    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}
                ]
            },
            None,
            "valid string",
            id="dict-arguments-400",
        ),
        pytest.param({"messages": [user("x")], "tool_choice": "auto"}, None, "tools", id="tool-choice-alone"),
    ],
)
def test_client_errors_not_retried(
    openai_server: OpenAIServer, body: dict[str, Any], fault: dict[str, Any] | None, expected: str
) -> None:
    if fault:
        openai_server.faults.append(fault)
    with (
        ChatClient(endpoint(openai_server)) as client,
        pytest.raises(EndpointError, match=expected) as caught,
    ):
        client.complete(body)
    assert caught.value.status == 400 and caught.value.attempts == 1
    assert "not retried" in str(caught.value)
    assert len(openai_server.requests) == 1


def test_wrong_model_is_404_not_retried(openai_server: OpenAIServer) -> None:
    config = endpoint(openai_server, model="no-such-model")
    with ChatClient(config) as client, pytest.raises(EndpointError, match="HTTP 404") as caught:
        client.complete({"messages": [user("x")]})
    assert "no-such-model" in str(caught.value) and caught.value.attempts == 1


@pytest.mark.parametrize(
    "raw", [pytest.param("not json", id="not-json"), pytest.param('{"choices": []}', id="no-choices")]
)
def test_malformed_response_not_retried(openai_server: OpenAIServer, raw: str) -> None:
    openai_server.faults.append({"body": raw})
    with (
        ChatClient(endpoint(openai_server)) as client,
        pytest.raises(EndpointError, match="malformed response"),
    ):
        client.complete({"messages": [user("x")]})
    assert len(openai_server.requests) == 1


def test_missing_usage_counts_zero(openai_server: OpenAIServer) -> None:
    message = {"role": "assistant", "content": "hi"}
    openai_server.faults.append({"body": json.dumps({"choices": [{"message": message}]})})
    with EndpointGenerator(endpoint(openai_server), GenerationConfig()) as generator:
        (generation,) = generator.generate([Prompt([user("x")], [])])
    assert generation.text == "hi" and generation.tokens_in == 0 and generation.tokens_out == 0


def test_client_shared_across_threads(openai_server: OpenAIServer) -> None:
    """One ChatClient serves many threads at once (the judge and generator share it that way)."""
    results: list[str] = []
    with ChatClient(endpoint(openai_server, concurrency=4)) as client:
        threads = [
            threading.Thread(
                target=lambda i=i: results.append(
                    client.complete({"messages": [user(str(i))]}).message["content"]
                )
            )
            for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(results) == sorted(f"echo: {i}" for i in range(8))
