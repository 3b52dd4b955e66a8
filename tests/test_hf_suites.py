"""The Hugging Face text suites (ag-news, nli), Spearman's correlation, and the harness's
supervised hard-negative hook, with no network and no real data.

Everything here runs on TINY FIXTURES MADE IN THE TESTS: a dozen AG News rows in the original
CSV layout, a few SNLI/MultiNLI lines and STS-B pairs in their releases' layouts, written to a
temporary directory and read through --data-dir; and, for the hook, a throwaway vector suite
registered only inside its tests. They check readers, splits, views and interfaces; they are
not the datasets, and nothing here says anything about accuracy on them.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import Table, make_ctx
from torch import nn

import negbench.suites.hf_text as hf
import negbench.suites.nli as nli
from negbench import strategies, suites
from negbench.harness.cli import main
from negbench.harness.config import BudgetConfig, build_config
from negbench.harness.metrics import NegativeMeter, false_negative_matrix
from negbench.harness.objectives import info_nce
from negbench.harness.runner import HARD_NEGATIVE_ID, Trainer, run, with_hard_negatives
from negbench.strategies.in_batch import in_batch_negatives
from negbench.suites import DataUnavailable, Split, Suite, SuiteData, SuiteError
from negbench.suites.hf_text import AGNewsConfig, clean_ag
from negbench.suites.nli import NLIConfig, average_ranks, spearman
from negbench.suites.text import TransformerConfig

ROOT = Path(__file__).resolve().parents[1]
SMALL = TransformerConfig(dim=32, layers=1, heads=2, ff=64, max_len=64, proj_dim=16)
SMALL_SETS = {"suite.vocab_size": "200", "suite.transformer.dim": "32",
              "suite.transformer.layers": "1", "suite.transformer.heads": "2",
              "suite.transformer.ff": "64", "suite.transformer.max_len": "64",
              "suite.transformer.proj_dim": "16"}


def squash(s: str) -> str:
    return "".join(s.lower().split())


# --------------------------------------------------------------------------- fixture writers
AG_TOPICS = {
    1: ["election", "minister", "summit", "treaty", "embassy"],
    2: ["football", "tennis", "cricket", "goal", "league"],
    3: ["shares", "profit", "merger", "bank", "market"],
    4: ["software", "chip", "space", "internet", "robot"],
}


def write_ag(root: Path, header: bool = False) -> dict:
    """ag_news_csv/ with train.csv (20 distinct rows + 1 repeated description) and test.csv
    (8 rows, one repeating a training description), as the release writes them."""
    d = root / "ag_news_csv"
    d.mkdir(parents=True)
    train, test = [], []
    for c, words in AG_TOPICS.items():
        for i, w in enumerate(words):
            train.append([str(c), f"{w.title()} news {i}",
                          f"The {w} story, part {i}\\continues #39;here quot;{w}quot;."])
        test.append([str(c), f"Late {words[0]}", f"A late {words[0]} report on {words[1]}."])
        test.append([str(c), f"Later {words[2]}", f"Another {words[2]} report {words[3]}."])
    train.append(["2", "Again", train[0][2].replace("The ", "THE  ")])  # repeats row 0's
    test[-1][2] = train[5][2]  # a test item repeating a training description
    for name, rows in (("train.csv", train), ("test.csv", test)):
        with open(d / name, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, quoting=csv.QUOTE_ALL)
            if header:
                w.writerow(["Class Index", "Title", "Description"])
            w.writerows(rows)
    (d / "classes.txt").write_text("World\nSports\nBusiness\nSci/Tech\n")
    return {"train": train, "test": test, "dir": d}


SNLI_TRAIN = [  # (gold, premise, hypothesis)
    ("neutral", "A man plays a guitar.", "The man is famous."),
    ("contradiction", "A man plays a guitar.", "The man is asleep."),
    ("entailment", "A man plays a guitar.", "A person makes music."),
    ("entailment", "Two dogs run in a field.", "Animals are outside."),
    ("contradiction", "Two dogs run in a field.", "The dogs sleep indoors."),
    ("entailment", "A  man plays a guitar.", "A later entailment is ignored."),
    ("entailment", "A child eats an apple.", "A kid has food."),
    ("contradiction", "A child eats an apple.", "Nobody is eating."),
    ("-", "A woman reads a book.", "She reads."),
    ("entailment", "A woman reads a book.", "Someone reads."),  # no contradiction: dropped
    ("entailment", "A boy rides a bike.", "A child is cycling."),
    ("contradiction", "A boy rides a bike.", "The boy is swimming."),
]
SNLI_TEST = [
    ("entailment", "A cat sits on a mat.", "An animal is sitting."),
    ("contradiction", "A cat sits on a mat.", "The cat is running."),
    ("entailment", "Two dogs run in a field.", "Dogs move."),  # a training premise: dropped
    ("contradiction", "Two dogs run in a field.", "Dogs rest."),
]
GENRES = ("fiction", "government", "slate", "telephone", "travel")


def _mnli(genres, tag):
    rows = []
    for g in genres:
        for i in range(2 if tag == "train" else 1):
            p = f"In the {g} text number {i} {tag} the clerk signs the form."
            rows += [("entailment", p, f"The clerk signs something {i}.", g),
                     ("contradiction", p, f"The clerk refuses to sign {i}.", g)]
    return rows


STS_PAIRS = [("A man plays a guitar.", "A man plays music.", 4.2),
             ("A dog runs.", "A cat sleeps.", 0.4),
             ("A child eats an apple.", "A kid eats fruit.", 3.8),
             ("Shares fell.", "The market dropped.", 3.0),
             ("A boy rides a bike.", "A woman reads.", 0.2),
             ("The clerk signs the form.", "The form is signed.", 4.6)]


def write_nli(root: Path, snli: bool = True) -> Path:
    def jsonl(path: Path, rows):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                line = {"gold_label": r[0], "sentence1": r[1], "sentence2": r[2],
                        "pairID": "x", "annotator_labels": [r[0]]}
                if len(r) > 3:
                    line["genre"] = r[3]
                f.write(json.dumps(line) + "\n")

    if snli:
        jsonl(root / "snli_1.0" / "snli_1.0_train.jsonl", SNLI_TRAIN)
        jsonl(root / "snli_1.0" / "snli_1.0_test.jsonl", SNLI_TEST)
    jsonl(root / "multinli_1.0" / "multinli_1.0_train.jsonl", _mnli(GENRES, "train"))
    jsonl(root / "multinli_1.0" / "multinli_1.0_dev_matched.jsonl", _mnli(GENRES, "dev"))
    sts = root / "stsbenchmark"
    sts.mkdir(parents=True, exist_ok=True)
    for name, sign in (("sts-train.csv", 1), ("sts-test.csv", 1), ("sts-dev.csv", -1)):
        # sts-dev: the test pairs with their gold scores negated (so val reads another file)
        lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{sign * s:.3f}\t{a}\t{b}"
                 + ("\textra\tfields" if i == 0 else "")
                 for i, (a, b, s) in enumerate(STS_PAIRS)]
        (sts / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty negbench cache; the Hub never reachable and never loaded (no socket opened)."""
    c = tmp_path / "cache"
    c.mkdir()
    monkeypatch.setenv("NEGBENCH_CACHE", str(c))

    def no_hub(*a, **k):
        raise AssertionError("the Hub was contacted")

    monkeypatch.setattr(hf, "reachable", no_hub)
    monkeypatch.setattr(hf, "hub_load", no_hub)
    monkeypatch.setattr(nli, "hub_load", no_hub)
    return c


