"""A LangChain (LCEL) chain on `ChatYmeraGroq`: prompt | model | parser, routed and cached.

`ChatYmeraGroq` is a drop-in for `ChatGroq`: the chain below is the one you would write with
`ChatGroq`, except that no model is named (`model=None`: the router picks one per request from
the task and the quota left) and repeated questions come from the cache. Agent and task hints
travel in the chain's `config["metadata"]`.

Offline by default, against the package's local Groq-compatible server; with `--live` and
`GROQ_API_KEY` set it calls Groq itself (a handful of small requests).

    python examples/langchain_chain.py
    python examples/langchain_chain.py --live
    python examples/langchain_chain.py --json      # answers and the engine's counters as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from ymera_groq_plugin import ChatYmeraGroq, YmeraSettings

QUESTIONS = [
    {"language": "Python", "task": "deduplicate a list while keeping order"},
    {"language": "SQL", "task": "find the ten customers with the most orders"},
    {"language": "Python", "task": "deduplicate a list while keeping order"},  # a repeat
    {"language": "Bash", "task": "count the lines of every .py file under src/"},
]


def build_chain(llm: ChatYmeraGroq) -> Any:
    """prompt | model | parser: the shape of every LCEL chain."""
    prompt = ChatPromptTemplate.from_messages(
        [
            ("system", "You are a senior engineer. Answer with code and one sentence."),
            ("human", "In {language}, {task}."),
        ]
    )
    return prompt | llm | StrOutputParser()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--live", action="store_true", help="call Groq (needs GROQ_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print answers and counters as JSON")
    args = parser.parse_args(argv)

    server = None
    with tempfile.TemporaryDirectory(prefix="ymera-chain-") as data_dir:
        if args.live:
            if not os.environ.get("GROQ_API_KEY"):
                print("--live needs GROQ_API_KEY", file=sys.stderr)
                return 2
            settings = YmeraSettings(data_dir=data_dir)
        else:
            from ymera_groq_plugin.testing import GroqTestServer

            key = "gsk_example_chain_0000000000000001"
            server = GroqTestServer({key: "org_example"}).start()
            settings = YmeraSettings(api_keys=[key], base_url=server.base_url, data_dir=data_dir)
        try:
            llm = ChatYmeraGroq(settings=settings, temperature=0)
            chain = build_chain(llm)
            config = {"metadata": {"agent_name": "snippet-writer", "task_type": "code_generation"}}
            # `batch` runs the questions concurrently; the repeat is served once.
            answers = chain.batch(QUESTIONS, config=config)
            # One more, streamed token by token, as any LCEL chain streams.
            streamed = "".join(chain.stream(QUESTIONS[1], config=config))
            assert llm.engine is not None
            snap = llm.engine.snapshot()
            perf = snap["performance"]
            summary = {
                "answers": [a[:80] for a in answers],
                "streamed": streamed[:80],
                "requests": perf["requests_today"],
                "groq_calls": perf["upstream_calls"],
                "cache_hits": perf["cache_hits"],
                "models": {m: v["requests"] for m, v in snap["models"].items() if v["requests"]},
                "rate_limited_received": perf["rate_limited_received"],
            }
            if args.json:
                sys.stdout.write(json.dumps(summary) + "\n")
            else:
                for q, a in zip(QUESTIONS, answers, strict=True):
                    print(f"[{q['language']}] {q['task']}\n  → {a[:100]!r}")
                print(f"streamed: {streamed[:100]!r}")
                print(
                    f"{summary['requests']} requests, {summary['groq_calls']} Groq calls, "
                    f"{summary['cache_hits']} from the cache, models {summary['models']}"
                )
            llm.engine.close()
            return 0
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
