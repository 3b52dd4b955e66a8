"""``ag-news``: AG's News topic classification (Zhang, Zhao and LeCun, NeurIPS 2015: 120,000
training and 7,600 test news items from AG's corpus, 4 balanced topics), for users with a GPU and
a network; and what the Hugging Face suites share (``ag-news`` here, ``nli`` in
``suites/nli.py``): finding their files, fetching them from the Hub with the optional extra
``hf`` (``pip install 'negbench[hf]'``), and one clear line when neither works.

Where the files are looked for, in this order:

1. the run's ``--data-dir`` (the folder itself, or the folder the release extracts to);
2. the cache, ``~/.cache/negbench/<suite>/`` (``NEGBENCH_CACHE`` overrides the root);
3. the Hugging Face Hub through ``datasets.load_dataset``, where the extra is installed and the
   Hub can be reached (``suite.download=false`` turns this off; so do ``HF_HUB_OFFLINE=1`` and
   ``HF_DATASETS_OFFLINE=1``). What it fetches is written into the cache in the release's own
   file layout, so later runs read the files and never import ``datasets``.

:meth:`data_status` never touches the network nor imports ``datasets``: it says ``present`` only
when the files are on disk. Offline and absent, :meth:`locate` raises :class:`DataUnavailable`
with one line naming the extra and the files to fetch.

AG News files (``--data-dir``): the original CSV release, ``ag_news_csv/`` of
``ag_news_csv.tgz`` (for example fast.ai's mirror
https://s3.amazonaws.com/fast-ai-nlp/ag_news_csv.tgz, extracted): ``train.csv`` and
``test.csv``, rows ``class,title,description`` with class 1..4 (World, Sports, Business,
Sci/Tech; ``classes.txt`` beside them names them), no header (a header row is skipped). Also
read: ``train.jsonl``/``test.jsonl`` with fields ``label`` (1..4), ``title``, ``description``, the
files of the Hub dataset ``sh0416/ag_news``. NOTE: the Hub's main copy, ``fancyzhx/ag_news``
(``ag_news``), joins each title and description into one ``text`` field, which loses the
(title, description) pairs this suite trains on; the fetch therefore reads ``sh0416/ag_news``
(``suite.hub_name``), which keeps them apart, and writes it into the cache as the original CSVs.

Cleaning: the release writes line breaks as a backslash and some entities without their
ampersand (`` #39;``, ``quot;``); both are undone, entities unescaped and whitespace collapsed.
Items whose description repeats an earlier one (case and whitespace ignored) are dropped, within
the training split and from the test split when the training split has it: a duplicate across
splits would leak test items into training, and one inside a split makes retrieval ambiguous.

Splits: the official test split is the test split; a stratified validation split (``val_size``
items) is held out of the training split, fixed by ``split_seed``. Tokens: a lower-casing
WordPiece tokenizer of about ``vocab_size`` tokens trained on the training split's titles and
descriptions only (not the validation split), cached under the cache's ``ag-news/``. A stored
item is (2, ``desc_len``) token ids: row 0 the title, row 1 the description's first ``desc_len``
tokens.

Positive pairs (as ``bbc-news``'s (headline, body passage)): the title with token dropout, and a
span of ``view_len`` tokens of the description cropped at a uniform random start, with token
dropout. Strategies that encode extra items (``random``, ``dynamic``) get description views.
Evaluation: topic kNN and linear accuracy on the description's lede (its first ``view_len``
tokens, un-augmented), and retrieval title -> description among the evaluated split's items
(recall@1, recall@10, MRR, :func:`negbench.suites.text.retrieval_metrics`) with the encoder's
projections. The false-negative rate uses the topic labels: another item of the same topic is a
false negative.

Encoder and budget, sized for a GPU: :class:`negbench.suites.text.TinyTransformer` from scratch,
256 wide, 4 layers (7.4M parameters, 4.1M of them the 16k-token embedding table); the default
budget is 1M samples (about 9 epochs of the 112,400 training items), batch 512. On a CPU, set a
smaller ``--budget`` and ``suite.transformer.*``.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from negbench import atomic_path
from negbench.suites import DataUnavailable, Split, Suite, SuiteData, SuiteError, register
from negbench.suites.base import cache_dir, stratified_holdout
from negbench.suites.online_vision import reachable
from negbench.suites.text import (
    PairedTextViews,
    TinyTransformer,
    TransformerConfig,
    check_text_config,
    encode_texts,
    fit,
    json_lines,
    train_tokenizer,
)

HF_EXTRA = "pip install 'negbench[hf]'"
HUB_URL = "https://huggingface.co"
HUB = "Hugging Face Hub"  # what locate() returns when the data will be fetched


# --------------------------------------------------------------------------- the Hub, lazily
def datasets_available() -> bool:
    """Whether Hugging Face ``datasets`` is installed, found without importing it."""
    return importlib.util.find_spec("datasets") is not None


def hub_offline_env() -> bool:
    """Whether the environment asks the Hugging Face libraries to stay offline."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable() -> bool:
    """Whether the Hub may be reached (a TCP connection to it opens, or a proxy is set)."""
    return not hub_offline_env() and reachable(HUB_URL)


