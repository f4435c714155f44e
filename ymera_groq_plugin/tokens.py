"""Prompt token estimates, used by the quota ledger (what to reserve) and routing (what fits).

Groq's current chat models are GPT-OSS (tokenised with `o200k_harmony`, whose ordinary text
tokens are `o200k_base`'s) and Qwen (its own tokenizer, within a few percent of `o200k_base` on
English and code). So the estimate uses tiktoken's `o200k_base` where the encoding file is on
this machine, and never downloads it: tiktoken fetches encodings from the internet on first use,
which must not happen inside a request (and cannot happen on an offline machine).

Where the encoding is found, in order:
1. `TIKTOKEN_CACHE_DIR` (tiktoken's own cache convention), or `YMERA_TIKTOKEN_DIR`;
2. the copy LiteLLM ships in its wheel, if LiteLLM is installed (located without importing it);
3. tiktoken's default cache directory.

Elsewhere the estimate is a documented approximation: one token per 4 characters of Latin
text, one per character of CJK text (both err high), plus the per-message overhead below.
`encoding_name()` says which method is in use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "MESSAGE_OVERHEAD_TOKENS",
    "encoding_name",
    "estimate_prompt_tokens",
    "estimate_text_tokens",
]

MESSAGE_OVERHEAD_TOKENS = 4
"""Tokens a chat template adds around each message (role markers, separators)."""
REPLY_PRIMING_TOKENS = 3
"""Tokens the template adds to start the assistant's reply."""
IMAGE_TOKENS = 85
"""A conservative charge for one image part (vision inputs are billed as a block)."""

_O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
_O200K_FILE = hashlib.sha1(_O200K_URL.encode()).hexdigest()

_lock = threading.Lock()
_encoding: tiktoken.Encoding | None = None
_method: str | None = None


def _candidate_dirs() -> list[Path]:
    dirs: list[Path] = []
    for var in ("YMERA_TIKTOKEN_DIR", "TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if value := os.environ.get(var):
            dirs.append(Path(value))
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            dirs.append(Path(loc) / "litellm_core_utils" / "tokenizers")
    dirs.append(Path(tempfile.gettempdir()) / "data-gym-cache")
    return dirs


def _load() -> tuple[tiktoken.Encoding | None, str]:
    for d in _candidate_dirs():
        if not (d / _O200K_FILE).is_file():
            continue
        import tiktoken
        import tiktoken_ext.openai_public as public

        # tiktoken reads its cache directory from the environment at call time; point it at
        # the directory that holds the file so it loads (and hash-checks) without a download.
        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(d)
        try:
            return tiktoken.Encoding(**public.o200k_base()), "o200k_base"
        except Exception:  # a corrupt file: try the next directory
            continue
        finally:
            if saved is None:
                os.environ.pop("TIKTOKEN_CACHE_DIR", None)
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return None, "approx-chars"


def _get() -> tuple[tiktoken.Encoding | None, str]:
    global _encoding, _method
    if _method is None:
        with _lock:
            if _method is None:
                _encoding, _method = _load()
    assert _method is not None
    return _encoding, _method


def encoding_name() -> str:
    """`"o200k_base"` when tiktoken's encoding is available, else `"approx-chars"`."""
    return _get()[1]


def _approx(text: str) -> int:
    wide = sum(1 for ch in text if ord(ch) >= 0x2E80)
    return (len(text) - wide + 3) // 4 + wide


def estimate_text_tokens(text: str) -> int:
    """Tokens in a piece of text."""
    if not text:
        return 0
    enc, _ = _get()
    if enc is None:
        return _approx(text)
    return len(enc.encode(text, disallowed_special=()))


def _content_text(content: Any) -> Iterable[str]:
    if content is None:
        return
    if isinstance(content, str):
        yield content
    elif isinstance(content, Sequence):
        for part in content:
            if isinstance(part, Mapping):
                if isinstance(part.get("text"), str):
                    yield part["text"]
            elif isinstance(part, str):
                yield part
    else:
        yield str(content)


def estimate_prompt_tokens(
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Estimate the prompt tokens of an OpenAI-style message list (and tool schemas).

    Args:
        messages: Dicts with `role`, `content` and optionally `name`, `tool_calls`.
        tools: Tool definitions sent with the request; their JSON counts towards the prompt.

    Returns:
        The estimated number of prompt tokens, never below the template overhead.
    """
    total = REPLY_PRIMING_TOKENS
    for m in messages:
        total += MESSAGE_OVERHEAD_TOKENS
        content = m.get("content")
        for text in _content_text(content):
            total += estimate_text_tokens(text)
        if isinstance(content, Sequence) and not isinstance(content, str):
            total += IMAGE_TOKENS * sum(
                1
                for p in content
                if isinstance(p, Mapping) and p.get("type") in ("image_url", "image")
            )
        if name := m.get("name"):
            total += estimate_text_tokens(str(name)) + 1
        if tool_calls := m.get("tool_calls"):
            total += estimate_text_tokens(json.dumps(tool_calls, sort_keys=True, default=str))
    if tools:
        total += estimate_text_tokens(json.dumps(list(tools), sort_keys=True, default=str))
    return total
