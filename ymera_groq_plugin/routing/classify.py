"""The profile of a request: task type, complexity and estimated prompt tokens, with reasons.

Explicit hints come first: a task type on the request (`ChatRequest.task_type`) or in its
metadata (`task_type`, `ymera_task_type`) decides the task type outright. The agent's name
(`ChatRequest.agent_name`, metadata `agent_name` / `ymera_agent_name`) maps to an agent
class through the policy's patterns; its task hint is a strong prior, not a verdict,
because agents do more than one kind of work (a coding agent asked for unit tests is doing
testing).

Heuristics come second. Several signals are weighed together, each recorded in
`Profile.reasons`:

- words and phrases matched at word boundaries, weighted per task type (the text is
  tokenised once and looked up in dictionaries built at import: no per-request regex over
  hundreds of alternatives; a repeated word counts less each time);
- structure: fenced code and its language tag, diffs, stack traces, SQL statements, log
  lines, equations, "imperative verb + code artefact" phrases;
- scripts: CJK, Cyrillic, Arabic, Hebrew, Devanagari, Thai, Greek… text, and non-English
  Latin-script text (function words), mean multilingual work;
- size: a prompt of `policy.long_context_tokens` or more is long-context work.

Only the system message(s) and the last user message are read for task signals (the head
and tail of each, so a 1 MB paste costs the same as a short one); the size counts every
message and the tool schemas. Each signal is a feature; a multinomial logistic model with
fitted weights (`task_model.py`, `data/task_type.json`) picks the most probable task type; a
request without any signal is `general`.

Complexity is a separate score over signals of hard work (deliverables, design and proof
verbs, scale, steps and constraints, requested output size, real against claimed size, cue
words, the task type, the agent class's `complexity_bias`) with fitted weights: see
`complexity.py`. The reasons name the signals that decided it.

Both models also read the words themselves (`word_stems`: the first seven letters of each word
of the last user message, stop words left out), each a feature whose weight was fitted on the
labelled prompts of several independent writers: the signal table says what a task type is
made of as we wrote it, the words carry how other people ask for it. Only stems the fitted
model knows are looked up (a few dictionary lookups per request). The task model also reads
the stems of the opening sentence apart (`w:^…`: where most people put the ask), weighs each
stem less when a text has many (pages of pasted material name many topics; the ask is one),
and the prompt's size in words (`w:~400+ words`), which is what long-context work is.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from ..tokens import estimate_prompt_tokens
from ..types import TASK_TYPES, ChatRequest, Profile
from . import complexity as _cx
from . import task_model as _tm
from .policy import AgentMatch, Policy, default_policy

__all__ = [
    "PRIOR",
    "classify",
    "complexity_features",
    "request_texts",
    "task_features",
    "task_words",
    "word_stems",
]

# Per-token signal lookups are memoised. Prompts carry endless one-off tokens (ids, numbers,
# names), so the memo is cleared when full: a larger bound was most of a long-running worker's
# memory growth (the soak: about 50 bytes per request per matcher), and common words come back
# into it within a few requests.
_SINGLE_MEMO = 8192

# -- what is read -------------------------------------------------------------------------

_HEAD = 4000
_TAIL = 1000
_SYSTEM_HEAD = 2000


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts: list[str] = []
        for p in content:
            if isinstance(p, Mapping) and isinstance(p.get("text"), str):
                parts.append(p["text"])
            elif isinstance(p, str):
                parts.append(p)
        return "\n".join(parts)
    return "" if content is None else str(content)


def _clip(text: str, head: int, tail: int) -> str:
    if len(text) <= head + tail:
        return text
    return text[:head] + "\n" + text[-tail:] if tail else text[:head]


def request_texts(messages: Iterable[Mapping[str, Any]]) -> tuple[str, str]:
    """The text the classifier reads: (system text, last user message), each clipped."""
    system: list[str] = []
    last_user: str | None = None
    last_any = ""
    for m in messages:
        role = m.get("role")
        if role in ("system", "developer"):
            system.append(_text_of(m.get("content")))
        elif role == "user":
            last_user = _text_of(m.get("content"))
        else:
            last_any = _text_of(m.get("content"))
    user = last_user if last_user is not None else last_any
    return _clip("\n".join(system), _SYSTEM_HEAD, 0), _clip(user, _HEAD, _TAIL)


# -- the token matcher ----------------------------------------------------------------------
# Signals are written as "|"-separated alternatives, each a sequence of tokens: a plain
# token, a stem (`implement*` matches any token starting with "implement"), a set
# (`{this,the,my}`) or `*` (any one token). Text is tokenised once; at each position the
# longest matching phrase wins (like a regex alternation, so "code review" is not also
# "review"), and every signal attached to that match scores.

_TOKEN = re.compile(r"\w+(?:['’./+#=-]\w+)*[+#]*")


class _Matcher:
    """Finds the signals of a table in a token list: dict lookups, no regex scanning."""

    def __init__(self, table: Iterable[tuple[str, float, str]]) -> None:
        self.meta: list[tuple[str, float]] = []
        self.words: dict[str, list[int]] = {}
        self.stems: dict[str, list[int]] = {}
        self.stem_lengths: list[int] = []
        # first token (plain) -> phrases; phrases whose first token is a stem or a set are
        # indexed under each member / in `stem_phrases`.
        self.phrases: dict[str, list[tuple[tuple[Any, ...], int]]] = {}
        self.stem_phrases: list[tuple[tuple[Any, ...], int]] = []
        for sig, (name, weight, spec) in enumerate(table):
            self.meta.append((name, weight))
            for alt in spec.split("|"):
                toks = tuple(_parse_token(t) for t in alt.split())
                if len(toks) == 1:
                    self._index_single(toks[0], sig)
                else:
                    self._index_phrase(toks, sig)
        self.stem_lengths = sorted({len(k) for k in self.stems})
        # Token -> (phrases starting with it, its single-token signals), or `_NOTHING`.
        # Vocabularies repeat from request to request, so the stem loop runs once per distinct
        # token; bounded so odd input cannot grow it.
        self._memo: dict[str, tuple[tuple[tuple[tuple[Any, ...], int], ...], tuple[int, ...]]] = {}

    def _index_single(self, tok: Any, sig: int) -> None:
        if isinstance(tok, str):
            self.words.setdefault(tok, []).append(sig)
        elif isinstance(tok, frozenset):
            for t in tok:
                self.words.setdefault(t, []).append(sig)
        else:
            self.stems.setdefault(tok[1], []).append(sig)

    def _index_phrase(self, toks: tuple[Any, ...], sig: int) -> None:
        first = toks[0]
        if isinstance(first, str):
            self.phrases.setdefault(first, []).append((toks, sig))
        elif isinstance(first, frozenset):
            for t in first:
                self.phrases.setdefault(t, []).append((toks, sig))
        else:
            self.stem_phrases.append((toks, sig))

    def _singles(self, tok: str) -> tuple[int, ...]:
        sigs = list(self.words.get(tok, ()))
        for length in self.stem_lengths:
            if length > len(tok):
                break
            for sig in self.stems.get(tok[:length], ()):
                if sig not in sigs:
                    sigs.append(sig)
        return tuple(sigs)

    def _entry(self, tok: str) -> tuple[tuple[tuple[tuple[Any, ...], int], ...], tuple[int, ...]]:
        """The phrases that may start at `tok` (longest first) and its single-token signals."""
        cands = [*self.phrases.get(tok, ()), *self.stem_phrases]
        cands.sort(key=lambda c: -len(c[0]))
        single = self._singles(tok)
        entry = (tuple(cands), single) if cands or single else _NOTHING
        if len(self._memo) >= _SINGLE_MEMO:
            self._memo.clear()
        self._memo[tok] = entry
        return entry

    def find(self, tokens: list[str]) -> list[tuple[int, int, int]]:
        """Every match as (signal, start position, length)."""
        out: list[tuple[int, int, int]] = []
        n = len(tokens)
        i = 0
        memo = self._memo
        while i < n:
            tok = tokens[i]
            entry = memo.get(tok)
            if entry is None:
                entry = self._entry(tok)
            if entry is _NOTHING:  # most tokens of most prompts: nothing to find
                i += 1
                continue
            cands, single = entry
            if cands:
                best = 0
                for toks, sig in cands:
                    k = len(toks)
                    if k < best:
                        break  # longest first: only equally long phrases may still match
                    if i + k <= n and _phrase_at(toks, tokens, i):
                        best = k
                        out.append((sig, i, k))
                if best:
                    i += best
                    continue
            for sig in single:
                out.append((sig, i, 1))
            i += 1
        return out


_NOTHING: tuple[tuple[tuple[tuple[Any, ...], int], ...], tuple[int, ...]] = ((), ())


def _parse_token(t: str) -> Any:
    if t == "*":
        return ("any", "")
    if t.startswith("{") and t.endswith("}"):
        return frozenset(t[1:-1].split(","))
    if t.endswith("*"):
        return ("stem", t[:-1])
    return t


def _phrase_at(toks: tuple[Any, ...], tokens: list[str], i: int) -> bool:
    for j, p in enumerate(toks):
        tok = tokens[i + j]
        if type(p) is str:
            if tok != p:
                return False
        elif type(p) is frozenset:
            if tok not in p:
                return False
        elif p[0] != "any" and not tok.startswith(p[1]):
            return False
    return True


# -- task signals: (task type, weight, alternatives) ----------------------------------------

_TASK_TABLE: tuple[tuple[str, float, str], ...] = (
    # code_generation
    ("code_generation", 2.0, "implement*|refactor*|port {this,it} to|rewrite {this,it} in"),
    ("code_generation", 1.0, "function|functions|class|method|script|snippet|algorithm|utility"),
    ("code_generation", 1.0, "component|decorator|parser|library|module|boilerplate|scaffold*"),
    ("code_generation", 1.0, "helper|wrapper|one-liner|list comprehension|regex|cli tool|program"),
    ("code_generation", 0.5, "python|typescript|javascript|rust|golang|java|kotlin|swift|c#|bash"),
    ("code_generation", 0.5, "react|django|flask|fastapi|spring|node.js|nodejs|argparse"),
    ("code_generation", 0.5, "hook|hooks"),
    ("code_generation", 1.0, "compiler|interpreter|simulator|type checker|emulator|training loop"),
    ("code_generation", 0.5, "numpy|pandas|xarray|pytorch|tensorflow|cuda|fortran|c++|scala|ruby"),
    ("code_generation", 0.5, "php|haskell|elixir|sdk|cli|vectoris*|vectoriz*"),
    ("code_generation", 1.0, "awk|sed|jq|powershell|cmd|shell command|asyncio|coroutine*"),
    ("code_generation", 1.5, "{port,porting} {the,our,this,these,it,a,an}|{port,porting} * to"),
    ("code_generation", 1.5, "write {a,an,the} {small,simple,quick,robust,tiny} *|build {a,an}"),
    ("code_generation", 0.5, "generics"),
    ("code_generation", 1.0, "write code|generate code|add {a,an} {flag,option,parameter}"),
    ("code_generation", 1.0, "retry|backoff|concurrency|thread-safe|lock-free|async"),
    # code_review
    ("code_review", 3.0, "code review|review {this,the,my,our} {code,pr,pull,diff,change,changes}"),
    ("code_review", 1.5, "review*"),
    ("code_review", 2.0, "pull request|pr|diff|patch|changeset"),
    ("code_review", 1.5, "bug|bugs|buggy|race condition|race conditions|memory leak|leak|leaks"),
    ("code_review", 1.5, "deadlock|deadlocks|stale"),
    ("code_review", 2.0, "why does {this,it,my}|{what's,whats,anything,something} wrong"),
    ("code_review", 2.0, "what is wrong|loops forever|loop forever|crash|crashes|crashed|crashing"),
    ("code_review", 2.0, "hang|hangs|out of memory|not working"),
    ("code_review", 1.0, "throw|throws|exception|traceback|segfault|stack trace"),
    ("code_review", 1.0, "undefined behavior|undefined behaviour"),
    ("code_review", 2.0, "readability|code quality|maintainab*|hard to maintain|code smell*"),
    ("code_review", 2.0, "idiomatic|look at {this,my,the} code|in the code"),
    ("code_review", 1.0, "correctness|naming|breaking change*|feedback on|fails when"),
    ("code_review", 2.0, "review {this,the,my,our} {migration,query,sql,function,script,class}"),
    ("code_review", 2.0, "review {this,the,my,our} {commit,module,handler,config,dockerfile}"),
    ("code_review", 1.5, "dangerous|risky|before we {merge,run,ship,deploy}|before merging"),
    ("code_review", 1.5, "anything wrong|any problems|spot the|off-by-one|null pointer"),
    # documentation
    ("documentation", 3.0, "docstring|docstrings|readme|changelog|release notes|user guide|faq"),
    ("documentation", 3.0, "contributing guide|runbook|jsdoc|javadoc|sphinx|mkdocs|man page"),
    ("documentation", 2.5, "documentation|api reference|reference doc*|tutorial|how-to"),
    ("documentation", 2.5, "{write,update,draft,produce,create,improve} {the,a,an,our} docs"),
    ("documentation", 2.5, "{write,update,draft,produce,create,improve} docs"),
    ("documentation", 1.5, "docs|document|documenting|onboarding|guide|wiki|manual|comments"),
    ("documentation", 1.0, "explain*|describe|clearer|paragraph|headings|write-up|draft"),
    ("documentation", 2.5, "quickstart|quick start|getting started|walkthrough"),
    ("documentation", 3.0, "contributing.md|readme.md|changelog.md|code of conduct|contributing"),
    ("documentation", 2.0, "setup instructions|installation guide|install guide|dev setup|adr"),
    # testing
    ("testing", 3.0, "unit test|unit tests|pytest|jest|vitest|mocha|junit|test plan|test case*"),
    ("testing", 3.0, "regression test*|load test*|integration test*|property-based|e2e"),
    ("testing", 3.0, "test suite|playwright|cypress|selenium|testcontainers|fuzz*|xfail"),
    ("testing", 2.0, "test|tests|testing|coverage|flaky|fixture|fixtures|mock*|stub|stubs"),
    ("testing", 2.0, "locust|k6"),
    ("testing", 3.0, "test strategy|testing strategy|contract tests|test programme"),
    ("testing", 1.0, "assert*|hypothesis|qa|end-to-end|ci|edge cases|marker|markers|tdd"),
    # validation
    ("validation", 2.5, "validate|validation|validator|well-formed|conform|conforms to"),
    ("validation", 2.5, "is {this,it} valid|is {this,it} a valid|is the following valid"),
    ("validation", 2.5, "is the following a valid|check whether|check if|confirm that"),
    ("validation", 2.5, "{satisfy,satisfies} {the,this,our} {contract,schema,spec,rules,rule}"),
    ("validation", 1.5, "valid|invalid|verify|verif*|violation|violations|pass/fail|yes or no"),
    ("validation", 1.0, "required field|required fields|matches|sanity check|schema|e.164"),
    ("validation", 1.0, "iso 8601|rfc|acceptable|allowed value*|conformance|malformed"),
    ("validation", 2.5, "check that|verify that|ensure that|make sure that|break our rules"),
    ("validation", 2.5, "which {values,fields,entries,lines,rows,items,urls} {break,violate,fail}"),
    ("validation", 2.5, "does {this,it} parse|parses correctly|validity|is {this,it} valid*"),
    ("validation", 2.5, "{follow,follows,match,matches,meet,meets} the {spec,standard,schema}"),
    ("validation", 2.5, "{against,per} the {spec,standard,schema,specification}|compliant"),
    ("validation", 2.0, "required-field|required-fields|problems only|errors only|spec"),
    ("validation", 1.5, "{check,checks} {this,these,the} * for|lint|linter|checksum|compliance"),
    # architecture
    ("architecture", 3.0, "architecture|system design|high-level design|microservice*"),
    ("architecture", 2.0, "monolith*|event sourcing|cqrs|single {point,points} of failure"),
    ("architecture", 2.0, "message queue|message broker|event bus|pub/sub|event-driven"),
    ("architecture", 2.0, "bounded context"),
    ("architecture", 1.5, "scalab*|trade-off*|tradeoff*|serverless|failure modes|sync protocol"),
    ("architecture", 1.5, "high availability|failover|redundan*|capacity planning|degrad*"),
    ("architecture", 1.0, "design|components|data flow|distributed|infrastructure"),
    ("architecture", 1.0, "plugin system|caching layer|load balancer|multi-tenant|sandbox*"),
    ("architecture", 1.0, "services|backend"),
    ("architecture", 2.0, "where should * live|business logic|business rules|layering"),
    ("architecture", 2.0, "active-active|active-passive|multi-region|cross-region|split-brain"),
    ("architecture", 1.5, "two regions|regions|frontend or|api layer|service boundaries"),
    ("architecture", 3.0, "architect|architecting|re-architect|component diagram"),
    ("architecture", 2.0, "caching layer|mermaid|c4 model|strangler*"),
    ("architecture", 2.0, "fit together|how * should fit|broker|mqtt|ingestion|topology"),
    ("architecture", 1.5, "sketch how|store-and-forward|edge devices|gateway|queueing|queue"),
    ("architecture", 1.5, "{backend,system} pieces|lay out the|name of the pattern|pattern where"),
    # security
    ("security", 3.0, "security|secure|vulnerab*|cve-*|xss|csrf|owasp|threat model*"),
    ("security", 3.0, "sql injection|injection|pentest*|exploit*|hardening|malware"),
    ("security", 3.0, "cors|ssrf|rce|xxe|idor|clickjacking|session fixation|brute-force"),
    ("security", 3.0, "brute force"),
    ("security", 2.0, "attack|attacks|attacker|stride|secret|secrets|password|passwords"),
    ("security", 2.0, "encrypt*|privilege*|credential|credentials|pii|authorization header"),
    ("security", 2.0, "certificate|certificates|ssl|sbom|supply chain"),
    ("security", 1.5, "audit*|mitigat*|jwt|tls|csp|hmac|sanitiz*|escap*|is it {safe,ok}"),
    ("security", 1.0, "hash*|md5|auth*|root|permission|permissions|shell=true|os.system"),
    ("security", 1.0, "{token,tokens} expire|tokens never expire"),
    ("security", 2.0, "hashed|plaintext|bcrypt|argon2|scrypt|salted|api key|api keys"),
    ("security", 2.0, "abuse|abused|malicious|internal network|metadata endpoint"),
    ("security", 3.0, "firewall|ransomware|phishing|active directory|kerberos|zero trust"),
    ("security", 2.0, "permissive|too open|least privilege|iam|mfa|2fa|ldap|lateral movement"),
    ("security", 2.0, "pci|pci dss|hsm|soc 2|iso 27001|hipaa|security assessment"),
    # api_design
    ("api_design", 3.0, "openapi|swagger|graphql|grpc|protobuf|rest api|restful"),
    ("api_design", 2.0, "api|apis|endpoint|endpoints|webhook|webhooks|http method*|status code*"),
    ("api_design", 2.0, "api gateway"),
    ("api_design", 1.5, "pagination|paginat*|versioning|idempoten*|resource url*|rpc|rest"),
    ("api_design", 1.5, "request and response|response {shape,body,format}|query param*"),
    ("api_design", 1.0, "contract|json bod*|payload|mutation|schema|schemas|http|sdk"),
    ("api_design", 1.0, "400|401|402|403|404|405|406|409"),
    ("api_design", 1.5, "route|routes|url scheme|url structure|resource naming"),
    ("api_design", 1.5, "request body|response body|error model*|error codes|rate limit*"),
    # database
    ("database", 3.0, "sql|postgres*|mysql|sqlite|mongodb|database|databases|alembic"),
    ("database", 3.0, "mariadb|dynamodb|cassandra|autovacuum|vacuum|stored procedure*|upsert"),
    ("database", 2.0, "query|queries|index|indexes|indices|join|joins|migration|migrations"),
    ("database", 2.0, "deadlock detected|primary key|foreign key|{normalized,normalised} schema"),
    ("database", 2.0, "shard*|replica*|cte|window function*|isolation level|n+1|partition*"),
    ("database", 2.0, "deduplicate"),
    ("database", 1.0, "table|tables|rows|transaction|transactions|orm|schema|column|columns"),
    ("database", 1.0, "aggregation|records"),
    ("database", 2.5, "write a query|sql query|a query|the query|query plan|explain plan"),
    # monitoring
    ("monitoring", 3.0, "monitor*|prometheus|grafana|alerting|uptime|health check|health checks"),
    ("monitoring", 3.0, "opentelemetry|datadog|sentry|kibana|splunk|cloudwatch|pagerduty"),
    ("monitoring", 2.5, "slo|slos|sli|slis|error budget*|burn rate|on-call|incident|degraded"),
    ("monitoring", 1.5, "alert|alerts|dashboard|dashboards|metric|metrics|latency|cpu|healthy"),
    ("monitoring", 1.5, "p50|p90|p95|p99|p999|error rate"),
    ("monitoring", 1.0, "log|logs|spike|spikes|outage|throughput|quota|eviction|evictions"),
    ("monitoring", 1.0, "memory|disk|status|urgent|tracing|traces|saturation|full|utili*"),
    ("monitoring", 2.0, "cron|cron job*|nightly job*|backup job*|heartbeat*|job runs"),
    ("monitoring", 3.0, "promql|logql|loki|alertmanager|burn-rate"),
    ("monitoring", 2.5, "pod|pods|kubelet|oomkilled|crashloop*|restarting|restarts|evicted"),
    ("monitoring", 1.5, "exit code|went down|is down|kubernetes|k8s|node|nodes|paged|pager"),
    # formatting
    ("formatting", 3.0, "reformat*|pretty-print*|prettify|pep 8|pep8|conventional commits"),
    ("formatting", 2.5, "format|formatted|formatting|indent*|markdown table|normalize|normalise"),
    ("formatting", 2.5, "bulleted list|bullet point*|numbered list|title case|alphabetical*"),
    ("formatting", 2.0, "convert|turn {this,these} into|turn the following into"),
    ("formatting", 2.0, "into {markdown,yaml,json,csv}|into {a,an} {markdown,yaml,json,csv,table}"),
    ("formatting", 2.0, "into {a,an} * {markdown,yaml,json,csv,table}|sort {these,this,the}"),
    ("formatting", 2.0, "make {this,these,it} into {a,an} * {list,table}"),
    ("formatting", 2.0, "make {this,these,it} {a,an} * {list,table}"),
    ("formatting", 2.0, "make {this,these,it} into {a,an} {list,table}"),
    ("formatting", 1.0, "markdown|yaml|json|csv|table|bold|align*|whitespace|sorted keys"),
    ("formatting", 1.0, "snake_case|camelcase|kebab-case|line length|trailing comma*|group"),
    ("formatting", 2.0, "readable style|uppercase keywords|one clause per line|wrap each"),
    ("formatting", 2.0, "double quotes|single quotes|join them with commas"),
    ("formatting", 2.0, "tidy|messy|clean up|cleanup|neatly"),
    # reasoning
    ("reasoning", 3.0, "prove|proof|solve|probability|puzzle|riddle|fermi|induction"),
    ("reasoning", 2.5, "math*|equation*|derive|expected {number,value}|logic puzzle"),
    ("reasoning", 2.0, "chance|odds|permutation*|combinations|percentage|by what|ratio"),
    ("reasoning", 1.5, "calculat*|compute|how many|how far|constraint|constraints|deduce"),
    ("reasoning", 1.5, "step by step"),
    ("reasoning", 1.0, "estimate|maximum|minimum|km/h|mph|per hour|reasoning|logic|formula"),
    ("reasoning", 2.0, "how much {is,does,will,would,did}|what day|from now|if today is"),
    ("reasoning", 2.0, "seat|seats|sat|next to|left of|right of|clue|clues|liar|liars"),
    ("reasoning", 1.5, "costs|total|each|different|older|younger|faster|twice|half"),
    # analysis
    ("analysis", 2.5, "trend|trends|insight|insights|root cause*|a/b test|statistically|churn"),
    ("analysis", 2.5, "cohort|cohorts|competitive landscape|contributing factors|key points"),
    ("analysis", 2.5, "action items"),
    ("analysis", 2.0, "pain point*|takeaways|sentiment|interview|interviews|survey*|forecast*"),
    ("analysis", 1.5, "analy*|summar*|compare|comparison|pros and cons|themes"),
    ("analysis", 1.5, "pattern|patterns|what happened|breakdown|segment*|retention|funnel"),
    ("analysis", 1.0, "report|evaluate|evidence|conversion|significan*|market|data|revenue"),
    ("analysis", 2.5, "product reviews|customer reviews|user reviews|app reviews|what users"),
    ("analysis", 1.5, "assess|assessment|market entry|demand|competitors|competition"),
    ("analysis", 2.0, "bill|spend|spending|savings|cost breakdown|drivers|jumped|dropped"),
    ("analysis", 1.5, "why did|explain why|what changed|biggest|levers|kpi|kpis"),
    # long_context
    ("long_context", 3.0, "entire {codebase,repository,repo,project}|whole codebase|whole repo*"),
    ("long_context", 3.0, "monorepo|every file|all {the,these,our} {files,sources}"),
    ("long_context", 3.0, "chapter by chapter"),
    ("long_context", 2.0, "manuscript|book|literature review|everything we discussed|full year"),
    ("long_context", 1.0, "attached|concatenated|across these|papers"),
    ("long_context", 4.0, "long {log,logs,transcript,document,documents,specification,spec}"),
    ("long_context", 4.0, "long {contract,agreement,manifest,dump,thread,report,versions}"),
    ("long_context", 4.0, "full text|full transcript|entire transcript|clause by clause"),
    ("long_context", 3.0, "pasted codebase|whole {app,package,spec,specification,document}"),
    ("long_context", 3.0, "{whole,entire,full} {requirements,log,transcript,agreement,msa}"),
    ("long_context", 3.0, "requirements {spec,specification,document}|master services agreement"),
    ("long_context", 2.0, "pasted below|below, concatenated|transcript|transcripts"),
    ("long_context", 2.0, "{entire,whole,full,complete} {protocol,chapter,export,dump,thread}"),
    ("long_context", 2.0, "{entire,whole,full,complete} {history,book,study,sbom,inventory}"),
    ("long_context", 1.0, "export|dump|every ticket|each ticket|tickets|below is our"),
    # multilingual
    ("multilingual", 3.0, "translat*|locali*|i18n|l10n"),
    ("multilingual", 0.5, "japanese|chinese|korean|spanish|french|german|portuguese|italian"),
    ("multilingual", 0.5, "russian|arabic|hindi|turkish|dutch|polish|vietnamese|thai"),
    ("multilingual", 1.5, "{in,into,to,from} {japanese,chinese,korean,spanish,french,german}"),
    ("multilingual", 1.5, "{in,into,to,from} {portuguese,italian,russian,arabic,hindi,turkish}"),
    ("multilingual", 1.5, "{in,into,to,from} {dutch,polish,vietnamese,thai}|native speaker*"),
    ("multilingual", 1.5, "{japanese,chinese,korean,spanish,french,german} {text,version,copy}"),
    ("multilingual", 2.0, "{in,into,to,en} {english,inglés,anglais,englisch}|mean in"),
    ("multilingual", 1.5, "{mexican,brazilian,latin,japanese,german,french,spanish} market"),
    # moderation: content judged against a policy (the safety classifier's only work)
    ("moderation", 3.0, "moderation|moderate {this,these,the}|moderator|content policy"),
    ("moderation", 3.0, "community guidelines|acceptable use policy|trust and safety"),
    ("moderation", 3.0, "hate speech|self-harm|self harm|harassment|nsfw|toxic*|csam"),
    ("moderation", 3.0, "allow or block|block or allow|safe or unsafe|allow/block|safe/unsafe"),
    ("moderation", 3.0, "against {the,this,our} policy|policy {below,above}|following policy"),
    ("moderation", 3.0, "{does,do} {this,the,these} {message,post,comment,content} violate"),
    ("moderation", 2.0, "spam|scam|slur|slurs|harass*|abusive|bullying|profanity|extremis*"),
    ("moderation", 2.0, "{violates,violate,violating,breaks} {the,this,our} {policy,rules}"),
    ("moderation", 1.5, "{classify,label} {this,the,each,these} {post,posts,message,messages}"),
    ("moderation", 1.5, "{classify,label} {this,the,each,these} {comment,comments,content}"),
    ("moderation", 1.5, "unsafe|hateful|violent|graphic|explicit|offensive|threatening"),
    ("moderation", 1.0, "policy|flagged|user-generated|ban|banned|removal"),
    ("moderation", 0.5, "allow|block|flag|post|posts|comment|comments|tweet|tweets"),
    ("moderation", 3.0, "content-moderation|trust-and-safety|content moderation"),
    # general (weak: general is also what wins when nothing else does)
    ("general", 1.0, "fun fact|newsletter|email|offsite|agenda|job posting|books|ideas"),
    ("general", 1.0, "brainstorm|advice|help me think|recipe|travel|gift|lunch|birthday"),
    ("general", 0.5, "thanks|thank you|hello|hi|weekend|holiday|friendly"),
    ("general", 1.5, "what does * mean|who {designed,invented,wrote,built,founded}"),
    ("general", 1.0, "capital of|history of|one sentence|trivia|fact|famous|favourite"),
)

# -- cues read from the instruction itself (code and pasted data removed) -------------------

_CUE_TABLE: tuple[tuple[str, float, str], ...] = (
    ("complex", 1.0, "architecture|distributed|scalab*|trade-off*|tradeoff*|zero downtime"),
    ("complex", 1.0, "multi-tenant|end-to-end|threat model|justify|concurren*|lock-free"),
    ("complex", 1.0, "contention|in depth|comprehensive|literature review|competitive landscape"),
    ("complex", 1.0, "generalize|generalise|by induction|sandbox*|conflict resolution"),
    ("complex", 1.0, "graceful degradation|cutover|backfill|ranked by|at the same time"),
    ("complex", 1.0, "across major|evidence|alternative architecture"),
    ("moderate", 1.0, "design|explain how|explain why|why|how should|should we|should a"),
    ("moderate", 1.0, "compare|define|propose|strategy|recommend*|evaluate|trade|plan"),
    ("moderate", 1.0, "assess|identify|what would"),
    ("simple", 1.0, "yes or no|simple|quick|just|one line|one-line|fun fact|short|rename|typo"),
    ("simple", 1.0, "is this a valid|check whether|well-formed|convert|format|reformat"),
    ("simple", 1.0, "translate|localize|localise|normalize|normalise|docstring|docstrings"),
    ("simple", 1.0, "changelog|regression test|solve for|probability of|add a"),
    ("why", 1.0, "why|what's wrong|whats wrong|how come|explain"),
    ("quantity", 1.0, "what is the|what's the|how many|how much|how long|how far|when and"),
    ("show_code", 1.0, "show me the code|show the code|code example"),
    ("show_code", 1.0, "in {python,go,rust,java,javascript,typescript,c++,c#,ruby,php,bash,sql}"),
    ("modify", 1.0, "extend|modify|change|update|adapt|convert|port|rewrite|make"),
    ("modify_tail", 1.0, "so it|so they|so that it|so that they|to also|to use|to support"),
    ("modify_tail", 1.0, "to handle|to return|to accept|into"),
    ("make", 1.0, "write|implement|create|build|add|generate|make"),
)


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


_ARTEFACTS = _wordset(
    """function functions class classes method methods endpoint endpoints component components
    script scripts module modules cli flag flags handler handlers hook hooks program programs
    service services library decorator decorators parser implementation migration migrations"""
)
_NOT_THE_WORK = _wordset("docstring docstrings documentation comment comments test tests readme")

_TASKS_M = _Matcher(_TASK_TABLE)
# A table row's feature key names its task type and its alternatives: stable while other rows
# are added or removed, and readable in `data/task_type.json`.
_TASK_KEYS = tuple(f"{task}: {spec}" for task, _, spec in _TASK_TABLE)
# One pass finds the cues and the complexity signals alike.
_CUES_M = _Matcher(_CUE_TABLE + _cx.SIGNALS)
_QUESTION_START = _wordset("what which who when where is does do can should how whats what's")

# Frequent function words of other Latin-script languages that are not English words.
_FOREIGN = _wordset(
    """el los las una unos del al para pero cómo qué cuál está están también con por muy puedes
    puede gracias hola sobre desde hasta eso esta este ese y o se lo le mi tu su
    les des une est sont pour avec dans nous vous je il elle ce cet cette ces du au aux et ou
    en sur par pas mais qui que où être peux peut merci bonjour très c'est
    der die das den dem und oder nicht ist sind ein eine einen mit für auf ich wir ihr sie
    bitte danke wurde wurden etwas auch noch nur wie warum kann können
    não você uma com os em são obrigado olá isso esse essa pelo pela mas muito
    gli della delle che non sono questo questa grazie ciao anche come perché
    het een niet ik jij wij zijn voor met op dank"""
)
_ELISIONS = ("n'", "l'", "d'", "c'", "j'", "s'", "qu'")
_ACCENTED = re.compile("[àâáãäåçéèêëíìîïñóòôõöúùûüÿœæß¿¡«»]")

# -- structural signals ---------------------------------------------------------------------

_FENCE = re.compile(r"```([A-Za-z0-9_+#-]*)")
_CODE_SPAN = re.compile(r"```.*?(?:```|$)", re.S)
_STACK = re.compile(
    r"Traceback \(most recent call last\)|^\s+at [\w.$<>]+\(.*:\d+\)|Exception in thread"
    r"|^panic: |^\s+File \"[^\"]+\", line \d+|\w+Error: .+\n\s+at ",
    re.M,
)
_SQL = re.compile(
    r"\bselect\b[^;]{0,300}?\bfrom\b|\binsert\s+into\b|\bupdate\s+\w+\s+set\b|\bdelete\s+from\b"
    r"|\b(?:create|alter|drop)\s+(?:table|index|view|unique\s+index)\b|\bexplain\s+analy[sz]e\b"
    r"|\bseq\s+scan\b|\bgroup\s+by\b"
)
_SQL_HINTS = (
    "select",
    "insert",
    " set ",
    "delete from",
    "table",
    "index",
    "view",
    "explain",
    "seq scan",
    "group by",
)
_SQL_HINT = re.compile("|".join(re.escape(h) for h in _SQL_HINTS))
_CONTENT_LABEL = re.compile(
    r"\s*(?:post|reply|comment|message|tweet|dm|caption|bio|username)\b[^:\n]{0,30}:", re.I
)
_DIFF_LINES = re.compile(r"^[+-](?![+-])\S", re.M)
_LOG_LINES = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d", re.M)
_MATH = re.compile(r"\d\s*[a-z]\^\d|[a-z]\^\d\s*[-+=]|\b\d+[a-z]\s*[-+]\s*\d+\s*=")
_NON_LATIN = re.compile(
    "[\u0370-\u03ff\u0400-\u04ff\u0590-\u05ff\u0600-\u06ff\u0900-\u0dff\u0e00-\u0e7f"
    "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]"
)
_LATIN = re.compile(r"[A-Za-z]")
# "17% of 2,340", "goes from 60% to 75%"
_PERCENT = re.compile(r"\d\s?%\s+of\s+\$?\d|from\s+\d[\d,.]*\s?%\s+to\s+\d")
# "/users/{id}/orders", "/orders?user_id=": a route, not a file path
_ROUTE = re.compile(r"(?<![\w.])/[a-z][\w-]*/\{\w+\}|(?<![\w.])/[a-z][\w-]*\?[a-z_]+=")
_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.M)
# A pasted line of material: a list item, a quote, or a log line.
_MATERIAL_LINE = re.compile(r"^\s*(?:[-*•>]|\d+[.)]|\d\d:\d\d|\d{4}-\d\d-\d\d)\s*.*$", re.M)
_MATERIAL_WEIGHT = 0.4
_MIN_INSTRUCTION_WORDS = 6

# "60M citizens", "50k orders/s", "1,200 tables", "300 teams": numbers that speak of scale.
_BIG_NUMBER = re.compile(r"\b(?:\d{1,3}(?:,\d{3})+|[1-9]\d{2,}|\d+(?:\.\d+)?[kKmMbB])\b")

_REPEAT = (1.0, 1.5, 1.75)  # 1st, 2nd, 3rd+ occurrence of one signal: diminishing returns


class _Cues:
    """What the instruction's own words say (complexity cues, code-change phrasing)."""

    __slots__ = (
        "complex",
        "counts",
        "make_code",
        "moderate",
        "modify",
        "quantity",
        "question",
        "show_code",
        "simple",
        "why",
        "words",
    )

    def __init__(self, tokens: list[str]) -> None:
        self.words = len(tokens)
        found: dict[str, set[str]] = {}
        modify_at: list[int] = []
        tail_at: list[int] = []
        make_at: list[int] = []
        meta = _CUES_M.meta
        for sig, start, length in _CUES_M.find(tokens):
            name = meta[sig][0]
            phrase = tokens[start] if length == 1 else " ".join(tokens[start : start + length])
            got = found.get(name)
            if got is None:
                found[name] = {phrase}
            else:
                got.add(phrase)
            if name == "modify":
                modify_at.append(start)
            elif name == "modify_tail":
                tail_at.append(start)
            elif name == "make":
                make_at.append(start)
        self.complex = found.get("complex", set())
        self.moderate = found.get("moderate", set())
        self.simple = found.get("simple", set())
        self.why = bool(found.get("why"))
        self.quantity = bool(found.get("quantity"))
        self.show_code = bool(found.get("show_code"))
        self.modify = any(0 < t - m <= 12 for m in modify_at for t in tail_at)
        self.make_code = any(_makes_code(tokens, m) for m in make_at)
        self.counts = {name: len(v) for name, v in found.items()}
        self.question = bool(tokens) and tokens[0] in _QUESTION_START


