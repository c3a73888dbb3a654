"""The routing key for prefix-cache affinity: what two requests must share for one replica's cache to help."""

from __future__ import annotations

import hashlib

from deployments.engines.base import ChatPrompt, Prompt, TextPrompt

__all__ = ["prefix_key"]

# One vLLM CPU KV block is 128 tokens; a few hundred characters cover it for text prompts.
_TEXT_PREFIX_CHARS = 512
_TOKEN_PREFIX = 128


def prefix_key(prompt: Prompt) -> str:
    """Chat: every message but the last (system prompt, earlier turns); text and tokens: the leading block."""
    if isinstance(prompt, ChatPrompt):
        shared = prompt.messages[:-1] or prompt.messages
        material = "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in shared)
        if len(prompt.messages) == 1:
            material = material[:_TEXT_PREFIX_CHARS]
    elif isinstance(prompt, TextPrompt):
        material = prompt.text[:_TEXT_PREFIX_CHARS]
    else:
        material = ",".join(map(str, prompt.token_ids[:_TOKEN_PREFIX]))
    return hashlib.blake2b(material.encode(), digest_size=8).hexdigest()
