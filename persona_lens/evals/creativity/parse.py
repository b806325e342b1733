"""Turning a free-text answer into a list of ideas.

Models answer "give a numbered list" in many ways; :func:`parse_ideas` handles

* numbered items: ``1.``, ``1)``, ``(1)``, ``1:``, ``1 -``, ``Idea 1:``, ``**1. Title**``, ``### 1. Title``,
  and several items run together on one line (``1. foo 2. bar 3. baz``);
* bullets: ``-``, ``*``, ``•``, ``–``, ``+``, ``▪`` ...;
* bold-markdown items (``**Title**: description``) and markdown headings when there are no
  numbers or bullets;
* one idea per line / per paragraph when there are no markers at all;
* preambles (``Here are some ideas:``, ``As a Futurist, ...:``), section headers
  (``**Environmental uses:**``), trailing summaries (``I hope these ideas help!``);
* discussion outputs: when a "final answer / final list" header is followed by items, only
  the items after the last such header count.

The *primary* marker kind (numbers, else bullets, else bold, else headings, else lines) opens
items; other lines (sub-bullets, description lines) are the item's elaboration and are appended
to it. Text after a blank line that follows the last item is a summary and is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BULLET_CHARS = "-*•·–—+▪◦●►‣⁃→"
_NUM_RE = re.compile(
    r"^(?:#{1,6}\s*)?(?:\*\*|__)?\s*(?:(?:idea|use|answer|option|item|suggestion)\s*#?\s*)?"
    r"(?:\((\d{1,3})\)|(\d{1,3})(?:[.):\]](?!\d)|\s+[-–—]\s))\s*(?:\*\*|__)?\s*(.*)$",
    re.IGNORECASE,
)
_BULLET_RE = re.compile(r"^[" + re.escape(_BULLET_CHARS) + r"]\s+(.*)$")
_BOLD_RE = re.compile(r"^(?:\*\*|__)(.+?)(?:\*\*|__)\s*(.*)$")
_HEADING_RE = re.compile(r"^#{1,6}\s+(.*)$")
_MARKER_ONLY_RE = re.compile(r"^(?:\(?\d{1,3}[.):\]]?|[" + re.escape(_BULLET_CHARS) + r"])$")
_INLINE_NUM_RE = re.compile(r"(?:(?<=\s)|^)(\d{1,2})[.)]\s+(?=\S)")
_FINAL_RE = re.compile(
    r"\bfinal(?:ized|ised)?\s+(?:answer|list|response|idea|use|version|set|selection|suggestion)s?\b",
    re.IGNORECASE,
)
_SUMMARY_RE = re.compile(
    r"^(?:i hope|hope (?:this|these)|these (?:ideas|uses|are|creative|suggestions)|overall|in conclusion|"
    r"in summary|to summari[sz]e|let me know|feel free|remember,|by (?:using|thinking|exploring)|this list|"
    r"each of these|with these|all of these|note:|enjoy|have fun|good luck|the possibilities are|"
    r"there are (?:many|countless|endless)|i'm (?:happy|glad) to)",
    re.IGNORECASE,
)
_PREAMBLE_RE = re.compile(
    r"^(?:sure|certainly|of course|absolutely|great question|here(?:'s| is| are)|okay|ok[,!.]|alright|"
    r"below (?:is|are)|as an? [\w\s-]+,)",
    re.IGNORECASE,
)


@dataclass
class _Line:
    kind: str  # num | bullet | bold | heading | text | blank
    indent: int
    content: str
    raw: str


def _expand_inline_numbers(line: str) -> list[str]:
    """``"1. foo 2. bar 3. baz"`` -> three lines (only for consecutive numbers)."""
    matches = list(_INLINE_NUM_RE.finditer(line))
    if len(matches) < 2:
        return [line]
    numbers = [int(m.group(1)) for m in matches]
    # keep the longest run of consecutive numbers
    best: list[int] = []
    run: list[int] = [0]
    for i in range(1, len(numbers)):
        if numbers[i] == numbers[run[-1]] + 1:
            run.append(i)
        else:
            best = max(best, run, key=len)
            run = [i]
    best = max(best, run, key=len)
    if len(best) < 2:
        return [line]
    cuts = [matches[i].start() for i in best]
    pieces = [line[:cuts[0]]] + [line[a:b] for a, b in zip(cuts, cuts[1:] + [len(line)])]
    indent = line[: len(line) - len(line.lstrip())]
    return [p if i == 0 else indent + p.strip() for i, p in enumerate(pieces) if p.strip()]


def _classify(raw: str) -> _Line:
    expanded = raw.replace("\t", "    ")
    stripped = expanded.strip()
    indent = len(expanded) - len(expanded.lstrip())
    if not stripped or _MARKER_ONLY_RE.match(stripped):  # empty, or a dangling "6." / "-" (truncated)
        return _Line("blank", indent, "", raw)
    m = _NUM_RE.match(stripped)
    if m and (m.group(3) or "").strip():
        return _Line("num", indent, m.group(3), raw)
    m = _BULLET_RE.match(stripped)
    if m and m.group(1).strip():
        return _Line("bullet", indent, m.group(1), raw)
    m = _BOLD_RE.match(stripped)
    if m:
        title, rest = m.group(1).strip(), m.group(2).strip()
        return _Line("bold", indent, f"{title} {rest}".strip() if rest else title, raw)
    m = _HEADING_RE.match(stripped)
    if m:
        return _Line("heading", indent, m.group(1), raw)
    return _Line("text", indent, stripped, raw)


def clean_idea(text: str) -> str:
    """Strip markdown emphasis, quotes, dangling punctuation and extra whitespace."""
    t = text.replace("**", "").replace("__", "")
    t = re.sub(r"(?<!\w)\*(\S[^*]*?)\*(?!\w)", r"\1", t)  # *italic*
    t = re.sub(r"`+", "", t)
    t = re.sub(r"\s+", " ", t).strip()
    if len(t) >= 2 and t[0] in "\"“" and t[-1] in "\"”":
        t = t[1:-1].strip()
    t = re.sub(r"^[\s*#:\-–—]+", "", t)
    t = re.sub(r"[\s:;,\-–—*]+$", "", t)
    t = re.sub(r"\s+([:;,.!?])", r"\1", t)
    return t


def _is_section_header(line: _Line) -> bool:
    content = line.content.strip().replace("**", "").replace("__", "").strip()
    if line.kind == "heading":
        return True
    return content.endswith(":") or line.raw.strip().endswith(":") or line.raw.strip().endswith(":**")


def _final_section(lines: list[_Line]) -> list[_Line]:
    """The lines after the last "final answer/list" header that is followed by list items."""
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i]
        if line.kind in ("num", "bullet") and not _is_section_header(line):
            continue
        if line.kind == "blank" or len(line.content) > 120 or not _FINAL_RE.search(line.content):
            continue
        after = lines[i + 1:]
        if any(l.kind in ("num", "bullet") for l in after):
            return after
        # the header may carry items inline after a colon: "Final list: 1. a 2. b"
    return lines


def _primary_kind(lines: list[_Line]) -> str:
    counts = {k: sum(1 for l in lines if l.kind == k) for k in ("num", "bullet", "bold", "heading")}
    if counts["num"] >= 2 and counts["bullet"] >= 2:
        nums = [l for l in lines if l.kind == "num"]
        num_indent = min(l.indent for l in nums)
        bullet_indent = min(l.indent for l in lines if l.kind == "bullet")
        if bullet_indent < num_indent:
            return "bullet"
        # numbered section headers ("1. Household uses:") over bullet ideas
        if all(l.content.rstrip("* _").endswith(":") for l in nums) and counts["bullet"] > counts["num"]:
            return "bullet"
        return "num"
    if counts["num"] >= 2:
        return "num"
    if counts["bullet"] >= 2:
        return "bullet"
    if counts["num"] == 1 and counts["bullet"] == 0:
        return "num"
    if counts["bullet"] == 1 and counts["num"] == 0 and counts["bold"] < 2:
        return "bullet"
    if counts["bold"] >= 2:
        return "bold"
    if counts["heading"] >= 2:
        return "heading"
    return "lines"


def _looks_like_preamble(text: str) -> bool:
    t = text.strip()
    return t.endswith(":") or (bool(_PREAMBLE_RE.match(t)) and len(t) < 60)


def parse_ideas(text: str | None, *, final_section: bool = True) -> list[str]:
    """The ideas in a model's answer, in order (not deduplicated)."""
    if not text or not text.strip():
        return []
    raw_lines: list[str] = []
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        raw_lines.extend(_expand_inline_numbers(raw))
    lines = [_classify(r) for r in raw_lines]
    if final_section:
        lines = _final_section(lines)
    primary = _primary_kind(lines)
    if primary == "lines":
        return _parse_lines(lines)

    items: list[list[str]] = []
    gap = False
    gap_buffer: list[str] = []
    for line in lines:
        if line.kind == "blank":
            gap = bool(items)
            continue
        is_item = line.kind == primary
        if is_item and primary in ("bold", "heading"):
            # a short bold/heading line ending in ':' is a section header, not an idea
            content = line.content.strip()
            is_item = not (content.endswith(":") and len(content.split()) <= 6)
        if is_item:
            if items and gap_buffer:
                items[-1].extend(gap_buffer)
            gap_buffer = []
            items.append([line.content])
            gap = False
            continue
        if not items:
            continue  # preamble
        if _is_section_header(line) and line.indent == 0:
            gap_buffer = []  # a section header between groups of items
            gap = True
            continue
        content = line.content
        if _SUMMARY_RE.match(clean_idea(content)) and line.indent == 0:
            gap = True
            gap_buffer = []
            continue
        if gap and line.indent == 0:
            gap_buffer.append(content)  # kept only if another item follows
        else:
            items[-1].append(content)
    ideas = [clean_idea(" ".join(parts)) for parts in items]
    return [i for i in ideas if _is_idea(i)]


