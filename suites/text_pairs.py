"""``text-pairs``: a user's own (anchor, positive) text pairs, from a JSONL, CSV or Parquet file
(``suite.path``), with an optional label and an optional supervised hard negative per pair.

Data. One row per pair; the column names are configurable (``suite.anchor``, ``suite.positive``,
``suite.label``, ``suite.hard_negative``, ``suite.split``; defaults ``anchor``, ``positive``,
``label``, ``hard_negative``, ``split``). The format follows the file's extension
(``.jsonl``/``.ndjson``, ``.csv``, ``.parquet``/``.pq``) unless ``suite.format`` names it. A
relative ``suite.path`` is read from the working directory. CSV cells are read as text (an
empty cell is a missing value, a text such as ``NA`` stays text). Whitespace in the texts is
collapsed. A row whose anchor or positive is empty, whose label is missing, or whose hard
negative is missing (where the column is used) is an error naming the row: nothing is dropped
or filled in silently, except one thing: a row whose positive repeats an earlier row's (case and
whitespace ignored) is dropped, as ``bbc-news`` drops repeated bodies, because a repeat across
splits leaks test items into training and one within a split makes retrieval ambiguous.

Optional columns. The ``label`` column is used when the file has it; without it the suite has
**no labels** (see below). The ``hard_negative`` and ``split`` columns are used when present.
A column named by a value other than the default must exist (a misspelt ``suite.label=topc``
is an error, not a silent run without labels); an empty name (``--set suite.label=``) turns
the column off even when the file has it.

Splits. With a ``split`` column, its values (``train``, ``val``, ``test``) are the splits; a
file with ``train`` and ``test`` only gets a validation split of ``val_fraction`` of its
training rows. Without one, the rows are split ``1 - val_fraction - test_fraction`` /
``val_fraction`` / ``test_fraction``, stratified by label when there are labels, fixed by
``split_seed``. Repeated positives are dropped before splitting, the first row kept (with a
``split`` column: train rows first, then val, then test).

Labels. The label values (text or integers) are the classes, in sorted order (numbers by
value). They are the oracle as ``bbc-news``'s topics are: kNN and linear accuracy, the
false-negative rate (another pair of the same label is a false negative) and the oracle
references read them. A label column with missing values, or with a single class (where kNN,
the linear probe and the FNR would be 1 by construction) is an error; so is a class found in
val or test but not in train. Without labels, :attr:`TextPairs.labelled` is False and the
splits carry ``n_classes = 0`` and labels -1 (no class): nothing here invents a label. The
harness then leaves kNN, the linear probe, the FNR and the oracles out (``SuiteData.labelled``)
and reports say "n/a: no labels"; retrieval and health remain.

Tokens and views, as ``bbc-news``: a lower-casing WordPiece tokenizer of about ``vocab_size``
tokens trained on the training split's anchors, positives and hard negatives only, cached under
the cache's ``text-pairs/``; or, with ``encoder="minilm"``, the bundled tokenizer of the
pretrained MiniLM (extra ``minilm``). A stored item is (2, ``positive_len``) token ids, row 0
the anchor (``anchor_len`` tokens), row 1 the positive, and with a hard-negative column a row 2,
the hard negative, (3, ``positive_len``). Positive pair
(:class:`~negbench.suites.text.PairedTextViews`): the anchor with token dropout, and a span of
``view_len`` tokens of the positive cropped at a uniform random start, with token dropout (the
whole positive when it is no longer than ``view_len``). Supervised hard negative
(:meth:`TextPairs.hard_negative_view`): a span of the hard negative cut as the positive's is,
with token dropout, so it competes with the positive in the same form; the harness encodes it
with gradients and contrasts it with the anchors (``harness/runner.py``,
``with_hard_negatives``); it has no dataset id, so the false-negative rate counts it as a true
negative. Strategies that encode extra items get positive views.

Evaluation: retrieval anchor -> positive among the evaluated split's pairs (recall@1, @10, MRR,
:func:`negbench.suites.text.retrieval_metrics`) with the encoder's projections; with labels,
kNN and linear accuracy of the positive's lede (its first ``view_len`` tokens).

Encoder: :class:`negbench.suites.text.TinyTransformer` from scratch (``encoder="transformer"``),
or the pretrained MiniLM (``encoder="minilm"``, fine-tuned at ``optim.lr=5e-5`` unless set).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from negbench.suites import DataUnavailable, Split, Suite, SuiteData, SuiteError, register
from negbench.suites.base import cache_dir, file_digest, stratified_holdout
from negbench.suites.text import (
    PairedTextViews,
    TinyTransformer,
    TransformerConfig,
    check_text_config,
    crop,
    encode_texts,
    fit,
    json_lines,
    token_dropout,
    train_tokenizer,
)

NAME = "text-pairs"
FORMATS = ("auto", "jsonl", "csv", "parquet")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
              ".pq": "parquet"}
SPLITS = ("train", "val", "test")
COLUMNS = ("anchor", "positive", "label", "hard_negative", "split")  # the column-name fields
OPTIONAL = ("label", "hard_negative", "split")
HOW = ("--set suite.path=FILE (a JSONL, CSV or Parquet file with one row per pair: columns "
       "anchor, positive, and optionally label, hard_negative, split)")


@dataclass(frozen=True)
class TextPairsConfig:
    path: str = ""  # the file of pairs (JSONL, CSV or Parquet)
    format: str = "auto"  # auto (from the extension) | jsonl | csv | parquet
    anchor: str = "anchor"  # column names; an empty optional one turns that column off
    positive: str = "positive"
    label: str = "label"  # absent from the file: no labels
    hard_negative: str = "hard_negative"  # absent: no supervised hard negatives
    split: str = "split"  # train/val/test per row; absent: a seeded split
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0  # the split is fixed across runs; the run's seed does not change it
    vocab_size: int = 8000  # WordPiece tokens (the transformer's embedding table)
    anchor_len: int = 32  # anchor tokens kept
    positive_len: int = 128  # positive (and hard-negative) tokens stored, views cropped from them
    view_len: int = 32  # tokens per view (a span; anchors are padded to it)
    dropout_p: float = 0.1  # token dropout of each view
    encoder: str = "transformer"  # transformer (from scratch) | minilm (pretrained, extra)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    def __post_init__(self):
        if self.format not in FORMATS:
            raise SuiteError(f"{NAME}: format must be one of {', '.join(FORMATS)}; "
                             f"got {self.format!r}")
        for name in ("anchor", "positive"):
            if not getattr(self, name).strip():
                raise SuiteError(f"{NAME}: the {name} column's name must not be empty")
        named = [getattr(self, c) for c in COLUMNS if getattr(self, c)]
        if len(set(named)) < len(named):
            raise SuiteError(f"{NAME}: two roles name the same column "
                             f"({', '.join(f'{c}={getattr(self, c)!r}' for c in COLUMNS)})")
        check_text_config(NAME, self, ("anchor_len", "positive_len", "view_len"),
                          "positive_len")


# --------------------------------------------------------------------------- reading a file
def file_format(path: Path, fmt: str) -> str:
    """``fmt``, or with ``auto`` the format of ``path``'s extension; a SuiteError otherwise."""
    if fmt != "auto":
        return fmt
    got = EXTENSIONS.get(path.suffix.lower())
    if got is None:
        known = ", ".join(EXTENSIONS)
        raise SuiteError(f"{NAME}: cannot tell the format of {path} from its extension "
                         f"{path.suffix or '(none)'!r} (known: {known}); set "
                         f"suite.format={'|'.join(FORMATS[1:])}")
    return got


