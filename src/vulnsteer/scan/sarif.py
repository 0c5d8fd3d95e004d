"""SARIF 2.1.0 for a scan, as GitHub code scanning and other SARIF viewers read it.

One rule per CWE among the findings (id ``CWE-89``, a PascalCase name, short and full descriptions, help text
and markdown, the MITRE link, tags ``security`` and ``external/cwe/cwe-89``), plus ``vulnerable-function`` for
findings that name no CWE. Each finding is a result with ``ruleId``/``ruleIndex``, a ``level`` from its score
(:func:`~vulnsteer.scan.results.level_for`), ``rank`` = 100 x score, a message (with the scorer's explanation when
it has one), a ``physicalLocation`` with the function's region (``%SRCROOT%``-relative URI; the run declares
``columnKind: unicodeCodePoints``), a ``logicalLocation`` naming the function, ``partialFingerprints`` stable across
runs and line moves, and the score, verdict, scorer digest and model in ``properties``. The run's ``properties``
hold the scorer's provenance and the scan's counts, its warnings (``summary.warnings``; e.g. scores that do not
discriminate) and why it fails (``failures``); source files not scanned, files skipped by name, files with parse
errors and the warnings are ``toolExecutionNotifications``. No absolute path is written: artifact URIs are relative
to ``%SRCROOT%`` (the folder the scan ran in, left unnamed), and the provenance's paths are shortened
(:attr:`~vulnsteer.scan.results.ScanReport.portable_provenance`). Each rule carries the weakness's
``security-severity`` (:data:`~vulnsteer.cwe.CWE_SEVERITY`); with a baseline, each result is ``baselineState: new``.

>>> rule_name("SQL injection"), rule_name("OS command injection")
('SqlInjection', 'OsCommandInjection')
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import quote

from .. import __version__
from ..cwe import CWE_SEVERITY, DEFAULT_SEVERITY, cwe_name
from .diff import DiffReport
from .options import ScanOptions
from .results import FunctionResult, ScanReport, ScanStats, level_for
from .suppression import FINGERPRINT_KEY

__all__ = ["FINGERPRINT_KEY", "GENERIC_RULE", "SARIF_SCHEMA_URI", "build_diff_sarif", "build_sarif", "rule_name"]

SARIF_SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
#: Rule id of findings that name no CWE.
GENERIC_RULE = "vulnerable-function"
_BASE_ID = "%SRCROOT%"
_LOGICAL_KIND = {"function": "function", "method": "member", "constructor": "member", "file": "module"}


def rule_name(text: str) -> str:
    """A PascalCase rule name from a CWE's short name (examples in the module docstring)."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", text) if w]
    return "".join(w[:1].upper() + w[1:].lower() for w in words) or "Weakness"


def _rule(cwe: str | None) -> dict[str, Any]:
    if cwe is None:
        summary = "Function judged likely to be vulnerable"
        return {
            "id": GENERIC_RULE,
            "name": "VulnerableFunction",
            "shortDescription": {"text": summary},
            "fullDescription": {
                "text": "The detector gave this function a high probability of being vulnerable without naming "
                "a weakness."
            },
            "help": {
                "text": "vulnsteer's detector scored this function as likely vulnerable. The score is the "
                "model's probability that the function is vulnerable: a triage signal, not a proof. Review how "
                "untrusted data reaches it.",
                "markdown": "vulnsteer's detector scored this function as **likely vulnerable**. The score is the "
                "model's probability that the function is vulnerable: a triage signal, not a proof. Review how "
                "untrusted data reaches it.",
            },
            "defaultConfiguration": {"level": "warning"},
            "properties": {
                "tags": ["security"],
                "precision": "low",
                "security-severity": f"{DEFAULT_SEVERITY:.1f}",
            },
        }
    name = cwe_name(cwe)
    number = cwe.split("-", 1)[1]
    link = f"https://cwe.mitre.org/data/definitions/{number}.html"
    label = f"{name} ({cwe})" if name != cwe else cwe  # a CWE without a short name on file is named by its id
    caution = (
        "The score is the model's probability that the function is vulnerable: a triage signal, not a proof. "
        "Check how untrusted data reaches the flagged code"
    )
    return {
        "id": cwe,
        "name": rule_name(name if name != cwe else f"weakness {cwe}"),
        "shortDescription": {"text": f"{label[:1].upper()}{label[1:]}"},
        "fullDescription": {"text": f"Functions that vulnsteer's detector judges likely to contain {label}."},
        "help": {
            "text": f"{label}: vulnsteer's detector scored this function as likely to contain it. {caution}, and see "
            f"{link}.",
            "markdown": f"**{label}**: vulnsteer's detector scored this function as likely to contain it. {caution}. "
            f"See [{cwe}]({link}).",
        },
        "helpUri": link,
        "defaultConfiguration": {"level": "warning"},
        "properties": {
            "tags": ["security", f"external/cwe/cwe-{number}"],
            "precision": "low",
            "security-severity": f"{CWE_SEVERITY.get(cwe, DEFAULT_SEVERITY):.1f}",
        },
    }


