from __future__ import annotations

from typing import Final

import pytest

from vulnsteer.cwe import CWE_NAMES, PRIORITY_CWES
from vulnsteer.detection.verdict import Verdict, find_weakness_mentions, parse_verdict

V: Final = "vulnerable"
S: Final = "secure"
U: Final = "uncertain"

# (model output, expected label, expected CWE or None)
CASES: list[tuple[str, str, str | None]] = [
    # --- the requested format, with markdown noise
    ("Answer: vulnerable\nWeakness: CWE-89 (SQL injection)", V, "CWE-89"),
    ("Answer: secure\nWeakness: none", S, None),
    ("**Answer:** Vulnerable\n**Weakness:** CWE-78 (OS command injection)", V, "CWE-78"),
    ("## Answer: `secure`", S, None),
    ("- Answer: **VULNERABLE**\n- Weakness: cwe-022", V, "CWE-22"),
    ("- **Answer**: Secure\n- **Weakness**: None", S, None),
    ("Answer: vulnerable\nWeakness: none", V, None),
    ("ANSWER: SECURE", S, None),
    ("```\nAnswer: vulnerable\nWeakness: CWE-22\n```", V, "CWE-22"),
    ("Answer: uncertain", U, None),
    # --- continuations of the "Answer:" prefix (generation stops after a few tokens)
    ("Answer: secure because the input is validated", S, None),
    ("Answer: The function is not vulnerable to", S, None),
    ("Answer: the code has a potential buffer overflow", V, "CWE-787"),
    ("Answer: Vulnerable\nWeakness: CWE-79 (Cross-site", V, "CWE-79"),
    ("Answer: insecure", V, None),
    ("Answer: not secure", V, None),
    ("Answer: This code snippet is a function that", U, None),
    # --- the format echoed back is not an answer
    ("Answer: vulnerable or secure?", U, None),
    ("Answer: vulnerable/secure\nWeakness: CWE-<id> (<name>) or Weakness: none", U, None),
    # --- negations: secure
    ("The code is not vulnerable.", S, None),
    ("Not vulnerable.", S, None),
    ("No vulnerabilities found.", S, None),
    ("The function does not contain any vulnerability.", S, None),
    ("I don't see any security issues in this code.", S, None),
    ("This code is free of vulnerabilities.", S, None),
    ("There is no SQL injection here because the query is parameterized.", S, None),
    ("This code does not appear to have any vulnerabilities.", S, None),
    ("I don't think this code is vulnerable.", S, None),
    ("There are no security vulnerabilities in this code.", S, None),
    ("The code has no vulnerabilities.", S, None),
    ("I could not find any vulnerabilities in the provided code.", S, None),
    ("The code doesn't have any obvious security flaws.", S, None),
    ("SQL injection is not possible here because the query uses placeholders.", S, None),
    ("No vulnerabilities were found. However, the use of strcpy could be risky.", S, None),
    ("No SQL injection is possible, but there is an XSS vulnerability.", S, None),
    # --- affirmatives: vulnerable
    ("Yes, this code is vulnerable to SQL injection.", V, "CWE-89"),
    ("The code contains a SQL injection vulnerability.", V, "CWE-89"),
    ("The function is susceptible to path traversal.", V, "CWE-22"),
    ("There is a buffer overflow in the strcpy call.", V, "CWE-787"),
    ("This code is insecure.", V, None),
    ("This is unsafe: the input is passed to system().", V, None),
    ("Unsafe.", V, None),
    ("The code is not secure.", V, None),
    ("The code isn't safe: strcpy copies without checking the length.", V, None),
    ("The code is not only vulnerable to SQL injection but also XSS.", V, "CWE-89"),
    ("The code does not properly sanitize the filename, leading to directory traversal.", V, "CWE-22"),
    ("There is no bounds checking, so an out-of-bounds write can occur.", V, "CWE-787"),
    ("The function lacks input validation.", V, None),
    ("The code does not use prepared statements, so SQL injection is possible.", V, "CWE-89"),
    ("There's a potential command injection via os.system.", V, "CWE-78"),
    ("Passing the name to the shell allows shell injection.", V, "CWE-78"),
    ("The code is vulnerable to cross-site scripting (XSS).", V, "CWE-79"),
    ("The template echoes the parameter unescaped: a reflected XSS.", V, "CWE-79"),
    ("The code is prone to integer overflow when len is large.", V, "CWE-190"),
    ("Integer wraparound in the size computation.", V, "CWE-190"),
    ("The pointer is used after it is freed, which is a use after free.", V, "CWE-416"),
    ("Is the code vulnerable?\n\nYes. It has a use-after-free.", V, "CWE-416"),
    ("It dereferences a NULL pointer when malloc fails: NULL dereference.", V, "CWE-476"),
    ("The code has an out-of-bounds read (buffer over-read).", V, "CWE-125"),
    ("The code calls `strcpy(buf, input)` unchecked. This is a **buffer overflow** (CWE-120).", V, "CWE-120"),
    ("An attacker can supply ../ to read arbitrary files.", V, None),
    ("This function is vulnerable. The issue is not SQL injection but command injection.", V, "CWE-78"),
    (
        "Let me analyze the code for potential vulnerabilities.\n\nThe input is concatenated into the query, "
        "so it is vulnerable to SQL injection (CWE 89).",
        V,
        "CWE-89",
    ),
    ("The buffer is thread-safe but the code has an integer overflow.", V, "CWE-190"),
    # --- plainly secure
    ("The code is secure.", S, None),
    ("The code is safe.", S, None),
    ("It's safe.", S, None),
    ("The code looks secure to me.", S, None),
    ("The function properly sanitizes its input.", S, None),
    ("The code prevents SQL injection by using parameterized queries.", S, None),
    ("The code appears to be secure against XSS.", S, None),
    ("### Vulnerability Analysis\n\nThe code uses parameterized queries, so it is safe from SQL injection.", S, None),
    ("Let me check whether the code is vulnerable.\n\nThe code is safe.", S, None),
    ("Secure", S, None),
    # --- bare yes / no answering "Is this code vulnerable?"
    ("No.", S, None),
    ("No, the code is fine.", S, None),
    ("Yes.", V, None),
    ("Yes – the strcpy call can overflow the buffer.", V, None),
    ("Is this code vulnerable? No.", S, None),
    ("Vulnerable? No.", S, None),
    ("The code is vulnerable? No, I don't think so.", S, None),
    ("Answer: Yes\nWeakness: shell injection", V, "CWE-78"),
    ("The answer is no.", S, None),
    ("**Vulnerable:** No", S, None),
    ("Vulnerable: yes", V, None),
    # --- nothing decisive
    ("It depends on how the function is called.", U, None),
    ("I cannot determine whether this code is vulnerable.", U, None),
    ("I'm not sure without more context.", U, None),
    ("Without more context it is hard to say, but it may be vulnerable.", U, None),
    ("", U, None),
    ("```c\nint main(void) { char buf[10]; gets(buf); /* unsafe */ }\n```", U, None),
    ("Sure! Here is my analysis:", U, None),
    ("<think>Is it safe? It might be safe.</think>\nAnswer: vulnerable (CWE-476)", V, "CWE-476"),
]


