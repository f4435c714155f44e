"""Rebuild the cassettes in this directory (run by hand; tests only read the YAML files).

    python cassettes/build_cassettes.py /path/to/shared/reference/groq-cassettes

Copied recordings: request and response kept as recorded, except that `Set-Cookie` / `cookie`
headers (Cloudflare `__cf_bm` bot-management cookies) are dropped and pydantic-ai's
`parsed_body` shorthand is turned into vcrpy's `body` (compact JSON, as Groq sends it, with
`content-length` recomputed). Synthetic recordings (429 TPM, 429 TPD, 413) are written from the
verbatim Groq error bodies quoted in `groq-api.md` §1.4–1.5; see README.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
URI = "https://api.groq.com/openai/v1/chat/completions"

COPIED = {
    "traceloop__openllmetry__chat-ratelimit-headers.yaml": "chat-completion-ratelimit-headers.yaml",
    "traceloop__openllmetry__chat-streaming-ratelimit-headers.yaml": (
        "chat-stream-ratelimit-headers.yaml"
    ),
    "wandb__weave__tool-call-ratelimit-headers.yaml": "chat-tool-call-round-trip.yaml",
    "pydantic__pydantic-ai__gpt-oss-120b-tool-call-400-tool-use-failed.yaml": (
        "chat-tool-use-failed-400-then-tool-call.yaml"
    ),
    "pydantic__pydantic-ai__gpt-oss-120b-streaming-tool-call-sse-error.yaml": (
        "chat-stream-event-error-then-tool-call.yaml"
    ),
    "pydantic__pydantic-ai__model-not-found-404.yaml": "chat-model-not-found-404.yaml",
}

SYNTHETIC_NOTE = (
    "# SYNTHETIC: hand-built, not recorded. Body copied verbatim from a Groq error quoted in a\n"
    "# public issue (see cassettes/README.md); headers follow Groq's documented set and the\n"
    "# linear-refill arithmetic of groq-api.md §1.3. Organisation ids are placeholders.\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (SSE bodies, JSON errors) as readable `|` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _drop_cookies(headers: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in headers.items() if k.lower() not in ("set-cookie", "cookie")}


def _convert(interaction: dict[str, Any]) -> dict[str, Any]:
    request = dict(interaction["request"])
    response = dict(interaction["response"])
    request["headers"] = _drop_cookies(request.get("headers") or {})
    response["headers"] = _drop_cookies(response.get("headers") or {})
    if "parsed_body" in request:
        request["body"] = _compact(request.pop("parsed_body"))
        for name in list(request["headers"]):
            if name.lower() == "content-length":
                request["headers"][name] = [str(len(request["body"].encode("utf-8")))]
    if "parsed_body" in response:
        text = _compact(response.pop("parsed_body"))
        response["body"] = {"string": text}
        for name in list(response["headers"]):
            if name.lower() == "content-length":
                response["headers"][name] = [str(len(text.encode("utf-8")))]
    request.setdefault("body", None)
    return {"request": request, "response": response}


def _write(path: Path, cassette: dict[str, Any], note: str = "") -> None:
    text = yaml.dump(cassette, Dumper=_Dumper, sort_keys=True, allow_unicode=True, width=100)
    path.write_text(note + text, encoding="utf-8")


def copy_recorded(source: Path) -> None:
    for upstream, name in COPIED.items():
        data = yaml.safe_load((source / upstream).read_text(encoding="utf-8"))
        cassette = {"interactions": [_convert(i) for i in data["interactions"]], "version": 1}
        _write(HERE / name, cassette)


def _headers(status_extra: dict[str, str], request_id: str) -> dict[str, list[str]]:
    base = {
        "alt-svc": 'h3=":443"; ma=86400',
        "cache-control": "private, max-age=0, no-store, no-cache, must-revalidate",
        "content-type": "application/json",
        "date": "Thu, 26 Nov 2026 10:00:00 GMT",
        "server": "cloudflare",
        "strict-transport-security": "max-age=15552000",
        "vary": "Origin",
        "x-groq-region": "fra",
        "x-request-id": request_id,
    }
    base.update(status_extra)
    return {k: [v] for k, v in sorted(base.items())}


def _synthetic(
    *,
    model: str,
    content: str,
    status: int,
    reason: str,
    message: str,
    headers: dict[str, str],
    request_id: str,
) -> dict[str, Any]:
    body = _compact(
        {"error": {"message": message, "type": "tokens", "code": "rate_limit_exceeded"}}
    )
    request_body = _compact({"messages": [{"role": "user", "content": content}], "model": model})
    response_headers = _headers(headers, request_id)
    response_headers["content-length"] = [str(len(body.encode("utf-8")))]
    return {
        "interactions": [
            {
                "request": {
                    "body": request_body,
                    "headers": {
                        "accept": ["application/json"],
                        "content-type": ["application/json"],
                        "host": ["api.groq.com"],
                    },
                    "method": "POST",
                    "uri": URI,
                },
                "response": {
                    "body": {"string": body},
                    "headers": dict(sorted(response_headers.items())),
                    "status": {"code": status, "message": reason},
                },
            }
        ],
        "version": 1,
    }


def write_synthetic() -> None:
    # TPM: elizaOS/eliza#4040 (llama-3.1-8b-instant, Limit 6000, Used 5034, Requested 1443).
    # remaining-tokens = 6000 - 5034; reset-tokens = 5034 × 60 / 6000 s; retry-after = ⌈4.77⌉.
    _write(
        HERE / "synthetic-429-tokens-per-minute.yaml",
        _synthetic(
            model="llama-3.1-8b-instant",
            content="Summarise the attached meeting notes in five bullet points.",
            status=429,
            reason="Too Many Requests",
            message=(
                "Rate limit reached for model `llama-3.1-8b-instant` in organization "
                "`org_01synthetic0tpm0000000000` service tier `on_demand` on tokens per minute "
                "(TPM): Limit 6000, Used 5034, Requested 1443. Please try again in 4.77s. Need "
                "more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing"
            ),
            headers={
                "retry-after": "5",
                "x-ratelimit-limit-requests": "14400",
                "x-ratelimit-limit-tokens": "6000",
                "x-ratelimit-remaining-requests": "14337",
                "x-ratelimit-remaining-tokens": "966",
                "x-ratelimit-reset-requests": "6m18s",
                "x-ratelimit-reset-tokens": "50.34s",
            },
            request_id="req_01synthetic0tpm429000000000",
        ),
        SYNTHETIC_NOTE,
    )
    # TPD: continuedev/continue#10920 (llama-3.3-70b-versatile, Limit 100000, Used 97050,
    # Requested 3619, wait 9m38.016s). The TPM headers show room: only the text names the day
    # limit. retry-after = ⌈578.016⌉.
    _write(
        HERE / "synthetic-429-tokens-per-day.yaml",
        _synthetic(
            model="llama-3.3-70b-versatile",
            content="Review this pull request and list every bug you find.",
            status=429,
            reason="Too Many Requests",
            message=(
                "Rate limit reached for model `llama-3.3-70b-versatile` in organization "
                "`org_01synthetic0tpd0000000000` service tier `on_demand` on tokens per day "
                "(TPD): Limit 100000, Used 97050, Requested 3619. Please try again in 9m38.016s. "
                "Need more tokens? Upgrade to Dev Tier today at "
                "https://console.groq.com/settings/billing"
            ),
            headers={
                "retry-after": "579",
                "x-ratelimit-limit-requests": "1000",
                "x-ratelimit-limit-tokens": "12000",
                "x-ratelimit-remaining-requests": "955",
                "x-ratelimit-remaining-tokens": "8381",
                "x-ratelimit-reset-requests": "1h4m48s",
                "x-ratelimit-reset-tokens": "18.095s",
            },
            request_id="req_01synthetic0tpd429000000000",
        ),
        SYNTHETIC_NOTE,
    )
    # 413: cottongeeks/podscript#20 (llama-3.3-70b-versatile, Limit 6000, Requested 10338). A
    # third-party probe saw a `retry-after` on this 413 too; it is kept to show that it misleads.
    _write(
        HERE / "synthetic-413-request-too-large.yaml",
        _synthetic(
            model="llama-3.3-70b-versatile",
            content="Transcribe and summarise: " + "lorem ipsum " * 8,
            status=413,
            reason="Payload Too Large",
            message=(
                "Request too large for model `llama-3.3-70b-versatile` in organization "
                "`org_01synthetic0413000000000` service tier `on_demand` on tokens per minute "
                "(TPM): Limit 6000, Requested 10338, please reduce your message size and try "
                "again. Visit https://console.groq.com/docs/rate-limits for more information."
            ),
            headers={
                "retry-after": "19",
                "x-ratelimit-limit-requests": "1000",
                "x-ratelimit-limit-tokens": "6000",
                "x-ratelimit-remaining-requests": "987",
                "x-ratelimit-remaining-tokens": "5871",
                "x-ratelimit-reset-requests": "18m43.2s",
                "x-ratelimit-reset-tokens": "1.29s",
            },
            request_id="req_01synthetic0413000000000000",
        ),
        SYNTHETIC_NOTE,
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    copy_recorded(Path(sys.argv[1]))
    write_synthetic()
