"""Fit documents into a model's context window (the original plan's context optimiser, §5.4).

The plan's rule: take whole documents while they fit the window (with a 90 % safety margin);
when one does not, switch to the longest-context model; when even that is too small, stop.
`fit_documents` keeps the first two steps and replaces "stop" with chunking, so nothing is
silently left out: the result is a list of *batches*, each fitting one call. The first batch
holds the leading whole documents; a document larger than a whole batch is cut at line
boundaries (or inside a line that is itself too long) into parts. One batch means "one call
sees everything"; several mean map-reduce over the batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..catalog import Catalog, ModelInfo
from ..errors import ContextWindowError, InvalidRequestError
from ..tokens import estimate_text_tokens

__all__ = ["ContextFit", "Document", "DocumentPart", "fit_documents"]

TokenCounter = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class Document:
    """A named text (a file, a page, a ticket)."""

    name: str
    text: str


@dataclass(frozen=True, slots=True)
class DocumentPart:
    """A whole document (`parts == 1`) or part `part` of `parts` of one."""

    name: str
    text: str
    tokens: int
    part: int = 1
    parts: int = 1

    @property
    def whole(self) -> bool:
        return self.parts == 1


@dataclass(frozen=True, slots=True)
class ContextFit:
    """Where the documents go.

    Attributes:
        model: The model the batches are sized for.
        budget: Document tokens one call may carry on that model.
        batches: Calls to make, each a tuple of documents or parts that fits `budget`.
        switched_from: The model asked for, when the fit moved to a longer-context model.
        reasons: What happened, in order.
    """

    model: str
    budget: int
    batches: tuple[tuple[DocumentPart, ...], ...]
    switched_from: str | None = None
    reasons: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        """Everything fits one call, every document whole."""
        return len(self.batches) <= 1 and all(p.whole for b in self.batches for p in b)

    @property
    def chunked(self) -> tuple[str, ...]:
        """Names of the documents that had to be split."""
        names: list[str] = []
        for b in self.batches:
            for p in b:
                if not p.whole and p.name not in names:
                    names.append(p.name)
        return tuple(names)

    @property
    def tokens(self) -> tuple[int, ...]:
        """Tokens per batch."""
        return tuple(sum(p.tokens for p in b) for b in self.batches)


def _docs(documents: Iterable[str | tuple[str, str] | Document]) -> list[Document]:
    out: list[Document] = []
    for i, d in enumerate(documents):
        if isinstance(d, Document):
            out.append(d)
        elif isinstance(d, str):
            out.append(Document(f"document {i + 1}", d))
        elif isinstance(d, tuple) and len(d) == 2 and all(isinstance(x, str) for x in d):
            out.append(Document(d[0], d[1]))
        else:
            raise InvalidRequestError(
                f"Document {i} must be a string, a (name, text) pair or a Document"
            )
    return out


def _budget(model: ModelInfo, margin: float, reserved: int, completion: int) -> int:
    return int(model.context_window * margin) - reserved - min(
        completion, model.max_completion_tokens
    )


def _longest(catalog: Catalog) -> ModelInfo | None:
    served = catalog.served()
    if not served:
        return None
    return max(served, key=lambda m: (m.context_window, m.quality_tier))


def _split(text: str, limit: int, count: TokenCounter) -> list[tuple[str, int]]:
    """Cut `text` into pieces of at most `limit` tokens, at line ends where possible."""
    pieces: list[tuple[str, int]] = []
    buf: list[str] = []
    used = 0
    for line in text.splitlines(keepends=True):
        n = count(line)
        if n > limit:
            if buf:
                pieces.append(("".join(buf), used))
                buf, used = [], 0
            pieces.extend(_split_line(line, limit, count))
            continue
        if used + n > limit and buf:
            pieces.append(("".join(buf), used))
            buf, used = [], 0
        buf.append(line)
        used += n
    if buf:
        pieces.append(("".join(buf), used))
    return pieces


def _split_line(line: str, limit: int, count: TokenCounter) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    rest = line
    while rest:
        n = count(rest)
        if n <= limit:
            out.append((rest, n))
            break
        # Characters per token of this text, then shrink until the piece fits.
        size = max(1, int(len(rest) * limit / n))
        while size > 1 and count(rest[:size]) > limit:
            size = max(1, int(size * 0.9))
        out.append((rest[:size], count(rest[:size])))
        rest = rest[size:]
    return out


def _pack(
    docs: list[tuple[Document, int]], budget: int, count: TokenCounter
) -> list[list[DocumentPart]]:
    batches: list[list[DocumentPart]] = [[]]
    room = budget
    for doc, n in docs:
        if n <= room:
            batches[-1].append(DocumentPart(doc.name, doc.text, n))
            room -= n
            continue
        if n <= budget:
            batches.append([DocumentPart(doc.name, doc.text, n)])
            room = budget - n
            continue
        # Larger than a whole call: fill what is left of this batch, then full batches.
        pieces: list[tuple[str, int]] = []
        text = doc.text
        if room >= budget // 10:
            head = _split(text, room, count)
            pieces.append(head[0])
            text = text[len(head[0][0]):]
        pieces.extend(_split(text, budget, count))
        total = len(pieces)
        for i, (piece, k) in enumerate(pieces, start=1):
            part = DocumentPart(doc.name, piece, k, part=i, parts=total)
            if k <= room:
                batches[-1].append(part)
                room -= k
            else:
                batches.append([part])
                room = budget - k
    return [b for b in batches if b]


def fit_documents(
    documents: Iterable[str | tuple[str, str] | Document],
    model: str,
    catalog: Catalog,
    *,
    margin: float = 0.9,
    reserved_tokens: int = 0,
    completion_tokens: int = 1024,
    count: TokenCounter = estimate_text_tokens,
) -> ContextFit:
    """Fit documents into `model`'s window, switching to the longest-context model, then chunking.

    Args:
        documents: Texts, `(name, text)` pairs or `Document`s, in the order they matter.
        model: The model asked for (an id or alias; a shut-down one becomes its successor).
        catalog: The catalog (windows, lifecycle).
        margin: Share of the window that may be filled.
        reserved_tokens: Tokens already taken by the instructions and other messages.
        completion_tokens: Tokens kept for the answer (capped at the model's limit).
        count: Token counter (default: the package's estimate).

    Returns:
        The fit; `fit.fits` is true when one call takes every document whole.

    Raises:
        ContextWindowError: The instructions and the completion alone leave no room.
        UnknownModelError / ModelRetiredError: `model` cannot be resolved.
    """
    resolved = catalog.resolve(model).model
    docs = _docs(documents)
    sized = [(d, count(d.text)) for d in docs]
    total = sum(n for _, n in sized)
    reasons: list[str] = []
    target = resolved
    budget = _budget(target, margin, reserved_tokens, completion_tokens)
    switched: str | None = None
    if total > budget:
        longest = _longest(catalog)
        if longest is not None and longest.context_window > target.context_window:
            reasons.append(
                f"{total} document tokens exceed {target.id}'s budget of {budget}; "
                f"switched to {longest.id} ({longest.context_window} context)"
            )
            switched = target.id
            target = longest
            budget = _budget(target, margin, reserved_tokens, completion_tokens)
    if budget <= 0:
        raise ContextWindowError(
            f"{reserved_tokens} reserved + {completion_tokens} completion tokens leave no room "
            f"for documents in {target.id}'s window of {target.context_window} "
            f"({margin:.0%} usable)",
            required_tokens=reserved_tokens + completion_tokens,
            largest_window=target.context_window,
        )
    if total <= budget:
        reasons.append(f"all {len(docs)} documents fit {target.id} whole ({total}/{budget} tokens)")
        batch = tuple(DocumentPart(d.name, d.text, n) for d, n in sized)
        return ContextFit(target.id, budget, (batch,) if batch else (), switched, tuple(reasons))
    batches = _pack(sized, budget, count)
    fit = ContextFit(target.id, budget, tuple(tuple(b) for b in batches), switched, ())
    reasons.append(
        f"{total} document tokens exceed the largest budget ({budget} on {target.id}): "
        f"{len(batches)} batches"
        + (f", split {', '.join(fit.chunked)}" if fit.chunked else "")
    )
    return ContextFit(fit.model, budget, fit.batches, switched, tuple(reasons))