def _makes_code(tokens: list[str], at: int) -> bool:
    """`write a small Python utility`, `add a --dry-run flag`; not `write a module docstring`."""
    for j in range(at + 1, min(at + 6, len(tokens))):
        if tokens[j] in _ARTEFACTS:
            nxt = tokens[j + 1] if j + 1 < len(tokens) else ""
            return nxt not in _NOT_THE_WORK
    return False


# Structural signals: feature key -> (task type, hand weight). The hand weights are the prior
# the fitted task model (`data/task_type.json`) starts from; a key it never saw scores them.
_STRUCTURAL: dict[str, tuple[str, float]] = {
    "diff block": ("code_review", 2.0),
    "sql block": ("database", 2.0),
    "infra block": ("security", 0.5),
    "change to the given code": ("code_generation", 2.0),
    "question about code": ("code_review", 2.0),
    "code block": ("code_review", 0.5),
    "stack trace": ("code_review", 3.0),
    "SQL statement": ("database", 2.5),
    "diff lines": ("code_review", 1.5),
    "log lines": ("monitoring", 1.5),
    "equation": ("reasoning", 2.5),
    "percentage arithmetic": ("reasoning", 2.5),
    "API route path": ("api_design", 2.0),
    "numbers + quantity question": ("reasoning", 1.5),
    "asks for code": ("code_generation", 1.5),
    "verb + code artefact": ("code_generation", 2.0),
    "non-Latin script (most)": ("multilingual", 8.0),
    "non-Latin script (some)": ("multilingual", 4.0),
    "non-Latin script (a little)": ("multilingual", 1.5),
    "non-English text": ("multilingual", 6.0),
    "long-context size": ("long_context", 10.0),
    "half long-context size": ("long_context", 2.5),
    "long pasted material": ("long_context", 2.0),
    "long text": ("long_context", 2.0),
    "content to judge": ("moderation", 2.0),
}

