from __future__ import annotations

import subprocess
import sys

import ymera_groq_plugin

EXPECTED_ALL = [
    "ChatYmeraGroq",
    "TieredCache",
    "Engine",
    "YmeraSettings",
    "ApiKey",
    "Catalog",
    "ModelInfo",
    "load_catalog",
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


def test_all_imports() -> None:
    assert sorted(ymera_groq_plugin.__all__) == sorted(EXPECTED_ALL)


def test_error_names_resolve() -> None:
    for name in EXPECTED_ALL:
        if name.endswith("Error"):
            assert issubclass(getattr(ymera_groq_plugin, name), Exception)


def test_import_does_not_pull_litellm_or_langchain_models() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); import ymera_groq_plugin; "
        "print(time.perf_counter() - t); "
        "print('litellm' in sys.modules, 'langchain_core.language_models' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[1:] == ["False", "False"]
