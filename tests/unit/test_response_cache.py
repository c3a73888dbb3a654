"""The response cache: which requests get a key, and the TTL + LRU store (with a fake clock)."""

from __future__ import annotations

from deployments.admission.cache import ResponseCache, cache_key

PROMPT = "Say hello."
GREEDY = {"temperature": 0}


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# cache_key


def test_sampling_request_gets_no_key() -> None:
    assert cache_key("t", "m@1", PROMPT, {"temperature": 0.7}) is None


def test_request_without_temperature_samples_and_gets_no_key() -> None:
    assert cache_key("t", "m@1", PROMPT, {"max_tokens": 5}) is None


def test_greedy_request_gets_a_key() -> None:
    assert cache_key("t", "m@1", PROMPT, {"temperature": 0}) is not None


def test_seeded_sampling_request_gets_a_key() -> None:
    assert cache_key("t", "m@1", PROMPT, {"temperature": 0.7, "seed": 42}) is not None


def test_key_ignores_param_order() -> None:
    a = cache_key("t", "m@1", PROMPT, {"temperature": 0, "max_tokens": 5})
    assert a == cache_key("t", "m@1", PROMPT, {"max_tokens": 5, "temperature": 0})


def test_key_treats_integer_and_float_params_alike() -> None:
    assert cache_key("t", "m@1", PROMPT, GREEDY) == cache_key("t", "m@1", PROMPT, {"temperature": 0.0})


def test_key_is_scoped_per_tenant() -> None:
    assert cache_key("a", "m@1", PROMPT, GREEDY) != cache_key("b", "m@1", PROMPT, GREEDY)


def test_key_changes_with_model_version() -> None:
    assert cache_key("t", "m@1", PROMPT, GREEDY) != cache_key("t", "m@2", PROMPT, GREEDY)


def test_key_changes_with_prompt() -> None:
    assert cache_key("t", "m@1", "a", GREEDY) != cache_key("t", "m@1", "b", GREEDY)


def test_key_changes_with_params() -> None:
    a = cache_key("t", "m@1", PROMPT, {"temperature": 0, "max_tokens": 5})
    assert a != cache_key("t", "m@1", PROMPT, {"temperature": 0, "max_tokens": 6})


def test_chat_messages_are_a_valid_prompt() -> None:
    messages = [{"role": "user", "content": PROMPT}]
    key = cache_key("t", "m@1", messages, {"temperature": 0})
    assert key is not None and len(key) == 64


# ResponseCache


def test_missing_entry_is_a_miss() -> None:
    cache: ResponseCache[str] = ResponseCache(ttl_s=10, max_entries=4)
    assert cache.get("k", now=0) is None
    assert cache.misses == 1


def test_put_entry_is_a_hit() -> None:
    cache: ResponseCache[str] = ResponseCache(ttl_s=10, max_entries=4)
    cache.put("k", "v", now=0)
    assert cache.get("k", now=5) == "v"
    assert cache.hits == 1


def test_entry_expires_after_ttl() -> None:
    cache: ResponseCache[str] = ResponseCache(ttl_s=10, max_entries=4)
    cache.put("k", "v", now=0)
    assert cache.get("k", now=10) is None
    assert len(cache) == 0


def test_full_cache_evicts_least_recently_used() -> None:
    cache: ResponseCache[str] = ResponseCache(ttl_s=10, max_entries=2)
    cache.put("a", "1", now=0)
    cache.put("b", "2", now=0)
    cache.put("c", "3", now=0)
    assert (cache.get("a", now=1), cache.get("b", now=1), cache.get("c", now=1)) == (None, "2", "3")


def test_get_makes_entry_most_recently_used() -> None:
    cache: ResponseCache[str] = ResponseCache(ttl_s=10, max_entries=2)
    cache.put("a", "1", now=0)
    cache.put("b", "2", now=0)
    cache.get("a", now=1)
    cache.put("c", "3", now=2)
    assert (cache.get("a", now=3), cache.get("b", now=3)) == ("1", None)


def test_put_again_renews_ttl() -> None:
    cache: ResponseCache[str] = ResponseCache(ttl_s=10, max_entries=2)
    cache.put("k", "old", now=0)
    cache.put("k", "new", now=8)
    assert cache.get("k", now=15) == "new"


def test_injected_clock_is_used_when_now_is_omitted() -> None:
    clock = FakeClock()
    cache: ResponseCache[str] = ResponseCache(ttl_s=10, max_entries=2, clock=clock)
    cache.put("k", "v")
    clock.now += 9
    assert cache.get("k") == "v"
    clock.now += 1
    assert cache.get("k") is None