def ag_cfg(**kw) -> AGNewsConfig:
    return AGNewsConfig(**{"val_size": 4, "vocab_size": 200, "transformer": SMALL, **kw})


def nli_cfg(**kw) -> NLIConfig:
    return NLIConfig(**{"val_size": 6, "vocab_size": 200, "transformer": SMALL, **kw})


# --------------------------------------------------------------------------- (1) offline
NAMES = ("ag-news", "nli")
HINTS = {"ag-news": ("train.csv", "test.csv", hf.AG_RELEASE),
         "nli": ("snli_1.0/", "multinli_1.0/", "stsbenchmark/", nli.STS_URL)}


def test_the_two_are_registered_as_online_text_suites():
    for n in NAMES:
        cls = suites.get(n)
        assert not cls.offline and cls.modality == "text"
        assert cls.default_batch_size == 512 and cls.default_budget == ("samples", 1_000_000)


@pytest.mark.parametrize("name", NAMES)
def test_without_the_extra_it_is_one_line_naming_it(name, cache, tmp_path, monkeypatch):
    monkeypatch.setattr(hf, "datasets_available", lambda: False)
    empty = tmp_path / "data"
    empty.mkdir()
    s = suites.create(name, data_dir=str(empty))
    status = s.data_status()
    assert status != "present" and "\n" not in status
    for needle in (name, "pip install 'negbench[hf]'", "hf extra is not installed", str(empty),
                   *HINTS[name]):
        assert needle in status, needle
    with pytest.raises(DataUnavailable) as e:
        s.locate()
    assert str(e.value) == status
    with pytest.raises(DataUnavailable, match="negbench\\[hf\\]"):
        s.load()