Features = dict[str, float]
"""Task feature key -> value: a table signal's key is `task: alternatives` (its row), a
structural one's a name of `_STRUCTURAL`, the agent's hint `agent prior: task`."""

_AGENT_PRIOR_UNIT = 2.0
"""The policy's default `agent_prior_weight`: the agent prior feature is its multiple."""

PRIOR: dict[str, tuple[str, float]] = {
    **{key: (task, w) for key, (task, w, _) in zip(_TASK_KEYS, _TASK_TABLE, strict=True)},
    **_STRUCTURAL,
    **{f"agent prior: {t}": (t, _AGENT_PRIOR_UNIT) for t in TASK_TYPES},
}
"""Every task feature -> (the task type its hand weight points at, that weight)."""


def _add(feats: Features, labels: dict[str, str], key: str, label: str, v: float = 1.0) -> None:
    feats[key] = feats.get(key, 0.0) + v
    labels.setdefault(key, label)


def _task_scores(
    system: str, user: str, tokens: int, policy: Policy
) -> tuple[Features, dict[str, str], int, int, _Cues]:
    """The task features of the text; returns (features, labels, code lines, items, cues)."""
    feats: Features = {}
    why: dict[str, str] = {}
    text = f"{system}\n{user}" if system else user
    lower = text.lower()
    words = _TOKEN.findall(lower)

    # Words of the instruction count fully; words of the material it hands over (fenced
    # code, pasted list items and log lines) count less: "crash" in a list of PR titles to
    # turn into release notes is not a bug report.
    material_words: list[str] = []
    if "\n" in text and ("```" in text or _MATERIAL_LINE.search(text)):
        material = _CODE_SPAN.findall(lower) if "```" in lower else []
        rest = _CODE_SPAN.sub(" ", lower) if material else lower
        material += _MATERIAL_LINE.findall(rest)
        instruction = _MATERIAL_LINE.sub(" ", rest)
        own = _TOKEN.findall(instruction)
        if len(own) >= _MIN_INSTRUCTION_WORDS:
            words_for_signals = own
            material_words = _TOKEN.findall(" ".join(material))
        else:
            words_for_signals = words
    else:
        words_for_signals = words
    keys = _TASK_KEYS
    for part, weight in ((words_for_signals, 1.0), (material_words, _MATERIAL_WEIGHT)):
        if not part:
            continue
        counts: dict[int, int] = {}
        first: dict[int, str] = {}
        for sig, start, length in _TASKS_M.find(part):
            c = counts.get(sig, 0)
            counts[sig] = c + 1
            if c == 0:
                first[sig] = part[start] if length == 1 else " ".join(part[start : start + length])
        for sig, c in counts.items():
            _add(feats, why, keys[sig], first[sig], weight * _REPEAT[min(c, 3) - 1])

    ulower = user.lower()
    has_code = "```" in text
    prose = _CODE_SPAN.sub(" ", ulower) if has_code else ulower
    own_text = _instruction(prose)
    if own_text is not prose:
        cues = _Cues(_TOKEN.findall(own_text))
    else:
        cues = _Cues(_TOKEN.findall(prose) if has_code or system else words)

    code_lines = 0
    if has_code:
        langs = {f.lower() for f in _FENCE.findall(text)[::2] if f}
        code_lines = text.count("\n", text.find("```"), text.rfind("```"))
        if langs & {"diff", "patch"}:
            _add(feats, why, "diff block", "diff block")
        if "sql" in langs:
            _add(feats, why, "sql block", "sql block")
        if langs & {"dockerfile", "nginx"}:
            _add(feats, why, "infra block", "infra block")
        if cues.modify:
            _add(feats, why, "change to the given code", "change to the given code")
        elif "?" in prose or cues.why:
            # Code handed over with a question is to be explained or fixed, not rewritten.
            _add(feats, why, "question about code", f"question about code ({code_lines} lines)")
        else:
            _add(feats, why, "code block", f"code block ({code_lines} lines)")
    # Cheap substring guards keep the structural regexes off ordinary prose.
    if ("traceback" in lower or "  at " in text or "error:" in lower or "panic:" in lower) and (
        _STACK.search(text)
    ):
        _add(feats, why, "stack trace", "stack trace")
    if _SQL_HINT.search(lower) and _SQL.search(lower):
        _add(feats, why, "SQL statement", "SQL statement")
    if (
        ("\n+" in text or "\n-" in text)
        and "diff block" not in feats
        and (len(_DIFF_LINES.findall(text)) >= 3)
    ):
        _add(feats, why, "diff lines", "diff lines")
    if "\n" in text and len(_LOG_LINES.findall(text)) >= 2:
        _add(feats, why, "log lines", "log lines")
    if ("^" in lower or "=" in lower) and _MATH.search(lower):
        _add(feats, why, "equation", "equation")
    if ":" in user and _CONTENT_LABEL.match(user):
        # `Post: "…"`, `Reply in #general: "…"`: a moderation queue hands over content.
        _add(feats, why, "content to judge", "content to judge")
    if "%" in lower and _PERCENT.search(lower):
        _add(feats, why, "percentage arithmetic", "percentage arithmetic")
    if "/" in lower and _ROUTE.search(lower):
        _add(feats, why, "API route path", "API route path")
    if cues.quantity and sum(1 for w in words if w.isdigit()) >= 3:
        _add(feats, why, "numbers + quantity question", "numbers + quantity question")
    if cues.show_code:
        _add(feats, why, "asks for code", "asks for code")
    if cues.make_code:
        _add(feats, why, "verb + code artefact", "verb + code artefact")

    # Scripts: only the user's words tell the language of the work.
    if _NON_LATIN.search(user):
        foreign = len(_NON_LATIN.findall(user))
        latin = len(_LATIN.findall(user))
        ratio = foreign / (foreign + latin)
        if ratio >= 0.3:
            _add(feats, why, "non-Latin script (most)", f"non-Latin script {ratio:.0%}")
        elif ratio >= 0.05 or foreign >= 20:
            _add(feats, why, "non-Latin script (some)", f"non-Latin script {ratio:.0%}")
        elif foreign >= 3:
            _add(feats, why, "non-Latin script (a little)", "some non-Latin script")
    else:
        utoks = _TOKEN.findall(ulower) if system else words
        hits = sum(map(_FOREIGN.__contains__, utoks))
        if "'" in ulower:  # elided articles ("l'heure"): the rare prompt with an apostrophe
            hits += sum(1 for w in utoks if w not in _FOREIGN and w.startswith(_ELISIONS))
        if hits >= 3:
            accents = len(_ACCENTED.findall(ulower))
            # English shares a few of these words ("a", "on"), so ask for a real share of them,
            # or for accents to back them up.
            share = hits / max(len(utoks), 1)
            if share >= 0.2 or (share >= 0.1 and accents >= 2):
                _add(feats, why, "non-English text", f"non-English text ({hits} function words)")

    if tokens >= policy.long_context_tokens:
        _add(feats, why, "long-context size", f"prompt ~{tokens} tokens")
    elif tokens >= policy.long_context_tokens // 2:
        _add(feats, why, "half long-context size", f"prompt ~{tokens} tokens")

    if tokens < policy.long_context_tokens // 2:
        if code_lines >= 120:
            _add(feats, why, "long pasted material", f"long pasted material ({code_lines} lines)")
        # Pages of prose handed over (a contract, a transcript, a chapter): the real size of
        # the material, not a word that claims it. Far below the context window, but work
        # over it is reading before anything else.
        if len(words) >= _LONG_TEXT_WORDS:
            _add(feats, why, "long text", f"long text ({len(words)} words)")
    # The prompt's size in words, as features the fit weighs freely (no hand weight): pages
    # of pasted prose are what long-context work is, whatever the topic their words name.
    for n in _SIZE_WORDS:
        if len(words) < n:
            break
        _add(feats, why, f"{WORD_PREFIX}~{n}+ words", f"{len(words)} words")

    items = len(_LIST_ITEM.findall(user)) if "\n" in user else 0
    return feats, why, code_lines, items, cues


