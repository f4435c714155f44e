"""Rebuild the `litellm_*.yaml` cassettes (run by hand; tests only read the YAML files).

    python cassettes/litellm_build_cassettes.py

SYNTHETIC: no public recording of LiteLLM's Router against Groq's current models exists, so
these are recorded from the package's local Groq-compatible server
(`ymera_groq_plugin.testing.GroqTestServer`), which answers with Groq's wire format: bodies,
`x-ratelimit-*` headers, `retry-after`, SSE streams with `x_groq.usage`. The recording goes
through a real `litellm.Router` with `ymera_groq_plugin.litellm.attach`; the request URIs are
rewritten from the loopback server to `https://api.groq.com/openai/v1/...` (and, for the
cross-provider fallback, `https://api.openai.com/v1/...`), the `authorization` header is
dropped, and so are `date` headers. Each file starts with a `# SYNTHETIC` comment. They live in
`cassettes/litellm/`: the top-level Groq cassettes all go to `api.groq.com`, and one of these
goes to another provider on purpose.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ["HF_HUB_OFFLINE"] = "1"

import litellm
import vcr
from litellm import Router

HERE = Path(__file__).resolve().parent
OUT = HERE / "litellm"
sys.path.insert(0, str(HERE.parent))

from ymera_groq_plugin.config import YmeraSettings  # noqa: E402
from ymera_groq_plugin.engine import Engine  # noqa: E402
from ymera_groq_plugin.litellm import attach, model_list_from_settings  # noqa: E402
from ymera_groq_plugin.testing.server import GroqTestServer  # noqa: E402

NOTE = (
    "# SYNTHETIC: recorded from ymera_groq_plugin.testing.GroqTestServer (Groq's wire format)\n"
    "# through a real litellm.Router with ymera_groq_plugin.litellm.attach; URIs rewritten to\n"
    "# api.groq.com / api.openai.com. Rebuild with cassettes/litellm_build_cassettes.py.\n"
)
GROQ_KEY = "gsk_litellmcassette00000000000001"
OPENAI_KEY = "sk-litellmcassette000000000000002"
MODEL = "openai/gpt-oss-20b"
FALLBACK_MODEL = "openai/gpt-oss-120b"


def _recorder(rewrites: dict[int, tuple[str, str]]) -> vcr.VCR:
    """A VCR that stores loopback requests under the public hosts they stand for."""

    def request(req: Any) -> Any:
        parsed = urlparse(req.uri)
        target = rewrites.get(parsed.port or 0)
        if target is not None:  # vcrpy calls this again on requests already rewritten
            base, strip = target
            req.uri = base + parsed.path.removeprefix(strip)
            req.headers["host"] = urlparse(base).netloc
        return req

    def response(resp: dict[str, Any]) -> dict[str, Any]:
        headers = resp.get("headers") or {}
        for name in list(headers):
            if name.lower() in ("date", "set-cookie"):
                del headers[name]
        return resp

    return vcr.VCR(
        record_mode="all",
        filter_headers=[("authorization", None), ("api-key", None)],
        before_record_request=request,
        before_record_response=response,
        decode_compressed_response=False,
    )


def _prepend_note(path: Path) -> None:
    text = path.read_text()
    if not text.startswith("# SYNTHETIC"):
        path.write_text(NOTE + text)


async def build() -> None:
    litellm.disable_aiohttp_transport = True  # httpx, which vcrpy records
    litellm.suppress_debug_info = True
    groq = await GroqTestServer({GROQ_KEY: "org_cassette"}).astart()
    other = await GroqTestServer({OPENAI_KEY: "org_other_provider"}).astart()
    data = Path(tempfile.mkdtemp())
    try:
        rewrites = {
            urlparse(groq.base_url).port or 0: ("https://api.groq.com", ""),
            urlparse(other.base_url).port or 0: ("https://api.openai.com", "/openai"),
        }
        recorder = _recorder(rewrites)
        settings = YmeraSettings(
            api_keys=[{"secret": GROQ_KEY, "org": "org_cassette", "label": "key1"}],
            base_url=groq.base_url,
            data_dir=data,
        )
        engine = Engine(settings)
        model_list = model_list_from_settings(settings)
        model_list.append(
            {
                "model_name": "openai-backup",
                "litellm_params": {
                    "model": f"openai/{FALLBACK_MODEL}",
                    "api_key": OPENAI_KEY,
                    "api_base": other.openai_base_url,
                },
                "model_info": {"id": "openai-backup@key1"},
            }
        )
        router = Router(
            model_list=model_list, num_retries=0, fallbacks=[{MODEL: ["openai-backup"]}]
        )
        ymera = attach(router, engine=engine, strategy=True)
        try:
            with recorder.use_cassette(str(OUT / "litellm_routed_completion.yaml")):
                await router.acompletion(
                    model="groq-auto",
                    messages=[
                        {"role": "user", "content": "Translate 'good morning' into Japanese."}
                    ],
                    metadata={"agent_name": "translator", "task_type": "multilingual"},
                    max_tokens=64,
                )
            with recorder.use_cassette(str(OUT / "litellm_stream.yaml")):
                stream = await router.acompletion(
                    model=MODEL,
                    messages=[{"role": "user", "content": "Name three prime numbers."}],
                    max_tokens=64,
                    stream=True,
                )
                async for _ in stream:
                    pass
            # Another client of the organisation used the quota up: Groq answers 429.
            groq.start_429_storm(120)
            with recorder.use_cassette(str(OUT / "litellm_cross_provider_fallback.yaml")):
                for question in ("What is 2 + 2?", "What is 3 + 3?"):
                    await router.acompletion(
                        model=MODEL,
                        messages=[{"role": "user", "content": question}],
                        max_tokens=32,
                    )
            await ymera.aflush()
        finally:
            ymera.detach()
            await engine.aclose()
    finally:
        await groq.astop()
        await other.astop()
    for name in ("litellm_routed_completion", "litellm_stream", "litellm_cross_provider_fallback"):
        _prepend_note(OUT / f"{name}.yaml")


if __name__ == "__main__":
    asyncio.run(build())
