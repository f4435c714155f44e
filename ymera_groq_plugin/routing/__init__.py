"""Routing: profile a request, then plan an ordered list of served models for it.

- `classify` / `Router.profile`: task type, complexity and estimated tokens, with reasons.
- `Router.plan`: policy + learner + quota headroom + context fit → `Plan` (pure, no I/O).
- `explain_route`: the plan for a piece of text, as `ymera-groq route` prints it.
- `load_policy`: the task matrix and agent classes as editable data.
- `fit_documents`: documents into a window, switching model, then chunking.
"""

from __future__ import annotations

from .classify import classify
from .context import ContextFit, Document, DocumentPart, fit_documents
from .plan import Router, explain_route
from .policy import Policy, default_policy, load_policy

__all__ = [
    "ContextFit",
    "Document",
    "DocumentPart",
    "Policy",
    "Router",
    "classify",
    "default_policy",
    "explain_route",
    "fit_documents",
    "load_policy",
]
