"""The LLM layer against servers on loopback: retries, clear errors, cache, bad answers."""

from __future__ import annotations

import contextlib
import functools
import json
import re
import socket
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from diversynth.config import LLMConfig
from diversynth.llm import LLM, BadAnswer, ChatRequest, LLMError
from diversynth.llm.backends import OpenAIBackend
from diversynth.llm.cache import AnswerCache
from diversynth.llm.chat_client import MIN_REPLY_BYTES
from diversynth.llm.llamacpp import free_port
from diversynth.testing.llm_servers import MisbehavingServer, chat_reply

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
        ("truncated", "RemoteProtocolError"),  # cut off mid-body: asked again here
    ],
)
def test_persistent_failures_give_one_clear_error(failure: str, message: str) -> None:
    with MisbehavingServer(default=failure) as server:
        with pytest.raises(LLMError, match=re.escape(message)) as info:
            _backend(server.base_url).complete([_request("Ankle boot")])
        if failure in ("500", "bad_json", "truncated"):
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


@pytest.mark.parametrize(
    "bad",
    [
        "```" + " " * 1_000_000,  # an unclosed fence: quadratic backtracking took hours
        "[" * 100_000,  # nested past Python's recursion limit
    ],
)
def test_pathological_answers_are_bad_answers_at_once(bad: str) -> None:
    with MisbehavingServer(default="ok:" + bad) as server:
        start = time.monotonic()
        [result] = LLM(_backend(server.base_url)).complete_json(
            [_request("Bag")], [_styles], attempts=2
        )
        assert isinstance(result, BadAnswer) and result.reason == "not JSON"
        assert time.monotonic() - start < 5


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


@functools.cache
def _huge_reply() -> bytes:
    """A well-formed reply of 20 MB: an answer of 1.25M styles."""
    answer = '{"styles": [' + '"oil painting", ' * 1_250_000 + '"sketch"]}'
    return json.dumps(chat_reply(answer)).encode()


class HostileServer(MisbehavingServer):
    """MisbehavingServer, and also:

    trickle     a whole reply, one byte every `trickle_seconds` (never a read timeout)
    huge        a 20 MB reply with its Content-Length     huge_chunked   the same, chunked
    """

    def __init__(self, default: str, trickle_seconds: float = 0.2):
        super().__init__(default)
        self.trickle_seconds = trickle_seconds
        self.sent: list[int] = []  # bytes of each hostile reply that went out

    def respond(self, handler: BaseHTTPRequestHandler, behaviour: str) -> None:
        if behaviour not in ("trickle", "huge", "huge_chunked"):
            return super().respond(handler, behaviour)
        self.sent.append(0)
        try:
            if behaviour == "trickle":
                reply = json.dumps(chat_reply('{"styles": ["late answer"]}')).encode()
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(reply)}\r\n\r\n".encode()
                for byte in head + reply:
                    handler.wfile.write(bytes([byte]))
                    handler.wfile.flush()
                    self.sent[-1] += 1
                    time.sleep(self.trickle_seconds)
                return
            body = _huge_reply()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            if behaviour == "huge":
                handler.send_header("Content-Length", str(len(body)))
            else:
                handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            for start in range(0, len(body), 1 << 16):
                chunk = body[start : start + (1 << 16)]
                if behaviour == "huge_chunked":
                    chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                handler.wfile.write(chunk)
                self.sent[-1] += len(chunk)
        except OSError:  # the client hung up: what these tests want
            handler.close_connection = True
        finally:
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)


def test_a_server_that_trickles_is_stopped_at_the_deadline() -> None:
    """A byte every 0.2 s never trips the per-read timeout (1 s); llm.deadline (the whole
    request, retries included) ends it, in one line that names the setting to raise."""
    with HostileServer(default="trickle") as server:
        backend = _backend(server.base_url, timeout=1.0, deadline=1.5)
        start = time.monotonic()
        with pytest.raises(LLMError) as info:
            backend.complete([_request("Coat")])
        seconds = time.monotonic() - start
    message = str(info.value)
    assert message.startswith(f"llm (openai) at {server.base_url}, for 'Coat': ")
    assert "llm.deadline=1.5 s" in message and "\n" not in message
    assert 1.4 < seconds < 5  # the whole reply would take about 80 s
    assert 0 < server.sent[0] < 20  # it was still trickling


def test_the_deadline_counts_from_a_request_s_turn_not_from_the_batch() -> None:
    with MisbehavingServer(default="slow", slow_seconds=0.5) as server:
        backend = _backend(server.base_url, max_in_flight=1, timeout=5.0, deadline=1.5)
        answers = backend.complete([_request(seed=i) for i in range(4)])  # 2 s in all
    assert answers == ['{"styles": ["late answer"]}'] * 4


