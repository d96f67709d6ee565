"""The LLM layer against servers on loopback: retries, clear errors, cache, bad answers."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from llm_servers import MisbehavingServer, free_port

from diversynth.config import LLMConfig
from diversynth.llm import LLM, BadAnswer, ChatRequest, LLMError
from diversynth.llm.backends import OpenAIBackend
from diversynth.llm.cache import AnswerCache

STYLE_SCHEMA = {"type": "object", "properties": {"styles": {"type": "array"}}}


def _backend(base_url: str, **overrides) -> OpenAIBackend:
    settings = {"backend": "openai", "model": "test-model", "base_url": base_url, "timeout": 1.0,
                "max_retries": 2, **overrides}  # fmt: skip
    return OpenAIBackend(LLMConfig(**settings))


def _request(label: str = "Coat", seed: int = 0) -> ChatRequest:
    return ChatRequest(messages=(("user", f"styles for {label}"),), seed=seed, label=label,
                       json_schema=STYLE_SCHEMA)  # fmt: skip


def _styles(answer) -> list[str]:
    if not isinstance(answer, dict) or not isinstance(answer.get("styles"), list):
        raise ValueError("wrong shape")
    return answer["styles"]


@pytest.mark.parametrize("failure", ["500", "429", "slow", "truncated", "close"])
def test_transient_failures_are_retried(failure: str) -> None:
    # the answer after two failures has 2.5 s: on a loaded 2-core machine 1 s was too
    # little for it, and a third timeout used up the retries
    with MisbehavingServer(slow_seconds=5.0) as server:
        server.script.extend([failure, failure])
        answers = _backend(server.base_url, timeout=2.5).complete([_request()])
        assert answers == ['{"styles": ["oil painting"]}']
        assert len(server.requests) == 3  # two failures, then the answer


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        ("500", "llm (openai) at http://127.0.0.1"),
        ("404", "model 'test-model' not found"),
        ("401", "authentication failed"),
        ("bad_json", "llm (openai) at http://127.0.0.1"),
    ],
)
def test_persistent_failures_give_one_clear_error(failure: str, message: str) -> None:
    with MisbehavingServer(default=failure) as server:
        with pytest.raises(LLMError, match=re.escape(message)) as info:
            _backend(server.base_url).complete([_request("Ankle boot")])
        if failure in ("500", "bad_json"):
            assert "'Ankle boot'" in str(info.value)
        assert len(server.requests) <= 3


def test_server_down_is_a_clear_error() -> None:
    start = time.monotonic()
    with pytest.raises(LLMError, match=r"llm \(openai\) at http://127.0.0.1:\d+/v1, for 'Coat'"):
        _backend(f"http://127.0.0.1:{free_port()}/v1", max_retries=1).complete([_request()])
    assert time.monotonic() - start < 30


def test_requests_run_in_parallel_up_to_the_limit() -> None:
    with MisbehavingServer(default="slow", slow_seconds=0.6) as server:
        backend = _backend(server.base_url, max_in_flight=4, timeout=5.0)
        start = time.monotonic()
        answers = backend.complete([_request(seed=i) for i in range(8)])
        seconds = time.monotonic() - start
    assert len(answers) == 8
    assert seconds < 8 * 0.6 / 2  # serial would take 4.8 s; 4 in flight take about 1.2 s


def test_missing_api_key_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIVERSYNTH_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="environment variable 'DIVERSYNTH_TEST_KEY' is not set"):
        LLMConfig(backend="openai", model="m", base_url="http://127.0.0.1:1/v1",
                  api_key_env="DIVERSYNTH_TEST_KEY")  # fmt: skip
    monkeypatch.setenv("DIVERSYNTH_TEST_KEY", "secret")
    with MisbehavingServer() as server:
        config = LLMConfig(backend="openai", model="m", base_url=server.base_url,
                           api_key_env="DIVERSYNTH_TEST_KEY")  # fmt: skip
        OpenAIBackend(config).complete([_request()])
        assert len(server.requests) == 1


@pytest.mark.parametrize(
    "bad",
    [
        "ok:",  # empty
        "ok:I'm sorry, but I can't help with that.",  # refusal
        "ok:styles: oil painting, sketch",  # not JSON
        'ok:{"colours": ["red"]}',  # JSON of the wrong shape
        "ok:" + '{"styles": ["' + "very " * 5000 + '"',  # far too long, cut off
    ],
)
def test_bad_answers_are_asked_again_then_reported(bad: str, tmp_path: Path) -> None:
    with MisbehavingServer(default=bad) as server:
        llm = LLM(_backend(server.base_url), AnswerCache(tmp_path / "cache.sqlite"))
        [result] = llm.complete_json([_request("Sandal")], [_styles], attempts=3)
        assert isinstance(result, BadAnswer) and result.label == "Sandal"
        assert len(server.requests) == 3
        assert [r["seed"] for r in server.requests] == [0, 1, 2]  # a new seed each time
        server.script.extend(["ok:not json", 'ok:{"styles": ["plush toy"]}'])
        [result] = LLM(_backend(server.base_url)).complete_json([_request("Bag")], [_styles])
        assert result == ["plush toy"]


def test_cache_answers_a_repeat_without_calls(tmp_path: Path) -> None:
    with MisbehavingServer() as server:
        llm = LLM(_backend(server.base_url), AnswerCache(tmp_path / "cache.sqlite"))
        first = llm.complete([_request("Coat"), _request("Bag")])
        assert llm.calls == 2 and len(server.requests) == 2
        again = LLM(_backend(server.base_url), AnswerCache(tmp_path / "cache.sqlite"))
        assert again.complete([_request("Bag"), _request("Coat")]) == first[::-1]
        assert again.calls == 0 and again.cached == 2 and len(server.requests) == 2
        # a different sampling parameter is a different question
        again.complete([_request("Bag", seed=7)])
        assert again.calls == 1


def test_the_configured_temperature_reaches_the_request_and_the_cache_key(tmp_path: Path) -> None:
    from diversynth.llm import open_llm

    def config(temperature: float) -> LLMConfig:
        return LLMConfig(backend="openai", model="m", base_url=server.base_url,
                         temperature=temperature)  # fmt: skip

    cache = tmp_path / "cache.sqlite"
    with MisbehavingServer() as server:
        with open_llm(config(0.0), cache) as llm:
            llm.complete([_request("Coat")])
        assert [r["temperature"] for r in server.requests] == [0.0]
        with open_llm(config(0.0), cache) as llm:  # unchanged: served from the cache
            llm.complete([_request("Coat")])
            assert llm.cached == 1 and llm.calls == 0
        with open_llm(config(0.9), cache) as llm:  # changed: asked again, with it
            llm.complete([_request("Coat")])
            assert llm.calls == 1
        assert [r["temperature"] for r in server.requests] == [0.0, 0.9]