def _artifact(result: FunctionResult) -> dict[str, str]:
    """A file's location: its path relative to the scan's base folder (``%SRCROOT%``), never absolute."""
    return {"uri": result.uri or quote(result.path), "uriBaseId": _BASE_ID}


def _message(result: FunctionResult) -> str:
    score = result.score
    named = cwe_name(score.cwe) if score.cwe else None
    weakness = "vulnerability" if named is None else named if named == score.cwe else f"{named} ({score.cwe})"
    head = f"Possible {weakness} in `{result.name}`: P(vulnerable) = {score.score:.2f}."
    if score.explanation:
        return f"{head} The model's answer: {score.explanation}"
    return head


def _result(result: FunctionResult, rule_index: int, report: _Scored) -> dict[str, Any]:
    score = result.score
    short = result.name if result.name.startswith("<") else result.name.rsplit(".", 1)[-1].rsplit("::", 1)[-1]
    return {
        "ruleId": score.cwe or GENERIC_RULE,
        "ruleIndex": rule_index,
        "level": level_for(score.score, report.options.min_score),
        "rank": round(100 * score.score, 1),
        "message": {"text": _message(result)},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": _artifact(result),
                    "region": result.region.to_sarif(),
                },
                "logicalLocations": [
                    {
                        "name": short,
                        "fullyQualifiedName": result.name,
                        "kind": _LOGICAL_KIND.get(result.kind, "function"),
                    }
                ],
            }
        ],
        "partialFingerprints": {FINGERPRINT_KEY: result.fingerprint},
        **({"baselineState": "new"} if report.options.baseline else {}),
        "properties": {
            "score": score.score,
            "verdict": score.verdict,
            "cwe": score.cwe,
            "language": result.language,
            "kind": result.kind,
            "truncated": score.truncated,
            "windows": score.windows,
            "cached": result.cached,
            "wholeFile": result.whole_file,
            "detector": report.digest,
            "model": report.portable_provenance.get("model"),
            **({"probe": score.probe, "push": score.push} if score.probe is not None else {}),
        },
    }


class _Scored(Protocol):
    """What a SARIF result needs of the report it belongs to (a scan's, or a diff's)."""

    @property
    def options(self) -> ScanOptions: ...

    @property
    def digest(self) -> str: ...

    @property
    def portable_provenance(self) -> dict[str, Any]: ...


def _rules(results: Sequence[FunctionResult]) -> tuple[list[str | None], dict[str | None, int]]:
    """The rules of *results* (one per CWE, in CWE order, then the generic rule) and each rule's index."""
    cwes = sorted({f.score.cwe for f in results if f.score.cwe}, key=lambda c: int(c.split("-", 1)[1]))
    rule_ids: list[str | None] = [*cwes, *([None] if any(f.score.cwe is None for f in results) else [])]
    return rule_ids, {cwe: i for i, cwe in enumerate(rule_ids)}


