"""The learner: which model works best for each agent and task type, from what actually happened.

Evidence is every `Execution` the engine records (agent, task type, model, success,
latency, tokens) plus quality scores attached later by `feedback`. It lives in a
`LearningStore` (SQLite in the data directory, or Redis shared by many workers); the learner
keeps an aggregate in memory, so `recommend` is synchronous and pure (the router calls it on
every request) and `refresh` folds in what other processes recorded.

Scoring starts from the original plan's rules (§7):

- no recommendation until an (agent, task type) has `min_executions` (10) executions: the
  policy's defaults decide; an agent without enough evidence of its own borrows the evidence
  of every agent for that task type ("pooled") once that reaches the bar;
- a model is ranked only with `min_model_executions` (5) executions;
- score = 0.4 · success rate + 0.3 · speed + 0.3 · quality, where speed is the fastest
  candidate's mean latency over this model's (1 for the fastest; the plan's `1/(latency +
  0.1)` is unbounded and would drown the other terms), latency counts successful calls, and
  quality is the mean feedback score. Each mean is shrunk towards the candidates' pooled mean
  by two pseudo-executions, so a model without feedback yet counts as average (0.5 when no
  model has any) and one unlucky call cannot swing a thinly-tried model's rank.

and goes further:

- **exploration** (discounted Thompson sampling): each recommendation is a Thompson draw,
  with every candidate's success and quality sampled from Beta posteriors and its latency
  from a log-normal that narrows with evidence, priors centred on the candidates' pooled
  means; so a model whose evidence is thin or stale keeps being tried now and then, and a
  better model that arrives later is found within a few calls. On top of that, with
  probability `exploration_rate`, a candidate is tried regardless of its posterior: the
  least-tried one short of `min_model_executions` first (so it reaches the ranking bar), else
  any one at random. `exploration_rate=0` turns exploration off altogether: the best mean,
  the original plan's rule;
- **a quality floor**: speed does not buy back answers that are not good enough. A model
  whose mean quality is under `quality_floor` (0.5; the setting `YMERA_QUALITY_FLOOR`) while
  another candidate's is at or above it scores no speed term. Without it, a small fast model
  whose answers score low (0.4) ties with a large one whose answers score well (0.85) under
  the plan's weights, and the router keeps sending that agent's work to the small model; with
  it, low scores on the small model (feedback, or failures, which score 0) shift the agent ×
  task to the large one;
- **decay**: evidence loses half its weight every `half_life` seconds (the injected clock),
  so means follow a model that got worse, and stale evidence widens the posteriors (more
  exploration of what has not been seen lately). The thresholds above count executions
  without decay.

Training data in the original plan's `groq_training_data.json` shape can be exported and
imported (`export_training_data`, `import_training_data`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .clock import Clock
from .errors import ConfigurationError, InvalidRequestError
from .storage import resilient_store_from_url
from .storage.learning_base import (
    LearningEvent,
    LearningStore,
    check_execution_id,
    check_quality,
    execution_from_dict,
)
from .types import Execution

if TYPE_CHECKING:
    from .config import YmeraSettings

__all__ = ["Learner", "Recommendation"]

logger = logging.getLogger(__name__)

W_SUCCESS, W_SPEED, W_QUALITY = 0.4, 0.3, 0.3
"""The original plan's score weights."""

