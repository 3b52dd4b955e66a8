"""``nli``: natural-language-inference sentence pairs with supervised hard negatives, evaluated on
STS-B: SimCSE's supervised recipe (Gao, Yao and Chen, EMNLP 2021) on a small transformer trained
from scratch, for users with a GPU and a network (``suites/hf_text.py`` says where the files are
looked for and how the Hub fetch works; optional extra ``hf``).

Data. SNLI (Bowman et al. 2015: 550k pairs on image captions) and MultiNLI (Williams et al.
2018: 393k pairs in five written and spoken genres), SimCSE's training set; ``corpora=mnli``
keeps MultiNLI only. From each distinct premise (case and whitespace ignored) one triplet:
(premise, its first entailed hypothesis, its first contradicting hypothesis, in file order);
premises lacking either are dropped (SimCSE's own set of such triplets has 275k). Training
triplets come from SNLI's train and MultiNLI's train files, test triplets from SNLI's test and
MultiNLI's dev-matched files (MultiNLI's test labels are not public), less any whose premise is
a training premise; a stratified validation split (``val_size`` triplets) is held out of the
training triplets, fixed by ``split_seed``.

Files (``--data-dir``, each release as it extracts; the Hub fetch writes the same layout into
the cache, converted from ``stanfordnlp/snli``, ``nyu-mll/multi_nli`` and
``sentence-transformers/stsb``):

- ``snli_1.0/snli_1.0_train.jsonl``, ``snli_1.0_test.jsonl`` (snli_1.0.zip,
  https://nlp.stanford.edu/projects/snli/snli_1.0.zip);
- ``multinli_1.0/multinli_1.0_train.jsonl``, ``multinli_1.0_dev_matched.jsonl``
  (https://cims.nyu.edu/~sbowman/multinli/multinli_1.0.zip); each JSON line has ``gold_label``
  (entailment, neutral, contradiction, or ``-`` for no consensus), ``sentence1`` (premise),
  ``sentence2`` (hypothesis), and in MultiNLI ``genre``;
- ``stsbenchmark/sts-train.csv``, ``sts-dev.csv``, ``sts-test.csv`` (STS-B, Cer et al. 2017,
  http://ixa2.si.ehu.eus/stswiki/images/4/48/Stsbenchmark.tar.gz): tab-separated, the gold
  score (0..5) in the fifth field and the two sentences in the sixth and seventh.

Stored item: (3, ``seq_len``) token ids: premise, entailment, contradiction. Positive pair:
(premise, entailment), each with token dropout (sentences are short: no cropping). Supervised
hard negative (:meth:`hard_negative_view`): the contradiction with token dropout; the harness
encodes it with gradients and contrasts it with the premise anchors only (see
``harness/runner.py``: the hypothesis-side anchors of a symmetric strategy get it masked, as in
SimCSE, whose loss is premise -> hypotheses). It has no dataset id (-1) and no label source, so
the false-negative rate counts it as a true negative: a contradiction is not a paraphrase.
Strategies that encode extra items (``random``, ``dynamic``) get entailment views, and
:meth:`prepare` (what kNN, the linear probe and index refreshes read) is the entailment,
un-augmented: negatives come from the positives' side, as ``bbc-news``'s bodies do.

Labels, and what the label-based numbers mean here. An NLI triplet has no class; its oracle
label is its **genre**: ``captions`` for SNLI, and MultiNLI's five (fiction, government, slate,
telephone, travel). So, on this suite:

- ``fnr`` is the **same-genre rate** of the selected negatives, a coarse proxy of the kind
  ``bbc-news``'s same-topic rate is, not a paraphrase rate: two sentences of one genre are seldom
  paraphrases, and a real paraphrase from another genre is not counted. Compare it between
  strategies (uniform random sampling gives sum_c p_c^2 over the genres' shares p_c of the
  training triplets, with SNLI's captions about half of them), not with 0;
- ``knn_acc`` and ``linear_acc`` are **genre** accuracies of the frozen features of the
  entailment sentences (how much of a sentence's source its representation keeps), not a
  semantic score;
- ``stsb_spearman`` is the semantic score, the one SimCSE reports: Spearman's rank correlation,
  in [-1, 1] (not [0, 1]), between the cosine of the two sentences' features
  (``encoder.features``, the representation the other probes read, before the projection
  head) and STS-B's gold similarity, over the STS-B split matching the
  evaluated one (``test`` -> sts-test, ``val`` -> sts-dev, so tuning never reads STS-B's test).

Encoder and budget, sized for a GPU: :class:`negbench.suites.text.TinyTransformer` from scratch, 256
wide, 4 layers, on a WordPiece vocabulary of about ``vocab_size`` tokens trained on the training
triplets' sentences only and cached (the cache's ``nli/``); sentences are cut at ``seq_len`` = 32
tokens (SimCSE's length). Default budget 1M samples (a few epochs of the triplets; SimCSE
trains 3), batch 512 (SimCSE's supervised batch). A trained-from-scratch encoder lands far below
SimCSE's pretrained BERT on STS-B: the suite compares negative-sampling strategies, not encoders.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from negbench.suites import Split, SuiteData, SuiteError, register
from negbench.suites.hf_text import HubTextSuite, _gpu_transformer, hub_load, hub_rows, write_atomic
from negbench.suites.text import (
    TinyTransformer,
    TransformerConfig,
    encode_texts,
    json_lines,
    token_dropout,
    train_tokenizer,
)

CORPORA = ("snli+mnli", "mnli")
SNLI_GENRE = "captions"
SNLI_FILES = {"train": "snli_1.0/snli_1.0_train.jsonl", "test": "snli_1.0/snli_1.0_test.jsonl"}
MNLI_FILES = {"train": "multinli_1.0/multinli_1.0_train.jsonl",
              "test": "multinli_1.0/multinli_1.0_dev_matched.jsonl"}
STS_FILES = {"train": "stsbenchmark/sts-train.csv", "val": "stsbenchmark/sts-dev.csv",
             "test": "stsbenchmark/sts-test.csv"}
NLI_LABELS = ("entailment", "neutral", "contradiction")  # the Hub's ClassLabel order
SNLI_URL = "https://nlp.stanford.edu/projects/snli/snli_1.0.zip"
MNLI_URL = "https://cims.nyu.edu/~sbowman/multinli/multinli_1.0.zip"
STS_URL = "http://ixa2.si.ehu.eus/stswiki/images/4/48/Stsbenchmark.tar.gz"


# --------------------------------------------------------------------------- Spearman
def average_ranks(x: Tensor) -> Tensor:
    """(N,) float64 ranks 1..N of ``x`` (N,), tied values sharing the mean of their ranks
    (scipy's ``rankdata(method="average")``). One sort, no Python loop."""
    x = x.detach().flatten().to(torch.float64)
    n = x.numel()
    order = torch.argsort(x, stable=True)  # (N,)
    xs = x[order]
    starts = torch.ones(n, dtype=torch.bool, device=x.device)
    starts[1:] = xs[1:] != xs[:-1]  # (N,) first of each run of equal values
    group = torch.cumsum(starts.long(), 0) - 1  # (N,) run of each sorted position
    g = int(group[-1]) + 1 if n else 0
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)  # (N,) sorted ranks
    total = torch.zeros(g, dtype=torch.float64, device=x.device).index_add_(0, group, pos)
    count = torch.zeros(g, dtype=torch.float64, device=x.device).index_add_(
        0, group, torch.ones_like(pos))
    ranks = torch.empty(n, dtype=torch.float64, device=x.device)
    ranks[order] = (total / count)[group]
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of ``a`` and ``b`` (N,), in [-1, 1]: Pearson's correlation of
    their average ranks. NaN when either is constant (as scipy's ``spearmanr``)."""
    if a.numel() != b.numel():
        raise ValueError(f"spearman: {a.numel()} against {b.numel()} values")
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = torch.sqrt((ra * ra).sum() * (rb * rb).sum())
    if a.numel() < 2 or float(den) == 0.0:
        return float("nan")
    return float(((ra * rb).sum() / den).clamp(-1.0, 1.0))


# --------------------------------------------------------------------------- files
def _norm(s) -> str:
    """A sentence with its whitespace collapsed ("" for a missing one)."""
    return re.sub(r"\s+", " ", s).strip() if isinstance(s, str) else ""


def read_nli(path: Path, default_genre: str) -> Iterator[tuple[str, str, str, str]]:
    """(premise, hypothesis, gold label, genre) of each JSON line of an SNLI/MultiNLI file."""
    yield from json_lines(
        path, lambda r: (_norm(r["sentence1"]), _norm(r["sentence2"]), str(r["gold_label"]),
                         str(r.get("genre") or default_genre)),
        "nli", "gold_label, sentence1, sentence2")


def nli_triplets(rows: Iterable[tuple[str, str, str, str]], exclude: set[str] | None = None
                 ) -> list[tuple[str, str, str, str]]:
    """One (premise, entailment, contradiction, genre) per distinct premise of ``rows`` (case
    and whitespace ignored), with its first entailed and first contradicting hypothesis in
    order; premises lacking either, or whose key is in ``exclude``, are left out."""
    exclude = exclude or set()
    first: dict[str, tuple[str, str]] = {}  # key -> (premise, genre)
    ent: dict[str, str] = {}
    con: dict[str, str] = {}
    for p, h, label, genre in rows:
        if not p or not h:
            continue
        key = p.lower()
        if key in exclude:
            continue
        first.setdefault(key, (p, genre))
        if label == "entailment":
            ent.setdefault(key, h)
        elif label == "contradiction":
            con.setdefault(key, h)
    return [(p, ent[k], con[k], g) for k, (p, g) in first.items() if k in ent and k in con]


def read_sts(path: Path) -> tuple[list[str], list[str], list[float]]:
    """STS-B's (sentence1, sentence2, gold score) of a tab-separated release file."""
    s1, s2, gold = [], [], []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            parts = line.rstrip("\r\n").split("\t")
            if not line.strip():
                continue
            try:
                score = float(parts[4])
                a, b = parts[5], parts[6]
            except (IndexError, ValueError):
                raise SuiteError(f"nli: {path}, line {i + 1}: expected STS-B's tab-separated "
                                 "fields (score 5th, sentences 6th and 7th)") from None
            s1.append(_norm(a))
            s2.append(_norm(b))
            gold.append(score)
    if not gold:
        raise SuiteError(f"nli: {path} holds no STS-B pairs")
    return s1, s2, gold


def _label_names(ds) -> tuple[str, ...]:
    feat = getattr(ds, "features", None)
    names = getattr(feat.get("label"), "names", None) if feat is not None else None
    return tuple(names) if names else NLI_LABELS


def _flat(s) -> str:
    return re.sub(r"[\t\r\n]+", " ", str(s or ""))


# --------------------------------------------------------------------------- the suite
@dataclass(frozen=True)
class NLIConfig:
    corpora: str = "snli+mnli"  # snli+mnli (SimCSE's) | mnli
    val_size: int = 5000  # triplets held out of the training triplets, stratified by genre
    split_seed: int = 0  # the split is fixed across runs; the run's seed does not change it
    vocab_size: int = 16000  # WordPiece tokens (the transformer's embedding table)
    seq_len: int = 32  # tokens kept per NLI sentence, and per view
    sts_len: int = 64  # tokens kept per STS-B sentence
    dropout_p: float = 0.1  # token dropout of each view and of the hard negative
    download: bool = True  # fetch from the Hub when no local copy is found
    transformer: TransformerConfig = field(default_factory=_gpu_transformer)

    def __post_init__(self):
        if self.corpora not in CORPORA:
            raise SuiteError(f"nli: corpora must be one of {', '.join(CORPORA)}; "
                             f"got {self.corpora!r}")
        if self.val_size < 1:
            raise SuiteError(f"nli: val_size must be >= 1, got {self.val_size}")
        if self.vocab_size < 100:
            raise SuiteError(f"nli: vocab_size must be >= 100, got {self.vocab_size}")
        for name in ("seq_len", "sts_len"):
            n = getattr(self, name)
            if not 1 <= n <= self.transformer.max_len:
                raise SuiteError(f"nli: {name} must lie in [1, {self.transformer.max_len}] "
                                 f"(the transformer's max_len), got {n}")
        if not 0.0 <= self.dropout_p < 1.0:
            raise SuiteError(f"nli: dropout_p must lie in [0, 1), got {self.dropout_p}")


@register("nli")
class NLI(HubTextSuite):
    """SNLI + MultiNLI triplets: (premise, entailment) positives, the contradiction as a
    supervised hard negative, genre labels, STS-B Spearman evaluation (``stsb_spearman``, in
    [-1, 1]). Default budget sized for a GPU: 1M samples, batch 512."""

    Config = NLIConfig
    default_budget = ("samples", 1_000_000)
    default_batch_size = 512
    hub_names = ("stanfordnlp/snli", "nyu-mll/multi_nli", "sentence-transformers/stsb")

    def _needed(self) -> dict[str, str]:
        files = dict(STS_FILES)
        if "snli" in self.cfg.corpora.split("+"):
            files.update({f"snli_{k}": v for k, v in SNLI_FILES.items()})
        files.update({f"mnli_{k}": v for k, v in MNLI_FILES.items()})
        return files

    def hub_datasets(self) -> tuple[str, ...]:
        use_snli = "snli" in self.cfg.corpora.split("+")
        return tuple(n for n in self.hub_names if use_snli or n != "stanfordnlp/snli")

    def files_hint(self) -> str:
        snli = f"snli_1.0/ ({SNLI_URL}), " if "snli" in self.cfg.corpora.split("+") else ""
        return f"the extracted {snli}multinli_1.0/ ({MNLI_URL}) and stsbenchmark/ ({STS_URL})"

    def _find_in(self, root: Path) -> Path | None:
        return root if all((root / f).is_file() for f in self._needed().values()) else None

    def _fetch(self, dest: Path) -> None:
        def nli_jsonl(ds, genre: str | None):
            names = _label_names(ds)
            cols = ("premise", "hypothesis", "label") + (() if genre else ("genre",))
            rows = list(hub_rows(ds, cols, "nli"))

            def write(f):
                for r in rows:
                    lab = int(r[2])
                    f.write(json.dumps({"gold_label": names[lab] if 0 <= lab < len(names)
                                        else "-", "sentence1": r[0], "sentence2": r[1],
                                        "genre": genre or r[3]}) + "\n")
            return write

        need = self._needed()
        todo = [k for k, f in need.items() if not (dest / f).is_file()]
        if any(k.startswith("snli_") for k in todo):
            ds = hub_load("stanfordnlp/snli")
            for split in ("train", "test"):
                write_atomic(dest / SNLI_FILES[split], nli_jsonl(ds[split], SNLI_GENRE))
        if any(k.startswith("mnli_") for k in todo):
            ds = hub_load("nyu-mll/multi_nli")
            for split, hub_split in (("train", "train"), ("test", "validation_matched")):
                write_atomic(dest / MNLI_FILES[split], nli_jsonl(ds[hub_split], None))
        if any(k in STS_FILES for k in todo):
            ds = hub_load("sentence-transformers/stsb")
            for split, hub_split in (("train", "train"), ("val", "validation"),
                                     ("test", "test")):
                rows = list(hub_rows(ds[hub_split], ("sentence1", "sentence2", "score"), "nli"))
                scale = 5.0 if rows and max(float(r[2]) for r in rows) <= 1.0 else 1.0

                def write(f, rows=rows, scale=scale):
                    for i, (a, b, s) in enumerate(rows):
                        f.write(f"hub\tsentence-transformers/stsb\t-\t{i:05d}\t"
                                f"{float(s) * scale:.4f}\t{_flat(a)}\t{_flat(b)}\n")

                write_atomic(dest / STS_FILES[split], write)

    def _load(self) -> SuiteData:
        c = self.cfg
        d = self._folder()
        use_snli = "snli" in c.corpora.split("+")

        def rows(split: str) -> Iterator[tuple[str, str, str, str]]:
            if use_snli:
                yield from read_nli(d / SNLI_FILES[split], SNLI_GENRE)
            yield from read_nli(d / MNLI_FILES[split], "")

        train = nli_triplets(rows("train"))
        test = nli_triplets(rows("test"), exclude={t[0].lower() for t in train})
        if not train or not test:
            raise SuiteError(f"nli: no (premise, entailment, contradiction) triplets in {d}")
        names = tuple(sorted({t[3] for t in train}))
        index = {g: i for i, g in enumerate(names)}
        unknown = sorted({t[3] for t in test} - set(names))
        if unknown:
            raise SuiteError(f"nli: test genres {', '.join(unknown)} are not among the training "
                             f"genres {', '.join(names)}")
        trips = train + test
        y = np.asarray([index[t[3]] for t in trips], dtype=np.int64)
        n_tr = len(train)
        tr, va = self._val_holdout(y[:n_tr], c.val_size, c.split_seed, len(names))
        te = np.arange(n_tr, len(trips))
        sentences = [[t[j] for t in trips] for j in range(3)]  # premises, entailments, contra.
        self.tokenizer = train_tokenizer([s[i] for s in sentences for i in tr], c.vocab_size,
                                         self.cache_folder())
        x = torch.stack([encode_texts(self.tokenizer, s, c.seq_len) for s in sentences],
                        dim=1)  # (N, 3, L)
        self.sts = {}
        for split, f in STS_FILES.items():
            a, b, gold = read_sts(d / f)
            self.sts[split] = (encode_texts(self.tokenizer, a, c.sts_len),
                               encode_texts(self.tokenizer, b, c.sts_len),
                               torch.tensor(gold, dtype=torch.float64))
        yt = torch.from_numpy(y)

        def split(ix) -> Split:
            ix = torch.from_numpy(np.asarray(ix, dtype=np.int64))
            return Split(x[ix], yt[ix], source=ix)  # source: position in train, then test

        return SuiteData(train=split(tr), val=split(va), test=split(te), n_classes=len(names),
                         class_names=names)

    # -- views
    def prepare(self, x: Tensor) -> Tensor:
        """(N, seq_len) the entailment sentences, un-augmented: what kNN and the linear probe
        read, and the index refreshes embed."""
        return x[:, 1]

    def view(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The entailment with token dropout (the view of an extra, mined item)."""
        return token_dropout(x[:, 1], self.cfg.dropout_p, generator)

    def views(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(premise with token dropout, entailment with token dropout)."""
        return token_dropout(x[:, 0], self.cfg.dropout_p, generator), self.view(x, generator)

    def hard_negative_view(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The contradiction with token dropout: the premise's supervised hard negative."""
        return token_dropout(x[:, 2], self.cfg.dropout_p, generator)

    # -- encoder and evaluation
    def build_encoder(self) -> nn.Module:
        return TinyTransformer(self.cfg.vocab_size, self.cfg.transformer)

    @torch.no_grad()
    def evaluate_extra(self, encoder: nn.Module, data: SuiteData, split: str) -> dict[str, float]:
        """``stsb_spearman``: Spearman's correlation (in [-1, 1]) of the cosine of the two
        sentences' features with STS-B's gold scores, on STS-B's split matching ``split``."""
        self.load()  # the STS-B pairs are read with the splits
        if split not in self.sts:
            raise SuiteError(f"unknown split {split!r}; allowed: {', '.join(self.sts)}")
        a, b, gold = self.sts[split]
        dev = next(encoder.parameters()).device
        was = encoder.training
        encoder.eval()
        chunk = 1024
        fa = torch.cat([encoder.features(a[i:i + chunk].to(dev)) for i in range(0, len(a), chunk)])
        fb = torch.cat([encoder.features(b[i:i + chunk].to(dev)) for i in range(0, len(b), chunk)])
        encoder.train(was)
        cos = F.cosine_similarity(fa.double(), fb.double(), dim=1)  # (N,)
        return {"stsb_spearman": spearman(cos.cpu(), gold)}