_LONG_TEXT_WORDS = 600
"""Words (system and user) from which a prompt carries pages of material (about 800 tokens)."""


def _instruction(prose: str) -> str:
    """The instruction's own text: a long paste after a blank line is material, not asks."""
    head, blank, rest = prose.partition("\n\n")
    if blank and len(head) >= 20 and len(rest) > 3 * len(head):
        return head
    return prose


_SIZE_WORDS = (300, 400, 500, 600, 800)
"""Word counts (system and user) from which a prompt gets a size feature (`w:~400+ words`)."""

_WORD = re.compile(r"[a-z][a-z0-9]+")
_STEM = 7
"""Letters a word stem keeps: `validate`, `validation` and `validating` are one feature."""
_STOP = (
    "the and for this that with are our you your can does how what which from have has was "
    "but not all any its into than then them they their there these those will would should "
    "could about just also been being over some such only very"
)
_STOP_WORDS = frozenset(_STOP.split())
WORD_PREFIX = "w:"
"""Feature names of word stems (`w:validat`); everything else is a named signal."""


def word_stems(text: str) -> frozenset[str]:
    """The word features of `text` (`w:` + the first seven letters of each word of three
    letters or more, stop words left out): the words as such, beside the named signals."""
    return frozenset(
        WORD_PREFIX + w[:_STEM]
        for w in _WORD.findall(text.lower())
        if len(w) > 2 and w not in _STOP_WORDS
    )