def hub_load(name: str) -> Any:
    """``datasets.load_dataset(name)``: a DatasetDict of the Hub dataset's splits. The only
    place that imports ``datasets``.

    NOTE: untested here. This machine reaches no Hub and CI does not install ``datasets``; the
    tests read the same files from ``--data-dir`` in the releases' layouts instead, and do not
    fake ``datasets`` (no mocks of our dependencies). The conversion of Hub rows into those
    layouts (below and in ``suites/nli.py``) runs first where a network exists."""
    import datasets

    return datasets.load_dataset(name)


def hub_rows(ds: Any, columns: tuple[str, ...], what: str) -> Iterator[tuple]:
    """The rows of one split of a Hub dataset as tuples of ``columns`` (read column-wise)."""
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise SuiteError(f"{what}: the Hub dataset has columns {', '.join(ds.column_names)}; "
                         f"expected {', '.join(columns)}")
    return zip(*(list(ds[c]) for c in columns), strict=True)


def write_atomic(path: Path, write) -> None:
    """Write ``path`` through ``write(file)`` into a temporary file renamed at the end, so an
    interrupted fetch never leaves a truncated file where a complete one is looked for."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        write(f)


class HubTextSuite(Suite):
    """Shared by the Hugging Face text suites: where the files are, the Hub fetch into the
    cache, the one-line errors. A subclass implements :meth:`_find_in` (the folder under a root
    that holds its files), :meth:`files_hint` and :meth:`_fetch`."""

    modality = "text"
    offline = False  # the Hub (extra `hf`, a network) or files passed with --data-dir
    source = "Hugging Face Hub (extra hf, network) or --data-dir"
    hub_names: ClassVar[tuple[str, ...]] = ()

    def cache_folder(self) -> Path:
        return cache_dir() / self.name

    def _roots(self) -> list[Path]:
        roots = [Path(self.data_dir)] if self.data_dir is not None else []
        return roots + [self.cache_folder()]

    def _find_in(self, root: Path) -> Path | None:
        raise NotImplementedError

    def _find_local(self) -> Path | None:
        for root in self._roots():
            found = self._find_in(root)
            if found is not None:
                return found
        return None

    def files_hint(self) -> str:
        """Which files to put in --data-dir and where to get them (part of one line)."""
        raise NotImplementedError

    def _fetch(self, dest: Path) -> None:
        """Fetch the data from the Hub and write it under ``dest`` in the files' layout."""
        raise NotImplementedError

    def hub_datasets(self) -> tuple[str, ...]:
        """The Hub datasets this configuration fetches."""
        return self.hub_names

    def _missing(self, why: str) -> str:
        looked = f"--data-dir {self.data_dir} nor " if self.data_dir is not None else ""
        return (f"{self.name}: no data in {looked}{self.cache_folder()} ({why}): put "
                f"{self.files_hint()} in --data-dir, or `{HF_EXTRA}` and run with a network to "
                f"fetch {' + '.join(self.hub_datasets())} from the Hugging Face Hub")

    def _not_here_reason(self) -> str:
        if not datasets_available():
            return "the hf extra is not installed"
        if not self.cfg.download:
            return "suite.download is off"
        return "not fetched yet"

    def data_status(self) -> str:
        """'present' when the files are on disk, else the one-line reason; never touches the
        network and never imports ``datasets``."""
        if self._find_local() is not None:
            return "present"
        return self._missing(self._not_here_reason())

    def locate(self) -> str:
        local = self._find_local()
        if local is not None:
            return str(local)
        why = self._not_here_reason()
        if why != "not fetched yet":
            raise DataUnavailable(self._missing(why))
        if not hub_reachable():
            why = ("offline: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set" if hub_offline_env()
                   else "offline: cannot reach huggingface.co")
            raise DataUnavailable(self._missing(why))
        return HUB

    def _folder(self) -> Path:
        """The folder holding the files, fetched from the Hub into the cache first if need be."""
        where = self.locate()
        if where != HUB:
            return Path(where)
        try:
            self._fetch(self.cache_folder())
        except SuiteError:
            raise
        except Exception as e:  # no network after all, a renamed dataset, a full disk
            first = (str(e).splitlines() or [""])[0]
            raise DataUnavailable(self._missing(f"the fetch failed: {type(e).__name__}: "
                                                f"{first}")) from None
        found = self._find_in(self.cache_folder())
        if found is None:
            raise DataUnavailable(self._missing("the fetch did not give the expected files"))
        return found

    def _val_holdout(self, y: np.ndarray, val_size: int, seed: int, n_classes: int):
        """(train, val) positions, the validation split stratified by ``y``."""
        n = len(y)
        if not n_classes <= val_size <= n - n_classes:
            raise SuiteError(f"{self.name}: val_size {val_size} must lie in [{n_classes}, "
                             f"{n - n_classes}] (at least one item of each of the {n_classes} "
                             "classes on each side)")
        return stratified_holdout(np.arange(n), y, val_size / n, seed)


