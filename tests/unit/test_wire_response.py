"""Non-streamed bodies, estimates and error bodies."""

from __future__ import annotations

import json

import pytest

from agent.wire.errors import error_body
from agent.wire.request import parse_request
from agent.wire.response import parse_response
from agent.wire.usage import Usage, estimate_usage
from tests.support.wire_transcripts import CHAT, COMPLETIONS, RESPONSES, info_for, recorded, run

# --------------------------------------------------------------------------- parse_response


def test_response_ollama_generate() -> None:
    body = (
        b'{"model":"llama3.2","created_at":"2023-08-04T19:22:45.499127Z","response":'
        b'"The sky is blue because it is the color of the sky.","done":true,"context":[1,2,3],'
        b'"total_duration":5043500667,"load_duration":5025959,"prompt_eval_count":26,'
        b'"prompt_eval_duration":325953000,"eval_count":290,"eval_duration":4709213000}'
    )
    s = parse_response(info_for("/api/generate"), body)
    assert s.usage == Usage(26, 290, 316, server_duration_ms=5043.500667)
    assert s.output_chars == len("The sky is blue because it is the color of the sky.")
    assert (s.model, s.error) == ("llama3.2", None)


def test_response_ollama_chat_without_prompt_count() -> None:
    body = (
        b'{"model":"llama3.2","created_at":"2023-12-12T14:13:43.416799Z","message":'
        b'{"role":"assistant","content":"Hello! How are you today?"},"done":true,'
        b'"total_duration":5191566416,"load_duration":2154458,"eval_count":298,'
        b'"eval_duration":4799921000}'
    )
    s = parse_response(info_for("/api/chat"), body)
    assert s.usage is not None
    assert (s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.total_tokens) == (0, 298, 298)
    assert s.output_chars == len("Hello! How are you today?")


def test_response_ollama_embed_and_legacy_embeddings() -> None:
    embed = (
        b'{"model":"all-minilm","embeddings":[[0.010071029,-0.0017594862]],'
        b'"total_duration":14143917,"load_duration":1019500,"prompt_eval_count":8}'
    )
    s = parse_response(info_for("/api/embed"), embed)
    assert s.usage == Usage(8, 0, 8, server_duration_ms=14.143917)
    legacy = b'{"embedding":[0.5670403838157654,0.009260174818336964]}'
    assert parse_response(info_for("/api/embeddings"), legacy).usage is None


def test_response_openai_chat() -> None:
    body = (
        b'{"id":"chatcmpl-1","object":"chat.completion","created":1735689600,"model":"qwq",'
        b'"choices":[{"index":0,"message":{"role":"assistant","reasoning_content":"Because",'
        b'"content":"Yes.","tool_calls":[]},"logprobs":null,"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":10,"total_tokens":25,"completion_tokens":15,'
        b'"prompt_tokens_details":{"cached_tokens":4},'
        b'"completion_tokens_details":{"reasoning_tokens":9}},"prompt_logprobs":null}'
    )
    s = parse_response(info_for(CHAT), body)
    assert s.usage == Usage(10, 15, 25, cached_tokens=4, reasoning_tokens=9)
    assert (s.output_chars, s.model) == (len("BecauseYes."), "qwq")


def test_response_llamacpp_completion_with_timings_and_computed_total() -> None:
    body = (
        b'{"choices":[{"text":"Hello","index":0,"logprobs":null,"finish_reason":"stop"}],'
        b'"created":1,"model":"gpt-3.5-turbo","object":"text_completion",'
        b'"usage":{"completion_tokens":2,"prompt_tokens":3},"id":"x",'
        b'"timings":{"prompt_ms":1.5,"predicted_ms":2.0}}'
    )
    s = parse_response(info_for(COMPLETIONS), body)
    assert s.usage == Usage(3, 2, 5, server_duration_ms=3.5)
    assert s.output_chars == 5


def test_response_openai_embeddings() -> None:
    body = (
        b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.1,0.2]}],'
        b'"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}'
    )
    s = parse_response(info_for("/v1/embeddings"), body)
    assert s.usage == Usage(8, 0, 8)
    assert s.output_chars == 0


def test_response_responses_api() -> None:
    body = (
        b'{"id":"resp_1","object":"response","created_at":1741476542,"status":"completed",'
        b'"error":null,"incomplete_details":null,"model":"gpt-4.1","output":[{"type":"reasoning",'
        b'"id":"rs_1","summary":[{"type":"summary_text","text":"Plan"}]},{"type":"message",'
        b'"id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text",'
        b'"text":"In a peaceful grove","annotations":[]}]},{"type":"function_call","id":"fc_1",'
        b'"call_id":"call_1","name":"f","arguments":"{}"}],"usage":{"input_tokens":36,'
        b'"input_tokens_details":{"cached_tokens":0},"output_tokens":87,'
        b'"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}}'
    )
    s = parse_response(info_for(RESPONSES), body)
    assert s.error is None  # "error": null is success
    assert s.usage == Usage(36, 87, 123, cached_tokens=0, reasoning_tokens=0)
    assert s.output_chars == len("Plan") + len("In a peaceful grove") + len("{}")


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/api/chat", b'{"error":"model \\"nope\\" not found, try pulling it first"}',
         'model "nope" not found, try pulling it first'),
        (CHAT, b'{"error":{"message":"Invalid model","type":"invalid_request_error",'
               b'"param":"model","code":"model_not_found"}}', "Invalid model"),
        (CHAT, b'{"object":"error","message":"The model `x` does not exist.",'
               b'"type":"NotFoundError","param":null,"code":404}', "The model `x` does not exist."),
        (CHAT, b'{"error":{"code":500}}', '{"code":500}'),
        (RESPONSES, b'{"id":"r","object":"response","status":"failed","error":{"code":'
                    b'"server_error","message":"boom"},"output":[],"usage":null}', "boom"),
    ],
)  # fmt: skip
def test_response_error_bodies(path: str, body: bytes, message: str) -> None:
    s = parse_response(info_for(path), body)
    assert s.error == message
    assert s.usage is None