_EVENT_PAGE = 1000
_PRIOR = 2.0
"""Pseudo-executions of the pooled mean added to each model's means when ranking."""


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The learner's pick for an (agent, task type) among some candidate models.

    Attributes:
        model: The recommended model.
        score: Its score (the sampled score when exploring).
        executions: Executions of that model in the evidence used.
        agent_name: The agent whose evidence decided (`"*"`: every agent's, pooled).
        task_type: The task type.
        explored: Whether the pick differs from the best mean (a Thompson draw or a forced
            try chose another model, or no candidate is ranked yet).
        scores: Mean score of every ranked candidate.
    """

    model: str
    score: float
    executions: int
    agent_name: str
    task_type: str
    explored: bool = False
    scores: Mapping[str, float] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        """One line for a plan's reasons: `learner: X (score 0.81, n=42)`."""
        who = "all agents" if self.agent_name == "*" else self.agent_name
        if self.explored:
            return (
                f"learner (exploring): {self.model} (n={self.executions}, evidence of {who})"
            )
        return (
            f"learner: {self.model} (score {self.score:.2f}, n={self.executions}, "
            f"evidence of {who})"
        )


class _Stats:
    """One model's evidence in one cell: decayed sums (for scores) and raw totals (for the
    thresholds and the export)."""

    __slots__ = (
        "lat",
        "lat_all",
        "lat_n",
        "n",
        "ok",
        "q",
        "q_n",
        "raw_lat",
        "raw_n",
        "raw_ok",
        "raw_q",
        "raw_q_n",
        "raw_tokens",
        "t_ref",
    )

    def __init__(self, t_ref: float) -> None:
        self.t_ref = t_ref
        self.n = self.ok = self.lat = self.lat_n = self.lat_all = self.q = self.q_n = 0.0
        self.raw_n = self.raw_ok = 0
        self.raw_lat = self.raw_tokens = self.raw_q = self.raw_q_n = 0.0

    def weight(self, t: float, half_life: float) -> float:
        """Move the reference time forward to `t` if later; the weight of evidence from `t`."""
        if t > self.t_ref:
            f = math.pow(0.5, (t - self.t_ref) / half_life)
            self.n *= f
            self.ok *= f
            self.lat *= f
            self.lat_n *= f
            self.lat_all *= f
            self.q *= f
            self.q_n *= f
            self.t_ref = t
            return 1.0
        return math.pow(0.5, (self.t_ref - t) / half_life)

    def add(
        self,
        t: float,
        half_life: float,
        *,
        count: int,
        successes: int,
        latency_ms_sum: float,
        ok_latency_ms_sum: float,
        tokens_sum: float,
        quality_sum: float,
        quality_n: float,
    ) -> None:
        w = self.weight(t, half_life)
        self.n += w * count
        self.ok += w * successes
        self.lat += w * ok_latency_ms_sum
        self.lat_n += w * successes
        self.lat_all += w * latency_ms_sum
        self.q += w * quality_sum
        self.q_n += w * quality_n
        self.raw_n += count
        self.raw_ok += successes
        self.raw_lat += latency_ms_sum
        self.raw_tokens += tokens_sum
        self.raw_q += quality_sum
        self.raw_q_n += quality_n

    def add_quality(
        self, t: float, half_life: float, quality: float, previous: float | None
    ) -> None:
        w = self.weight(t, half_life)
        self.q += w * (quality - (previous or 0.0))
        self.raw_q += quality - (previous or 0.0)
        if previous is None:
            self.q_n += w
            self.raw_q_n += 1

    # -- reading -----------------------------------------------------------------------------

    def success_rate(self) -> float:
        return float(self.ok / self.n) if self.n > 0 else 0.0

    def latency(self) -> float | None:
        """Mean latency (ms) of successful calls, else of all calls; `None` without any."""
        if self.lat_n > 1e-12:
            return self.lat / self.lat_n
        if self.n > 1e-12:
            return self.lat_all / self.n
        return None

    def quality(self) -> float:
        return self.q / self.q_n if self.q_n > 1e-12 else 0.5


Cell = dict[str, _Stats]


class Learner:
    """Learns the best model per (agent, task type) from recorded executions.

    Args:
        store: Where evidence is shared (see `storage.learning_base.LearningStore`).
        exploration_rate: Probability of a forced try on top of Thompson sampling; 0 turns
            exploration off (always the best mean).
        min_executions: Executions an (agent, task type) needs before any recommendation.
        min_model_executions: Executions a model needs before it is ranked.
        half_life: Seconds after which evidence counts half.
        clock: Wall clock (seconds since the epoch).
        rng: Random source for exploration (seed it for reproducible tests).
        refresh_interval: `record` folds in other processes' evidence at most this often.
        retention: Seconds of evidence kept in the store (default: 10 half-lives, after
            which evidence weighs under 0.1 %).
        quality_floor: Mean quality under which a model's speed stops counting, when another
            candidate reaches it (0 turns the floor off: the plan's score as written).

    Raises:
        ConfigurationError: A parameter is out of range.
    """

    def __init__(
        self,
        store: LearningStore,
        *,
        exploration_rate: float = 0.1,
        min_executions: int = 10,
        min_model_executions: int = 5,
        half_life: float = 7 * 86400,
        clock: Clock = time.time,
        rng: random.Random | None = None,
        refresh_interval: float = 30.0,
        retention: float | None = None,
        quality_floor: float = 0.5,
    ) -> None:
        if not 0 <= exploration_rate <= 1:
            raise ConfigurationError(
                f"exploration_rate must be in [0, 1], got {exploration_rate!r}",
                setting="YMERA_EXPLORATION_RATE",
            )
        if min_executions < 1 or min_model_executions < 1:
            raise ConfigurationError("min_executions and min_model_executions must be >= 1")
        if not half_life > 0:
            raise ConfigurationError(f"half_life must be positive, got {half_life!r}")
        if not 0 <= quality_floor <= 1:
            raise ConfigurationError(f"quality_floor must be in [0, 1], got {quality_floor!r}")
        self.quality_floor = quality_floor
        self.store = store
        self.exploration_rate = exploration_rate
        self.min_executions = min_executions
        self.min_model_executions = min_model_executions
        self.half_life = float(half_life)
        self.clock = clock
        self.rng = rng or random.Random()
        self.refresh_interval = refresh_interval
        self.retention = retention if retention is not None else 10 * self.half_life
        self.origin = uuid.uuid4().hex
        self._cells: dict[tuple[str, str], Cell] = {}
        self._pooled: dict[str, Cell] = {}
        self._lock = threading.Lock()
        self._cursor = 0
        self._last_refresh = -math.inf
        self._last_prune = -math.inf
        self._refreshing: asyncio.Lock | None = None

    @classmethod
    def from_settings(cls, settings: YmeraSettings, *, clock: Clock = time.time) -> Learner:
        """The learner for a configuration: Redis when `redis_url` is set (buffered locally
        while Redis is unreachable, see `storage.resilient`), else SQLite at
        `data_dir/learning.db`; the settings' namespace, exploration rate and quality floor."""
        if settings.redis_url:
            url = settings.redis_url
        else:
            url = f"sqlite:///{Path(settings.data_dir).expanduser().resolve() / 'learning.db'}"
        store = resilient_store_from_url(
            "learning",
            url,
            namespace=settings.namespace,
            clock=clock,
            remember=settings.learning_recent_max,
        )
        return cls(
            store,
            exploration_rate=settings.exploration_rate,
            quality_floor=settings.quality_floor,
            clock=clock,
        )


    def __repr__(self) -> str:
        with self._lock:
            n = sum(s.raw_n for cell in self._cells.values() for s in cell.values())
            cells = len(self._cells)
        return (
            f"<Learner {cells} (agent, task) cells, {n} executions, "
            f"exploration {self.exploration_rate:.0%}, half-life {self.half_life / 86400:g} d>"
        )

    # -- evidence ----------------------------------------------------------------------------

    async def record(self, execution: Execution) -> None:
        """Record one execution: in memory now, in the store, then fold in others' evidence
        when `refresh_interval` has passed.

        Raises:
            InvalidRequestError: The execution id or quality is unusable.
            StorageError: The store failed (the in-memory aggregate already has it).
        """
        check_execution_id(execution.execution_id)
        if execution.quality is not None:
            check_quality(execution.quality)
        self._apply_execution(execution)
        await self.store.record(execution, origin=self.origin)
        if self.clock() - self._last_refresh >= self.refresh_interval:
            try:
                await self.refresh()
            except Exception as exc:  # evidence from others can wait for the next record
                logger.warning("learning refresh failed: %s", exc)

    async def feedback(self, execution_id: str, quality: float) -> None:
        """Attach a quality score in [0, 1] to an earlier execution (replacing an earlier score).

        Raises:
            InvalidRequestError: `quality` is out of range, or no execution has that id.
            StorageError: The store failed.
        """
        q = check_quality(quality)
        check_execution_id(execution_id)
        before = await self.store.feedback(
            execution_id, q, timestamp=self.clock(), origin=self.origin
        )
        if before is None:
            raise InvalidRequestError(
                f"No recorded execution {execution_id!r} to attach feedback to "
                "(unknown id, or older than the learning store keeps)."
            )
        self._apply_feedback(before, q, before.quality)

    async def refresh(self) -> None:
        """Fold in the evidence other processes logged since the last refresh; prune old
        evidence about once a day."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            while True:
                events = await self.store.events(self._cursor, limit=_EVENT_PAGE)
                if events and events[0].seq <= self._cursor:
                    # The log started over (its store lost its data): so do positions in it.
                    self._cursor = 0
                for ev in events:
                    if ev.origin != self.origin:
                        self._apply_event(ev)
                    self._cursor = max(self._cursor, ev.seq)
                if len(events) < _EVENT_PAGE:
                    break
            now = self.clock()
            self._last_refresh = now
            if now - self._last_prune >= 86400:
                self._last_prune = now
                await self.store.prune(now - self.retention)

    # -- aggregate updates -------------------------------------------------------------------

    def _cells_for(self, agent: str, task: str) -> list[Cell]:
        cell = self._cells.setdefault((agent, task), {})
        pooled = self._pooled.setdefault(task, {})
        return [cell, pooled]

    def _apply_execution(self, e: Execution) -> None:
        q = e.quality
        with self._lock:
            for cell in self._cells_for(e.agent_name or "*", e.task_type):
                stats = cell.get(e.model)
                if stats is None:
                    stats = cell[e.model] = _Stats(e.timestamp)
                stats.add(
                    e.timestamp,
                    self.half_life,
                    count=1,
                    successes=1 if e.success else 0,
                    latency_ms_sum=e.latency_ms,
                    ok_latency_ms_sum=e.latency_ms if e.success else 0.0,
                    tokens_sum=e.tokens,
                    quality_sum=q or 0.0,
                    quality_n=0.0 if q is None else 1.0,
                )

    def _apply_feedback(self, e: Execution, quality: float, previous: float | None) -> None:
        with self._lock:
            for cell in self._cells_for(e.agent_name or "*", e.task_type):
                stats = cell.get(e.model)
                if stats is None:
                    stats = cell[e.model] = _Stats(e.timestamp)
                stats.add_quality(e.timestamp, self.half_life, quality, previous)

    def _apply_summary(self, s: Mapping[str, Any], t: float) -> None:
        n = int(s["executions"])
        ok = int(s["successes"])
        lat = float(s["avg_latency_ms"])
        qn = float(s.get("quality_samples") or 0)
        with self._lock:
            for cell in self._cells_for(str(s["agent_name"]), str(s["task_type"])):
                model = str(s["model"])
                stats = cell.get(model)
                if stats is None:
                    stats = cell[model] = _Stats(t)
                stats.add(
                    t,
                    self.half_life,
                    count=n,
                    successes=ok,
                    latency_ms_sum=lat * n,
                    ok_latency_ms_sum=lat * ok,
                    tokens_sum=float(s.get("avg_tokens") or 0) * n,
                    quality_sum=float(s.get("quality_score") or 0) * qn,
                    quality_n=qn,
                )

    def _apply_event(self, ev: LearningEvent) -> None:
        try:
            if ev.kind == "execution":
                self._apply_execution(execution_from_dict(ev.data))
            elif ev.kind == "feedback":
                before = execution_from_dict(ev.data["execution"])
                prev = ev.data.get("previous")
                self._apply_feedback(
                    before, float(ev.data["quality"]), None if prev is None else float(prev)
                )
            elif ev.kind == "summary":
                self._apply_summary(ev.data, ev.timestamp)
        except (KeyError, TypeError, ValueError) as exc:
            # Another version or a hand-edited store: skip the entry, keep learning.
            logger.warning("skipping malformed learning event %s: %s", ev.seq, exc)

    # -- recommending ------------------------------------------------------------------------

    def evidence(self, agent_name: str | None, task_type: str) -> int:
        """Executions recorded for (agent, task type); `None` agent: every agent's."""
        with self._lock:
            cell = (
                self._pooled.get(task_type)
                if agent_name is None
                else self._cells.get((agent_name, task_type))
            )
            return sum(s.raw_n for s in cell.values()) if cell else 0

    def _cell(self, agent_name: str | None, task_type: str) -> tuple[str, Cell] | None:
        if agent_name is not None:
            cell = self._cells.get((agent_name, task_type))
            if cell and sum(s.raw_n for s in cell.values()) >= self.min_executions:
                return agent_name, cell
        pooled = self._pooled.get(task_type)
        if pooled and sum(s.raw_n for s in pooled.values()) >= self.min_executions:
            return "*", pooled
        return None

    def _scores(self, stats: Mapping[str, _Stats], now: float) -> dict[str, float]:
        """Mean score per model.

        Each model's evidence is decayed to `now`, then every mean is shrunk towards the
        candidates' pooled mean by `_PRIOR` pseudo-executions. So a model tried rarely (a
        few recent calls of weight) cannot swing its rank on one unlucky call, and a model
        not tried for a while drifts back towards the average instead of keeping the mean
        it had when it was last used.
        """
        dec: dict[str, tuple[float, float, float, float, float, float, float]] = {}
        for m, s in stats.items():
            f = math.pow(0.5, max(0.0, now - s.t_ref) / self.half_life)
            dec[m] = (s.n * f, s.ok * f, s.q * f, s.q_n * f, s.lat * f, s.lat_n * f,
                      s.lat_all * f)
        n = sum(d[0] for d in dec.values())
        ok = sum(d[1] for d in dec.values())
        q_n = sum(d[3] for d in dec.values())
        lat_n = sum(d[5] for d in dec.values())
        p_bar = ok / n if n > 1e-12 else 0.5
        q_bar = sum(d[2] for d in dec.values()) / q_n if q_n > 1e-12 else 0.5
        l_bar = sum(d[4] for d in dec.values()) / lat_n if lat_n > 1e-12 else None
        k = _PRIOR
        latencies: dict[str, float | None] = {}
        for m, (dn, _, _, _, lat, ln, lat_all) in dec.items():
            if l_bar is not None:
                latencies[m] = (lat + k * l_bar) / (ln + k)
            elif dn > 1e-12:
                latencies[m] = lat_all / dn
            else:
                latencies[m] = None
        known = [v for v in latencies.values() if v is not None]
        fastest = max(min(known), 1e-3) if known else None
        qualities = {m: (d[2] + k * q_bar) / (d[3] + k) for m, d in dec.items()}
        floored = self._below_floor(qualities)
        out: dict[str, float] = {}
        for m, (dn, dok, _, _, _, _, _) in dec.items():
            mean_lat = latencies[m]
            speed = (
                0.5 if mean_lat is None or fastest is None else fastest / max(mean_lat, 1e-3)
            )
            if m in floored:
                speed = 0.0
            success = (dok + k * p_bar) / (dn + k)
            out[m] = W_SUCCESS * success + W_SPEED * speed + W_QUALITY * qualities[m]
        return out

    def _below_floor(self, qualities: Mapping[str, float]) -> set[str]:
        """Models whose quality is under the floor while another candidate's reaches it."""
        floor = self.quality_floor
        if floor <= 0 or not any(q >= floor for q in qualities.values()):
            return set()
        return {m for m, q in qualities.items() if q < floor}

    def _sample(self, candidates: Sequence[str], cell: Cell, now: float) -> tuple[str, float]:
        """A Thompson draw: each candidate's score sampled from its posterior.

        Priors are centred on the candidates' pooled means with `_PRIOR` pseudo-executions,
        not on 0.5: a model whose evidence has decayed away then draws around the average of
        its peers, and keeps a real chance to be tried again.
        """
        rng = self.rng
        known = {m: cell[m] for m in candidates if m in cell}
        n = sum(s.n for s in known.values())
        ok = sum(s.ok for s in known.values())
        q_n = sum(s.q_n for s in known.values())
        lat_n = sum(s.lat_n for s in known.values())
        p_bar = ok / n if n > 1e-12 else 0.5
        q_bar = sum(s.q for s in known.values()) / q_n if q_n > 1e-12 else 0.5
        l_bar = sum(s.lat for s in known.values()) / lat_n if lat_n > 1e-12 else None
        k = _PRIOR
        eps = 1e-3
        drawn: dict[str, tuple[float, float, float | None]] = {}
        means: dict[str, float] = {}
        for m in candidates:
            s = known.get(m)
            f = math.pow(0.5, max(0.0, now - s.t_ref) / self.half_life) if s else 0.0
            sn, sok, sq, sqn, sln = (
                (s.n * f, s.ok * f, s.q * f, s.q_n * f, s.lat_n * f) if s else (0, 0, 0, 0, 0)
            )
            p = rng.betavariate(eps + k * p_bar + sok, eps + k * (1 - p_bar) + max(0.0, sn - sok))
            quality = rng.betavariate(
                eps + k * q_bar + sq, eps + k * (1 - q_bar) + max(0.0, sqn - sq)
            )
            means[m] = (sq + k * q_bar) / (sqn + k)
            lat: float | None = None
            if s is not None and s.lat_n > 1e-12 and l_bar is not None:
                mean = (s.lat + k * l_bar) / (s.lat_n + k)
                lat = mean * math.exp(rng.gauss(0.0, 0.5 / math.sqrt(1.0 + sln)))
            elif l_bar is not None:
                lat = l_bar * math.exp(rng.gauss(0.0, 0.5))
            drawn[m] = (p, quality, lat)
        lats = [d[2] for d in drawn.values() if d[2] is not None]
        fastest = max(min(lats), 1e-3) if lats else None
        # The floor reads the posterior means, not the draws: a draw under it now and then
        # must not take a good model's speed away.
        floored = self._below_floor(means)
        best, best_score = candidates[0], -1.0
        for m in candidates:
            p, quality, lat = drawn[m]
            speed = rng.random() if lat is None or fastest is None else fastest / max(lat, 1e-3)
            if m in floored:
                speed = 0.0
            score = W_SUCCESS * p + W_SPEED * speed + W_QUALITY * quality
            if score > best_score:
                best, best_score = m, score
        return best, best_score

    def recommend(
        self, agent_name: str | None, task_type: str, candidates: Sequence[str]
    ) -> Recommendation | None:
        """The model to try first among `candidates`, or `None` while evidence is short.

        Sync and without I/O: it reads the in-memory aggregate (see `refresh`).

        Args:
            agent_name: The agent (`None`: every agent's evidence).
            task_type: The task type.
            candidates: Models that can serve the request, in the policy's order (ties go
                to the earlier one).

        Returns:
            A recommendation, or `None` until the (agent, task type), or every agent's
            evidence for the task type, has `min_executions` executions, while no candidate
            has any evidence, and (with exploration off) until some candidate has
            `min_model_executions`.
        """
        if not candidates:
            return None
        with self._lock:
            found = self._cell(agent_name, task_type)
            if found is None:
                return None
            who, cell = found
            if not any(m in cell for m in candidates):
                # Evidence about other models only: the policy's order knows more than a draw.
                return None
            now = self.clock()
            ranked = {
                m: cell[m]
                for m in candidates
                if m in cell and cell[m].raw_n >= self.min_model_executions
            }
            scores = self._scores(ranked, now) if ranked else {}
            greedy = max(ranked, key=lambda m: scores[m]) if ranked else None  # ties: policy order
            if self.exploration_rate <= 0:
                # The original plan's rule: the best mean among ranked models, nothing else.
                if greedy is None:
                    return None
                model, score = greedy, scores[greedy]
            elif self.rng.random() < self.exploration_rate:
                # A forced try: the least-tried candidate short of the ranking bar (a model that
                # arrived later), else any candidate, so none is starved by a confident posterior.
                short = [
                    m for m in candidates
                    if (cell[m].raw_n if m in cell else 0) < self.min_model_executions
                ]
                if short:
                    model = min(short, key=lambda m: cell[m].raw_n if m in cell else 0)
                else:
                    model = self.rng.choice(list(candidates))
                score = scores.get(model, 0.0)
            else:
                model, score = self._sample(candidates, cell, now)
            s = cell.get(model)
            return Recommendation(
                model=model,
                score=score,
                executions=s.raw_n if s else 0,
                agent_name=who,
                task_type=task_type,
                explored=model != greedy,
                scores=scores,
            )

    def top_recommendations(self) -> dict[str, dict[str, Any]]:
        """The best model (by mean score) per `agent:task`, for the monitoring snapshot."""
        out: dict[str, dict[str, Any]] = {}
        now = self.clock()
        with self._lock:
            for (agent, task), cell in sorted(self._cells.items()):
                total = sum(s.raw_n for s in cell.values())
                if total < self.min_executions:
                    continue
                ranked = {m: s for m, s in cell.items() if s.raw_n >= self.min_model_executions}
                if not ranked:
                    continue
                scores = self._scores(ranked, now)
                best = max(ranked, key=lambda m: scores[m])
                out[f"{agent}:{task}"] = {
                    "model": best,
                    "score": round(scores[best], 4),
                    "executions": ranked[best].raw_n,
                    "cell_executions": total,
                }
        return out

    # -- training data (original plan §7.2) --------------------------------------------------

    async def export_training_data(self) -> dict[str, Any]:
        """Evidence in the original plan's `groq_training_data.json` shape.

        Keys are `"agent:task_type"`; latencies are seconds (as in the plan); counts are
        undecayed totals of the evidence the store still keeps. Each model also carries
        `quality_samples` and `avg_tokens` (extra keys, so a re-import knows how many
        quality scores the mean stands for).
        """
        if self._last_refresh == -math.inf:
            await self.refresh()
        out: dict[str, Any] = {}
        with self._lock:
            for (agent, task), cell in sorted(self._cells.items()):
                n = sum(s.raw_n for s in cell.values())
                if n == 0:
                    continue
                ok = sum(s.raw_ok for s in cell.values())
                qn = sum(s.raw_q_n for s in cell.values())
                out[f"{agent}:{task}"] = {
                    "executions": n,
                    "successes": ok,
                    "failures": n - ok,
                    "avg_latency": round(sum(s.raw_lat for s in cell.values()) / n / 1000, 6),
                    "avg_tokens": round(sum(s.raw_tokens for s in cell.values()) / n, 3),
                    "quality_score": (
                        round(sum(s.raw_q for s in cell.values()) / qn, 6) if qn else 0.0
                    ),
                    "model_performance": {
                        m: {
                            "executions": s.raw_n,
                            "successes": s.raw_ok,
                            "avg_latency": round(s.raw_lat / s.raw_n / 1000, 6),
                            "quality_score": round(s.raw_q / s.raw_q_n, 6) if s.raw_q_n else 0.0,
                            "quality_samples": round(s.raw_q_n, 6),
                            "avg_tokens": round(s.raw_tokens / s.raw_n, 3),
                        }
                        for m, s in sorted(cell.items())
                        if s.raw_n > 0
                    },
                }
        return out

    async def import_training_data(self, data: Mapping[str, Any]) -> int:
        """Import the original plan's `groq_training_data.json` (or this package's export).

        Each `model_performance` entry becomes one summary of that many executions, dated
        now. Model names are kept as given: evidence about a retired model says nothing
        about its successor, so it is kept (and exported again) but never recommended.
        Without `quality_samples`, a `quality_score` above 0 is taken to cover every
        execution and 0 to mean "no quality known" (the plan records 0 by default).

        Returns:
            The number of executions imported.

        Raises:
            InvalidRequestError: The data is not in that shape (naming the key and field);
                nothing is imported then.
        """
        summaries = _parse_training_data(data)
        now = self.clock()
        total = 0
        for s in summaries:
            await self.store.add_summary(s, timestamp=now, origin=self.origin)
            self._apply_summary(s, now)
            total += int(s["executions"])
        return total

    async def aclose(self) -> None:
        """Close the store."""
        await self.store.aclose()


def _parse_training_data(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    if not isinstance(data, Mapping):
        raise InvalidRequestError("training data must be a JSON object of 'agent:task' entries")
    out: list[dict[str, Any]] = []
    for key, entry in data.items():
        if not isinstance(key, str) or ":" not in key:
            raise InvalidRequestError(f"training data key {key!r} is not 'agent:task_type'")
        agent, task = key.rsplit(":", 1)
        if not agent or not task:
            raise InvalidRequestError(f"training data key {key!r} is not 'agent:task_type'")
        if not isinstance(entry, Mapping):
            raise InvalidRequestError(f"training data {key!r}: expected an object")
        perf = entry.get("model_performance", {})
        if not isinstance(perf, Mapping):
            raise InvalidRequestError(
                f"training data {key!r}.model_performance: expected an object"
            )
        fallback_tokens = entry.get("avg_tokens", 0)
        for model, p in perf.items():
            where = f"training data {key!r}.model_performance.{model}"
            if not isinstance(p, Mapping):
                raise InvalidRequestError(f"{where}: expected an object")
            try:
                n = int(p["executions"])
                ok = int(p.get("successes", 0))
                lat = float(p.get("avg_latency", 0.0))
                quality = float(p.get("quality_score", 0.0))
                tokens = float(p.get("avg_tokens", fallback_tokens) or 0.0)
                qs = p.get("quality_samples")
                samples = float(qs) if qs is not None else (float(n) if quality > 0 else 0.0)
            except KeyError as exc:
                raise InvalidRequestError(f"{where}: missing {exc.args[0]!r}") from None
            except (TypeError, ValueError) as exc:
                raise InvalidRequestError(f"{where}: {exc}") from None
            if n < 0 or not 0 <= ok <= n:
                raise InvalidRequestError(f"{where}: successes must be between 0 and executions")
            if lat < 0 or not 0 <= quality <= 1 or not 0 <= samples <= n:
                raise InvalidRequestError(
                    f"{where}: avg_latency must be >= 0, quality_score in [0, 1], "
                    "quality_samples between 0 and executions"
                )
            if n == 0:
                continue
            out.append(
                {
                    "agent_name": agent,
                    "task_type": task,
                    "model": str(model),
                    "executions": n,
                    "successes": ok,
                    "avg_latency_ms": lat * 1000,
                    "avg_tokens": tokens,
                    "quality_score": quality,
                    "quality_samples": samples,
                }
            )
    return out