@pytest.mark.parametrize("huge", ["huge", "huge_chunked"])
def test_a_huge_reply_is_a_bad_answer_read_no_further_than_the_cap(
    huge: str, tmp_path: Path
) -> None:
    """A 20 MB reply is read to the cap and no further (memory does not follow it), is a
    bad answer asked again with the next seed, and is not cached."""
    _huge_reply()  # built before memory is traced
    with HostileServer(default=huge) as server:
        cache = AnswerCache(tmp_path / "cache.sqlite")
        llm = LLM(_backend(server.base_url), cache)
        server.script.append('ok:{"styles": ["oil painting"]}')
        llm.complete([_request("Warm-up", seed=99)])  # openai's modules loaded, not traced
        tracemalloc.start()
        try:
            start = time.monotonic()
            [result] = llm.complete_json([_request("Sandal")], [_styles], attempts=2)
            seconds = time.monotonic() - start
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert isinstance(result, BadAnswer) and result.label == "Sandal"
        assert (
            result.reason == f"reply longer than {MIN_REPLY_BYTES:,} bytes, the most read "
            "for max_tokens=256"
        )
        assert [r["seed"] for r in server.requests[1:]] == [0, 1]
        assert peak < 4 * MIN_REPLY_BYTES  # the reply is 20 MB
        assert seconds < 5
        assert all(sent < len(_huge_reply()) for sent in server.sent)  # none was read whole
        # not cached: asked again, and a good answer this time is used
        server.script.append('ok:{"styles": ["plush toy"]}')
        [result] = llm.complete_json([_request("Sandal")], [_styles])
        assert result == ["plush toy"] and llm.cached == 0
        llm.close()


def test_a_retry_does_not_wait_for_the_slowest_answer_of_its_round() -> None:
    """A bad answer is asked again as soon as it is in, while a slow answer to another
    request is still being written: no round waits for its slowest answer."""
    with MisbehavingServer(slow_seconds=2.0) as server:
        server.script.extend(["slow", "ok:not json"])  # by arrival: one slow, one bad
        llm = LLM(_backend(server.base_url, max_in_flight=4, timeout=5.0))
        results = llm.complete_json([_request("Coat"), _request("Bag")], [_styles, _styles])
    assert sorted(map(str, results)) == ["['late answer']", "['oil painting']"]
    assert len(server.requests) == 3 and llm.calls == 3
    slow_end = max(server.spans, key=lambda span: span[1] - span[0])[1]
    retried = max(arrived for arrived, _ in server.spans)
    assert retried < slow_end - 1.5  # asked again at once, not after the slow answer


class _BatchBackend:
    """A backend without `run` (as transformers): answers whole batches, recorded."""

    name, model = "batch", "test-model"

    def __init__(self, answers: dict[tuple[str, int], str]):
        self.answers = answers  # by (label, seed); a refusal otherwise
        self.batches: list[list[tuple[str, int]]] = []

    def complete(self, requests: list[ChatRequest], on_answer=None) -> list[str]:
        self.batches.append([(r.label, r.seed) for r in requests])
        answers = [self.answers.get((r.label, r.seed), "I can't.") for r in requests]
        for i, answer in enumerate(answers):
            if on_answer is not None:
                on_answer(i, answer)
        return answers

    def close(self) -> None:
        pass


def test_a_batch_backend_gets_one_request_per_unfinished_flow_a_round(tmp_path: Path) -> None:
    ok = '{"styles": ["sketch"]}'
    backend = _BatchBackend({("Coat", 0): ok, ("Bag", 1): ok, ("Sandal", 2): ok})
    llm = LLM(backend, AnswerCache(tmp_path / "cache.sqlite"))
    requests = [_request("Coat"), _request("Bag"), _request("Sandal")]
    results = llm.complete_json(requests, [_styles] * 3)
    assert results == [["sketch"]] * 3
    assert backend.batches == [[("Coat", 0), ("Bag", 0), ("Sandal", 0)],
                               [("Bag", 1), ("Sandal", 1)], [("Sandal", 2)]]  # fmt: skip
    # a rerun is answered from the cache, bad answers included, and asks nothing
    again = LLM(backend, AnswerCache(tmp_path / "cache.sqlite"))
    assert again.complete_json(requests, [_styles] * 3) == results
    assert again.calls == 0 and again.cached == 6 and len(backend.batches) == 3
