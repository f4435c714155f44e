"""A LangGraph tool-using agent that runs on `ChatYmeraGroq`, offline.

The graph is ordinary LangGraph code (a model node, a `ToolNode`, `tools_condition`); the only
line that names the package is the one that builds the model. Swap `ChatYmeraGroq` for
`langchain_groq.ChatGroq` and nothing else changes (`tests/integration_tests/test_examples.py`
runs it both ways).

Run it: `python examples/langgraph_agent.py`. It starts the package's local Groq-compatible
server (`ymera_groq_plugin.testing.GroqTestServer`) with two keys in two organisations, so it
needs no key and no network.
"""

from __future__ import annotations

import tempfile
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode, tools_condition

KEYS = {
    "gsk_example_agent_key_one_000000000000000000000001": "org_example_a",
    "gsk_example_agent_key_two_000000000000000000000002": "org_example_b",
}


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city."""
    return f"It is sunny and 21 °C in {city}."


@tool
def convert_temperature(celsius: float) -> str:
    """Convert a temperature from Celsius to Fahrenheit."""
    return f"{celsius * 9 / 5 + 32:.1f} °F"


TOOLS = [get_weather, convert_temperature]


def build_agent(model: BaseChatModel) -> CompiledStateGraph[Any, Any, Any, Any]:
    """A ReAct-style graph: the model calls tools until it answers in text."""
    llm = model.bind_tools(TOOLS)

    def call_model(state: MessagesState) -> dict[str, list[BaseMessage]]:
        return {"messages": [llm.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode(TOOLS))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    return graph.compile()


def run(agent: CompiledStateGraph[Any, Any, Any, Any], question: str) -> list[BaseMessage]:
    """Ask the agent one question; the whole conversation it produced."""
    state = agent.invoke(
        {"messages": [HumanMessage(question)]},
        config={"metadata": {"agent_name": "weather-agent"}, "recursion_limit": 10},
    )
    return list(state["messages"])


def main() -> None:
    from ymera_groq_plugin import ChatYmeraGroq
    from ymera_groq_plugin.testing.server import GroqTestServer

    with GroqTestServer(KEYS) as server, tempfile.TemporaryDirectory() as data_dir:
        model = ChatYmeraGroq(  # the one line that differs from a ChatGroq agent
            api_keys=list(KEYS), base_url=server.base_url, data_dir=data_dir, temperature=0
        )
        agent = build_agent(model)
        for question in ("Use the weather tool: how is it in Lisbon?", "What is an agent?"):
            messages = run(agent, question)
            for m in messages:
                calls = getattr(m, "tool_calls", None)
                print(f"{m.type:>5}: {m.content or calls}")
            meta = messages[-1].response_metadata
            print(f"       answered by {meta.get('model_name')} on {meta.get('key_label')}\n")
        assert model.engine is not None
        model.engine.close()


if __name__ == "__main__":
    main()