def _parse_lines(lines: list[_Line]) -> list[str]:
    raw = [l.content.strip() for l in lines if l.kind != "blank"]
    raw = [r for r in raw if clean_idea(r)]
    while raw and _looks_like_preamble(raw[0]):
        raw.pop(0)
    candidates = [clean_idea(r) for r in raw if not r.rstrip("*_ ").endswith(":")]
    while candidates and _SUMMARY_RE.match(candidates[-1]) and len(candidates) > 1:
        candidates.pop()
    if len(candidates) == 1 and ";" in candidates[0]:
        parts = [clean_idea(p) for p in candidates[0].split(";")]
        if sum(1 for p in parts if p) >= 2:
            candidates = parts
    return [c for c in candidates if _is_idea(c)]


def _is_idea(text: str) -> bool:
    t = text.strip()
    if len(t) < 2 or not re.search(r"[A-Za-z0-9\u00C0-\uFFFF]", t):
        return False
    if _FINAL_RE.fullmatch(t.rstrip(":. ")):
        return False
    return True


def normalize_idea(text: str) -> str:
    """Lower-case, punctuation-free, whitespace-collapsed text (for exact-duplicate removal)."""
    t = clean_idea(text).lower()
    t = re.sub(r"[^\w\s]", " ", t)
    return re.sub(r"\s+", " ", t).strip()