_OPENING_PREFIX = WORD_PREFIX + "^"
"""Feature names of the opening sentence's stems (`w:^validat`)."""
_SENTENCE = re.compile(r"[^.?!\n]+")
_STEMS_AT_FULL_WEIGHT = 20
"""Up to this many word features each count 1; beyond, each counts sqrt(this / n)."""


def _opening(prose: str) -> str:
    """The first sentence of two words or more, where most people put the ask; empty when it
    is the whole text (its words are already the text's)."""
    for m in _SENTENCE.finditer(prose):
        if " " in (s := m.group().strip()):
            return s if m.end() < len(prose.rstrip()) - 1 else ""
    return ""


def task_words(user: str, stems: frozenset[str] | None = None) -> dict[str, float]:
    """The task model's word features of the user's text: its stems (`stems`, when the caller
    has them already), and again the stems of its opening sentence (`w:^…`). A long text names
    many topics, so past `_STEMS_AT_FULL_WEIGHT` features each weighs less (the vector's length
    grows as the square root of its size): pages of a contract full of security words do not
    drown out the ask."""
    if stems is None:
        stems = word_stems(user)
    prose = _CODE_SPAN.sub(" ", user) if "```" in user else user
    opening = word_stems(_opening(prose))
    n = len(stems) + len(opening)
    v = 1.0 if n <= _STEMS_AT_FULL_WEIGHT else math.sqrt(_STEMS_AT_FULL_WEIGHT / n)
    out = dict.fromkeys(stems, v)
    cut = len(WORD_PREFIX)
    for k in opening:
        out[_OPENING_PREFIX + k[cut:]] = v
    return out