def test_at_least_forty_phrasings() -> None:
    assert len(CASES) >= 40
    assert len({text for text, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("text", "label", "cwe"), CASES, ids=[f"{i:02d}" for i in range(len(CASES))])
def test_parse_verdict(text: str, label: str, cwe: str | None) -> None:
    verdict = parse_verdict(text)
    assert (verdict.label, verdict.cwe) == (label, cwe), text


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("insecure", V),  # "secure" inside "insecure" is not a match
        ("The code is insecure, not secure.", V),
        ("unsafe", V),
        ("safe", S),
        ("The code is unsafe.", V),
        ("The code is safe.", S),
        ("The function is thread-safe.", U),  # "-safe" is not a security claim
        ("The helper safe_copy() is used.", U),  # nor is an identifier
    ],
)
def test_secure_is_not_insecure(text: str, label: str) -> None:
    assert parse_verdict(text).label == label


def test_first_verdict_wins() -> None:
    assert parse_verdict("The code is secure. Actually, on reflection, it is vulnerable.").label == S
    assert parse_verdict("The code is vulnerable. Actually, on reflection, it is secure.").label == V
    assert parse_verdict("It depends on the caller; if unchecked it is vulnerable.").label == U


def test_questions_are_not_statements() -> None:
    assert parse_verdict("Is this code vulnerable to SQL injection?").label == U
    assert parse_verdict("Is this code vulnerable to SQL injection? Yes.") == Verdict(V, "CWE-89", "SQL injection")