@pytest.mark.parametrize("name", NAMES)
def test_with_the_extra_but_offline_it_is_one_line(name, cache, monkeypatch):
    monkeypatch.setattr(hf, "datasets_available", lambda: True)
    monkeypatch.setattr(hf, "reachable", lambda url, timeout=3.0: False)
    s = suites.create(name)
    assert s.data_status() != "present"  # never asks the network
    with pytest.raises(DataUnavailable) as e:
        s.locate()
    msg = str(e.value)
    assert "\n" not in msg and "offline: cannot reach huggingface.co" in msg
    assert "pip install 'negbench[hf]'" in msg and HINTS[name][0] in msg


def test_hf_offline_variables_are_honoured_without_a_probe(cache, monkeypatch):
    monkeypatch.setattr(hf, "datasets_available", lambda: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataUnavailable, match="HF_HUB_OFFLINE"):
        suites.create("ag-news").locate()  # `cache` makes any probe fail the test


@pytest.mark.parametrize("name", NAMES)
def test_status_never_touches_the_network(name, cache, monkeypatch):
    monkeypatch.setattr(hf, "datasets_available", lambda: True)
    s = suites.create(name)
    assert "not fetched yet" in s.data_status()
    cfg = dataclasses.replace(s.cfg, download=False)
    with pytest.raises(DataUnavailable, match="download is off"):
        suites.create(name, cfg).locate()