def _add_words(
    feats: dict[str, float],
    why: dict[str, str] | None,
    stems: frozenset[str] | Mapping[str, float],
    known: Any,
) -> None:
    """Add the word features the fitted model knows (`known`: its weights; `None`: every
    one); `stems` is a set (each counts 1) or feature -> value."""
    values = stems if isinstance(stems, Mapping) else dict.fromkeys(stems, 1.0)
    for k, v in values.items():
        if known is None or k in known:
            feats[k] = v
            if why is not None:
                if k.startswith(_OPENING_PREFIX):
                    why.setdefault(k, f"opening word {k[len(_OPENING_PREFIX) :]}…")
                else:
                    why.setdefault(k, f"word {k[len(WORD_PREFIX) :]}…")


def _complexity_features(
    user: str,
    task_type: str,
    tokens: int,
    code_lines: int,
    items: int,
    bias: float,
    cues: _Cues,
) -> dict[str, float]:
    prose = _instruction(_CODE_SPAN.sub(" ", user) if code_lines else user)
    words = cues.words
    # What is pasted beside the instruction (code, lists, logs, attachments): the prompt's
    # tokens beyond the instruction's own (about 1.4 tokens a word).
    material = max(0, tokens - int(words * 1.4) - 16)
    return _cx.features(
        cues.counts,
        words=words,
        items=prose.count(",") + prose.count(";") + items,
        material_tokens=material,
        code_lines=code_lines,
        complex_cues=len(cues.complex),
        moderate_cues=len(cues.moderate),
        simple_cues=len(cues.simple),
        question=cues.question or "?" in prose,
        big_numbers=len(_BIG_NUMBER.findall(prose)),
        conjunctions=prose.count(" and ") + prose.count(" plus "),
        task_type=task_type,
        bias=bias,
    )