# --------------------------------------------------------------------------- AG News files
AG_CLASSES = ("World", "Sports", "Business", "Sci/Tech")
AG_RELEASE = "https://s3.amazonaws.com/fast-ai-nlp/ag_news_csv.tgz"
AG_SPLITS = ("train", "test")


def clean_ag(text: str) -> str:
    """A title or description of the release as plain text: its backslash line breaks become
    spaces, entities whose ampersand the release turned into a space (`` #39;``, `` quot;``)
    are unescaped with the rest, and whitespace is collapsed. (The space left before them
    changes no token: the tokenizer splits punctuation off anyway.)"""
    t = text.replace("\\", " ")
    # a code below 32 would be a control character: such a "#5;" is text, and kept
    t = re.sub(r"(?<!&)#(\d{2,5});", lambda m: f"&#{m[1]};" if int(m[1]) >= 32 else m[0], t)
    t = re.sub(r"(?<!&)quot;", "&quot;", t)  # also glued to a word: "xquot;"
    t = re.sub(r"(?<![&\w])(amp|lt|gt);", r"&\1;", t)  # not inside a word ("salt;")
    t = html.unescape(t)
    return re.sub(r"\s+", " ", t).strip()


def _ag_label(raw, path: Path, n_classes: int) -> int:
    try:
        c = int(str(raw).strip())
    except ValueError:
        raise SuiteError(f"ag-news: {path}: class {raw!r} is not an integer 1..{n_classes}") \
            from None
    if not 1 <= c <= n_classes:
        raise SuiteError(f"ag-news: {path}: class {c} outside 1..{n_classes}")
    return c - 1