def test_the_cli_says_one_line(cache, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hf, "datasets_available", lambda: False)
    code = main(["run", "--suite", "nli", "--strategy", "in-batch", "--no-progress",
                 "--data-dir", str(tmp_path / "nowhere"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "negbench[hf]" in lines[0] and "Traceback" not in err


def test_importing_and_listing_suites_never_imports_datasets(tmp_path):
    """Even where `datasets` is installed: a stand-in `datasets` on the path (importable, so
    an import anywhere, guarded or not, would leave it in sys.modules) is never imported by
    `import negbench.suites`, the registry, the status lines or the one-line errors."""
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("def load_dataset(*a, **k):\n    raise AssertionError\n")
    code = ("import sys\n"
            "from negbench import suites\n"
            "import negbench.suites.hf_text as hf\n"
            "assert hf.datasets_available()\n"
            "hf.reachable = lambda url, timeout=3.0: False\n"
            "for n in suites.names():\n"
            "    s = suites.create(n)\n"
            "    s.data_status()\n"
            "for n in ('ag-news', 'nli'):\n"
            "    try:\n"
            "        suites.create(n).locate()\n"
            "    except suites.DataUnavailable:\n"
            "        pass\n"
            "assert 'datasets' not in sys.modules\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"),
           "NEGBENCH_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr[-2000:]


# --------------------------------------------------------------------------- (2) ag-news
def test_clean_ag_undoes_the_release_escapes():
    raw = "Wall St.\\band of #39;bears quot;win quot; &lt;b&gt;  x &amp; y"
    assert clean_ag(raw) == "Wall St. band of 'bears \"win \" <b> x & y"
    assert clean_ag("Issue #5; C# 3; salt; camp;") == "Issue #5; C# 3; salt; camp;"  # text
    assert clean_ag("Google #39;s quot;Bigquot; #151; day") == "Google 's \"Big\" \u2014 day"


@pytest.mark.parametrize("header", [False, True])
def test_ag_fixture_loads_with_the_contracts(header, cache, tmp_path):
    rows = write_ag(tmp_path, header=header)
    s = suites.create("ag-news", ag_cfg(), data_dir=str(tmp_path))
    assert s.data_status() == "present" and s.locate() == str(rows["dir"])
    d = s.load()
    assert d.n_classes == 4 and d.class_names == ("World", "Sports", "Business", "Sci/Tech")
    assert s.duplicates_dropped == 2
    assert len(d.train) + len(d.val) == 20 and len(d.val) == 4 and len(d.test) == 7
    assert set(d.val.y.tolist()) == set(range(4))  # stratified: one of each topic
    for split in (d.train, d.val, d.test):
        assert split.x.shape[1:] == (2, 64) and split.x.dtype == torch.long
        assert split.y.dtype == torch.long and int(split.y.max()) < 4
    ids = torch.cat([d.train.source, d.val.source, d.test.source])
    assert ids.unique().numel() == ids.numel() == 27
    assert torch.equal(d.test.source, 20 + torch.arange(7))
    # each stored item is its row: title in row 0, cleaned description in row 1, its label
    train_rows = rows["train"][:20]
    for i in range(len(d.train)):
        r = train_rows[int(d.train.source[i])]
        assert int(d.train.y[i]) == int(r[0]) - 1
        assert squash(s.tokenizer.decode(d.train.x[i, 0].tolist())) == squash(r[1])
        body = s.tokenizer.decode([t for t in d.train.x[i, 1].tolist() if t])
        assert squash(body) == squash(clean_ag(r[2]))
    # the tokenizer was trained on the training split and cached under the suite's folder
    assert list((cache / "ag-news").glob("wordpiece-200-*.json"))


def test_ag_jsonl_layout_reads_the_same(cache, tmp_path):
    rows = write_ag(tmp_path / "csv")
    j = tmp_path / "jsonl"
    j.mkdir()
    for split in ("train", "test"):
        with open(j / f"{split}.jsonl", "w") as f:
            for r in rows[split]:
                f.write(json.dumps({"label": int(r[0]), "title": r[1], "description": r[2]})
                        + "\n")
    a = suites.create("ag-news", ag_cfg(), data_dir=str(rows["dir"])).load()
    b = suites.create("ag-news", ag_cfg(), data_dir=str(j)).load()
    for name in ("train", "val", "test"):
        assert torch.equal(a.split(name).x, b.split(name).x)
        assert torch.equal(a.split(name).y, b.split(name).y)


def test_ag_views_and_retrieval(cache, tmp_path):
    write_ag(tmp_path)
    s = suites.create("ag-news", ag_cfg(dropout_p=0.0, view_len=8), data_dir=str(tmp_path))
    d = s.load()
    x = d.train.x[:6]
    v1, v2 = s.views(x, torch.Generator().manual_seed(0))
    assert v1.shape == v2.shape == s.prepare(x).shape == (6, 8)
    assert torch.equal(v1, x[:, 0, :8])  # the title (no dropout here)
    for i in range(6):  # a contiguous span of the description
        row, span = x[i, 1].tolist(), v2[i].tolist()
        starts = [j for j in range(len(row) - 7) if row[j:j + 8] == span]
        assert starts, (row, span)
    enc = s.build_encoder()
    m = s.evaluate_extra(enc, d, "test")
    assert set(m) == {"retrieval_r1", "retrieval_r10", "retrieval_mrr"}
    assert all(0.0 <= v <= 1.0 for v in m.values())


@pytest.mark.parametrize("bad,why", [
    (dict(val_size=0), "val_size must be >= 1"), (dict(vocab_size=50), "vocab_size must be"),
    (dict(title_len=0), "title_len must be >= 1"), (dict(view_len=65), "view_len (65) must not "
                                                   "exceed desc_len"),
    (dict(dropout_p=1.0), "dropout_p must lie in"),
    (dict(desc_len=512, view_len=300), "exceeds the transformer's max_len")])
def test_ag_bad_config_is_one_line(bad, why):
    with pytest.raises(SuiteError, match=re.escape(why)) as e:
        ag_cfg(**bad)
    assert str(e.value).startswith("ag-news: ") and "\n" not in str(e.value)


def test_ag_bad_val_size_is_a_clear_error(cache, tmp_path):
    write_ag(tmp_path)
    with pytest.raises(SuiteError, match="val_size 30 must lie in"):
        suites.create("ag-news", ag_cfg(val_size=30), data_dir=str(tmp_path)).load()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.csv").write_text('"7","t","d"\n')
    (bad / "test.csv").write_text('"1","t","d"\n')
    with pytest.raises(SuiteError, match="class 7 outside 1..4"):
        suites.create("ag-news", ag_cfg(), data_dir=str(bad)).load()


def test_ag_hub_fetch_failure_is_one_line(cache, monkeypatch):
    monkeypatch.setattr(hf, "datasets_available", lambda: True)
    monkeypatch.setattr(hf, "reachable", lambda url, timeout=3.0: True)

    def fail(name):
        raise ConnectionError("no route to host\nsecond line")

    monkeypatch.setattr(hf, "hub_load", fail)
    with pytest.raises(DataUnavailable) as e:
        suites.create("ag-news", ag_cfg()).load()
    assert "\n" not in str(e.value) and "ConnectionError: no route to host" in str(e.value)


def test_ag_short_run_goes_through_the_harness(cache, tmp_path):
    write_ag(tmp_path)
    cfg = build_config("ag-news", "in-batch", budget=BudgetConfig("samples", 32),
                       sets={"batch_size": "8", "suite.val_size": "4", "log_every": "2",
                             "eval.linear_epochs": "10", **SMALL_SETS})
    r = run(cfg, track=False, data_dir=str(tmp_path))
    m = r.metrics
    assert m["steps"] == 4 and m["cost_trained_samples"] == 64
    for key in ("knn_acc", "linear_acc", "fnr", "retrieval_r1", "retrieval_mrr"):
        assert 0.0 <= m[key] <= 1.0, (key, m[key])


# --------------------------------------------------------------------------- (3) nli
def test_nli_fixture_loads_triplets_with_genre_labels(cache, tmp_path):
    write_nli(tmp_path)
    s = suites.create("nli", nli_cfg(), data_dir=str(tmp_path))
    assert s.data_status() == "present" and s.locate() == str(tmp_path)
    d = s.load()
    assert d.class_names == ("captions", *GENRES) and d.n_classes == 6
    # SNLI train: 4 premises with both (one repeated premise ignored, one without a
    # contradiction dropped); MultiNLI train: 2 per genre. Test: 1 SNLI (the other premise is
    # a training one) + 1 per genre.
    assert len(d.train) + len(d.val) == 14 and len(d.val) == 6 and len(d.test) == 6
    assert sorted(d.val.y.tolist()) == list(range(6))
    for split in (d.train, d.val, d.test):
        assert split.x.shape[1:] == (3, 32) and split.x.dtype == torch.long
    ids = torch.cat([d.train.source, d.val.source, d.test.source])
    assert ids.unique().numel() == ids.numel() == 20

    def text(row) -> str:
        return squash(s.tokenizer.decode([t for t in row.tolist() if t]))

    every = {text(x[0]): (text(x[1]), text(x[2]))
             for split in (d.train, d.val, d.test) for x in split.x}
    assert every[squash("A man plays a guitar.")] == (squash("A person makes music."),
                                                      squash("The man is asleep."))
    assert squash("A woman reads a book.") not in every
    test_premises = {text(x[0]) for x in d.test.x}
    assert squash("A cat sits on a mat.") in test_premises
    assert squash("Two dogs run in a field.") not in test_premises  # a training premise


def test_nli_mnli_only_needs_no_snli(cache, tmp_path):
    write_nli(tmp_path, snli=False)
    assert suites.create("nli", nli_cfg(), data_dir=str(tmp_path)).data_status() != "present"
    s = suites.create("nli", nli_cfg(corpora="mnli", val_size=5), data_dir=str(tmp_path))
    d = s.load()
    assert d.class_names == GENRES and len(d.train) + len(d.val) == 10 and len(d.test) == 5
    with pytest.raises(SuiteError, match="corpora must be one of"):
        NLIConfig(corpora="snli")
    status = suites.create("nli", nli_cfg(corpora="mnli"), data_dir=str(cache)).data_status()
    assert "multinli_1.0/" in status and "snli" not in status


def test_nli_views_and_the_hard_negative(cache, tmp_path):
    write_nli(tmp_path)
    x = suites.create("nli", nli_cfg(), data_dir=str(tmp_path)).load().train.x[:5]
    s = suites.create("nli", nli_cfg(dropout_p=0.0), data_dir=str(tmp_path))
    g = torch.Generator().manual_seed(0)
    v1, v2 = s.views(x, g)
    assert torch.equal(v1, x[:, 0]) and torch.equal(v2, x[:, 1])  # premise, entailment
    assert torch.equal(s.hard_negative_view(x, g), x[:, 2])  # the contradiction
    assert torch.equal(s.prepare(x), x[:, 1])
    noisy = suites.create("nli", nli_cfg(dropout_p=0.5), data_dir=str(tmp_path))
    h = noisy.hard_negative_view(x, torch.Generator().manual_seed(1))
    assert h.shape == x[:, 2].shape and not torch.equal(h, x[:, 2])
    assert ((h == x[:, 2]) | (h == 0)).all()  # dropout only blanks tokens
    assert suites.Suite.hard_negative_view(s, x, g) is None  # the base class: no hard negatives


def test_nli_stsb_spearman_reads_the_matching_sts_split(cache, tmp_path):
    write_nli(tmp_path)
    s = suites.create("nli", nli_cfg(), data_dir=str(tmp_path))
    d = s.load()
    torch.manual_seed(0)
    enc = s.build_encoder()
    test = s.evaluate_extra(enc, d, "test")
    assert set(test) == {"stsb_spearman"} and -1.0 <= test["stsb_spearman"] <= 1.0
    # the same pairs by hand: cosine of the features against the gold scores
    a, b, gold = s.sts["test"]
    with torch.no_grad():
        enc.eval()
        cos = F.cosine_similarity(enc.features(a).double(), enc.features(b).double())
    assert test["stsb_spearman"] == pytest.approx(spearman(cos, gold), abs=1e-9)
    assert gold.tolist() == [p[2] for p in STS_PAIRS]
    # sts-dev holds the test pairs with negated scores: tuning reads sts-dev, never sts-test
    assert s.evaluate_extra(enc, d, "val")["stsb_spearman"] == pytest.approx(
        -test["stsb_spearman"], abs=1e-9)


@pytest.mark.parametrize("strategy,trained,nograd", [("in-batch", 3, 0), ("memory-bank", 2, 1)])
def test_nli_short_run_trains_the_hard_negatives(strategy, trained, nograd, cache, tmp_path):
    write_nli(tmp_path)
    cfg = build_config("nli", strategy, budget=BudgetConfig("samples", 16),
                       sets={"batch_size": "4", "suite.val_size": "6", "log_every": "2",
                             "eval.linear_epochs": "10", **SMALL_SETS})
    r = run(cfg, track=False, data_dir=str(tmp_path))
    m = r.metrics
    assert m["steps"] == 4
    assert m["cost_trained_samples"] == trained * 16
    assert m["cost_nograd_encodes"] == nograd * 16
    for key in ("knn_acc", "linear_acc", "fnr", "fnr_weighted"):
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    assert -1.0 <= m["stsb_spearman"] <= 1.0
    assert all(math.isfinite(h["loss"]) for h in r.history)


# --------------------------------------------------------------------------- (4) Spearman
def _loop_ranks(x: list[float]) -> list[float]:
    return [1 + sum(v < xi for v in x) + (sum(v == xi for v in x) - 1) / 2 for xi in x]


def _loop_spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _loop_ranks(a), _loop_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    num = sum((p - ma) * (q - mb) for p, q in zip(ra, rb, strict=True))
    den = math.sqrt(sum((p - ma) ** 2 for p in ra) * sum((q - mb) ** 2 for q in rb))
    return num / den


@pytest.mark.parametrize("seed", range(4))
def test_spearman_against_a_loop_and_scipy(seed):
    from scipy.stats import rankdata, spearmanr

    g = torch.Generator().manual_seed(seed)
    n = 40 + seed
    a = torch.randint(0, 8, (n,), generator=g).double()  # many ties
    b = a + torch.randn(n, generator=g, dtype=torch.float64) * 3
    if seed % 2:
        b = torch.randint(0, 5, (n,), generator=g).float()  # ties on both sides, float32
    assert average_ranks(a).tolist() == _loop_ranks(a.tolist())
    np.testing.assert_allclose(average_ranks(b).numpy(), rankdata(b.numpy()))
    rho = spearman(a, b)
    assert rho == pytest.approx(_loop_spearman(a.tolist(), b.tolist()), abs=1e-12)
    assert rho == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)


def test_spearman_identities():
    x = torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert spearman(x, x.exp()) == pytest.approx(1.0)  # monotone maps keep ranks
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert math.isnan(spearman(x, torch.ones(50)))  # constant: undefined, as scipy
    with pytest.raises(ValueError):
        spearman(x, x[:3])


# --------------------------------------------------------------------------- (5) the hook
def _hard_inputs(b=6, d=16, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randperm(n, generator=g)[:b]
    q = F.normalize(torch.randn(b, d, generator=g), dim=1)
    k = F.normalize(q + 0.3 * torch.randn(b, d, generator=g), dim=1)
    h = F.normalize(q + 0.5 * torch.randn(b, d, generator=g), dim=1)
    return ids, q, k, h


def _loop_info_nce(anchors, positives, negatives: list[list[torch.Tensor]], tau: float):
    """InfoNCE by its definition, one anchor at a time: the reference."""
    total = 0.0
    for a, p, ns in zip(anchors, positives, negatives, strict=True):
        pos = torch.exp(a @ p / tau)
        total = total - torch.log(pos / (pos + sum(torch.exp(a @ n / tau) for n in ns)))
    return total / len(anchors)


def test_hard_negative_loss_equals_the_definition_symmetric():
    """In-batch (A = 2B): anchor i < B (a query view) gets its own h_i besides the 2B-2 other
    views; anchors B..2B (key views) keep exactly the 2B-2."""
    ids, q, k, h = _hard_inputs()
    b, tau = q.shape[0], 0.2
    merged = with_hard_negatives(in_batch_negatives(q, k, ids), h)
    z = torch.cat([q, k])
    pos = torch.cat([k, q])
    negs = []
    for i in range(2 * b):
        others = [z[j] for j in range(2 * b) if j % b != i % b]
        negs.append(others + ([h[i]] if i < b else []))
    want = _loop_info_nce(z, pos, negs, tau)
    torch.testing.assert_close(info_nce(merged, tau).loss, want)
    plain = info_nce(in_batch_negatives(q, k, ids), tau).loss
    assert info_nce(merged, tau).loss > plain  # one more negative for half the anchors


def test_hard_negative_loss_equals_the_definition_query_only():
    """A = B (a queue of keys): every anchor is a query view and gets its h_i."""
    ids, q, k, h = _hard_inputs()
    ids0, q0, k0, _ = _hard_inputs(seed=1)
    table = Table(300, 16)
    s = strategies.create("memory-bank", dim=16, n_train=300)
    s.update(q0, k0, make_ctx(ids0, table))  # an earlier batch's keys in the queue
    negs = s.select(q, k, make_ctx(ids, table))
    assert negs.selected().any(1).all()
    merged = with_hard_negatives(negs, h)
    assert merged.num_anchors == 6 and merged.extra_mask is None
    sel = negs.selected()
    cand = negs.pool if negs.index is None else None
    lists = [[cand[j] for j in range(cand.shape[0]) if sel[i, j]] + [h[i]] for i in range(6)]
    want = _loop_info_nce(q, k, lists, 0.2)
    torch.testing.assert_close(info_nce(merged, 0.2).loss, want)


STRATEGIES = strategies.names()


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_gets_the_hard_negative_column(name):
    torch.manual_seed(0)
    table = Table(300, 16)
    s = strategies.create(name, dim=16, n_train=300)
    for step in range(3):
        ids, q, k, h = _hard_inputs(seed=step)
        ctx = make_ctx(ids, table, step=step, fraction=step / 3, seed=step, strategy=name)
        negs = s.select(q, k, ctx)
        merged = with_hard_negatives(negs, h)
        s._check_shapes(merged, q)  # the merged selection keeps the strategy contract
        a, b = negs.num_anchors, q.shape[0]
        query = torch.arange(a) < b  # the query views (all of them when A = B)
        assert merged.width == negs.width + 1 and merged.num_extra == negs.num_extra + 1
        sim, old = merged.similarity(), negs.similarity()
        torch.testing.assert_close(sim[:, :-1], old)
        rows = h if a == b else torch.cat([h, h])
        torch.testing.assert_close(sim[:, -1], (negs.anchors * rows).sum(-1))
        sel = merged.selected()
        assert torch.equal(sel[:, :-1], negs.selected()) and torch.equal(sel[:, -1], query)
        assert (merged.candidate_ids()[..., -1] == HARD_NEGATIVE_ID).all()
        assert not merged.own_instance()[:, -1].any()
        w, w0 = merged.candidate_weights(), negs.candidate_weights()
        if merged.tilt:  # a tilt (hcl) weighs the hard negative too: mean 1 over each row
            sel_f = sel.to(w.dtype)
            torch.testing.assert_close((w * sel_f).sum(1), sel_f.sum(1))
        elif w0 is not None:
            torch.testing.assert_close(w[:, :-1], w0)
            assert (w[:, -1] == 1).all()
        # one class for everything: every real candidate is a false negative, the
        # contradiction never is
        same = torch.zeros(300, dtype=torch.long)
        fn = false_negative_matrix(merged, same)
        assert (fn[:, -1] == 0).all()
        torch.testing.assert_close(fn[:, :-1], false_negative_matrix(negs, same).expand_as(
            fn[:, :-1]))
        out = info_nce(merged, 0.2)
        assert torch.isfinite(out.loss) and out.sim.shape == sel.shape
        s.update(q, k, ctx)
    s.check()


def test_the_meter_counts_the_hard_negative_as_a_true_negative():
    ids, q, k, h = _hard_inputs()
    merged = with_hard_negatives(in_batch_negatives(q, k, ids), h)
    meter = NegativeMeter(torch.zeros(300, dtype=torch.long))  # one class: all real are FN
    meter.observe(merged, merged.similarity().detach())
    total = meter.snapshot()[1]
    b = q.shape[0]
    real = 2 * b * (2 * b - 2)
    assert total["negatives_per_anchor"] == pytest.approx((real + b) / (2 * b))
    assert total["fnr"] == pytest.approx(real / (real + b))


def test_an_unknown_anchor_layout_is_refused():
    ids, q, k, h = _hard_inputs()
    negs = in_batch_negatives(q, k, ids)
    with pytest.raises(RuntimeError, match="A = B"):
        with_hard_negatives(negs, h[:4])


# a throwaway vector suite for the Trainer: stored item (3, 6) = anchor, positive, hard negative
@dataclasses.dataclass(frozen=True)
class _HardCfg:
    hard: bool = True


class _Lin(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.feature_dim = self.out_dim = 8

    def features(self, x):
        return self.lin(x)

    def forward(self, x):
        return F.normalize(self.lin(x), dim=1)


class _HardFixture(Suite):
    """NOT a benchmark suite: random vectors with a supervised hard negative per item."""

    Config = _HardCfg
    modality = "vectors"
    default_budget = ("samples", 64)
    default_batch_size = 8

    def _load(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(48, 3, 6, generator=g)
        y = torch.arange(48) % 4
        src = torch.arange(48)
        return SuiteData(Split(x[:32], y[:32], src[:32]), Split(x[32:40], y[32:40], src[32:40]),
                         Split(x[40:], y[40:], src[40:]), n_classes=4)

    def prepare(self, x):
        return x[:, 1]

    def view(self, x, generator):
        return x[:, 1] + 0.01 * torch.randn(x[:, 1].shape, generator=generator)

    def views(self, x, generator):
        return x[:, 0] + 0.01 * torch.randn(x[:, 0].shape, generator=generator), \
            self.view(x, generator)

    def hard_negative_view(self, x, generator):
        return x[:, 2] if self.cfg.hard else None

    def build_encoder(self):
        return _Lin()


@pytest.fixture
def hard_suite():
    name = "test-hard-negatives-fixture"
    suites.register(name)(_HardFixture)
    try:
        yield name
    finally:
        suites.REGISTRY.unregister(name)


def _one_step(suite_name, strategy, hard=True):
    cfg = build_config(suite_name, strategy, budget=BudgetConfig("samples", 64),
                       sets={"batch_size": "8", "suite.hard": str(hard).lower()})
    tr = Trainer(cfg)
    seen = {}
    objective = tr.objective

    def capture(negs):
        seen["negs"] = negs
        seen["out"] = objective(negs)
        return seen["out"]

    tr.objective = capture
    calls = []
    tr.encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    seen["encoder_before"] = copy.deepcopy(tr.encoder)
    tr.step(8)
    return tr, seen, calls


def test_the_trainer_trains_the_hard_negative_in_one_encoder_call(hard_suite):
    tr, seen, calls = _one_step(hard_suite, "in-batch")
    negs = seen["negs"]
    b = 8
    assert calls == [3 * b]  # premise, entailment and contradiction views in one call
    assert tr.cost.trained_samples == 3 * b and tr.cost.nograd_encodes == 0
    assert negs.num_anchors == 2 * b and negs.width == 2 * b + 1
    assert torch.equal(negs.extra_mask[:, -1], torch.arange(2 * b) < b)
    assert (negs.extra_ids[:, -1] == HARD_NEGATIVE_ID).all()
    # the column is the encoder's embedding of each anchor's own hard negative
    ids = negs.anchor_ids[:b]
    with torch.no_grad():
        want = seen["encoder_before"](tr.train_split.x[ids][:, 2])
    torch.testing.assert_close(negs.extra[:b, -1].detach(), want)
    assert negs.extra.requires_grad  # trained: gradients reach the encoder through it
    # and the loss is the one with the column: above the loss without it
    plain = dataclasses.replace(negs, extra=None, extra_ids=None, extra_mask=None)
    assert float(seen["out"].loss.detach()) > float(
        info_nce(plain, tr.cfg.objective.temperature).loss.detach())


def test_the_trainer_with_a_momentum_key_encoder(hard_suite):
    tr, seen, calls = _one_step(hard_suite, "memory-bank")
    negs = seen["negs"]
    assert calls == [2 * 8]  # query and hard negative together; keys through the copy
    assert tr.cost.trained_samples == 16 and tr.cost.nograd_encodes == 8
    assert negs.num_anchors == 8 and (negs.extra_ids[:, -1] == HARD_NEGATIVE_ID).all()


def test_a_suite_without_hard_negatives_is_unchanged(hard_suite):
    tr, seen, calls = _one_step(hard_suite, "in-batch", hard=False)
    assert calls == [16] and tr.cost.trained_samples == 16
    assert seen["negs"].extra_ids is None and seen["negs"].width == 16