def _log(
    rule_ids: Sequence[str | None],
    results: list[dict[str, Any]],
    stats: ScanStats,
    properties: dict[str, Any],
    command_line: str | None,
) -> dict[str, Any]:
    """A SARIF log of one run: the rules, the results, the files not read or skipped and the warnings of *stats*
    as notifications, and the run's *properties*."""
    notes = [
        *(("error", f"not scanned: {line}") for line in stats.unscanned),
        *(("warning", f"skipped: {line}") for line in stats.skipped_named),
        *(("warning", f"parse errors (functions scored as found): {path}") for path in stats.parse_error_files),
        *(("warning", text) for text in stats.warnings),
    ]
    invocation: dict[str, Any] = {
        "executionSuccessful": True,
        "toolExecutionNotifications": [{"level": level, "message": {"text": text}} for level, text in notes],
    }
    if command_line:
        invocation["commandLine"] = command_line
    return {
        "$schema": SARIF_SCHEMA_URI,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "vulnsteer",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "rules": [_rule(cwe) for cwe in rule_ids],
                    }
                },
                "invocations": [invocation],
                "originalUriBaseIds": {
                    _BASE_ID: {"description": {"text": "the folder the scan ran in (paths are relative to it)"}}
                },
                "columnKind": "unicodeCodePoints",
                "results": results,
                "properties": properties,
            }
        ],
    }


def build_sarif(report: ScanReport, command_line: str | None = None) -> dict[str, Any]:
    """The SARIF log of a scan (findings only; see the module docstring).

    >>> build_sarif(report)["runs"][0]["tool"]["driver"]["name"]  # doctest: +SKIP
    'vulnsteer'
    """
    findings = report.findings
    rule_ids, index = _rules(findings)
    results = [_result(f, index[f.score.cwe], report) for f in findings]
    return _log(rule_ids, results, report.stats, _run_properties(report, report.stats.to_dict()), command_line)


def build_diff_sarif(report: DiffReport, command_line: str | None = None) -> dict[str, Any]:
    """The SARIF log of a diff (:mod:`vulnsteer.scan.diff`): one result per changed, renamed or added function
    (in :meth:`~vulnsteer.scan.diff.DiffReport.ordered` order), where it is now, its level from its score after
    the change, the message saying the score before and after (``scoreBefore``, ``scoreAfter``, ``delta``,
    ``change`` and ``riskier`` in its properties); removed functions are counted in the run's ``summary``, not
    reported (they have no place in the new version)."""
    present = [c for c in report.ordered() if c.after is not None]
    rule_ids, index = _rules([c.after for c in present if c.after is not None])
    results = []
    for change in present:
        now = change.current
        out = _result(now, index[now.score.cwe], report)
        before = change.before.score.score if change.before is not None else None
        if before is None:
            what = f"New function `{now.name}`: P(vulnerable) = {now.score.score:.2f}."
        else:
            verb = "riskier" if change.riskier else "no riskier"
            what = (
                f"`{now.name}` {change.kind}: P(vulnerable) {before:.2f} -> {now.score.score:.2f} "
                f"({now.score.score - before:+.2f}): this change made it {verb}."
            )
        out["message"] = {"text": what}
        out["properties"].update(
            change=change.kind, scoreBefore=before, scoreAfter=now.score.score, delta=change.delta,
            riskier=change.riskier,
        )  # fmt: skip
        results.append(out)
    return _log(rule_ids, results, report.stats, _run_properties(report, report.summary()), command_line)


def _run_properties(report: ScanReport | DiffReport, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The run's ``properties``, for a scan and a diff alike: the scorer (no absolute paths), the thresholds, the
    exit code, why it failed, and the *summary* of what was read."""
    return {
        "scorer": report.portable_provenance,
        "minScore": report.options.min_score,
        "failOn": report.options.fail_threshold,
        "exitCode": report.exit_code,
        "failures": report.failures(),
        "summary": summary,
    }
