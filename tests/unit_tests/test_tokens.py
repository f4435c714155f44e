from __future__ import annotations

from ymera_groq_plugin import tokens


def test_uses_o200k_when_the_encoding_is_on_disk() -> None:
    # The test extras install LiteLLM, whose wheel carries the o200k_base file.
    assert tokens.encoding_name() == "o200k_base"
    assert tokens.estimate_text_tokens("hello world") == 2


def test_message_overhead_and_tools() -> None:
    one = [{"role": "user", "content": "hello world"}]
    assert tokens.estimate_prompt_tokens(one) == 2 + tokens.MESSAGE_OVERHEAD_TOKENS + 3
    tool = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
    assert tokens.estimate_prompt_tokens(one, tools=[tool]) > tokens.estimate_prompt_tokens(one)


def test_multimodal_and_tool_call_messages() -> None:
    msgs = [
        {"role": "user", "content": [{"type": "text", "text": "describe"}, {"type": "image_url"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "content": "42", "tool_call_id": "c1", "name": "f"},
    ]
    assert tokens.estimate_prompt_tokens(msgs) > 85


def test_approximation_errs_high_for_cjk() -> None:
    assert tokens._approx("你好世界") == 4
    assert tokens._approx("abcdefgh") == 2
