"""Read a model's free-text answer to "Is this code vulnerable?" as a verdict.

The prompt asks for a fixed format::

    Answer: vulnerable            (or: Answer: secure)
    Weakness: CWE-89 (SQL injection)   (or: Weakness: none)

Small models often ignore it, so :func:`parse_verdict` reads free prose too. The rules:

* **First verdict wins.** The text is scanned left to right and the first clear statement decides
  ("The code is not vulnerable. However, strcpy is unsafe" is *secure*).
* Fenced code blocks are ignored (the model often repeats the code, whose comments and identifiers
  say "safe" or "unsafe"); only an explicit ``Answer:`` line inside one is read, and only when the
  prose says nothing decisive. Closed ``<think>`` blocks are dropped. Markdown emphasis, headings,
  bullets and backticks are stripped; an echo of the format ("vulnerable or secure", ``CWE-<id>``)
  is not an answer.
* Sentences that end in ``?`` are questions, not statements (the model echoing "Is this code
  vulnerable?"); a bare "Yes"/"No" at the start of the answer, of a line, after ``Answer:`` or right
  after such a question answers it (yes = vulnerable).
* Negations flip: "not vulnerable", "no vulnerabilities found", "does not contain any vulnerability",
  "free of vulnerabilities", "no SQL injection" are *secure*; "not secure", "not safe", "does not
  sanitize", "no bounds checking" are *vulnerable*. "not only vulnerable to ..." is not a negation.
* Hedges ("it depends", "I cannot determine", "without more context") are a statement of their own:
  when one comes first the verdict is *uncertain*. No decisive statement at all is *uncertain* too.
* Mere mentions are not claims: "analyze the code for potential vulnerabilities", a heading
  "Vulnerability Analysis", "prevents SQL injection" (that one is *secure*).

The weakness (for *vulnerable* verdicts only; *secure* and *uncertain* carry none) comes from the
``Weakness:`` field when there is one (``Weakness: none`` means none), else from the prose: the first
explicit CWE id, or failing one the first known weakness name, that is not inside a secure statement
(so "not only vulnerable to SQL injection but also XSS" is CWE-89, and "no SQL injection here, but a
buffer overflow" does not name CWE-89). CWE ids
are read as ``CWE-78``, ``CWE 78``, ``cwe-078``, ``CWE78``; names come from :data:`~vulnsteer.cwe.CWE_NAMES`
plus common synonyms (:data:`WEAKNESS_SYNONYMS`), with hyphens, spaces and plurals tolerated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from vulnsteer.cwe import CWE_NAMES, normalize_cwe

__all__ = [
    "WEAKNESS_SYNONYMS",
    "Verdict",
    "VerdictLabel",
    "find_weakness_mentions",
    "parse_verdict",
]

VerdictLabel = Literal["vulnerable", "secure", "uncertain"]


@dataclass(frozen=True)
class Verdict:
    """A parsed answer.

    Attributes:
        label: ``"vulnerable"``, ``"secure"`` or ``"uncertain"``.
        cwe: canonical CWE id the answer names (``"CWE-89"``); ``None`` when none is named or the
            label is not ``"vulnerable"``.
        weakness: the weakness as the model wrote it (the matched name, the text after a CWE id such
            as ``"CWE-78 (OS command injection)"``, or an unrecognised ``Weakness:`` field); ``None``
            when absent.
    """

    label: VerdictLabel
    cwe: str | None = None
    weakness: str | None = None

    @property
    def y_pred(self) -> int:
        """1 vulnerable, 0 secure, -1 uncertain (the convention of :mod:`vulnsteer.stats.metrics`)."""
        return {"vulnerable": 1, "secure": 0, "uncertain": -1}[self.label]


#: Weakness names beyond (or overriding) :data:`~vulnsteer.cwe.CWE_NAMES`, as case-insensitive regular
#: expressions in which a space stands for any run of spaces, hyphens or underscores (or none).
WEAKNESS_SYNONYMS: Mapping[str, str] = {
    # injection
    "sql injection": "CWE-89",
    "sqli": "CWE-89",
    "command injection": "CWE-78",  # CWE_NAMES has CWE-77; models mean the OS kind (CWE-78)
    "os command injection": "CWE-78",
    "shell (?:command )?injection": "CWE-78",
    "cross site scripting": "CWE-79",
    "xss": "CWE-79",
    "html injection": "CWE-79",
    "path traversal": "CWE-22",
    "directory traversal": "CWE-22",
    "path manipulation": "CWE-22",
    "code injection": "CWE-94",
    "ldap injection": "CWE-90",
    "xpath injection": "CWE-643",
    "open redirect": "CWE-601",
    "csrf": "CWE-352",
    "ssrf": "CWE-918",
    "xxe": "CWE-611",
    "(?:insecure|unsafe|untrusted) deserialization": "CWE-502",
    "prototype pollution": "CWE-1321",
    "format string": "CWE-134",
    # memory safety
    "buffer overflow": "CWE-787",  # CWE_NAMES has CWE-119; the project reads it as an out-of-bounds write
    "buffer overrun": "CWE-787",
    "out of bounds write": "CWE-787",
    "oob write": "CWE-787",
    "stack buffer overflow": "CWE-121",
    "stack based (?:buffer )?overflow": "CWE-121",
    "heap buffer overflow": "CWE-122",
    "heap based (?:buffer )?overflow": "CWE-122",
    "heap overflow": "CWE-122",
    "out of bounds read": "CWE-125",
    "oob read": "CWE-125",
    "buffer over read": "CWE-125",  # CWE_NAMES has CWE-126, a child of CWE-125
    "out of bounds (?:access|memory access|index|indexing)": "CWE-119",
    "integer overflow": "CWE-190",
    "integer wrap ?around": "CWE-190",
    "wrap ?around": "CWE-190",
    "integer underflow": "CWE-191",
    "off by one": "CWE-193",
    "use after free": "CWE-416",
    "uaf": "CWE-416",
    "double free": "CWE-415",
    "null pointer dereference": "CWE-476",
    "null pointer deref": "CWE-476",
    "null dereference": "CWE-476",
    "null deref": "CWE-476",
    "nullptr dereference": "CWE-476",
    "dereferenc(?:e|es|ed|ing) (?:of )?(?:a |the )?null(?: pointer)?": "CWE-476",
    "memory leak": "CWE-401",
    "race condition": "CWE-362",
    "divi(?:de|sion) by zero": "CWE-369",
    "type confusion": "CWE-843",
    "hard coded (?:credentials?|passwords?|secrets?|keys?)": "CWE-798",
}


_SEP = r"[\s\-_]*"


def _name_regex(name: str) -> str:
    """A plain weakness name as a regex: any spacing or hyphens between its words."""
    return _SEP.join(re.escape(word) for word in re.split(r"[\s\-_]+", name.strip().lower()))


def _name_table() -> list[tuple[re.Pattern[str], str, str]]:
    table: dict[str, str] = {_name_regex(name): cwe for cwe, name in CWE_NAMES.items()}
    for pattern, cwe in WEAKNESS_SYNONYMS.items():
        table[pattern.replace(" ", _SEP)] = normalize_cwe(cwe)
    # longest first, so the combined alternation prefers "stack-based buffer overflow" to "buffer overflow"
    ordered = sorted(table.items(), key=lambda kv: -len(kv[0]))
    return [(re.compile(rf"(?<![\w])(?:{rx})(?:e?s)?(?![\w])", re.IGNORECASE), cwe, rx) for rx, cwe in ordered]


_NAMES = _name_table()
_NAME_ALT = "(?:" + "|".join(rx for _, _, rx in _NAMES) + r")(?:e?s)?(?![\w])"
_CWE_ID = r"\bcwe(?:[\s_\-]*id)?[\s\-_:#]*0*[1-9]\d{0,4}(?!\d)"
_CWE_ID_RE = re.compile(r"\bcwe(?:[\s_\-]*id)?[\s\-_:#]*0*([1-9]\d{0,4})(?!\d)", re.IGNORECASE)

# ----------------------------------------------------------------------------------------------- pieces
_NEG = r"(?:\bnot\b(?!\s+(?:only|just|merely|simply)\b)|n['’]t\b|\bnever\b|\bno\s+longer\b)"
_NEG_FILLER = (
    r"(?:\s+(?:really|actually|necessarily|entirely|completely|fully|totally|inherently|directly|immediately"
    r"|obviously|particularly|truly|exactly|sufficiently|adequately|very|that|considered|be|been|seem|seems"
    r"|appear|appears|to|likely|currently|at\s+all|in\s+any\s+way|a|an))*"
)
# "I don't think the code is ..."
_NEG_CLAIM = (
    r"(?:\s+(?:think|believe|consider|feel)(?:\s+that)?(?:\s+(?:the|this))?"
    r"(?:\s+(?:code|function|snippet|program|implementation|it))?(?:\s+(?:is|has|contains|would\s+be))?)?"
)
_ADJS = (
    r"(?:\s+(?:obvious|apparent|known|significant|real|major|minor|potential|possible|exploitable|such|clear"
    r"|critical|other|serious|evident|immediate|notable|glaring|additional|memory|memory[\s-]safety|security"
    r"|security[\s-]related|actual|specific|further|new|visible|direct|severe|high[\s-]risk|injection"
    r"|certain|common|obvious|detectable|identifiable|exploitable|remaining))*"
)
_NOUN_STRONG = (
    r"(?:vulnerabilit(?:y|ies)|vulns?\b|security\s+(?:issues?|flaws?|bugs?|holes?|problems?|risks?|concerns?"
    r"|weakness(?:es)?|vulnerabilit(?:y|ies)|defects?|loopholes?)|weakness(?:es)?|flaws?|exploits?)"
)
_NOUN_ALL = rf"(?:{_NOUN_STRONG}|issues?|problems?|bugs?|defects?|risks?|concerns?)"
_TARGET_ALL = rf"(?:{_NOUN_ALL}|{_NAME_ALT}|{_CWE_ID})"
_TARGET_STRONG = rf"(?:{_NOUN_STRONG}|{_NAME_ALT}|{_CWE_ID})"
_CHECK_STEM = (
    r"(?:sanitiz|sanitis|validat|escap|check|bounds?[\s-]+check|length[\s-]+check|size[\s-]+check"
    r"|null[\s-]+check|filter|encod|quot|neutraliz)\w*"
)
# where a bare "yes"/"no"/"secure" is an answer: after an "Answer:" label, or at the start of a line or
# right after a question when it stands alone ("No." but not "No bounds checking", "Safe" but not "Safe
# functions are used")
_LABEL = (
    r"\b(?:final\s+answer|answer|verdict|conclusion|assessment|result|classification|label)\s*(?:is\s*)?"
    r"[:=\-–—]?\s*[\[(']*"
)
_NONE_VALUE = (
    r"(?:none|n/?a|no|nothing|null|not\s+applicable|no\s+(?:weakness(?:es)?|vulnerabilit(?:y|ies))(?:\s+found)?|-+)"
    r"[ \t]*(?:[.,;(]|$)"
)
_LINE = r"(?:^|(?<=\?))[ \t]*[\[(']*"
_ALONE = r"(?=\s*(?:[.,!;:\-–—)\]'”]|$))"

# Alternatives in priority order (earlier wins when two match at the same position). Group names start
# with the label they give: v_ vulnerable, s_ secure, u_ uncertain, n_ neutral (consumed, no verdict).
_ALTERNATIVES: list[tuple[str, str]] = [
    # the answer format echoed back: "vulnerable or secure", "Weakness: CWE-<id> (<name>)"
    ("n_echo_line", r"^[^\n]*<(?:id|name|n|cwe|number)>[^\n]*"),
    ("n_echo", r"\b(?:vulnerable|secure)\s*(?:/|\bor\b|\|)\s*(?:vulnerable|secure)\b"),
    # structured fields
    (
        "s_field",
        r"^[ \t]*(?:weakness(?:es)?|vulnerabilit(?:y|ies)(?:\s+type)?|cwe(?:\s+id)?)\s*[:=\-–—]\s*"
        rf"{_NONE_VALUE}",
    ),
    (
        "u_field",
        r"^[ \t]*(?:weakness(?:es)?|vulnerabilit(?:y|ies)(?:\s+type)?)\s*[:=\-–—]\s*(?:unknown|unclear|uncertain)\b",
    ),
    ("v_field", r"^[ \t]*(?:weakness(?:es)?|vulnerabilit(?:y|ies)(?:\s+type)?|cwe(?:\s+id)?)\s*[:=]\s*\w"),
    # bare answers
    # "Vulnerable: yes", "Secure: no"
    ("v_vuln_yes", rf"{_LINE}(?:vulnerable|vulnerability|insecure)\s*[:=\-–—]\s*(?:yes|true)\b"),
    ("s_vuln_no", rf"{_LINE}(?:vulnerable|vulnerability|insecure)\s*[:=\-–—]\s*(?:no|false|none)\b"),
    ("s_secure_yes", rf"{_LINE}(?:secure|safe)\s*[:=\-–—]\s*(?:yes|true)\b"),
    ("v_secure_no", rf"{_LINE}(?:secure|safe)\s*[:=\-–—]\s*(?:no|false)\b"),
    ("v_anchor", rf"(?:{_LABEL}|{_LINE})(?:yes|yep|yeah)\b"),
    ("s_anchor", rf"{_LABEL}(?:no|nope|none|secure|safe|benign|clean|non[\s-]?vulnerable)\b(?![\w-])"),
    ("s_anchor_line", rf"{_LINE}(?:no|nope|none|secure|safe|benign|non[\s-]?vulnerable){_ALONE}"),
    (
        "u_anchor",
        rf"(?:{_LABEL}|{_LINE})(?:uncertain|unknown|unclear|unsure|undetermined|undecided|indeterminate"
        r"|inconclusive)\b",
    ),
    # hedges
    (
        "u_hedge",
        r"\bit\s+(?:really\s+)?depends\b|\bdepends\s+on\b"
        r"|(?:\bcannot|\bcan\s+not|\bcan['’]t|\bunable\s+to|\bimpossible\s+to|\bhard\s+to|\bdifficult\s+to"
        r"|\bnot\s+possible\s+to)\s+(?:\w+\s+)?(?:determine|tell|say|assess|know|conclude|decide|judge"
        r"|be\s+(?:sure|certain|determined))\b"
        r"|\bnot\s+(?:sure|certain)\b|\bunsure\b"
        r"|\b(?:insufficient|not\s+enough)\s+(?:information|context|code)\b"
        r"|\b(?:without|need|needs|require[sd]?)\s+(?:more|additional|further)\s+(?:information|context|code)\b"
        r"|\b(?:it\s+is|it['’]s)\s+(?:unclear|ambiguous)\b|\bunclear\s+(?:whether|if)\b",
    ),
    # mentions that are not claims
    (
        "n_analysis",
        r"\b(?:analy[sz]\w*|check(?:ing)?|review\w*|examin\w*|look(?:ing)?\s+for|identify(?:ing)?|scan\w*"
        r"|inspect\w*|assess\w*|evaluat\w*|determin(?:e|ing)|whether|audit\w*|search\w*|test\w*)"
        r"(?:\s+(?:the|this|code|function|snippet|it|is|for|any|potential|possible|security|common|known|of|to"
        r"|see|and|if|whether|there|are|contains?|has))*"
        rf"\s+(?:{_TARGET_STRONG}|vulnerable|secure|safe|insecure|unsafe)\b",
    ),
    (
        "n_heading",
        rf"(?:{_NOUN_STRONG}|security)\s+(?:analysis|assessment|report|scan|review|detection|summary|check|overview"
        r"|evaluation|audit|considerations?|implications?)\b",
    ),
    # secure statements
    (
        "s_neg_exist",
        rf"{_NEG}{_NEG_CLAIM}(?:\s+(?:seem|seems|appear|appears)\s+to)?"
        r"(?:\s+(?:be|contain|contains|have|has|see|find|found|identify|identified|detect|detected|notice"
        r"|noticed|spot|spotted|observe|observed|exhibit|exhibits|introduce|introduces|pose|poses|present"
        r"|presents|include|includes|suffer\s+from|lead\s+to|result\s+in|cause|allow|there\s+(?:is|are)))?"
        rf"(?:\s+(?:any|a|an|the))?{_ADJS}\s+{_TARGET_ALL}",
    ),
    (
        "s_neg_vuln",
        rf"{_NEG}{_NEG_CLAIM}{_NEG_FILLER}\s+(?:vulnerable|exploitable|susceptible|prone|insecure|unsafe"
        r"|at\s+risk)\b",
    ),
    ("s_no", rf"\b(?:no|zero|without(?:\s+any)?){_ADJS}\s+{_TARGET_ALL}"),
    ("s_nothing", r"\bnothing\s+(?:wrong|suspicious|insecure|vulnerable|unsafe|concerning|dangerous|exploitable)\b"),
    ("s_free", rf"\bfree\s+(?:of|from)(?:\s+any)?{_ADJS}\s+{_TARGET_ALL}"),
    (
        "s_prevent",
        r"\b(?:prevents?|preventing|protects?\s+against|protected\s+(?:against|from)|guards?\s+against"
        r"|mitigates?|mitigating|avoids?|avoiding|immune\s+to|resistant\s+to|defends?\s+against|safe\s+from"
        r"|secure\s+against)(?:\s+(?:any|the|a|an|all|possible|potential|against))*"
        rf"{_ADJS}\s+{_TARGET_ALL}",
    ),
    (
        "s_proper",
        r"\b(?:properly|correctly|safely|securely|adequately|sufficiently|carefully|appropriately)\s+"
        r"(?:sanitiz|sanitis|validat|escap|check|handl|bound|free|initializ|quot|parameteriz|parametriz|encod"
        r"|limit|restrict|terminat|clean|cop|allocat|manag|guard|protect|prevent|neutraliz)\w*",
    ),
    (
        "s_param",
        r"\b(?:uses?|using|employs?|relies\s+on)\s+(?:\w+\s+)?(?:parameteri[sz]ed|parametri[sz]ed|prepared|bound)"
        r"\s+(?:quer|statement|parameter)\w*",
    ),
    # vulnerable statements built on a negation
    ("v_neg_secure", rf"{_NEG}{_NEG_CLAIM}{_NEG_FILLER}\s+(?:secure|safe)\b(?![\w-])"),
    (
        "v_fail",
        rf"(?:{_NEG}|\bfail(?:s|ed|ing)?\s+to|\bwithout|\black(?:s|ing)?(?:\s+of)?|\bmissing|\bno)"
        r"(?:\s+(?:properly|correctly|adequately|sufficiently|any|proper|adequate|sufficient|explicit|input"
        r"|length|size|bounds?|null|the|user|for|even|first))*"
        rf"\s+{_CHECK_STEM}",
    ),
    (
        "v_no_param",
        r"(?:\b(?:not|never)|n['’]t|\binstead\s+of|\brather\s+than)\s+(?:\w+\s+)?(?:use|using|uses)\s+"
        r"(?:parameteri[sz]ed|parametri[sz]ed|prepared|bound)\b",
    ),
    # vulnerable statements
    (
        "v_presence",
        r"\b(?:contains?|containing|has|have|having|introduces?|introducing|exhibits?|suffers?\s+from"
        r"|there\s+(?:is|are|exists?)|there['’]s|leads?\s+to|leading\s+to|results?\s+in|resulting\s+in"
        r"|causes?|causing|allows?|allowing|enables?|enabling|opens?(?:\s+up)?(?:\s+the\s+door)?\s+(?:to|for)"
        r"|exposed\s+to|at\s+risk\s+of|(?:is|are)\s+(?:a|an)|potential|possible|classic|textbook|obvious)"
        r"(?:\s+(?:a|an|the|some|several|multiple|two|many|critical|serious|severe|potential|possible|classic"
        r"|textbook|clear|obvious|major|significant|security|\w+-based|exploitable|dangerous|memory|high|risk"
        rf"|of|likely|definite|real))*\s+{_TARGET_STRONG}",
    ),
    (
        "v_the",
        r"\bthe\s+(?:main\s+|primary\s+|key\s+|core\s+|only\s+)?(?:vulnerabilit(?:y|ies)|security\s+(?:issues?"
        r"|flaws?|bugs?|problems?|holes?)|weakness|flaw)\s+(?:is|are|lies|here|in|occurs|arises|exists|stems"
        r"|comes)\b",
    ),
    (
        "s_name_neg",
        rf"(?<![\w-])(?:{_NAME_ALT}|{_CWE_ID})\s+(?:(?:is|are|was|were)\s+not|isn['’]t|aren['’]t|cannot|can['’]t|can\s+not"
        r"|won['’]t|will\s+not|should\s+not|does\s+not|doesn['’]t|is\s+(?:impossible|prevented|mitigated"
        r"|not\s+possible))\b",
    ),
    (
        "v_name_is",
        rf"(?<![\w-])(?:{_NAME_ALT}|{_CWE_ID})(?:\s+(?:vulnerabilit(?:y|ies)|flaws?|bugs?|weakness)\b"
        r"|\s+(?:is|are)\s+(?:\w+\s+)?(?:possible|present|likely|feasible|introduced|exploitable)\b)",
    ),
    (
        "v_attacker",
        r"\b(?:an?\s+)?(?:attacker|adversary|malicious\s+user)\s+(?:can|could|may|might|would\s+be\s+able"
        r"|is\s+able)\b",
    ),
    ("v_susceptible", r"\b(?:susceptible|prone)\s+to\b"),
    ("v_bare", r"\b(?:vulnerable|insecure|unsafe|exploitable)\b"),
    # a weakness named outside any secure or neutral statement is a finding ("... : NULL dereference.")
    ("v_name", rf"(?<![\w-])(?:{_NAME_ALT}|{_CWE_ID})"),
    # secure, plainly
    (
        "s_copula",
        r"(?:\b(?:is|are|was|were|be|being|been|looks?|seems?|appears?|remains?|considered|deemed)|['’]s)"
        r"(?:\s+(?:completely|perfectly|entirely|fully|relatively|reasonably|generally|indeed|actually|likely"
        r"|probably|mostly|sufficiently|adequately|quite|very|pretty|therefore|thus|overall|now|also|to|be|a|an"
        r"|considered|memory|type))*\s+(?:secure|safe)\b(?![\w-])",
    ),
]

_SCAN_RE = re.compile("|".join(f"(?P<{name}>{rx})" for name, rx in _ALTERNATIVES), re.IGNORECASE | re.MULTILINE)
_QUESTION_RE = re.compile(r"[^.!?\n]*\?")
_LABEL_OF: dict[str, VerdictLabel] = {"v": "vulnerable", "s": "secure", "u": "uncertain"}

_FENCE_RE = re.compile(r"(```|~~~)[^\n]*\n?(.*?)(?:\1|\Z)", re.DOTALL)
_ANSWER_LINE_RE = re.compile(r"^[ \t]*(?:final\s+)?answer\s*[:=].*$", re.IGNORECASE | re.MULTILINE)
_FIELD_RE = re.compile(
    r"^[ \t]*(?:weakness(?:es)?|weakness\s+type|vulnerability\s+type|cwe(?:[\s_\-]*id)?)\s*[:=]\s*(.*?)\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_NONE_VALUE_RE = re.compile(rf"^[ \t]*(?:{_NONE_VALUE}|$)", re.IGNORECASE | re.MULTILINE)
_AFTER_ID_RE = re.compile(r"[ \t]*(?:\(([^)\n]*)\)?|[:\-–—][ \t]*([^\n.;,()]+))")


_THINK_RE = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def _strip_code(text: str) -> tuple[str, str]:
    """Split *text* into (prose with fenced blocks blanked, the fenced blocks' content).

    A closed ``<think>...</think>`` block (reasoning models) is dropped: the answer follows it.
    """
    text = _THINK_RE.sub("\n", text)
    code: list[str] = []

    def blank(match: re.Match[str]) -> str:
        code.append(match.group(2))
        return "\n"

    return _FENCE_RE.sub(blank, text), "\n".join(code)


def _clean_markdown(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[*`\"“”]|~~", "", text)
    text = re.sub(r"(?<!\w)_+|_+(?!\w)", "", text)  # _emphasis_ but not snake_case
    text = re.sub(r"^[ \t]*(?:#+|>+)[ \t]*", "", text, flags=re.MULTILINE)  # headings, quotes
    text = re.sub(r"^[ \t]*(?:[-+•]|\d{1,3}[.)])[ \t]+", "", text, flags=re.MULTILINE)  # bullets
    return text


def _scan(text: str) -> tuple[VerdictLabel | None, list[tuple[int, int]]]:
    """First decisive label in *text*, and the spans of every secure statement (to skip weakness names in)."""
    label: VerdictLabel | None = None
    secure_spans: list[tuple[int, int]] = []
    # a question is not a statement: blank it, keeping its "?" (a bare "No." may answer it) and the offsets
    text = _QUESTION_RE.sub(lambda m: " " * (len(m.group(0)) - 1) + "?", text)
    for match in _SCAN_RE.finditer(text):
        kind = (match.lastgroup or "n")[0]
        if kind == "n":
            continue
        if kind == "s":
            secure_spans.append(match.span())
        if label is None:
            label = _LABEL_OF[kind]
    return label, secure_spans


def _inside(pos: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= pos < end for start, end in spans)


def find_weakness_mentions(text: str) -> list[tuple[int, int, str, str, bool]]:
    """Every CWE id and known weakness name in *text*.

    Returns ``(start, end, canonical CWE, text as written, is_id)`` sorted by position; a name inside a
    longer one ("buffer overflow" in "stack-based buffer overflow") is dropped. For a CWE id the text is
    what follows it in parentheses or after a colon (``"CWE-78 (OS command injection)"``), else ``""``.
    """
    found: list[tuple[int, int, str, str, bool]] = []
    for match in _CWE_ID_RE.finditer(text):
        after = _AFTER_ID_RE.match(text, match.end())
        written = (after.group(1) or after.group(2) or "").strip() if after else ""
        found.append((match.start(), match.end(), normalize_cwe(int(match.group(1))), written, True))
    for rx, cwe, _ in _NAMES:
        found.extend((m.start(), m.end(), cwe, m.group(0), False) for m in rx.finditer(text))
    found.sort(key=lambda f: (f[0], -f[1]))
    out: list[tuple[int, int, str, str, bool]] = []
    covered_until = -1
    for mention in found:
        if mention[0] < covered_until:
            continue
        covered_until = mention[1]
        out.append(mention)
    return out


def _first_weakness(text: str, skip: list[tuple[int, int]]) -> tuple[str | None, str | None]:
    """An explicit CWE id beats a name; a name right before the id ("buffer overflow (CWE-120)") names it."""
    mentions = [m for m in find_weakness_mentions(text) if not _inside(m[0], skip)]
    for index, (start, _, cwe, written, is_id) in enumerate(mentions):
        if is_id:
            if not written and index > 0:
                _, prev_end, _, prev_written, prev_is_id = mentions[index - 1]
                if not prev_is_id and 0 <= start - prev_end <= 3:
                    written = prev_written
            return cwe, written or None
    if mentions:
        return mentions[0][2], mentions[0][3]
    return None, None


def _weakness(text: str, secure_spans: list[tuple[int, int]]) -> tuple[str | None, str | None]:
    field = _FIELD_RE.search(text)
    if field is not None:
        value = field.group(1).strip().strip(".")
        if _NONE_VALUE_RE.match(value):
            return None, None
        if re.fullmatch(r"0*[1-9]\d{0,4}", value):
            return normalize_cwe(int(value)), None
        cwe, written = _first_weakness(value, [])
        if cwe is not None:
            return cwe, written
        cwe, written = _first_weakness(text, secure_spans)
        return (cwe, written) if cwe is not None else (None, value or None)
    return _first_weakness(text, secure_spans)


def parse_verdict(text: str) -> Verdict:
    """Parse a model's answer; see the module docstring for the rules.

    >>> parse_verdict("**Answer:** Vulnerable\\nWeakness: CWE-089 (SQL injection)")
    Verdict(label='vulnerable', cwe='CWE-89', weakness='SQL injection')
    >>> parse_verdict("No vulnerabilities were found. However, strcpy is risky.").label
    'secure'
    """
    prose, code = _strip_code(text or "")
    cleaned = _clean_markdown(prose)
    label, secure_spans = _scan(cleaned)
    if label is None and code:
        # code only: read nothing but explicit "Answer:" lines inside the blocks
        answers = "\n".join(m.group(0) for m in _ANSWER_LINE_RE.finditer(_clean_markdown(code)))
        if answers:
            cleaned = answers + "\n" + "\n".join(m.group(0) for m in _FIELD_RE.finditer(_clean_markdown(code)))
            label, secure_spans = _scan(cleaned)
    if label != "vulnerable":
        return Verdict(label or "uncertain", None, None)
    cwe, weakness = _weakness(cleaned, secure_spans)
    return Verdict("vulnerable", cwe, weakness)
