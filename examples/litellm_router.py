"""An existing LiteLLM Router gains quota-aware Groq routing with one line, offline.

Starts the local Groq-compatible server with three keys in two organisations, builds a Router
over every (model × key), attaches the package, sends a burst several times one organisation's
per-minute limit and prints what the server counted: zero 429s.

    python examples/litellm_router.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile

# LiteLLM downloads its price map and a tokenizer at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from litellm import Router

from ymera_groq_plugin import YmeraSettings
from ymera_groq_plugin.engine import Engine
from ymera_groq_plugin.litellm import attach, model_list_from_settings
from ymera_groq_plugin.testing import GroqTestServer

KEYS = {
    "gsk_example_router_00000000000000001": "org_one",
    "gsk_example_router_00000000000000002": "org_one",
    "gsk_example_router_00000000000000003": "org_two",
}
MODEL = "openai/gpt-oss-20b"
# The free plan allows 30 requests a minute per organisation and model.
BURST = int(os.environ.get("EXAMPLE_BURST", "80"))


async def main() -> dict[str, int]:
    with GroqTestServer(KEYS) as server, tempfile.TemporaryDirectory() as data_dir:
        settings = YmeraSettings(
            api_keys=[{"secret": k, "org": org} for k, org in KEYS.items()],
            base_url=server.base_url,
            data_dir=data_dir,
            max_wait=60.0,
        )
        engine = Engine(settings)
        router = Router(
            model_list=model_list_from_settings(settings, models=[MODEL]),
            routing_strategy="simple-shuffle",
        )
        attach(router, engine=engine)  # the one line

        async def ask(i: int) -> str:
            response = await router.acompletion(
                model=MODEL,
                messages=[{"role": "user", "content": f"Validate record {i}"}],
                metadata={"agent_name": "validator", "task_type": "validation"},
            )
            return str(response.choices[0].message.content)

        answers = await asyncio.gather(*(ask(i) for i in range(BURST)))
        stats = server.stats().as_dict()
        await engine.aclose()
        by_status = {str(k): int(v) for k, v in stats["by_status"].items()}
        print(f"{len(answers)} answers; the server answered {by_status}")
        return by_status


if __name__ == "__main__":
    result = asyncio.run(main())
    raise SystemExit(1 if result.get("429") else 0)
