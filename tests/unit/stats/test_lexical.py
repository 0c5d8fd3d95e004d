"""The bag of code tokens (:mod:`vulnsteer.stats.lexical`): its own scoring equals scikit-learn's, and a probe design
with a bag-of-tokens term fits, saves and scores with it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from vulnsteer.config.design import ProbeDesign
from vulnsteer.detection.probe import ProbeData, fit_probe
from vulnsteer.stats.lexical import LexicalModel, code_tokens
from vulnsteer.steering.probe import Probe

VULNERABLE = ["strcpy(buf, name);", "gets(line);", "sprintf(out, fmt, s);", "system(cmd);", "free(p); use(p);"]
SECURE = ["strncpy(buf, name, n);", "fgets(line, n, f);", "snprintf(out, n, fmt, s);", "execv(path, args);",
          "free(p); p = NULL;"]  # fmt: skip


def _codes(k: int = 4) -> tuple[list[str], list[int]]:
    codes = [f"{c}\n// {i}" for i in range(k) for c in VULNERABLE + SECURE]
    return codes, [y for _ in range(k) for y in [1] * 5 + [0] * 5]


def test_scores_equal_sklearns_decision_function() -> None:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    codes, y = _codes()
    model = LexicalModel.fit(codes, y, min_df=2)
    vectorizer = TfidfVectorizer(tokenizer=code_tokens, lowercase=False, ngram_range=(1, 2), min_df=2,
                                 sublinear_tf=True, token_pattern=None)  # fmt: skip
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(vectorizer.fit_transform(codes), y)
    unseen = ["strcpy(a, b); strcpy(a, b);", "nothing known here", "", "fgets(x, n, f); p = NULL;"]
    expected = clf.decision_function(vectorizer.transform(codes + unseen))
    np.testing.assert_allclose(model.scores(codes + unseen), expected, rtol=1e-9, atol=1e-12)
    assert model.scores(["nothing known here"])[0] == model.bias  # no known term: the intercept alone


def test_scaled_scales_every_score_and_refuses_nonsense() -> None:
    codes, y = _codes()
    model = LexicalModel.fit(codes, y, min_df=2)
    np.testing.assert_allclose(model.scaled(2.5).scores(codes), 2.5 * model.scores(codes), rtol=1e-12)
    with pytest.raises(ValueError, match="positive"):
        model.scaled(0.0)
    with pytest.raises(ValueError, match="both classes"):
        LexicalModel.fit(codes, [1] * len(codes))
    with pytest.raises(ValueError, match="one IDF and one weight per term"):
        LexicalModel(("a", "b"), np.ones(2), np.ones(3), 0.0)


def _probe_data(codes: list[str], y: list[int], seed: int) -> ProbeData:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(y), 6, generator=gen) + torch.tensor(y, dtype=torch.float32)[:, None] * 0.3
    return ProbeData(x, np.array(y), codes=tuple(codes))


def test_probe_with_a_tokens_term_adds_the_lexical_score(tmp_path) -> None:  # type: ignore[no-untyped-def]
    codes, y = _codes(6)
    train, val = _probe_data(codes, y, 0), _probe_data(codes, y, 1)
    design = ProbeDesign((2,), ("code_mean",), C=1.0, tokens=1.0)
    probe = fit_probe(design, train, val)
    plain = fit_probe(dataclasses.replace(design, tokens=0.0), train, val)
    assert probe.key.endswith("tokens=1") and probe.reads_code and probe.lexical is not None
    assert torch.equal(probe.weight, plain.weight)  # the states' part is fitted as without the term
    states = plain.score_matrix(val.x) - plain.bias + probe.bias
    expected = states + torch.as_tensor(probe.lexical.scores(val.codes), dtype=torch.float32)
    torch.testing.assert_close(probe.score_matrix(val.x, None, val.codes), expected)
    # the term's val spread is `tokens` times the states' part's
    lexical_sd = float(np.std(probe.lexical.scores(val.codes)))
    assert lexical_sd == pytest.approx(float(plain.score_matrix(val.x).std(unbiased=False)), rel=1e-5)
    with pytest.raises(ValueError, match="bag-of-tokens term: give the code"):
        probe.score_matrix(val.x)
    saved = Probe.load(probe.save(tmp_path / "probe.safetensors"))
    assert saved == probe and saved.lexical is not None and saved.lexical.equals(probe.lexical)
    torch.testing.assert_close(saved.score_matrix(val.x, None, val.codes), probe.score_matrix(val.x, None, val.codes))
    assert saved.header()["lexical"]["terms"] == len(probe.lexical.vocabulary)
    adapted = probe.adapted(probe.score_matrix(val.x, None, val.codes), 2)
    assert float(adapted.score_matrix(val.x, None, val.codes).mean()) == pytest.approx(0.0, abs=1e-4)
    assert probe.random_like(0).lexical is None  # the random control reads the states only


def test_a_tokens_design_needs_the_code() -> None:
    codes, y = _codes(3)
    data = dataclasses.replace(_probe_data(codes, y, 0), codes=())
    with pytest.raises(ValueError, match="needs the code's text"):
        fit_probe(ProbeDesign((2,), ("code_mean",), tokens=1.0), data, data)
    with pytest.raises(ValueError, match="tokens weight"):
        ProbeDesign((2,), ("code_mean",), tokens=-1.0)
    with pytest.raises(ValueError, match="tokens_C must be a positive"):
        ProbeDesign((2,), ("code_mean",), tokens=1.0, tokens_C=0.0)


def test_the_terms_C_is_the_designs() -> None:
    codes, y = _codes(6)
    train, val = _probe_data(codes, y, 0), _probe_data(codes, y, 1)
    design = ProbeDesign((2,), ("code_mean",), C=1.0, tokens=1.0, tokens_C=10.0)
    probe = fit_probe(design, train, val)
    assert probe.key.endswith("tokens=1|tokens_C=10") and probe.lexical is not None
    # the term is the bag of tokens fitted at the design's C, scaled (one factor for every weight and the bias)
    alone = LexicalModel.fit(train.codes, train.y, C=10.0)
    factor = probe.lexical.bias / alone.bias
    np.testing.assert_allclose(probe.lexical.weight, alone.weight * factor, rtol=1e-9)
    weaker = LexicalModel.fit(train.codes, train.y)
    assert not np.allclose(alone.weight / alone.bias, weaker.weight / weaker.bias)  # C changes the fit
    # without a term its C is nothing: the same design, the same name
    assert ProbeDesign((2,), ("code_mean",), tokens_C=10.0) == ProbeDesign((2,), ("code_mean",))
    assert ProbeDesign.from_json(design.to_json()) == design
    assert ProbeDesign.from_json({k: v for k, v in design.to_json().items() if k != "tokens_C"}).tokens_C == 1.0