@pytest.mark.parametrize(
    "body", [b"", b"<html>502 Bad Gateway</html>", b"[1,2]", b"null", b"\xff\xfe", b"{" * 100000]
)
@pytest.mark.parametrize("path", ["/api/generate", CHAT, "/v1/embeddings", RESPONSES])
def test_response_garbage_never_raises(path: str, body: bytes) -> None:
    s = parse_response(info_for(path), body)
    assert (s.usage, s.error, s.output_chars) == (None, None, 0)


def test_response_ignores_counts_of_wrong_type() -> None:
    body = b'{"usage":{"prompt_tokens":"12","completion_tokens":true,"total_tokens":3.0}}'
    s = parse_response(info_for(CHAT), body)
    assert s.usage == Usage(None, None, 3)


# --------------------------------------------------------------------------- estimates, errors


def test_estimate_from_content_events() -> None:
    info = parse_request("POST", CHAT, b'{"model":"m","messages":[{"role":"user","content":"abcde"}]}')
    assert estimate_usage(info, output_chars=100, content_events=7) == Usage(2, 7, 9)


def test_estimate_from_characters_and_without_prompt() -> None:
    info = parse_request("POST", "/api/generate", b"")
    assert estimate_usage(info, output_chars=9, content_events=0) == Usage(None, 3, 3)
    short = parse_request("POST", "/api/generate", b'{"prompt":"a"}')
    assert estimate_usage(short, 0, 0) == Usage(1, 0, 1)


def test_estimate_embeddings_has_no_completion() -> None:
    info = parse_request("POST", "/v1/embeddings", b'{"input":"12345678"}')
    assert estimate_usage(info, 0, 0) == Usage(2, 0, 2)


def test_error_body_openai() -> None:
    doc = json.loads(error_body("openai", 502, "upstream http://10.0.0.1 refused", "proxy_error"))
    assert doc == {
        "error": {
            "message": "upstream http://10.0.0.1 refused",
            "type": "proxy_error",
            "param": None,
            "code": 502,
        }
    }


def test_error_body_ollama() -> None:
    assert json.loads(error_body("ollama", 401, "missing bearer token")) == {"error": "missing bearer token"}
    # Round trip: what we emit is read back as an error by our own parser.
    s = parse_response(info_for("/api/chat"), error_body("ollama", 500, "ünïcode"))
    assert s.error == "ünïcode"


# --------------------------------------------------------------------------- llama.cpp, recorded


def test_recorded_llamacpp_native_completion() -> None:
    body = recorded("completion.json")
    s = parse_response(info_for("/completion", {"prompt": "Once upon a time"}), body)
    t = json.loads(body)["timings"]
    assert s.usage == Usage(5, 3, 8, cached_tokens=0, server_duration_ms=t["prompt_ms"] + t["predicted_ms"])
    assert (s.output_chars, s.model, s.error) == (len(", there was"), "models/gemma-3-270m-q4_k_m.gguf", None)


def test_recorded_llamacpp_native_completion_of_two_prompts() -> None:
    body = recorded("completion_two_prompts.json")
    s = parse_response(info_for("/completion", {"prompt": ["a", "b"]}), body)
    assert s.usage is not None
    assert (s.usage.prompt_tokens, s.usage.completion_tokens, s.usage.total_tokens) == (9, 4, 13)
    assert s.usage.server_duration_ms == max(
        r["timings"]["prompt_ms"] + r["timings"]["predicted_ms"] for r in json.loads(body)
    )


def test_llamacpp_native_error_and_request() -> None:
    info = parse_request("POST", "/completion", b'{"prompt":["Once", [1, 2]],"stream":true,"n_predict":3}')
    assert (info.dialect, info.operation, info.stream, info.prompt_text) == (
        "openai",
        "completion",
        True,
        "Once",
    )
    body = b'{"error":{"code":400,"message":"\\"prompt\\" must be provided","type":"invalid_request_error"}}'
    s = parse_response(info, body)
    assert (s.error, s.usage) == ('"prompt" must be provided', None)
    m, _ = run(info, b"error: " + body + b"\n\n", 4)
    assert m.error == '"prompt" must be provided' and not m.done
