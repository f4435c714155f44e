"""ymera-groq-plugin: many LangChain agents and LiteLLM routers sharing Groq as one endpoint.

Public names are imported lazily: `import ymera_groq_plugin` stays cheap (no LangChain model
machinery, no LiteLLM) until a name is used.
"""

from __future__ import annotations

import importlib
import logging
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import TieredCache
    from .catalog import Catalog, ModelInfo, load_catalog
    from .chat_models import ChatYmeraGroq
    from .config import ApiKey, YmeraSettings
    from .engine import Engine
    from .errors import (
        ConfigurationError,
        ContextWindowError,
        InvalidRequestError,
        ModelRetiredError,
        NoUsableKeyError,
        QuotaExhaustedError,
        RequestTooLargeError,
        StorageError,
        StreamError,
        UnknownModelError,
        UpstreamAuthError,
        UpstreamError,
        UpstreamRateLimitError,
        UpstreamTimeoutError,
        YmeraError,
    )

# A library logs; the application decides where logs go (no "last resort" stderr output).
logging.getLogger(__name__).addHandler(logging.NullHandler())

try:
    __version__ = metadata.version("ymera-groq-plugin")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

_LAZY: dict[str, str] = {
    # LangChain and LiteLLM entry points
    "ChatYmeraGroq": "chat_models",
    "TieredCache": "cache",
    # the engine and its configuration
    "Engine": "engine",
    "YmeraSettings": "config",
    "ApiKey": "config",
    "Catalog": "catalog",
    "ModelInfo": "catalog",
    "load_catalog": "catalog",
    # errors
    "YmeraError": "errors",
    "ConfigurationError": "errors",
    "InvalidRequestError": "errors",
    "UnknownModelError": "errors",
    "ModelRetiredError": "errors",
    "ContextWindowError": "errors",
    "QuotaExhaustedError": "errors",
    "RequestTooLargeError": "errors",
    "NoUsableKeyError": "errors",
    "StorageError": "errors",
    "UpstreamError": "errors",
    "UpstreamRateLimitError": "errors",
    "UpstreamTimeoutError": "errors",
    "UpstreamAuthError": "errors",
    "StreamError": "errors",
}

__all__ = [
    # LangChain and LiteLLM entry points
    "ChatYmeraGroq",
    "TieredCache",
    # the engine and its configuration
    "Engine",
    "YmeraSettings",
    "ApiKey",
    "Catalog",
    "ModelInfo",
    "load_catalog",
    # errors
    "YmeraError",
    "ConfigurationError",
    "InvalidRequestError",
    "UnknownModelError",
    "ModelRetiredError",
    "ContextWindowError",
    "QuotaExhaustedError",
    "RequestTooLargeError",
    "NoUsableKeyError",
    "StorageError",
    "UpstreamError",
    "UpstreamRateLimitError",
    "UpstreamTimeoutError",
    "UpstreamAuthError",
    "StreamError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
