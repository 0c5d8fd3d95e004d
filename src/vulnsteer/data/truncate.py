"""Token-aware, line-granular truncation of long functions.

Real vulnerable functions are long (SVEN: median ≈ 1.1 k chars, p90 ≈ 6 k, max 114 k). Cutting them at a token
budget from the front often cuts away the very lines that hold the flaw, so :func:`truncate_code` keeps

* the head of the function (its first lines, up to about a third of the budget: the signature), and
* when the changed lines are known (``focus_lines``), windows of lines around them, grown outwards evenly;
  without focus lines, the lines that follow the head, as many as fit,

with a ``...`` marker line (indented like the line after it) wherever lines were left out. The result never
exceeds the budget as measured by the given ``count_tokens`` on the final text.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vulnsteer.data.sample import Sample

MARKER = "..."
HEAD_FRACTION = 1 / 3

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class Truncation:
    """What :func:`truncate_code` did.

    Attributes:
        truncated: False if the code fit the budget and was returned unchanged.
        original_tokens: token count of the input.
        kept_tokens: token count of the output (markers included).
        kept_lines: 1-based ``(first, last)`` original line numbers spanned by the kept lines; ``None`` when
            nothing was cut.
        budget: the token budget.
        original_lines: number of lines of the input.
        kept_ranges: 1-based inclusive ranges of original lines kept (gaps between them became markers).
        focus_lines: the valid focus lines that were given (1-based, sorted).
        focus_kept: whether every focus line survived; ``None`` without focus lines.
        line_cut: True if even the first line did not fit and was cut inside the line.
    """

    truncated: bool
    original_tokens: int
    kept_tokens: int
    kept_lines: tuple[int, int] | None
    budget: int = 0
    original_lines: int = 0
    kept_ranges: tuple[tuple[int, int], ...] = ()
    focus_lines: tuple[int, ...] = ()
    focus_kept: bool | None = None
    line_cut: bool = False


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _render(lines: Sequence[str], kept: Iterable[int]) -> str:
    """Kept lines (0-based indices) in order, a marker line for every run of left-out lines."""
    idx = sorted(set(kept))
    out: list[str] = []
    prev = -1
    for i in idx:
        if i > prev + 1:
            out.append(_indent(lines[i]) + MARKER)
        out.append(lines[i])
        prev = i
    if prev < len(lines) - 1:
        out.append(_indent(lines[prev]) + MARKER if prev >= 0 else MARKER)
    return "\n".join(out)


def _ranges(idx: Iterable[int]) -> tuple[tuple[int, int], ...]:
    out: list[tuple[int, int]] = []
    for i in sorted(set(idx)):
        if out and out[-1][1] == i:  # out holds 1-based ranges; i is 0-based, so i == last (1-based) is adjacent
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i + 1, i + 1))
    return tuple(out)


def _plan(lines: Sequence[str], cost: Sequence[int], marker_cost: int, budget: int, focus: Sequence[int]) -> list[int]:
    """Lines to keep (0-based), in the order they were chosen, using per-line cost estimates."""
    n = len(lines)
    kept: set[int] = set()
    order: list[int] = []
    state = {"cost": 0, "gaps": 1 if n else 0}  # kept lines' cost; runs of left-out lines (one marker each)

    def gap_delta(i: int) -> int:
        left = i > 0 and i - 1 not in kept
        right = i < n - 1 and i + 1 not in kept
        return 1 if left and right else (0 if left or right else -1)

    def take(i: int, limit: int) -> bool:
        if i in kept:
            return True
        new_cost = state["cost"] + cost[i]
        new_gaps = state["gaps"] + gap_delta(i)
        if new_cost + new_gaps * marker_cost > limit:
            return False
        kept.add(i)
        order.append(i)
        state["cost"], state["gaps"] = new_cost, new_gaps
        return True

    # 1. Head: the first lines, up to about a third of the budget (the first line even if it needs more).
    head_limit = max(1, int(budget * HEAD_FRACTION))
    for i in range(n):
        if not take(i, head_limit if i else budget):
            break

    if focus:
        # 2. Focus lines, then windows around them, growing outwards one line per side per round.
        for f in focus:
            if not take(f, budget):
                return order
        for d in range(1, n):
            grew = False
            for f in focus:
                for i in (f - d, f + d):
                    if 0 <= i < n and i not in kept:
                        if not take(i, budget):
                            return order
                        grew = True
            if not grew:
                break
    # 3. Without focus lines: the lines after the head, as many as fit.
    for i in range(n):
        if not take(i, budget):
            break
    return order


def _cut_line(line: str, count_tokens: TokenCounter, budget: int, more: bool) -> str:
    """Longest prefix of ``line`` (plus a marker line if ``more``) within the budget."""

    def text(k: int) -> str:
        return line[:k] + ("\n" + MARKER if more else "")

    lo, hi = 0, len(line)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(text(mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text(lo)


def truncate_code(
    code: str,
    count_tokens: TokenCounter,
    budget: int,
    focus_lines: Sequence[int] | None = None,
) -> tuple[str, Truncation]:
    """Cut ``code`` to at most ``budget`` tokens, line by line (see the module docstring).

    Args:
        code: the source text.
        count_tokens: counts the tokens of a text (e.g. ``lambda s: len(tok(s)["input_ids"])``).
        budget: the most tokens the result may have.
        focus_lines: 1-based line numbers to keep if at all possible (the changed lines); out-of-range numbers are
            ignored.

    Returns:
        The (possibly) shortened code and a :class:`Truncation` record.

    Raises:
        ValueError: if the budget is not positive or even an empty text exceeds it.
    """
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    original_tokens = count_tokens(code)
    lines = code.split("\n")
    n = len(lines)
    focus = sorted({f - 1 for f in (focus_lines or ()) if 1 <= f <= n})
    focus_1 = tuple(f + 1 for f in focus)
    if original_tokens <= budget:
        return code, Truncation(
            truncated=False,
            original_tokens=original_tokens,
            kept_tokens=original_tokens,
            kept_lines=None,
            budget=budget,
            original_lines=n,
            kept_ranges=((1, n),),
            focus_lines=focus_1,
            focus_kept=True if focus else None,
        )
    if count_tokens("") > budget:
        raise ValueError(f"budget {budget} is below the token count of an empty text")

    costs = _line_costs(lines, count_tokens)
    kept, text, tokens = _fit(lines, _plan(lines, *costs, budget, focus), count_tokens, budget)
    return _finish(code, lines, kept, text, tokens, count_tokens, budget, original_tokens, focus, focus_1)


def _line_costs(lines: Sequence[str], count_tokens: TokenCounter) -> tuple[list[int], int]:
    """Per-line token estimates and a marker line's (tokenizers are not additive: a plan is verified by
    :func:`_fit` on the real text)."""
    n = len(lines)
    cost = [count_tokens(line + "\n") if i < n - 1 else count_tokens(line) for i, line in enumerate(lines)]
    return cost, max(1, count_tokens(MARKER + "\n"))


def _fit(
    lines: Sequence[str], order: Sequence[int], count_tokens: TokenCounter, budget: int
) -> tuple[list[int], str, int]:
    """The planned lines rendered, the last choices undone until the real text fits: (kept, text, tokens)."""
    kept = list(order)
    text = _render(lines, kept)
    tokens = count_tokens(text)
    while kept and tokens > budget:
        kept.pop()  # undo the last choice
        text = _render(lines, kept) if kept else ""
        tokens = count_tokens(text)
    return kept, text, tokens


def _finish(
    code: str,
    lines: Sequence[str],
    kept: list[int],
    text: str,
    tokens: int,
    count_tokens: TokenCounter,
    budget: int,
    original_tokens: int,
    focus: Sequence[int],
    focus_1: tuple[int, ...],
) -> tuple[str, Truncation]:
    """The text and its :class:`Truncation` record (a first line cut inside itself when not even it fits)."""
    n = len(lines)
    line_cut = False
    if not kept:
        # Not even the first line fits: keep a prefix of it.
        text = _cut_line(lines[0], count_tokens, budget, more=n > 1)
        if count_tokens(text) > budget:  # the marker alone does not fit
            text = _cut_line(lines[0], count_tokens, budget, more=False)
        tokens = count_tokens(text)
        line_cut = True
        kept = [0]

    ranges = _ranges(kept)
    kept_set = set(kept)
    return text, Truncation(
        truncated=True,
        original_tokens=original_tokens,
        kept_tokens=tokens,
        kept_lines=(ranges[0][0], ranges[-1][1]),
        budget=budget,
        original_lines=n,
        kept_ranges=ranges,
        focus_lines=focus_1,
        focus_kept=(all(f in kept_set for f in focus) and not line_cut) if focus else None,
        line_cut=line_cut,
    )


def windows(code: str, count_tokens: TokenCounter, budget: int) -> list[tuple[str, Truncation]]:
    """Code longer than *budget* tokens as overlapping windows, each within the budget: the first is
    :func:`truncate_code`'s head (the signature and the lines after it); each next one keeps the same head (about a
    third of the budget, so every window says which function it is) and, around a focus line further down, the
    lines that fit, overlapping the window before by about a quarter of its body, until the last line is read.
    Code that fits is one window, unchanged. Every line of the code is in at least one window (unless a single line
    is longer than the budget, which is cut as :func:`truncate_code` cuts it).

    >>> code = "\\n".join(["int f(void) {", *[f"  x{i} = {i};" for i in range(40)], "}"])
    >>> found = windows(code, lambda text: len(text.split()), 40)
    >>> len(found) > 1, all(len(text.split()) <= 40 for text, _ in found), found[-1][1].kept_ranges[-1][1]
    (True, True, 42)
    """
    whole, info = truncate_code(code, count_tokens, budget)
    if not info.truncated or info.line_cut:
        return [(whole, info)]
    lines = code.split("\n")
    n = len(lines)
    cost, marker = _line_costs(lines, count_tokens)
    head: set[int] = set()  # (the lines every window starts with, as _plan's first step takes them)
    spent, limit = 0, max(1, int(budget * HEAD_FRACTION))
    for i in range(n):
        if i and spent + cost[i] + 2 * marker > limit:
            break
        spent += cost[i]
        head.add(i)
    out = [(whole, info)]
    last = info.kept_ranges[-1][1] - 1  # 0-based last line read so far
    body = max(1, last + 1 - len(head))
    while last < n - 1:
        centre = min(n - 1, max(last + 1, last + body // 4 + 1))
        kept, text, tokens = _fit(lines, _plan(lines, cost, marker, budget, [centre]), count_tokens, budget)
        if not kept or max(kept) <= last:
            break  # (no progress: a line alone over the budget)
        window = _finish(code, lines, kept, text, tokens, count_tokens, budget, info.original_tokens, [centre], ())
        out.append((window[0], dataclasses.replace(window[1], focus_lines=(), focus_kept=None)))
        body = max(1, len(set(kept) - head))
        last = max(kept)
    return out


def _locate(entry: Mapping[str, Any], lines: Sequence[str]) -> int | None:
    """1-based line number of a SVEN ``line_changes`` entry in ``lines``.

    The entry's ``line_no`` is trusted if the line there matches the entry's ``line`` text; otherwise (the code
    was cleaned after the diff was taken) the nearest line with the same stripped text is used, and failing that
    the clamped ``line_no``.
    """
    raw = entry.get("line_no")
    if not isinstance(raw, int):
        return None
    text = entry.get("line")
    if not isinstance(text, str) or not text.strip():
        return min(max(raw, 1), len(lines))
    want = text.strip()
    if 1 <= raw <= len(lines) and lines[raw - 1].strip() == want:
        return raw
    matches = [i + 1 for i, line in enumerate(lines) if line.strip() == want]
    if matches:
        return min(matches, key=lambda m: (abs(m - raw), m))
    return min(max(raw, 1), len(lines))


def focus_lines_of(sample: Sample) -> list[int]:
    """Focus lines of a sample from its meta, 1-based, in the sample's current code.

    ``meta["focus_lines"]`` (a list of ints) wins if present. Otherwise SVEN-style ``meta["line_changes"]``
    (``{"deleted": [{"line_no": n, "line": ...}], "added": [...]}``) is used: ``deleted`` for the vulnerable
    version, ``added`` for the fixed one. A fix that only deletes lines has no added lines; then the deleted
    line numbers serve as the (approximate) place of the fix in the fixed version.
    """
    meta = sample.meta
    explicit = meta.get("focus_lines")
    if isinstance(explicit, Sequence) and not isinstance(explicit, str):
        return sorted({int(x) for x in explicit if isinstance(x, int)})
    changes = meta.get("line_changes")
    if not isinstance(changes, Mapping):
        return []
    lines = sample.code.split("\n")
    primary, fallback = ("deleted", "added") if sample.is_vulnerable else ("added", "deleted")
    for key in (primary, fallback):
        entries = changes.get(key)
        if not isinstance(entries, Sequence):
            continue
        found: set[int] = set()
        for e in entries:
            if isinstance(e, Mapping):
                loc = _locate(e, lines) if key == primary else _clamped(e, len(lines))
            elif isinstance(e, int):
                loc = min(max(e, 1), len(lines))
            else:
                loc = None
            if loc is not None:
                found.add(loc)
        if found:
            return sorted(found)
    return []


def _clamped(entry: Mapping[str, Any], n: int) -> int | None:
    raw = entry.get("line_no")
    return min(max(raw, 1), n) if isinstance(raw, int) else None


def truncate_sample(sample: Sample, count_tokens: TokenCounter, budget: int) -> Sample:
    """A copy of ``sample`` with its code cut to ``budget`` tokens and ``meta["truncation"]`` recording how.

    Focus lines come from :func:`focus_lines_of`. The record is added even when nothing was cut
    (``truncated: False``), so every sample shows which budget it was checked against.
    """
    focus = focus_lines_of(sample)
    code, info = truncate_code(sample.code, count_tokens, budget, focus_lines=focus or None)
    meta = {**sample.meta, "truncation": dataclasses.asdict(info)}
    return dataclasses.replace(sample, code=code, meta=meta)
