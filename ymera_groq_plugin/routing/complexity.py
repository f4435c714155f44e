"""How hard a request is: signals over the instruction, weighed by a fitted logistic model.

The classifier (`classify.py`) reads the instruction once; this module names what it looks
for and turns the findings into a complexity:

- **deliverables**: distinct things the instruction asks to be produced (a plan, a matrix,
  tests, a runbook, patches, a recommendation …) and how many items it enumerates;
- **hard verbs**: design, architect, threat-model, prove, derive, trade-offs, justify, migrate,
  reconcile …, and **hard artefacts** (a compiler, a garbage collector, a consensus protocol);
- **scale**: millions of rows, 50k orders/s, the whole repository, every module, all services;
- **steps and constraints**: first … then … finally; must, without, at most, zero downtime,
  exactly-once, backwards compatible;
- **requested output size**: "in one sentence", "yes or no" against "a detailed report",
  "end-to-end", "comprehensive";
- **real size against claimed size**: the tokens of pasted material (code, lists, logs,
  attachments) beside words that only claim size ("the attached", "this long log");
- the earlier cue words, the instruction's length, the task type and the agent class's
  `complexity_bias`;
- the words themselves (`classify.word_stems`), as the labelled writers used them.

The weights are data (`data/complexity.json`), fitted by `benchmarks/fit_complexity.py` as a
multinomial logistic model: a score per class, `z_c = b_c + Σ w_{k,c} x_k`; the most probable
class wins. (A proportional-odds model, one score and two thresholds, was the first form; on
prompts of writers left out of the fit it was about 3 points less accurate: where "moderate"
ends depends on words that do not also push towards "complex".) Real size is a fixed rule
rather than fitted, because no labelled prompt carries more than about 5k tokens of material:
a prompt of 32k tokens or more is one class above what its features say, 8k or more at least
moderate; and the pasted material feature stops growing where the labelled data stops instead
of extrapolating its fitted weight.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

from ..types import Complexity

__all__ = ["CLASSES", "SIGNALS", "Weights", "decide", "load_weights", "probabilities"]

CLASSES: tuple[Complexity, Complexity, Complexity] = ("simple", "moderate", "complex")

# (signal, weight (unused: the fitted weights decide), alternatives), in the token matcher's
# syntax (see classify.py): `stem*`, `{a,b}`, `*`.
SIGNALS: tuple[tuple[str, float, str], ...] = (
    ("deliverable", 1.0, "plan|roadmap|matrix|runbook|playbook|checklist|rubric|diagram*"),
    ("deliverable", 1.0, "report|summary|recommendation|proposal|rfc|memo|write-up|spec"),
    ("deliverable", 1.0, "patches|patch|fixes|tests|test suite|benchmark*|migration plan"),
    ("deliverable", 1.0, "schema|api|dashboard*|alerts|metrics|slos|glossary|timeline"),
    ("deliverable", 1.0, "criteria|estimate|estimates|model|scenarios|options|risks|rollout"),
    ("deliverable", 1.0, "rollback|cutover|prioriti*|decision|trade-offs|tradeoffs|faq"),
    ("design", 1.0, "design|redesign|architect|re-architect|architecting|threat model*"),
    ("design", 1.0, "threat-model*|decompose|end-to-end architecture|target architecture"),
    ("proof", 1.0, "prove|proof|proofs|derive|formali*|disprove|by induction|rigorous*"),
    ("proof", 1.0, "undecidab*|irrational|theorem|lemma|invariant*|complexity bound*"),
    ("tradeoff", 1.0, "trade-off*|tradeoff*|justify|compare|comparison|choose between"),
    ("tradeoff", 1.0, "decide between|pros and cons|versus|vs|evaluate|assess|weigh|recommend*"),
    ("hard_verb", 1.0, "correlate|reconstruct|root-cause|root cause*|reconcile|simulate"),
    ("hard_verb", 1.0, "model the|optimi*|audit|harden|migrate|orchestrat*|benchmark*"),
    ("asks", 1.0, "write|build|create|produce|implement|add|list|explain|estimate|give"),
    ("asks", 1.0, "propose|define|draft|identify|find|analyse|analyze|summarise|summarize"),
    ("asks", 1.0, "review|document|plan|outline|suggest|set up|provide|include|flag|rank"),
    ("hard_artefact", 1.0, "compiler|interpreter|garbage collector|consensus|raft|paxos|crdt*"),
    ("hard_artefact", 1.0, "query planner|scheduler|allocator|jit|kernel|filesystem|b+ tree"),
    ("hard_artefact", 1.0, "distributed lock|storage engine|database engine|vm|emulator"),
    ("hard_artefact", 1.0, "lock-free|exactly-once|byzantine|linearizab*|serializab*"),
    ("hard_artefact", 1.0, "write-ahead|crash recovery|buffer pool|build system|sync protocol"),
    ("hard_artefact", 1.0, "key-value store|collaborative|fuzzing campaign|multi-tenancy"),
    ("hard_artefact", 1.0, "multi-tenant|sharding|shard|replication|failover|disaster recovery"),
    ("scale", 1.0, "million|millions|billion|billions|thousands|petabyte*|terabyte*|tb|pb"),
    ("scale", 1.0, "whole {repository,repo,codebase,company,organisation,organization,fleet}"),
    ("scale", 1.0, "entire {repository,repo,codebase,platform,system,fleet,company}"),
    ("scale", 1.0, "every {module,service,team,region,file,endpoint,table}|all services"),
    ("scale", 1.0, "all {modules,teams,regions,endpoints,tables,repositories,repos}"),
    ("scale", 1.0, "multi-region|global*|national-scale|nationwide|org-wide|company-wide"),
    ("scale", 1.0, "per second|rps|qps|tps|continents|countries|languages|tenants|fleet"),
    ("multi_step", 1.0, "then|finally|after that|afterwards|step by step|phase|phases"),
    ("multi_step", 1.0, "stages|followed by|first|second|third|next|end-to-end|end to end"),
    ("constraint", 1.0, "must|without|while|keeping|preserving|at most|no more than"),
    ("constraint", 1.0, "zero downtime|zero-downtime|backwards compatible|backward compatible"),
    ("constraint", 1.0, "guarantee*|constraint*|compliance|sla|slas|budget|deadline|gdpr"),
    ("constraint", 1.0, "across|under|within|isolation|consistency|failover|fault-tolerant"),
    ("output_large", 1.0, "detailed|comprehensive|in depth|in-depth|thorough|full|complete"),
    ("output_large", 1.0, "document|design doc|whitepaper|programme|program|strategy|framework"),
    ("output_large", 1.0, "executive summary|step-by-step|prioritised|prioritized|each"),
    ("output_small", 1.0, "one sentence|one line|one word|one-line|one-word|yes or no|yes/no"),
    ("output_small", 1.0, "briefly|short|quick|just|only|single|one reason|tl;dr|tldr"),
    ("output_small", 1.0, "one label|a label|a number|the syntax|what's the|which one"),
    ("output_small", 1.0, "one-liner|tiny|minimal|in one paragraph|three sentences|a few lines"),
    ("claims_size", 1.0, "attached|below|above|pasted|this long|the long|full text|dump"),
    ("claims_size", 1.0, "these {files,modules,documents,logs,pages,chapters}|huge|large"),
)

FIXED_RULES: tuple[tuple[int, int], ...] = ((32000, 1), (8000, 0))
"""(prompt tokens at least, what it does): real size, fixed (module docstring). 1: one class
above what the features say; 0: at least moderate."""

_WORDS_CENTRE = 4.0
"""log2(1 + 15): the instruction length feature is 0 for a 15-word instruction."""

_MATERIAL_CAP = 5.7
"""log2(1 + tokens / 100) at about 5k tokens: the largest pasted material in calibration."""

_CAPS: dict[str, float] = {
    "deliverable": 6,
    "design": 2,
    "proof": 2,
    "tradeoff": 3,
    "hard_verb": 3,
    "asks": 6,
    "hard_artefact": 3,
    "scale": 4,
    "multi_step": 4,
    "constraint": 5,
    "output_large": 3,
    "output_small": 3,
    "claims_size": 2,
}

LABELS: dict[str, str] = {
    "words": "instruction length",
    "short": "short instruction",
    "long": "long instruction",
    "short_heavy": "few words, heavy work",
    "deliverable": "deliverables",
    "items": "enumerated items",
    "design": "design verbs",
    "proof": "proof",
    "tradeoff": "trade-off verbs",
    "hard_verb": "analysis verbs",
    "asks": "things asked for",
    "conjunctions": "joined requirements",
    "hard_artefact": "hard artefact",
    "scale": "scale words",
    "big_numbers": "large numbers",
    "multi_step": "multi-step",
    "constraint": "constraints",
    "output_large": "large output asked",
    "output_small": "small output asked",
    "fact_question": "short question",
    "material": "pasted material",
    "claims_size": "claimed size without material",
    "code": "code lines",
    "complex_cues": "complex cues",
    "moderate_cues": "moderate cues",
    "simple_cues": "simple cues",
    "agent_bias": "agent class bias",
}
"""Feature name → how reasons name it (task type features read `task <type>`)."""


class Weights:
    """The fitted model: a bias per class and, per feature, a weight per class."""

    __slots__ = ("about", "bias", "weights")

    def __init__(
        self,
        weights: Mapping[str, tuple[float, float, float]],
        bias: tuple[float, float, float],
        about: str,
    ) -> None:
        self.weights = dict(weights)
        self.bias = bias
        self.about = about


@lru_cache(maxsize=1)
def load_weights() -> Weights:
    """The embedded weights (`data/complexity.json`), parsed once per process."""
    text = resources.files("ymera_groq_plugin").joinpath("data/complexity.json").read_text("utf-8")
    doc: dict[str, Any] = json.loads(text)
    b = doc["bias"]
    weights = {k: (float(v[0]), float(v[1]), float(v[2])) for k, v in doc["weights"].items()}
    return Weights(weights, (float(b[0]), float(b[1]), float(b[2])), doc["about"])


def features(
    counts: Mapping[str, int],
    *,
    words: int,
    items: int,
    material_tokens: int,
    code_lines: int,
    complex_cues: int,
    moderate_cues: int,
    simple_cues: int,
    question: bool,
    big_numbers: int,
    conjunctions: int,
    task_type: str,
    bias: float,
) -> dict[str, float]:
    """The feature vector of one request (only non-zero entries)."""
    # Centred on a 15-word instruction, so reasons show length only when it is unusual.
    x: dict[str, float] = {"words": math.log2(1 + words) - _WORDS_CENTRE}
    if words < 12:
        x["short"] = 1.0
    elif words > 60:
        x["long"] = 1.0
    for name, cap in _CAPS.items():
        c = counts.get(name, 0)
        if c:
            x[name] = float(min(c, cap))
    claims = counts.get("claims_size", 0)
    if claims and material_tokens >= 200:
        del x["claims_size"]  # the material is there: its real size speaks
    if items:
        x["items"] = math.log2(1 + min(items, 12))
    if words < 12 and any(counts.get(k) for k in ("design", "proof", "hard_artefact", "scale")):
        # "Threat-model our cluster", "Prove Cantor's theorem": few words, heavy work.
        x["short_heavy"] = 1.0
    if question and words < 20:
        x["fact_question"] = 1.0
    if conjunctions:
        x["conjunctions"] = float(min(conjunctions, 5))
    if big_numbers:
        x["big_numbers"] = float(min(big_numbers, 3))
    if material_tokens > 0:
        x["material"] = min(math.log2(1 + material_tokens / 100), _MATERIAL_CAP)
    if code_lines:
        x["code"] = math.log2(1 + code_lines)
    if complex_cues:
        x["complex_cues"] = float(min(complex_cues, 3))
    if moderate_cues:
        x["moderate_cues"] = float(min(moderate_cues, 2))
    if simple_cues:
        x["simple_cues"] = float(min(simple_cues, 2))
    if bias:
        x["agent_bias"] = bias
    x[f"task:{task_type}"] = 1.0
    return x


def probabilities(logits: tuple[float, float, float]) -> tuple[float, float, float]:
    """(simple, moderate, complex) from the three class scores (softmax)."""
    top = max(logits)
    e = [math.exp(z - top) for z in logits]
    total = sum(e)
    return e[0] / total, e[1] / total, e[2] / total


def decide(
    x: Mapping[str, float], tokens: int, weights: Weights | None = None
) -> tuple[Complexity, float, list[str]]:
    """The complexity of a feature vector, its score (the complex score less the simple one)
    and the signals that decided it."""
    w = weights or load_weights()
    table = w.weights
    z = list(w.bias)
    rows: dict[str, tuple[float, float, float]] = {}
    for k, v in x.items():
        row = table.get(k)
        if row is None:
            continue
        if k == "material" and tokens >= FIXED_RULES[0][0]:
            continue  # beyond the labelled data's sizes the fixed rule speaks for the material
        rows[k] = row
        z[0] += v * row[0]
        z[1] += v * row[1]
        z[2] += v * row[2]
    notes: list[str] = []
    best = max(range(3), key=lambda i: z[i])
    for at_least, up in FIXED_RULES:
        if tokens >= at_least:
            raised = min(2, best + 1) if up else max(best, 1)
            notes.append(
                f"prompt ~{tokens} tokens ({'one class up' if up else 'at least moderate'}: "
                f"{CLASSES[best]} → {CLASSES[raised]})"
            )
            best = raised
            break
    label = CLASSES[best]
    # The signals that pushed towards the decision: a feature's weight for the winner beyond
    # its mean weight for the other two classes.
    contrib = {
        k: x[k] * (row[best] - (sum(row) - row[best]) / 2) for k, row in rows.items()
    }
    ranked = sorted(((k, c) for k, c in contrib.items() if c >= 0.05), key=lambda kc: -kc[1])
    for k, c in ranked[:3]:
        name = (
            f"task {k[5:]}"
            if k.startswith("task:")
            else f"word {k[2:]}…"
            if k.startswith("w:")
            else LABELS.get(k, k)
        )
        shown = f"{x[k]:.2g}" if x[k] != 1.0 else ""
        notes.append(f"{name}{' ' + shown if shown else ''} ({c:+.1f})")
    return label, z[2] - z[0], notes
