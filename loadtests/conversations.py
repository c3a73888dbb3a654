"""The bundled customer-service conversations, played turn by turn with the conversation so far."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

__all__ = ["Dialogue", "Script", "load_script"]

_DATA = Path(__file__).with_name("data") / "conversations.yaml"
# Rough size of a token in characters for English text; trace rows only need prompts of about their length.
_CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class Script:
    """A shared system prompt and conversations, each a list of user turns."""

    system_prompt: str
    conversations: tuple[tuple[str, ...], ...]
    topics: tuple[str, ...]


@cache
def load_script(path: Path = _DATA) -> Script:
    data = yaml.safe_load(path.read_text())
    convs = data["conversations"]
    return Script(
        data["system_prompt"], tuple(tuple(c["turns"]) for c in convs), tuple(str(c["topic"]) for c in convs)
    )


@dataclass
class Dialogue:
    """One customer's conversation: each request sends every earlier turn and answer, then the next turn."""

    script: Script
    index: int
    messages: list[dict[str, str]] = field(default_factory=list)
    turn: int = 0

    @classmethod
    def pick(cls, script: Script, rng: random.Random) -> Dialogue:
        index = rng.randrange(len(script.conversations))
        return cls(script, index, [{"role": "system", "content": script.system_prompt}])

    @property
    def topic(self) -> str:
        return self.script.topics[self.index]

    @property
    def done(self) -> bool:
        return self.turn >= len(self.script.conversations[self.index])

    def next_messages(self) -> list[dict[str, str]]:
        """The request body's messages for the next turn (the turn is taken: call `answered` after)."""
        user = self.script.conversations[self.index][self.turn]
        self.turn += 1
        self.messages.append({"role": "user", "content": user})
        return list(self.messages)

    def answered(self, text: str) -> None:
        """Keep the assistant's answer so the follow-up carries it, as a chat client does."""
        self.messages.append({"role": "assistant", "content": text})

    def sized_messages(self, prompt_tokens: int) -> list[dict[str, str]]:
        """A single turn of about `prompt_tokens` tokens (a trace row): the system prompt, then this customer's
        earlier order history pasted in, then the turn."""
        user = self.script.conversations[self.index][0]
        budget = prompt_tokens * _CHARS_PER_TOKEN - len(self.script.system_prompt) - len(user)
        history = " ".join(t for conv in self.script.conversations for t in conv)
        pasted = ""
        while len(pasted) < budget:
            pasted += history + " "
        content = (f"Earlier messages: {pasted[: max(budget, 0)]}\n\n" if budget > 0 else "") + user
        return [{"role": "system", "content": self.script.system_prompt}, {"role": "user", "content": content}]