def test_code_blocks_are_ignored() -> None:
    text = "```python\n# this is unsafe, vulnerable\nos.system(cmd)\n```\nThe code above is secure."
    assert parse_verdict(text).label == S
    unterminated = "The code is secure.\n```c\n/* vulnerable */"
    assert parse_verdict(unterminated).label == S


@pytest.mark.parametrize(
    ("text", "cwe"),
    [
        ("Answer: vulnerable\nWeakness: CWE-78", "CWE-78"),
        ("Answer: vulnerable\nWeakness: CWE 78", "CWE-78"),
        ("Answer: vulnerable\nWeakness: cwe-078", "CWE-78"),
        ("Answer: vulnerable\nWeakness: CWE78", "CWE-78"),
        ("Answer: vulnerable\nWeakness: 78", "CWE-78"),
        ("Answer: vulnerable\nWeakness: OS command injection", "CWE-78"),
        ("Answer: vulnerable\nWeakness: command injection", "CWE-78"),
        ("Answer: vulnerable\nWeakness: SQL Injection", "CWE-89"),
        ("Answer: vulnerable\nWeakness: cross site scripting", "CWE-79"),
        ("Answer: vulnerable\nWeakness: directory traversal", "CWE-22"),
        ("Answer: vulnerable\nWeakness: out-of-bounds write", "CWE-787"),
        ("Answer: vulnerable\nWeakness: buffer overflows", "CWE-787"),
        ("Answer: vulnerable\nWeakness: out of bounds read", "CWE-125"),
        ("Answer: vulnerable\nWeakness: integer overflow or wraparound", "CWE-190"),
        ("Answer: vulnerable\nWeakness: use-after-free", "CWE-416"),
        ("Answer: vulnerable\nWeakness: NULL pointer dereference", "CWE-476"),
        ("Answer: vulnerable\nWeakness: null-pointer dereference", "CWE-476"),
        ("Answer: vulnerable\nWeakness: stack-based buffer overflow", "CWE-121"),
        ("Answer: vulnerable\nWeakness: something odd", None),
        ("Answer: vulnerable\nWeakness: N/A", None),
    ],
)
def test_weakness_field(text: str, cwe: str | None) -> None:
    verdict = parse_verdict(text)
    assert verdict.label == V
    assert verdict.cwe == cwe


def test_weakness_text() -> None:
    assert parse_verdict("Answer: vulnerable\nWeakness: CWE-78 (OS Command Injection)").weakness == (
        "OS Command Injection"
    )
    assert parse_verdict("It has a use-after-free.").weakness == "use-after-free"
    assert parse_verdict("Answer: vulnerable\nWeakness: unchecked input").weakness == "unchecked input"
    assert parse_verdict("Answer: vulnerable\nWeakness: CWE-89").weakness is None


def test_secure_and_uncertain_carry_no_weakness() -> None:
    assert parse_verdict("Answer: secure\nWeakness: CWE-89 (SQL injection)") == Verdict(S, None, None)
    assert parse_verdict("It depends; SQL injection may be possible.") == Verdict(U, None, None)


def test_explicit_id_beats_name() -> None:
    verdict = parse_verdict("The code is vulnerable: a buffer overflow (CWE-121) in the stack array.")
    assert (verdict.cwe, verdict.weakness) == ("CWE-121", "buffer overflow")


def test_every_known_name_is_recognised() -> None:
    for cwe, name in CWE_NAMES.items():
        mentions = find_weakness_mentions(f"The code has {name}.")
        assert mentions, name
        if cwe not in {"CWE-77", "CWE-119", "CWE-126"}:  # overridden by synonyms (see WEAKNESS_SYNONYMS)
            assert mentions[0][2] == cwe, name
    for cwe in PRIORITY_CWES:
        assert parse_verdict(f"Answer: vulnerable\nWeakness: {CWE_NAMES[cwe]}").cwe == cwe


def test_verdict_y_pred() -> None:
    assert [Verdict(V).y_pred, Verdict(S).y_pred, Verdict(U).y_pred] == [1, 0, -1]


def test_long_text_verdict_at_the_end() -> None:
    text = "The code reads input and processes it in a loop with many steps. " * 100 + "It is vulnerable."
    assert parse_verdict(text).label == V
