"""`ChatYmeraGroq`: a drop-in replacement for `langchain_groq.ChatGroq`.

It *is* a `ChatGroq` (a subclass), so it takes the same arguments, binds tools and structured
output the same way and converts messages with langchain-groq's own code; only the call itself
goes through the shared `Engine` (cache, routing, key rotation under quota, learning,
failover). `model=None` means "route for me"; `model="X"` means X (any id the account serves,
as `GET /openai/v1/models` lists it), and other models answer only with
`allow_model_fallback=True`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Self

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_groq import ChatGroq
from langchain_groq.chat_models import (
    _convert_chunk_to_message_chunk,
    _convert_dict_to_message,
    _convert_message_to_dict,
    _create_usage_metadata,
)
from pydantic import Field, SecretStr, model_validator

from .config import ApiKey, YmeraSettings, coerce_api_keys
from .engine import Engine, StreamEvent
from .types import ChatRequest
from .types import ChatResult as EngineResult

__all__ = ["ChatYmeraGroq"]

# Keyword arguments that are hints for the engine, never Groq parameters.
_HINT_KWARGS = ("agent_name", "task_type", "ymera_cache", "namespace")
_STREAM_METADATA = "_ymera_metadata"
_METADATA_HINTS = {
    "agent_name": ("agent_name", "ymera_agent", "agent"),
    "task_type": ("task_type", "ymera_task_type"),
}


class ChatYmeraGroq(ChatGroq):
    """Groq chat model that shares quota, keys, cache and learning across every agent.

    Setup:
        Set `GROQ_API_KEY` (and `GROQ_API_KEY_2`, … for more keys), or pass `api_keys`.

        ```python
        from ymera_groq_plugin import ChatYmeraGroq

        llm = ChatYmeraGroq(agent_name="validator", temperature=0)  # model=None: routed
        llm.invoke("Is this JSON valid? {\\"a\\": 1}")
        ```

    Besides `ChatGroq`'s arguments it takes `api_keys`, `redis_url`, `data_dir`,
    `agent_name`, `task_type`, `fallback_models` (with `fallback_api_bases` and
    `fallback_api_keys`), `max_wait`, `cache_enabled`, `cache_sampled`, `namespace`, a
    complete `settings` object, or a ready `engine` (then the configuration arguments are not
    used). Models with equal configurations share one engine. Hints can also come per call:
    `.bind(agent_name=..., task_type=...)` or `config={"metadata": {...}}`.

    `response_metadata` says which model and key label answered (`model_name`, `key_label`),
    whether and from which tier the cache answered (`cache_hit`, `cache_tier`), the route
    with its reasons (`route`; absent on a cache hit, which is not routed), the rate limits
    Groq reported (`rate_limits`), and the `request_id` / `execution_id` that `feedback()`
    takes (on a cache hit, `execution_id` names the call that produced the answer).
    """

    model_name: str | None = Field(default=None, alias="model")  # type: ignore[assignment]
    """A Groq model id or alias; `None` lets the router choose per request."""
    api_keys: list[ApiKey] | None = Field(default=None, exclude=True)
    """Every Groq key to rotate over; default: `api_key`, else the environment
    (`GROQ_API_KEY`, `GROQ_API_KEY_2`, …). Items may be strings, `SecretStr`, `ApiKey` or
    `{"secret", "org", "label"}` dicts, mixed in one list. Never serialised."""
    redis_url: str | None = None
    """Share quota, cache and learning through Redis; default: `YMERA_REDIS_URL` or none."""
    data_dir: str | None = None
    """Where the persistent cache and learning store live (a path; kept as text so that
    `langchain_core.load.dumps` can write it)."""
    agent_name: str | None = None
    """The agent this model serves (a routing and learning hint)."""
    task_type: str | None = None
    """The task type of this agent's requests (a routing hint)."""
    fallback_models: list[str] | None = None
    """LiteLLM model strings to use when every Groq model is out."""
    fallback_api_bases: dict[str, str] | None = None
    """Provider prefix (`"mistral"`) → base URL for the fallback models."""
    fallback_api_keys: dict[str, SecretStr] | None = Field(default=None, exclude=True)
    """Provider prefix → API key for the fallback models (default: LiteLLM's environment
    variables). Never serialised."""
    max_wait: float | None = None
    """Seconds a request may wait for quota before trying the next model."""
    allow_model_fallback: bool | None = None
    """Let other models answer when `model` has no room or fails (default: off, or
    `YMERA_ALLOW_MODEL_FALLBACK`): without it, `model="X"` is answered by X or raises."""
    cache_enabled: bool | None = None
    """Turn the response cache on or off (default: on)."""
    cache_sampled: bool | None = None
    """Also cache requests that sample (temperature > 0 without a seed)."""
    namespace: str | None = None
    """Tenant namespace for cache entries and Redis keys."""
    settings: YmeraSettings | None = Field(default=None, exclude=True)
    """A complete configuration; the arguments above override its fields."""
    engine: Engine | None = Field(default=None, exclude=True)
    """The engine to use; default: the process's shared engine for this configuration."""

    def __init__(self, **kwargs: Any) -> None:
        # Coerced before pydantic sees them: its errors would echo a bad item, a key.
        if kwargs.get("api_keys") is not None:
            kwargs["api_keys"] = list(coerce_api_keys(kwargs["api_keys"]))
        if isinstance(kwargs.get("data_dir"), os.PathLike):
            kwargs["data_dir"] = os.fspath(kwargs["data_dir"])
        super().__init__(**kwargs)

    @model_validator(mode="after")
    def validate_environment(self) -> Self:
        """Build the settings and attach the shared engine (no Groq client of our own)."""
        if self.n != 1:
            raise ValueError("n must be 1: Groq supports one completion per request.")
        if self.temperature == 0:
            # As ChatGroq does: Groq treats 0 as "unset" on some models.
            self.temperature = 1e-8
        if self.engine is None:
            self.engine = Engine.shared(
                self._build_settings(),
                fallback_api_bases=self.fallback_api_bases,
                fallback_api_keys=self.fallback_api_keys,
            )
        return self

    def _build_settings(self) -> YmeraSettings:
        update: dict[str, Any] = {}
        if self.api_keys:
            update["api_keys"] = list(self.api_keys)
        elif self.groq_api_key is not None and not _is_env_key(self.groq_api_key):
            update["api_keys"] = [self.groq_api_key.get_secret_value()]
        if self.groq_api_base:
            update["base_url"] = self.groq_api_base
        if isinstance(self.request_timeout, int | float) and self.request_timeout > 0:
            update["request_timeout"] = float(self.request_timeout)
        if isinstance(self.max_retries, int):
            update["max_retries"] = self.max_retries
        for name in (
            "redis_url",
            "data_dir",
            "max_wait",
            "allow_model_fallback",
            "cache_enabled",
            "cache_sampled",
            "namespace",
            "fallback_models",
        ):
            value = getattr(self, name)
            if value is not None:
                update[name] = value
        if self.settings is not None:
            if not update:
                return self.settings
            data = self.settings.model_dump()
            data["api_keys"] = self.settings.api_keys
            data.update(update)
            return YmeraSettings(**data)
        return YmeraSettings(**update)

    # -- Serializable and identity overrides -------------------------------------------------

    @property
    def lc_secrets(self) -> dict[str, str]:
        return {"groq_api_key": "GROQ_API_KEY"}

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["ymera_groq_plugin", "chat_models"]

    @property
    def _llm_type(self) -> str:
        return "ymera-groq-chat"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        # A routed model (`model=None`) is named once the engine has chosen; "auto" until then.
        params["ls_model_name"] = kwargs.get("model") or self.model_name or "auto"
        return params

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name or "auto",
            "temperature": self.temperature,
            "agent_name": self.agent_name,
            "task_type": self.task_type,
        }

    def __repr__(self) -> str:
        return (
            f"ChatYmeraGroq(model={self.model_name or 'auto'!r}, agent_name={self.agent_name!r},"
            f" task_type={self.task_type!r})"
        )

    # -- BaseChatModel method overrides ------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(
                self._stream(messages, stop=stop, run_manager=run_manager, **kwargs)
            )
        assert self.engine is not None
        request = self._request(messages, stop, run_manager, kwargs, stream=False)
        return self._chat_result(self.engine.invoke(request))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return await agenerate_from_stream(
                self._astream(messages, stop=stop, run_manager=run_manager, **kwargs)
            )
        assert self.engine is not None
        request = self._request(messages, stop, run_manager, kwargs, stream=False)
        return self._chat_result(await self.engine.ainvoke(request))

    # langchain-core's stream()/astream() call _stream without the run manager, so the
    # config's metadata (agent and task hints) would not reach the engine; carry it along.
    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        if config and config.get("metadata"):
            kwargs.setdefault(_STREAM_METADATA, dict(config["metadata"]))
        return super().stream(input, config, stop=stop, **kwargs)

    def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        if config and config.get("metadata"):
            kwargs.setdefault(_STREAM_METADATA, dict(config["metadata"]))
        return super().astream(input, config, stop=stop, **kwargs)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        assert self.engine is not None
        request = self._request(messages, stop, run_manager, kwargs, stream=True)
        default: type[BaseMessageChunk] = AIMessageChunk
        for event in self.engine.stream(request):
            chunk = self._generation_chunk(event, default)
            if chunk is None:
                continue
            default = chunk.message.__class__
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        assert self.engine is not None
        request = self._request(messages, stop, run_manager, kwargs, stream=True)
        default: type[BaseMessageChunk] = AIMessageChunk
        async for event in self.engine.astream(request):
            chunk = self._generation_chunk(event, default)
            if chunk is None:
                continue
            default = chunk.message.__class__
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    # -- learning --------------------------------------------------------------------------

    def feedback(self, message_or_request_id: AIMessage | str, quality: float) -> None:
        """Tell the learner how good an answer was (quality in [0, 1])."""
        assert self.engine is not None
        self.engine.feedback(_request_id_of(message_or_request_id), quality)

    async def afeedback(self, message_or_request_id: AIMessage | str, quality: float) -> None:
        """Async twin of `feedback`."""
        assert self.engine is not None
        await self.engine.afeedback(_request_id_of(message_or_request_id), quality)

    # -- internal --------------------------------------------------------------------------

    def _request(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
        *,
        stream: bool,
    ) -> ChatRequest:
        kwargs = dict(kwargs)
        passed_metadata = kwargs.pop(_STREAM_METADATA, None)
        hints = {k: kwargs.pop(k) for k in _HINT_KWARGS if k in kwargs}
        model = kwargs.pop("model", None) or self.model_name
        kwargs.pop("stream", None)
        params: dict[str, Any] = {
            "temperature": self.temperature,
            "stop": stop if stop is not None else self.stop,
            "max_tokens": self.max_tokens,
            "reasoning_format": self.reasoning_format,
            "reasoning_effort": self.reasoning_effort,
            **self.model_kwargs,
            **kwargs,
        }
        if isinstance(params.get("stop"), str):
            params["stop"] = [params["stop"]]
        params = {k: v for k, v in params.items() if v is not None}
        metadata: dict[str, Any] = dict(getattr(run_manager, "metadata", None) or {})
        if isinstance(passed_metadata, Mapping):
            metadata.update(passed_metadata)
        agent = hints.get("agent_name") or _first(metadata, _METADATA_HINTS["agent_name"])
        task = hints.get("task_type") or _first(metadata, _METADATA_HINTS["task_type"])
        return ChatRequest(
            messages=tuple(_convert_message_to_dict(m) for m in messages),
            model=model,
            params=params,
            agent_name=agent or self.agent_name,
            task_type=task or self.task_type,
            metadata=metadata,
            stream=stream,
            cache=hints.get("ymera_cache"),
            namespace=hints.get("namespace"),
        )

    def _metadata(self, result: EngineResult) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "model_name": result.model,
            "model_provider": "groq" if result.provider == "groq" else result.provider,
            "key_label": result.key_label,
            "cache_hit": result.cache_tier is not None,
            "cache_tier": result.cache_tier,
            "request_id": result.request_id,
            # The execution the learner knows this answer by (on a cache hit: the original).
            "execution_id": result.raw.get("execution_id") or result.request_id,
            "latency_ms": round(result.latency_ms, 3),
        }
        if result.plan is not None:
            meta["route"] = result.plan.as_dict()
        if result.raw.get("system_fingerprint"):
            meta["system_fingerprint"] = result.raw["system_fingerprint"]
        if result.rate_limits is not None and not result.rate_limits.empty:
            rl = result.rate_limits
            meta["rate_limits"] = {
                "remaining_requests": rl.remaining_requests,
                "remaining_tokens": rl.remaining_tokens,
                "reset_requests": rl.reset_requests,
                "reset_tokens": rl.reset_tokens,
            }
        return meta

    def _chat_result(self, result: EngineResult) -> ChatResult:
        message = _convert_dict_to_message({"role": "assistant", **result.message})
        usage = _usage_dict(result)
        if isinstance(message, AIMessage) and usage["total_tokens"]:
            message.usage_metadata = _create_usage_metadata(usage)
        meta = self._metadata(result)
        meta["finish_reason"] = result.finish_reason
        message.response_metadata = {**message.response_metadata, **meta}
        generation = ChatGeneration(
            message=message, generation_info={"finish_reason": result.finish_reason}
        )
        return ChatResult(
            generations=[generation],
            llm_output={
                "token_usage": usage,
                "model_name": result.model,
                "system_fingerprint": result.raw.get("system_fingerprint", ""),
            },
        )

    def _generation_chunk(
        self, event: StreamEvent, default: type[BaseMessageChunk]
    ) -> ChatGenerationChunk | None:
        if event.result is not None:
            # The last chunk carries the metadata only (merging it into a content chunk would
            # concatenate string fields).
            msg = AIMessageChunk(content="", response_metadata=self._metadata(event.result))
            return ChatGenerationChunk(message=msg)
        chunk = event.chunk
        if not chunk or not chunk.get("choices"):
            return None
        message_chunk = _convert_chunk_to_message_chunk(chunk, default)
        info: dict[str, Any] = {}
        if finish := chunk["choices"][0].get("finish_reason"):
            info["finish_reason"] = finish
            message_chunk = message_chunk.model_copy(update={"response_metadata": dict(info)})
        return ChatGenerationChunk(message=message_chunk, generation_info=info or None)


def _usage_dict(result: EngineResult) -> dict[str, Any]:
    u = result.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def _first(metadata: Mapping[str, Any], names: Sequence[str]) -> str | None:
    for n in names:
        v = metadata.get(n)
        if isinstance(v, str) and v:
            return v
    return None


def _is_env_key(key: SecretStr) -> bool:
    import os

    return os.environ.get("GROQ_API_KEY") == key.get_secret_value()


def _request_id_of(value: AIMessage | str) -> str:
    if isinstance(value, str):
        return value
    meta = value.response_metadata
    rid = meta.get("execution_id") or meta.get("request_id")
    if not isinstance(rid, str):
        from .errors import InvalidRequestError

        raise InvalidRequestError("this message has no request_id in its response_metadata")
    return rid
