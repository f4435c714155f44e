"""Prompt-token counting for the local Groq server, isolated so it can be swapped.

The server charges admission with the same estimate the package's quota ledger makes when
`ymera_groq_plugin.tokens.estimate_prompt_tokens` exists; otherwise with a characters / 4 rule.
Either way the count is the `usage.prompt_tokens` the server reports, so client and server agree.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "PromptCounter",
    "TokenCounter",
    "count_prompt_tokens",
    "estimate_chars_per_4",
    "resolve_token_counter",
]

logger = logging.getLogger(__name__)

TokenCounter = Callable[[Sequence[Mapping[str, Any]]], int]
"""Counts the prompt tokens of OpenAI-style message dicts."""

_PROBE: list[Mapping[str, Any]] = [{"role": "user", "content": "hello"}]


def text_of(content: Any) -> str:
    """The text of a message `content`: a string, or the `text` of its content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return str(content)


def estimate_chars_per_4(messages: Sequence[Mapping[str, Any]]) -> int:
    """Estimate prompt tokens as characters / 4 plus a small per-message overhead.

    Args:
        messages: OpenAI-style message dicts.

    Returns:
        The estimate (at least 1).
    """
    total = 3
    for m in messages:
        total += 4 + (len(text_of(m.get("content"))) + 3) // 4
        if m.get("tool_calls"):
            total += len(json.dumps(m["tool_calls"])) // 4
        if m.get("name"):
            total += 1
    return max(1, total)


PromptCounter = Callable[[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]], int]
"""Counts the prompt tokens of (messages, tool schemas)."""


def _with_tool_chars(counter: TokenCounter) -> PromptCounter:
    def count(messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]) -> int:
        n = int(counter(messages))
        if tools:
            n += len(json.dumps(list(tools), sort_keys=True, default=str)) // 4
        return n

    return count


def resolve_token_counter(custom: TokenCounter | None = None) -> PromptCounter:
    """The counter to use: `custom`, else the package's estimator if importable, else chars/4.

    The package's `ymera_groq_plugin.tokens.estimate_prompt_tokens(messages, tools=...)` is
    tried once on a probe message; if it is missing, raises, or does not return an int, the
    chars/4 rule is used. Counters that take only messages get the tool schemas added at
    characters / 4.
    """
    if custom is not None:
        return _with_tool_chars(custom)
    try:
        module = importlib.import_module("ymera_groq_plugin.tokens")
        estimate = module.estimate_prompt_tokens
        probe = estimate(_PROBE, tools=None)
    except Exception:  # the estimator is optional; any failure means "use the fallback"
        return _with_tool_chars(estimate_chars_per_4)
    if not isinstance(probe, int) or isinstance(probe, bool) or probe < 0:
        return _with_tool_chars(estimate_chars_per_4)

    def package_count(
        messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]
    ) -> int:
        return int(estimate(messages, tools=list(tools) or None))

    return package_count


def count_prompt_tokens(
    counter: PromptCounter,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] = (),
) -> int:
    """Prompt tokens of a request (messages plus tool schemas), at least 1.

    Falls back to chars/4 for this request if the counter fails on unusual content.
    """
    try:
        n = counter(messages, tools)
    except Exception:  # a user-supplied or package counter must never take the server down
        logger.debug("token counter failed; using chars/4 for this request", exc_info=True)
        n = _with_tool_chars(estimate_chars_per_4)(messages, tools)
    return max(1, n)