def _add_agent_prior(
    feats: Features, why: dict[str, str], match: AgentMatch | None, policy: Policy
) -> None:
    if match is not None and match.task_type and policy.agent_prior_weight > 0:
        key = f"agent prior: {match.task_type}"
        _add(feats, why, key, "agent prior", policy.agent_prior_weight / _AGENT_PRIOR_UNIT)


def task_features(
    request: ChatRequest, policy: Policy | None = None, *, all_words: bool = False
) -> Features:
    """The task features of a request without an explicit task type (for fitting the model):
    the stems the embedded model knows, or every stem with `all_words`."""
    policy = policy or default_policy()
    tools = request.params.get("tools") if request.params else None
    tokens = estimate_prompt_tokens(request.messages, tools=tools)
    system, user = request_texts(request.messages)
    feats, why, _, _, _ = _task_scores(system, user, tokens, policy)
    agent_name = request.agent_name or (request.metadata or {}).get("agent_name")
    _add_agent_prior(feats, why, policy.agent(agent_name), policy)
    known = None if all_words else _tm.load_task_model().weights
    _add_words(feats, None, task_words(user), known)
    return feats


def complexity_features(
    request: ChatRequest, policy: Policy | None = None, *, all_words: bool = False
) -> tuple[dict[str, float], int]:
    """The complexity features of a request and its prompt tokens (for fitting the weights):
    the stems the embedded weights know, or every stem with `all_words`."""
    policy = policy or default_policy()
    profile = classify(request, policy)
    system, user = request_texts(request.messages)
    tokens = profile.estimated_tokens
    _, _, code_lines, items, cues = _task_scores(system, user, tokens, policy)
    match = policy.agent(profile.agent_name)
    bias = policy.agent_classes[match.agent_class].complexity_bias if match else 0.0
    x = _complexity_features(user, profile.task_type, tokens, code_lines, items, bias, cues)
    _add_words(x, None, word_stems(user), None if all_words else _cx.load_weights().weights)
    return x, tokens


