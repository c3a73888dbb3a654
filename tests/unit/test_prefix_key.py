from deployments.engines.base import ChatPrompt, TextPrompt, TokenPrompt
from deployments.routing.prefix import prefix_key

SYSTEM = {"role": "system", "content": "You are the returns desk of a shoe shop."}


def chat(*messages: dict) -> ChatPrompt:
    return ChatPrompt(list(messages))


def test_same_system_prompt_different_questions_share_a_key() -> None:
    a = chat(SYSTEM, {"role": "user", "content": "Where is my order?"})
    b = chat(SYSTEM, {"role": "user", "content": "Can I return boots?"})
    assert prefix_key(a) == prefix_key(b)


def test_different_system_prompts_get_different_keys() -> None:
    other = {"role": "system", "content": "You are the billing desk."}
    question = {"role": "user", "content": "hi"}
    assert prefix_key(chat(SYSTEM, question)) != prefix_key(chat(other, question))


def test_text_prompts_share_a_key_when_their_leading_block_matches() -> None:
    head = "x" * 600
    assert prefix_key(TextPrompt(head + "a")) == prefix_key(TextPrompt(head + "b"))
    assert prefix_key(TextPrompt("a" + head)) != prefix_key(TextPrompt("b" + head))


def test_token_prompts_key_on_the_first_block() -> None:
    assert prefix_key(TokenPrompt([1] * 128 + [2])) == prefix_key(TokenPrompt([1] * 128 + [3]))


def test_a_batch_routes_by_its_most_common_prefix() -> None:
    from deployments.engines.base import GenerationBatch, GenerationRequest

    def request(key: str | None) -> GenerationRequest:
        return GenerationRequest("r", TextPrompt("x"), routing_key=key)

    assert GenerationBatch([request("a"), request("b"), request("b"), request(None)]).routing_key == "b"
    assert GenerationBatch([request(None)]).routing_key is None
