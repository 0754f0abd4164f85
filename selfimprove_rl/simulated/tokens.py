r"""How many tokens does a request cost? A documented, deterministic tokenizer approximation.

The simulated model has no real tokenizer. It counts a token for every run of word characters
(``\w+``, so ``don't`` is three tokens: ``don``, ``'``, ``t``) and for every other
non-space character (punctuation, symbols, each emoji). Chat requests add the per-message
overhead OpenAI documents for its chat format: 3 tokens per message (role and delimiters) and
3 tokens that prime the assistant's reply. English text comes out within ~20% of tiktoken's
count, which is close enough for cost accounting and for weighing score against prompt length.

Example:
    >>> count_tokens("I don't like sports.")
    7
    >>> count_message_tokens([{"role": "user", "content": "Hello there!"}])
    9
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

TOKEN_PATTERN = re.compile(r"\w+|[^\w\s]")
PER_MESSAGE_OVERHEAD = 3
REPLY_PRIMING = 3


@lru_cache(maxsize=65536)
def count_tokens(text: str) -> int:
    """Return the number of tokens in ``text`` (cached per exact text)."""
    return len(TOKEN_PATTERN.findall(text))


def content_text(content: Any) -> str:
    r"""Return the text of a message ``content``: a string, or the text parts of a part list.

    Example:
        >>> content_text([{"type": "text", "text": "a"}, {"type": "image_url"}, "b"])
        'a\nb'
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        return "\n".join(texts)
    return str(content)


def count_message_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Return the prompt tokens of a chat request: every message's text plus the overheads.

    Tool calls in assistant messages count by the text of their function name and arguments.
    """
    total = REPLY_PRIMING
    for message in messages:
        total += PER_MESSAGE_OVERHEAD + count_tokens(content_text(message.get("content")))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            total += count_tokens(str(function.get("name", "")))
            total += count_tokens(str(function.get("arguments", "")))
    return total