def read_ag_split(folder: Path, split: str, n_classes: int = 4) -> list[tuple[int, str, str]]:
    """(label 0..n_classes-1, title, description) of each row of ``split`` (train or test):
    ``<split>.csv`` (the release) or else ``<split>.jsonl`` (sh0416/ag_news), cleaned."""
    rows = []
    path = folder / f"{split}.csv"
    if path.is_file():
        with open(path, encoding="utf-8", newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                if i == 0 and row and not row[0].strip().isdigit():
                    continue  # a header row (Kaggle's copy has one; the release has none)
                if len(row) < 3:
                    raise SuiteError(f"ag-news: {path}, row {i + 1}: expected class,title,"
                                     f"description; got {len(row)} fields")
                # fields past the third (a copy that left a comma unquoted) are joined back
                rows.append((_ag_label(row[0], path, n_classes), clean_ag(row[1]),
                             clean_ag(",".join(row[2:]))))
        return rows
    path = folder / f"{split}.jsonl"
    rows.extend(json_lines(
        path, lambda r: (_ag_label(r["label"], path, n_classes), clean_ag(r["title"]),
                         clean_ag(r["description"])),
        "ag-news", "label, title, description"))
    return rows


def dedupe_descriptions(splits: list[list[tuple[int, str, str]]]):
    """The splits with every item whose description repeats an earlier one (in this split or
    an earlier split; case and whitespace ignored) or is empty dropped; and how many were."""
    seen: set[str] = set()
    out, dropped = [], 0
    for rows in splits:
        kept = []
        for r in rows:
            key = re.sub(r"\s+", " ", r[2].lower()).strip()
            if not key or key in seen:
                dropped += 1
                continue
            seen.add(key)
            kept.append(r)
        out.append(kept)
    return out, dropped


# --------------------------------------------------------------------------- the suite
def _gpu_transformer() -> TransformerConfig:
    return TransformerConfig(dim=256, layers=4, heads=4, ff=1024, max_len=128, proj_dim=128)


@dataclass(frozen=True)
class AGNewsConfig:
    val_size: int = 7600  # held out of the training split, stratified (as many as the test split)
    split_seed: int = 0  # the split is fixed across runs; the run's seed does not change it
    vocab_size: int = 16000  # WordPiece tokens (the transformer's embedding table)
    title_len: int = 32  # title tokens kept
    desc_len: int = 64  # description tokens stored (passages are cropped from these)
    view_len: int = 32  # tokens per view (a passage; titles are padded to it)
    dropout_p: float = 0.1  # token dropout of each view
    hub_name: str = "sh0416/ag_news"  # the Hub dataset fetched (label 1..4, title, description)
    download: bool = True  # fetch from the Hub when no local copy is found
    transformer: TransformerConfig = field(default_factory=_gpu_transformer)

    def __post_init__(self):
        if self.val_size < 1:
            raise SuiteError(f"ag-news: val_size must be >= 1, got {self.val_size}")
        check_text_config("ag-news", self, ("title_len", "desc_len", "view_len"), "desc_len")


@register("ag-news")
class AGNews(PairedTextViews, HubTextSuite):
    """AG's News: (title, description passage) pairs, topic labels, retrieval title ->
    description. Default budget sized for a GPU: 1M samples (about 9 epochs), batch 512."""

    Config = AGNewsConfig
    default_budget = ("samples", 1_000_000)
    default_batch_size = 512
    hub_names = ("sh0416/ag_news",)

    def files_hint(self) -> str:
        return (f"the original release's train.csv and test.csv (class,title,description; "
                f"{AG_RELEASE}, extracted)")

    def _find_in(self, root: Path) -> Path | None:
        for d in (root, root / "ag_news_csv"):
            for ext in ("csv", "jsonl"):
                if all((d / f"{s}.{ext}").is_file() for s in AG_SPLITS):
                    return d
        return None

    def _fetch(self, dest: Path) -> None:
        ds = hub_load(self.cfg.hub_name)
        what = f"ag-news: {self.cfg.hub_name}"
        for split in AG_SPLITS:
            rows = list(hub_rows(ds[split], ("label", "title", "description"), what))
            shift = 1 if rows and min(int(r[0]) for r in rows) == 0 else 0  # 0..3 -> 1..4

            def write(f, rows=rows, shift=shift):
                w = csv.writer(f)
                for label, title, desc in rows:
                    w.writerow([int(label) + shift, title, desc])

            write_atomic(dest / f"{split}.csv", write)
        (dest / "classes.txt").write_text("\n".join(AG_CLASSES) + "\n")

    def _load(self) -> SuiteData:
        c = self.cfg
        d = self._folder()
        names = AG_CLASSES
        if (d / "classes.txt").is_file():
            names = tuple(s.strip() for s in (d / "classes.txt").read_text().splitlines()
                          if s.strip()) or AG_CLASSES
        (tr_rows, te_rows), self.duplicates_dropped = dedupe_descriptions(
            [read_ag_split(d, s, len(names)) for s in AG_SPLITS])
        rows = tr_rows + te_rows
        n_tr = len(tr_rows)
        y = np.asarray([r[0] for r in rows], dtype=np.int64)
        tr, va = self._val_holdout(y[:n_tr], c.val_size, c.split_seed, len(names))
        te = np.arange(n_tr, len(rows))
        titles, descs = [r[1] for r in rows], [r[2] for r in rows]
        self.tokenizer = train_tokenizer([titles[i] for i in tr] + [descs[i] for i in tr],
                                         c.vocab_size, self.cache_folder())
        x = torch.stack([fit(encode_texts(self.tokenizer, titles, c.title_len), c.desc_len),
                         encode_texts(self.tokenizer, descs, c.desc_len)], dim=1)  # (N, 2, L)
        yt = torch.from_numpy(y)

        def split(ix) -> Split:
            ix = torch.from_numpy(np.asarray(ix, dtype=np.int64))
            return Split(x[ix], yt[ix], source=ix)  # source: position in train rows, then test

        return SuiteData(train=split(tr), val=split(va), test=split(te), n_classes=len(names),
                         class_names=names)

    def title(self, x: Tensor) -> Tensor:
        """(N, view_len) the titles of stored items, un-augmented."""
        return self.headline(x)

    # -- encoder and evaluation
    def build_encoder(self) -> nn.Module:
        return TinyTransformer(self.cfg.vocab_size, self.cfg.transformer)