_AGENTS: dict[int, tuple[weakref.ref[Policy], dict[str, AgentMatch | None]]] = {}
"""id(policy) -> (the policy, agent name -> its match): `Policy.agent` reads pydantic private
attributes, several microseconds a call; a plain dict lookup costs a fraction of that."""


def _agent(policy: Policy, name: str | None) -> AgentMatch | None:
    if not name:
        return None
    entry = _AGENTS.get(id(policy))
    if entry is None or entry[0]() is not policy:
        if len(_AGENTS) >= 64:
            _AGENTS.clear()
        entry = (weakref.ref(policy), {})
        _AGENTS[id(policy)] = entry
    memo = entry[1]
    if name in memo:
        return memo[name]
    found = policy.agent(name)
    if len(memo) >= 4096:
        memo.clear()
    memo[name] = found
    return found


def _metadata_hint(metadata: Mapping[str, Any], *keys: str) -> tuple[str, str] | None:
    for k in keys:
        v = metadata.get(k)
        if isinstance(v, str) and v.strip():
            return v.strip(), k
    return None


def classify(request: ChatRequest, policy: Policy | None = None) -> Profile:
    """Profile a request: task type, complexity and estimated prompt tokens, with reasons.

    Args:
        request: The request.
        policy: The routing policy (agent patterns, task aliases, long-context threshold);
            default: the embedded policy.

    Returns:
        The profile; `reasons` lists each hint or signal that decided, in order.

    Raises:
        InvalidRequestError: An explicit task type hint is neither a task type nor an alias.
    """
    policy = policy or default_policy()
    reasons: list[str] = []
    md = request.metadata or {}

    tools = request.params.get("tools") if request.params else None
    tokens = estimate_prompt_tokens(request.messages, tools=tools)
    system, user = request_texts(request.messages)

    # Explicit task type: the request's own field, then metadata.
    task_type: str | None = None
    if request.task_type:
        task_type = policy.task_type_of(request.task_type, source="request.task_type")
        reasons.append(f"hint: task_type={task_type} (request)")
    elif hint := _metadata_hint(md, "task_type", "ymera_task_type"):
        task_type = policy.task_type_of(hint[0], source=f"metadata[{hint[1]!r}]")
        reasons.append(f"hint: task_type={task_type} (metadata {hint[1]})")

    agent_name = request.agent_name
    agent_source = "request"
    if not agent_name and (ahint := _metadata_hint(md, "agent_name", "ymera_agent_name")):
        agent_name, agent_source = ahint[0], f"metadata {ahint[1]}"
    match = _agent(policy, agent_name)
    bias = 0.0
    if agent_name and match is not None:
        bias = policy.agent_classes[match.agent_class].complexity_bias
        reasons.append(
            f"agent {agent_name!r} ({agent_source}) → class {match.agent_class}"
            + (f", usually {match.task_type}" if match.task_type else "")
        )
    elif agent_name:
        reasons.append(f"agent {agent_name!r} ({agent_source}) matches no agent class")

    feats, why, code_lines, items, cues = _task_scores(system, user, tokens, policy)
    stems = word_stems(user)
    if task_type is None:
        _add_agent_prior(feats, why, match, policy)
        _add_words(feats, why, task_words(user, stems), _tm.load_task_model().weights)
        task_type, reason = _tm.decide(feats, why, PRIOR)
        reasons.append(reason)

    x = _complexity_features(user, task_type, tokens, code_lines, items, bias, cues)
    _add_words(x, None, stems, _cx.load_weights().weights)
    complexity, cscore, notes = _cx.decide(x, tokens)
    reasons.append(
        f"complexity {complexity} (score {cscore:+.1f}"
        + (f": {'; '.join(notes)}" if notes else "")
        + ")"
    )
    reasons.append(f"~{tokens} prompt tokens")
    return Profile(
        task_type=task_type,
        complexity=complexity,
        estimated_tokens=tokens,
        reasons=tuple(reasons),
        agent_name=agent_name,
    )
