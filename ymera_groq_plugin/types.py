"""The engine's records: plain, framework-free values passed between the pipeline's stages.

Messages and parameters use the OpenAI/Groq wire shapes (dicts), so adapters translate once
and every stage (cache key, token estimate, transport) reads the same thing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "OUTPUT_PARAMS",
    "ChatRequest",
    "ChatResult",
    "Complexity",
    "Execution",
    "Message",
    "Plan",
    "Profile",
    "RateLimits",
    "TaskType",
    "Usage",
]

Message = dict[str, Any]
"""An OpenAI-style chat message: `role`, `content`, optionally `name`, `tool_calls`,
`tool_call_id`."""

TaskType = Literal[
    "code_generation",
    "code_review",
    "documentation",
    "testing",
    "validation",
    "architecture",
    "security",
    "api_design",
    "database",
    "monitoring",
    "formatting",
    "reasoning",
    "analysis",
    "long_context",
    "multilingual",
    "moderation",
    "general",
]
TASK_TYPES: tuple[str, ...] = TaskType.__args__  # type: ignore[attr-defined]

Complexity = Literal["simple", "moderate", "complex"]

OUTPUT_PARAMS: frozenset[str] = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "frequency_penalty",
        "presence_penalty",
        "logprobs",
        "top_logprobs",
        "n",
        "reasoning_effort",
        "reasoning_format",
        "include_reasoning",
        "service_tier",
        "logit_bias",
        "user",
    }
)
"""Parameters that change what the model answers (so they are part of the cache key)."""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat request as the engine sees it.

    Attributes:
        messages: OpenAI-style messages.
        model: A catalog id or alias, or `None` for "route for me".
        params: Generation parameters in Groq's names (`temperature`, `max_tokens`, `tools`, …).
        agent_name: The calling agent, for routing and learning.
        task_type: An explicit task type hint; `None` lets the classifier decide.
        metadata: Free-form hints (LangChain `config["metadata"]`, LiteLLM `metadata`).
        stream: Whether the caller wants a stream.
        cache: `True` forces caching even when sampling, `False` bypasses the cache, `None`
            follows the policy.
        namespace: Tenant namespace for the cache; `None` uses the configured one.
        request_id: A unique id for tracing and learning feedback.
    """

    messages: tuple[Message, ...]
    model: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    agent_name: str | None = None
    task_type: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    stream: bool = False
    cache: bool | None = None
    namespace: str | None = None
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def max_tokens(self) -> int | None:
        """The completion budget the caller asked for, if any."""
        v = self.params.get("max_completion_tokens", self.params.get("max_tokens"))
        return int(v) if v is not None else None

    @property
    def samples(self) -> bool:
        """Whether the answer is random (temperature above zero and no seed)."""
        temperature = self.params.get("temperature")
        # Groq's default temperature is 1: an unset temperature samples too.
        t = 1.0 if temperature is None else float(temperature)
        return t > 1e-6 and self.params.get("seed") is None


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of one call, as Groq reports it."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any] | None) -> Usage:
        """Build from a Groq/OpenAI `usage` object (a dict)."""
        if not usage:
            return cls()
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        ptd = usage.get("prompt_tokens_details") or {}
        ctd = usage.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=int(usage.get("total_tokens") or prompt + completion),
            cached_tokens=int(ptd.get("cached_tokens") or 0) if isinstance(ptd, Mapping) else 0,
            reasoning_tokens=(
                int(ctd.get("reasoning_tokens") or 0) if isinstance(ctd, Mapping) else 0
            ),
        )


@dataclass(frozen=True, slots=True)
class RateLimits:
    """What one Groq response said about the limits in force (all fields optional).

    `*_requests` always refers to requests per day and `*_tokens` to tokens per minute (Groq
    sends no header for RPM or TPD). Reset values are seconds until the bucket is full again.
    `limit_kind`, `limit_value` and `used` come from a 429/413 body, which names the limit hit.
    """

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens: float | None = None
    retry_after: float | None = None
    limit_kind: Literal["rpm", "rpd", "tpm", "tpd"] | None = None
    limit_value: int | None = None
    used: int | None = None
    requested: int | None = None
    organization: str | None = None

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__slots__)


@dataclass(frozen=True, slots=True)
class Profile:
    """What the router knows about a request before choosing models.

    Attributes:
        task_type: One of `TASK_TYPES`.
        complexity: `simple`, `moderate` or `complex`.
        estimated_tokens: Estimated prompt tokens.
        reasons: Why: each hint or signal that decided, in order.
        agent_name: The calling agent, if known.
    """

    task_type: str
    complexity: Complexity
    estimated_tokens: int
    reasons: tuple[str, ...] = ()
    agent_name: str | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """An ordered list of candidate models, with the reasons for the order and the drops."""

    models: tuple[str, ...]
    profile: Profile
    reasons: tuple[str, ...] = ()
    dropped: Mapping[str, str] = field(default_factory=dict)
    """Model id → why it is not in the plan."""

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape `ymera-groq route --json` prints."""
        return {
            "task_type": self.profile.task_type,
            "complexity": self.profile.complexity,
            "estimated_tokens": self.profile.estimated_tokens,
            "agent_name": self.profile.agent_name,
            "plan": list(self.models),
            "reasons": list(self.profile.reasons) + list(self.reasons),
            "dropped": dict(self.dropped),
        }


@dataclass(frozen=True, slots=True)
class ChatResult:
    """One answer.

    Attributes:
        message: The assistant message in OpenAI shape (`content`, optionally `tool_calls`,
            `reasoning`).
        model: The model that answered.
        usage: Token usage.
        finish_reason: Groq's finish reason.
        key_label: The label (never the key) of the key that was used; `None` for a cache hit
            or a fallback provider.
        cache_tier: `"l1"`, `"l2"` or `"l3"` when the cache answered, else `None`.
        rate_limits: What the response's headers said.
        plan: The route taken (with its reasons), when the engine routed.
        latency_ms: Wall time of the call as the engine saw it.
        provider: `"groq"`, or the LiteLLM provider of a fallback.
        request_id: The request's id (the learner's feedback handle).
        raw: Extra response fields worth keeping (`id`, `system_fingerprint`, `x_groq`, …).
    """

    message: Message
    model: str
    usage: Usage = Usage()
    finish_reason: str | None = None
    key_label: str | None = None
    cache_tier: str | None = None
    rate_limits: RateLimits | None = None
    plan: Plan | None = None
    latency_ms: float = 0.0
    provider: str = "groq"
    request_id: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def content(self) -> str:
        c = self.message.get("content")
        return c if isinstance(c, str) else ""


@dataclass(frozen=True, slots=True)
class Execution:
    """One recorded execution, the learner's unit of evidence.

    Attributes:
        agent_name: The calling agent (`"*"` when unknown).
        task_type: The request's task type.
        model: The model that served (or failed).
        success: Whether it produced an answer.
        latency_ms: Wall time of the call.
        tokens: Total tokens used.
        quality: A quality score in [0, 1], when known (feedback can add it later).
        timestamp: Seconds since the epoch.
        execution_id: Unique id (the request id), the handle for feedback.
        error: The error class name for failures.
    """

    agent_name: str
    task_type: str
    model: str
    success: bool
    latency_ms: float
    tokens: int = 0
    quality: float | None = None
    timestamp: float = field(default_factory=time.time)
    execution_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    error: str | None = None


def messages_tuple(messages: Sequence[Mapping[str, Any]]) -> tuple[Message, ...]:
    """Copy messages into the immutable tuple a `ChatRequest` holds."""
    return tuple(dict(m) for m in messages)
