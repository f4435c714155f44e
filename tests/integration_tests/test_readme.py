"""Every Python block of README.md runs, as a user would run it, against the local Groq server.

Each block runs in its own interpreter with only the environment a user sets: four keys
(`GROQ_API_KEY` … `GROQ_API_KEY_4`) that the local server knows, `GROQ_BASE_URL` pointing at
it, a temporary `YMERA_DATA_DIR`, and `LITELLM_LOCAL_MODEL_COST_MAP=True` (no download). A
block that stops working fails here, so the README stays true.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ymera_groq_plugin.testing import GroqTestServer

README = Path(__file__).resolve().parents[2] / "README.md"
KEYS = {
    "GROQ_API_KEY": ("gsk_readme_example_key_0000000000000000000000001", "org_main"),
    "GROQ_API_KEY_2": ("gsk_readme_example_key_0000000000000000000000002", "org_main"),
    "GROQ_API_KEY_3": ("gsk_readme_example_key_0000000000000000000000003", "org_team"),
    "GROQ_API_KEY_4": ("gsk_readme_example_key_0000000000000000000000004", "org_ops"),
}


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)


@pytest.fixture(scope="module")
def server() -> Iterator[GroqTestServer]:
    with GroqTestServer({secret: org for secret, org in KEYS.values()}) as srv:
        yield srv


def test_the_readme_has_the_documented_examples() -> None:
    text = "\n".join(python_blocks())
    for needle in ("ChatYmeraGroq(", "api_keys=[", "TieredCache()", "allowed_objects=", "attach("):
        assert needle in text


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_block_runs(index: int, server: GroqTestServer, tmp_path: Path) -> None:
    code = python_blocks()[index]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GROQ_", "YMERA_"))}
    env.update({name: secret for name, (secret, _) in KEYS.items()})
    env.update(
        {
            "GROQ_BASE_URL": server.base_url,
            "YMERA_DATA_DIR": str(tmp_path / "data"),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "HF_HUB_OFFLINE": "1",
        }
    )
    before = server.stats().by_status.get(429, 0)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"README block {index + 1}:\n{code}\n{proc.stderr[-3000:]}"
    assert server.stats().by_status.get(429, 0) == before