def _record(r: Any) -> dict:
    if not isinstance(r, dict):
        raise TypeError("not a JSON object")
    return r


def read_table(path: Path, fmt: str) -> tuple[dict[str, list], int]:
    """``({column: [raw value per row]}, rows)`` of a JSONL, CSV or Parquet file. Missing
    values are None, NaN or blank strings (see :func:`_missing`); CSV cells are text."""
    if fmt == "jsonl":
        records = list(json_lines(path, _record, NAME, "one JSON object per line"))
        names: dict[str, None] = {}
        for r in records:
            names.update(dict.fromkeys(r))
        return {c: [r.get(c) for r in records] for c in names}, len(records)
    import pandas as pd

    try:
        if fmt == "csv":
            # as text: a cell "NA" or "null" is a text here, an empty cell a missing value
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            df = pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        return {}, 0
    except Exception as e:  # a user's file: whatever the reader says, in one line
        raise SuiteError(f"{NAME}: cannot read {path} as {fmt} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                         ) from None
    return {str(c): df[c].tolist() for c in df.columns}, len(df)


def _missing(v: Any) -> bool:
    """None, NaN, pandas' NA, or a blank text."""
    if v is None:
        return True
    if isinstance(v, str):
        return not v.strip()
    if isinstance(v, float | np.floating):
        return math.isnan(v)
    return type(v).__name__ in ("NAType", "NaTType")  # pandas' nullable columns


def _text(v: Any) -> str:
    return re.sub(r"\s+", " ", str(v)).strip()


def _label_text(v: Any) -> str:
    """A label value as its class name: integral numbers without a decimal point (a Parquet
    column of integers with a gap reads as floats), text stripped."""
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


def _class_order(name: str) -> tuple[float, str]:
    try:
        return (float(name), name)  # numbers by value
    except ValueError:
        return (math.inf, name)


@dataclass
class Pairs:
    """The rows of a pairs file, checked and with repeated positives dropped (file order, or
    train, val, test rows in turn with a ``split`` column)."""

    rows: np.ndarray  # (N,) int64 each kept pair's row in the file (0-based, header not counted)
    anchors: list[str]
    positives: list[str]
    hard_negatives: list[str] | None
    labels: list[str] | None  # class names per row; None: the file has no labels
    splits: list[str] | None  # train/val/test per row; None: the file has no split column
    dropped: int  # rows dropped for repeating an earlier positive


def _first_bad(values: list, bad) -> tuple[int, int]:
    idx = [i for i, v in enumerate(values) if bad(v)]
    return len(idx), (idx[0] + 1 if idx else 0)


def read_pairs(path: Path, cfg: TextPairsConfig) -> Pairs:
    """The checked pairs of ``path`` under ``cfg``'s column names; a one-line SuiteError for
    what is wrong with the file."""
    table, n = read_table(path, file_format(path, cfg.format))
    if n == 0:
        raise SuiteError(f"{NAME}: {path} holds no rows")
    defaults = TextPairsConfig()
    cols: dict[str, str | None] = {}
    for role in COLUMNS:
        name = getattr(cfg, role)
        present = bool(name) and name in table
        if not present and name and (role not in OPTIONAL or name != getattr(defaults, role)):
            have = ", ".join(map(repr, table)) or "none"
            off = f"; set suite.{role}= for none" if role in OPTIONAL else ""
            raise SuiteError(f"{NAME}: {path} has no {role} column {name!r} (suite.{role}; "
                             f"its columns: {have}){off}")
        cols[role] = name if present else None

    def values(role: str, what: str) -> list | None:
        if cols[role] is None:
            return None
        vals = table[cols[role]]
        count, first = _first_bad(vals, _missing)
        if count:
            raise SuiteError(f"{NAME}: {path}: {count} row(s) have no {what} in column "
                             f"{cols[role]!r} (first: row {first}); fill them in or remove "
                             "those rows" + (f", or set suite.{role}= to use none"
                                             if role in OPTIONAL else ""))
        return vals

    anchors = [_text(v) for v in values("anchor", "anchor text")]
    positives = [_text(v) for v in values("positive", "positive text")]
    raw_hard = values("hard_negative", "hard negative")
    hard = None if raw_hard is None else [_text(v) for v in raw_hard]
    raw_labels = values("label", "label")
    labels = None if raw_labels is None else [_label_text(v) for v in raw_labels]
    raw_splits = values("split", "split")
    splits = None
    if raw_splits is not None:
        splits = [str(v).strip().lower() for v in raw_splits]
        count, first = _first_bad(splits, lambda s: s not in SPLITS)
        if count:
            raise SuiteError(f"{NAME}: {path}: {count} row(s) have a split other than "
                             f"{', '.join(SPLITS)} in column {cols['split']!r} (first: row "
                             f"{first}: {raw_splits[first - 1]!r})")
    # repeated positives: the first kept, train rows before val and test ones
    order = np.arange(n)
    if splits is not None:
        rank = {s: i for i, s in enumerate(SPLITS)}
        order = np.asarray(sorted(range(n), key=lambda i: (rank[splits[i]], i)), dtype=np.int64)
    seen: set[str] = set()
    keep = []
    for i in order.tolist():
        key = positives[i].lower()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    rows = np.sort(np.asarray(keep, dtype=np.int64))

    def pick(vals: list | None) -> list | None:
        return None if vals is None else [vals[i] for i in rows]

    kept = pick(labels)
    if kept is not None and len(set(kept)) < 2:
        raise SuiteError(f"{NAME}: {path}: the label column {cols['label']!r} holds a single "
                         f"class ({kept[0]!r}): kNN, the linear probe and the false-negative "
                         "rate need two or more; set suite.label= to run without labels")
    return Pairs(rows=rows, anchors=pick(anchors), positives=pick(positives),
                 hard_negatives=pick(hard), labels=kept, splits=pick(splits),
                 dropped=n - len(rows))


def split_positions(pairs: Pairs, cfg: TextPairsConfig, y: np.ndarray | None,
                    where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) positions into ``pairs``: the split column's, or seeded (stratified
    by ``y`` when there are labels); a SuiteError when a split would be empty."""
    n = len(pairs.rows)
    idx = np.arange(n)
    try:
        if pairs.splits is not None:
            s = np.asarray(pairs.splits)
            tr, va, te = idx[s == "train"], idx[s == "val"], idx[s == "test"]
            if len(va) == 0 and len(tr) > 1:  # train and test only: val held out of train
                tr, va = _holdout(tr, y, cfg.val_fraction, cfg.split_seed)
        else:
            rest, te = _holdout(idx, y, cfg.test_fraction, cfg.split_seed)
            tr, va = _holdout(rest, y, cfg.val_fraction / (1 - cfg.test_fraction),
                              cfg.split_seed)
    except ValueError as e:  # scikit-learn: too few rows, or of a class, to split so
        raise SuiteError(f"{NAME}: {where}: cannot split {n} pairs into train/val/test "
                         f"({str(e).splitlines()[0]})") from None
    for name, part in zip(SPLITS, (tr, va, te), strict=True):
        if len(part) == 0:
            raise SuiteError(f"{NAME}: {where}: the {name} split is empty ({n} pairs); give "
                             "more rows, or a split column with train and test rows")
    return tr, va, te


def _holdout(idx: np.ndarray, y: np.ndarray | None, fraction: float, seed: int):
    """(kept, held-out) of ``idx``, stratified by ``y`` when given, fixed by ``seed``."""
    if y is not None:
        return stratified_holdout(idx, y, fraction, seed)
    from sklearn.model_selection import train_test_split

    kept, held = train_test_split(idx, test_size=fraction, random_state=seed)
    return np.sort(kept), np.sort(held)


# --------------------------------------------------------------------------- the suite
@register(NAME)
class TextPairs(PairedTextViews, Suite):
    """A user's (anchor, positive[, label, hard negative]) pairs from a JSONL, CSV or Parquet
    file: anchor -> positive retrieval, and with labels kNN, linear accuracy and the FNR."""

    Config = TextPairsConfig
    modality = "text"
    offline = False  # the user's file, not one that ships here
    source = "a JSONL, CSV or Parquet file of text pairs (suite.path)"
    default_budget = ("samples", 60_000)
    default_batch_size = 128

    pairs: Pairs | None = None

    @classmethod
    def run_defaults(cls, cfg: TextPairsConfig) -> dict[str, str]:
        # fine-tuning pretrained weights: the default 2e-3 wrecks them (suites/bbc_news.py)
        return {"optim.lr": "5e-5"} if cfg.encoder == "minilm" else {}

    def locate(self) -> str:
        p = self.cfg.path
        if not p:
            raise DataUnavailable(f"{NAME}: no file of pairs given; {HOW}")
        path = Path(p).expanduser()
        if not path.is_file():
            why = "is a directory, not a file" if path.is_dir() else "does not exist"
            raise DataUnavailable(f"{NAME}: {path} {why} (suite.path); {HOW}")
        file_format(path, self.cfg.format)
        return str(path)

    def _tokenizer(self, train_texts: list[str]):
        c = self.cfg
        if c.encoder == "minilm":
            from negbench.suites.minilm import minilm_tokenizer

            return minilm_tokenizer()
        return train_tokenizer(train_texts, c.vocab_size, cache_dir() / NAME)

    @property
    def labelled(self) -> bool:
        """Whether the file has labels (reads it): :attr:`SuiteData.labelled` of its splits."""
        return self.load().labelled

    def _load(self) -> SuiteData:
        """The splits, with labels or without (``n_classes`` 0 and labels -1 then)."""
        c = self.cfg
        path = Path(self.locate())
        self.data_identity = f"{path.name}@{file_digest(path)[:12]}"
        pairs = read_pairs(path, c)
        self.pairs, labelled = pairs, pairs.labels is not None
        self.duplicates_dropped = pairs.dropped
        n = len(pairs.rows)
        names: tuple[str, ...] = ()
        if pairs.labels is not None:
            names = tuple(sorted(set(pairs.labels), key=_class_order))
            index = {name: i for i, name in enumerate(names)}
            y = np.asarray([index[v] for v in pairs.labels], dtype=np.int64)
        else:
            y = np.full(n, -1, dtype=np.int64)  # no class: the harness must not read these
        tr, va, te = split_positions(pairs, c, y if labelled else None, str(path))
        if labelled:
            unseen = sorted((set(y[va].tolist()) | set(y[te].tolist())) - set(y[tr].tolist()))
            if unseen:
                raise SuiteError(f"{NAME}: {path}: label(s) "
                                 f"{', '.join(repr(names[k]) for k in unseen[:5])} occur in "
                                 "val or test but not in train: the probes could never "
                                 "predict them")
        texts = [pairs.anchors, pairs.positives] + (
            [pairs.hard_negatives] if pairs.hard_negatives is not None else [])
        self.tokenizer = self._tokenizer([t[i] for t in texts for i in tr])
        x = torch.stack(
            [fit(encode_texts(self.tokenizer, pairs.anchors, c.anchor_len), c.positive_len)]
            + [encode_texts(self.tokenizer, t, c.positive_len) for t in texts[1:]],
            dim=1)  # (N, 2 or 3, positive_len)
        yt = torch.from_numpy(y)
        rows = torch.from_numpy(pairs.rows)

        def split(ix) -> Split:
            ix = torch.from_numpy(np.asarray(ix, dtype=np.int64))
            return Split(x[ix], yt[ix], source=rows[ix])  # source: the pair's row in the file

        return SuiteData(train=split(tr), val=split(va), test=split(te),
                         n_classes=len(names), class_names=names)

    # -- views
    def hard_negative_view(self, x: Tensor, generator: torch.Generator) -> Tensor | None:
        """A span of each pair's hard negative, cut and dropped out as the positive's view is
        (:meth:`view`), or None when the file has no hard-negative column."""
        if x.shape[1] < 3:
            return None
        return token_dropout(crop(x[:, 2], self.cfg.view_len, generator), self.cfg.dropout_p,
                             generator)

    # -- encoder
    def build_encoder(self) -> nn.Module:
        c = self.cfg
        if c.encoder == "minilm":
            from negbench.suites.minilm import MiniLMEncoder

            return MiniLMEncoder(proj_dim=c.transformer.proj_dim)
        return TinyTransformer(c.vocab_size, c.transformer)


__all__ = ["Pairs", "TextPairs", "TextPairsConfig", "file_format", "read_pairs", "read_table",
           "split_positions"]
