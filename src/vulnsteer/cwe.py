"""CWE identifiers: normalisation, names and families.

Every CWE id inside vulnsteer is the canonical string ``"CWE-<n>"`` without leading zeros.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "CWE_NAMES",
    "CWE_SEVERITY",
    "DEFAULT_SEVERITY",
    "PRIORITY_CWES",
    "UnknownCWEError",
    "apply_merge",
    "cwe_name",
    "cwe_sort_key",
    "normalize_cwe",
    "parse_merge_map",
]

#: The weaknesses vulnsteer's users care most about, in report order.
PRIORITY_CWES: tuple[str, ...] = (
    "CWE-22",
    "CWE-78",
    "CWE-79",
    "CWE-89",
    "CWE-190",
    "CWE-416",
    "CWE-476",
    "CWE-787",
)

#: Short human names, used in prompts, the verdict parser and reports.
CWE_NAMES: Mapping[str, str] = {
    "CWE-20": "improper input validation",
    "CWE-22": "path traversal",
    "CWE-77": "command injection",
    "CWE-78": "OS command injection",
    "CWE-79": "cross-site scripting",
    "CWE-89": "SQL injection",
    "CWE-94": "code injection",
    "CWE-116": "improper output encoding",
    "CWE-119": "buffer overflow",
    "CWE-120": "classic buffer overflow",
    "CWE-121": "stack-based buffer overflow",
    "CWE-122": "heap-based buffer overflow",
    "CWE-124": "buffer underwrite",
    "CWE-125": "out-of-bounds read",
    "CWE-126": "buffer over-read",
    "CWE-127": "buffer under-read",
    "CWE-190": "integer overflow",
    "CWE-200": "information exposure",
    "CWE-295": "improper certificate validation",
    "CWE-326": "inadequate encryption strength",
    "CWE-327": "broken cryptographic algorithm",
    "CWE-338": "weak random number generator",
    "CWE-352": "cross-site request forgery",
    "CWE-377": "insecure temporary file",
    "CWE-400": "uncontrolled resource consumption",
    "CWE-416": "use after free",
    "CWE-434": "unrestricted file upload",
    "CWE-476": "NULL pointer dereference",
    "CWE-502": "deserialization of untrusted data",
    "CWE-611": "XML external entity",
    "CWE-676": "use of a dangerous function",
    "CWE-681": "incorrect numeric conversion",
    "CWE-732": "incorrect permission assignment",
    "CWE-787": "out-of-bounds write",
    "CWE-798": "hard-coded credentials",
    "CWE-915": "mass assignment",
    "CWE-916": "weak password hash",
    "CWE-918": "server-side request forgery",
}

#: How severe a weakness typically is, as a CVSS-style score in [0, 10] (what GitHub code scanning reads from a SARIF
#: rule's ``security-severity``: 9.0 and above critical, 7.0 high, 4.0 medium): the scores CodeQL's queries for the
#: same weakness carry. It rates the weakness, not a finding's confidence (that is its score).
CWE_SEVERITY: Mapping[str, float] = {
    "CWE-20": 7.5,
    "CWE-22": 7.5,
    "CWE-77": 9.8,
    "CWE-78": 9.8,
    "CWE-79": 6.1,
    "CWE-89": 8.8,
    "CWE-94": 9.3,
    "CWE-116": 6.1,
    "CWE-119": 9.3,
    "CWE-120": 9.3,
    "CWE-121": 9.3,
    "CWE-122": 9.3,
    "CWE-124": 9.3,
    "CWE-125": 7.5,
    "CWE-126": 7.5,
    "CWE-127": 7.5,
    "CWE-190": 8.1,
    "CWE-200": 5.4,
    "CWE-295": 7.5,
    "CWE-326": 7.5,
    "CWE-327": 7.5,
    "CWE-338": 7.8,
    "CWE-352": 8.8,
    "CWE-377": 7.0,
    "CWE-400": 7.5,
    "CWE-416": 9.3,
    "CWE-434": 8.8,
    "CWE-476": 7.5,
    "CWE-502": 9.8,
    "CWE-611": 9.1,
    "CWE-676": 7.5,
    "CWE-681": 8.1,
    "CWE-732": 7.8,
    "CWE-787": 9.3,
    "CWE-798": 9.8,
    "CWE-915": 7.5,
    "CWE-916": 8.1,
    "CWE-918": 9.1,
}
#: The severity of a weakness without one on file, and of a finding that names no weakness (medium).
DEFAULT_SEVERITY = 5.0

_CWE_RE = re.compile(r"^\s*(?:cwe)?[\s_\-:]*0*(\d{1,5})(?:[_\s].*)?\s*$", re.IGNORECASE)


class UnknownCWEError(ValueError):
    """A string that cannot be read as a CWE id."""


def normalize_cwe(value: object) -> str:
    """Return the canonical ``CWE-<n>`` form of *value*.

    Accepts ``"CWE-078"``, ``"cwe-78"``, ``"78"``, ``78``, ``"CWE78_OS_Command_Injection"``.

    >>> normalize_cwe("CWE78_OS_Command_Injection")
    'CWE-78'
    """
    if isinstance(value, bool):
        raise UnknownCWEError(f"not a CWE id: {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise UnknownCWEError(f"not a CWE id: {value!r}")
        return f"CWE-{value}"
    if not isinstance(value, str):
        raise UnknownCWEError(f"not a CWE id: {value!r}")
    match = _CWE_RE.match(value)
    if match is None or int(match.group(1)) == 0:
        raise UnknownCWEError(f"not a CWE id: {value!r} (expected e.g. 'CWE-78', 'cwe-078' or '78')")
    return f"CWE-{int(match.group(1))}"


def cwe_name(cwe: str) -> str:
    """Human name of a CWE, or the id itself when it has none on file."""
    return CWE_NAMES.get(normalize_cwe(cwe), normalize_cwe(cwe))


def cwe_sort_key(cwe: str) -> tuple[int, str]:
    """Sorts canonical CWE ids by number, anything else after them.

    >>> sorted(["CWE-787", "CWE-22", "other", "CWE-190"], key=cwe_sort_key)
    ['CWE-22', 'CWE-190', 'CWE-787', 'other']
    """
    match = re.match(r"CWE-(\d+)$", cwe)
    return (int(match.group(1)), cwe) if match else (1 << 30, cwe)


def parse_merge_map(specs: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """Parse ``--merge-cwe 77=78`` style specs into ``{"CWE-77": "CWE-78"}``."""
    merged: dict[str, str] = {}
    for spec in specs or ():
        if "=" not in spec:
            raise UnknownCWEError(f"--merge-cwe expects FROM=TO (e.g. 77=78), got {spec!r}")
        src, dst = spec.split("=", 1)
        merged[normalize_cwe(src)] = normalize_cwe(dst)
    return merged


def apply_merge(cwe: str, merge: Mapping[str, str] | None) -> str:
    """Map *cwe* through a merge map (identity when absent)."""
    if not merge:
        return cwe
    return merge.get(cwe, cwe)
