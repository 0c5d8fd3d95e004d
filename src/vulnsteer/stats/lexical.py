"""A bag of code tokens: a logistic regression on TF-IDF of the code's tokens (uni- and bigrams), no model at all.

What the code's words alone tell. The transfer protocol reports it as a control beside the probes, and a probe
design may add it as a term (:attr:`vulnsteer.config.design.ProbeDesign.tokens`). Fitted with scikit-learn, applied
without it (the vocabulary, its IDF weights and the coefficients are all a score needs; numpy only), so a saved
probe scores the same as the model it was fitted as (tested against scikit-learn's own scores).

>>> codes = ["strcpy(buf, s);", "strncpy(buf, s, n);", "gets(buf);", "fgets(buf, n, f);"] * 3
>>> model = LexicalModel.fit(codes, [1, 0, 1, 0] * 3, min_df=1)
>>> [bool(s > 0) for s in model.scores(["strcpy(a, b);", "fgets(a, n, f);"])]
[True, False]
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..config.defaults import DEFAULT_TOKENS_C

__all__ = ["TOKEN_PATTERN", "LexicalModel", "code_tokens"]

#: Code tokens: identifiers, numbers, two-character operators, single symbols.
TOKEN_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*|\d+|==|!=|<=|>=|->|\+\+|--|&&|\|\||[^\sA-Za-z0-9_]"
_TOKEN = re.compile(TOKEN_PATTERN)


def code_tokens(text: str) -> list[str]:
    """The tokens of *text* (:data:`TOKEN_PATTERN`; no token holds whitespace, so a bigram is two joined by one
    space).

    >>> code_tokens("if (n >= 0) p->x++;")
    ['if', '(', 'n', '>=', '0', ')', 'p', '->', 'x', '++', ';']
    """
    return _TOKEN.findall(text)


def _terms(text: str) -> Counter[str]:
    tokens = code_tokens(text)
    return Counter([*tokens, *(f"{a} {b}" for a, b in itertools.pairwise(tokens))])


@dataclass(frozen=True, eq=False)
class LexicalModel:
    """A fitted bag of code tokens: ``score = tfidf(code) @ weight + bias`` with scikit-learn's TF-IDF
    (sublinear term counts, smooth IDF, rows L2-normalised) over :attr:`vocabulary` (unigrams and space-joined
    bigrams of :func:`code_tokens`). Immutable; :meth:`scaled` returns a new one.

    Attributes:
        vocabulary: the terms, in the order of *idf* and *weight*.
        idf: ``[len(vocabulary)]`` inverse document frequencies.
        weight: ``[len(vocabulary)]`` coefficients of the logistic regression (log-odds of *vulnerable*).
        bias: its intercept.
    """

    vocabulary: tuple[str, ...]
    idf: NDArray[np.float64]
    weight: NDArray[np.float64]
    bias: float

    def __post_init__(self) -> None:
        idf = np.asarray(self.idf, dtype=np.float64).ravel()
        weight = np.asarray(self.weight, dtype=np.float64).ravel()
        if not (len(idf) == len(weight) == len(self.vocabulary)):
            raise ValueError(
                f"a lexical model needs one IDF and one weight per term: {len(self.vocabulary)} terms, "
                f"{len(idf)} IDF values, {len(weight)} weights"
            )
        if not (np.isfinite(idf).all() and np.isfinite(weight).all() and math.isfinite(self.bias)):
            raise ValueError("a lexical model's IDF values, weights and bias must be finite")
        object.__setattr__(self, "vocabulary", tuple(self.vocabulary))
        object.__setattr__(self, "idf", idf)
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "_index", {term: i for i, term in enumerate(self.vocabulary)})

    @classmethod
    def fit(cls, codes: Sequence[str], y: ArrayLike, *, C: float = DEFAULT_TOKENS_C, min_df: int = 3) -> LexicalModel:
        """A logistic regression (``C``) on TF-IDF of *codes*' uni- and bigrams seen in at least *min_df* of them
        (1 = vulnerable)."""
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        labels = np.asarray(y, dtype=np.int64)
        if len(codes) != len(labels):
            raise ValueError(f"a lexical model: {len(codes)} codes for {len(labels)} labels")
        if len(np.unique(labels)) < 2:
            raise ValueError("a lexical model needs both classes to fit")
        vectorizer = TfidfVectorizer(tokenizer=code_tokens, lowercase=False, ngram_range=(1, 2), min_df=min_df,
                                     sublinear_tf=True, token_pattern=None)  # fmt: skip
        clf = LogisticRegression(C=C, max_iter=2000).fit(vectorizer.fit_transform(list(codes)), labels)
        vocabulary = vectorizer.get_feature_names_out().tolist()
        return cls(tuple(vocabulary), vectorizer.idf_, clf.coef_[0], float(clf.intercept_[0]))

    def scores(self, codes: Sequence[str]) -> NDArray[np.float64]:
        """``[n]`` scores (log-odds of *vulnerable*, or as :meth:`scaled`) of *codes*."""
        index: dict[str, int] = object.__getattribute__(self, "_index")
        out = np.full(len(codes), self.bias, dtype=np.float64)
        for row, code in enumerate(codes):
            found = [(index[t], c) for t, c in _terms(code).items() if t in index]
            if not found:
                continue
            cols = np.fromiter((i for i, _ in found), dtype=np.int64, count=len(found))
            tf = 1.0 + np.log(np.fromiter((c for _, c in found), dtype=np.float64, count=len(found)))
            values = tf * self.idf[cols]
            out[row] += float(values @ self.weight[cols]) / float(np.linalg.norm(values))
        return out

    def scaled(self, factor: float) -> LexicalModel:
        """The same model with every score multiplied by *factor*."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"a lexical model scales by a positive number, got {factor!r}")
        return replace(self, weight=self.weight * factor, bias=self.bias * factor)

    def equals(self, other: LexicalModel) -> bool:
        """The same terms and the same numbers."""
        return (
            self.vocabulary == other.vocabulary
            and self.bias == other.bias
            and np.array_equal(self.idf, other.idf)
            and np.array_equal(self.weight, other.weight)
        )

    def fingerprint(self) -> bytes:
        """The terms, weights and IDF as bytes (for digests of what decides a score; the bias is in :meth:`summary`)."""
        return json.dumps(self.vocabulary).encode() + self.weight.tobytes() + self.idf.tobytes()

    def summary(self) -> dict[str, Any]:
        """What a header prints: the size, the bias and the terms weighted most either way."""
        order = np.argsort(self.weight)
        return {
            "terms": len(self.vocabulary),
            "bias": self.bias,
            "most_vulnerable": [self.vocabulary[i] for i in order[::-1][:8]],
            "most_secure": [self.vocabulary[i] for i in order[:8]],
        }

    def to_arrays(self) -> tuple[dict[str, NDArray[np.float64]], str]:
        """The IDF and weight arrays, and the vocabulary and bias as JSON (a safetensors file's tensors and
        metadata string)."""
        return {"idf": self.idf, "weight": self.weight}, json.dumps(
            {"vocabulary": list(self.vocabulary), "bias": self.bias}
        )

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], meta: str) -> LexicalModel:
        """The inverse of :meth:`to_arrays`."""
        doc = json.loads(meta)
        return cls(
            tuple(str(t) for t in doc["vocabulary"]),
            np.asarray(arrays["idf"], dtype=np.float64),
            np.asarray(arrays["weight"], dtype=np.float64),
            float(doc["bias"]),
        )
