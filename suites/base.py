"""What a benchmark suite provides: data splits with oracle labels, two views of a batch (the
positive pair), an encoder, and a default budget. Suites know nothing of the harness."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from negbench import NegbenchError


class SuiteError(NegbenchError, ValueError):
    """A suite was misconfigured."""


class DataUnavailable(SuiteError):
    """A suite's data cannot be found; the message says how to get it."""


@dataclass
class Split:
    x: Tensor  # (N, ...) stored form (uint8 images, token ids), on the CPU until the run moves it
    y: Tensor  # (N,) int64 oracle labels; -1 where the suite has none (SuiteData.labelled)
    source: Tensor | None = None  # (N,) int64 each item's index in the suite's source data

    def __len__(self) -> int:
        return self.y.shape[0]

    def to(self, device) -> Split:
        return Split(self.x.to(device), self.y.to(device), self.source)


@dataclass
class SuiteData:
    train: Split
    val: Split
    test: Split
    n_classes: int
    class_names: tuple[str, ...] = ()

    @property
    def labelled(self) -> bool:
        """Whether the items have oracle labels. A suite without them (``text-pairs`` on a
        file with no label column) gives ``n_classes`` 0 and labels -1; the harness then leaves
        kNN, the linear probe, the false-negative figures and the oracle references out: they
        are not computed, and reports say "n/a: no labels"."""
        return self.n_classes > 0

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise SuiteError(f"unknown split {name!r}; allowed: train, val, test")
        return getattr(self, name)


class Suite:
    """Base class of a suite. Subclasses set ``Config`` and the class attributes below and
    implement :meth:`_load`, :meth:`view`, :meth:`prepare` and :meth:`build_encoder`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = None  # type: ignore[assignment]
    modality: ClassVar[str] = ""
    offline: ClassVar[bool] = True  # its data ships in a package here (False: download or files)
    source: ClassVar[str] = ""  # where the data comes from, for `negbench suites`
    default_budget: ClassVar[tuple[str, float]] = ("samples", 50_000)
    default_batch_size: ClassVar[int] = 256

    def __init__(self, cfg: Any, *, data_dir: str | None = None):
        if not isinstance(cfg, self.Config):
            raise SuiteError(f"{self.name}: expected a {self.Config.__name__}, got {cfg!r}")
        self.check_config(cfg)
        self.cfg = cfg
        self.data_dir = data_dir
        self._data: SuiteData | None = None

    # ``suite.classes=K``: coarser groupings of the suite's classes, K -> ((group name, (class
    # index, ...)), ...), the native classes included. Fewer groups mean more same-group items
    # among uniform negatives (expected false-negative rate sum_g p_g^2), so the grouping is a
    # false-negative pressure knob; labels of every split (evaluation and false-negative
    # counting alike) are the group indices. A suite with groupings has a ``classes`` field.
    groupings: ClassVar[dict[int, tuple[tuple[str, tuple[int, ...]], ...]]] = {}

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Raise SuiteError where ``cfg`` asks for what this suite lacks (a grouping)."""
        k = getattr(cfg, "classes", None)
        if k is not None and k not in cls.groupings:
            raise SuiteError(f"{cls.name}: suite.classes must be one of "
                             f"{', '.join(map(str, sorted(cls.groupings)))}; got {k}")

    @classmethod
    def coarser_grouping(cls, cfg: Any) -> int | None:
        """``suite.classes`` when it groups the suite's classes coarsely (fewer groups than its
        own classes, the largest key of ``groupings``), else None (no grouping asked, or the
        suite's own classes, which leave the labels as they are)."""
        k = getattr(cfg, "classes", None)
        if k is None or not cls.groupings or k == max(cls.groupings):
            return None
        return k

    @classmethod
    def class_prior(cls, cfg: Any) -> float | None:
        """At a coarser ``suite.classes`` grouping, the share of a uniform negative that falls
        in the anchor's group, sum_g (|g| / C)^2 (the native classes counted as balanced): the
        class prior tau+ of Chuang et al. 2020, which the harness gives every strategy with a
        ``tau_plus`` knob unless it is set. None at the native classes (the paper's default
        stands) and for a suite without groupings."""
        k = cls.coarser_grouping(cfg)
        if k is None:
            return None
        n = max(cls.groupings)
        return sum((len(m) / n) ** 2 for _, m in cls.groupings[k])

    # Which data was read, for a suite on the user's own files: "NAME@HASH", set by _load
    # (text-pairs: the file's bytes; image-folder: its files' paths, sizes and mtimes). None for
    # a suite whose data a package or a fixed download determines. The harness records it (tag
    # negbench.data) and keys the floors by it; the report gives each identity its own section.
    data_identity: str | None = None

    def load(self) -> SuiteData:
        """The splits (cached after the first call), labelled by ``suite.classes`` groups."""
        if self._data is None:
            data = self._load()
            k = self.coarser_grouping(self.cfg)
            if k is not None:
                data = regroup(data, self.groupings[k])
            self._data = data
        return self._data

    def data_status(self) -> str:
        """'present' or a one-line reason why the data is missing."""
        try:
            self.locate()
        except DataUnavailable as e:
            return str(e)
        return "present"

    def locate(self) -> str:
        """Where the data will be read from; raises DataUnavailable when it cannot be found."""
        return self.source

    @classmethod
    def run_defaults(cls, cfg: Any) -> dict[str, str]:
        """Run settings (dotted keys, as ``--set`` takes them) this suite's config needs unless
        the user sets them: e.g. a pretrained encoder's small learning rate. None by default."""
        return {}

    # a strategy's knobs where the paper's defaults do not transfer to this suite: strategy
    # name -> {knob: value}, applied below anything the user sets (the evidence for each is in
    # docs/decisions.md); the resolved values are the run's strategy config, logged with it
    strategy_overrides: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def strategy_defaults(cls, cfg: Any, strategy: str) -> dict[str, str]:
        """This suite's own defaults for ``strategy``'s knobs (keys without ``strategy.``, as
        strings, as ``--set`` takes them), for its config ``cfg``."""
        return {k: str(v) for k, v in cls.strategy_overrides.get(strategy, {}).items()}

    def describe_encoder(self) -> str:
        enc = self.build_encoder()
        n = sum(p.numel() for p in enc.parameters())
        return f"{type(enc).__name__} ({n / 1e3:.0f}k params)"

    # -- subclasses
    def _load(self) -> SuiteData:
        raise NotImplementedError

    def view(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """One randomly augmented view of each item of a stored batch, on the batch's device."""
        raise NotImplementedError

    def views(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Two independent views of a stored batch: the positive pair."""
        return self.view(x, generator), self.view(x, generator)

    def hard_negative_view(self, x: Tensor, generator: torch.Generator) -> Tensor | None:
        """A view of each item's supervised hard negative (e.g. the contradiction of an NLI
        premise), shaped like the first view, or None (the default: no supervised negatives).
        The harness trains it with the two views and contrasts it with the anchors whose
        positive is the second view (``harness/runner.py``: :func:`with_hard_negatives`)."""
        return None

    def prepare(self, x: Tensor) -> Tensor:
        """A stored batch as encoder input, un-augmented (for evaluation)."""
        raise NotImplementedError

    def build_encoder(self) -> nn.Module:
        """A fresh encoder: ``forward`` gives unit-norm projections, ``features`` the
        representation that evaluation probes."""
        raise NotImplementedError

    def evaluate_extra(self, encoder: nn.Module, data: SuiteData, split: str) -> dict[str, float]:
        """Metrics of this suite's own beside kNN and linear accuracy (text retrieval, ...),
        computed on ``split`` with the frozen ``encoder``. None by default."""
        return {}


def group_table(groups: tuple[tuple[str, tuple[int, ...]], ...], n_classes: int) -> Tensor:
    """(n_classes,) int64: each class's group index; every class in exactly one group."""
    table = torch.full((n_classes,), -1, dtype=torch.int64)
    for g, (name, members) in enumerate(groups):
        for c in members:
            if not 0 <= c < n_classes or table[c] >= 0:
                raise SuiteError(f"grouping {name!r}: class {c} is out of range or in two groups")
            table[c] = g
    if (table < 0).any():
        raise SuiteError(f"grouping leaves classes {table.lt(0).nonzero().flatten().tolist()} out")
    return table


def regroup(data: SuiteData, groups: tuple[tuple[str, tuple[int, ...]], ...]) -> SuiteData:
    """``data`` with every split's labels replaced by their group's index."""
    table = group_table(groups, data.n_classes)

    def split(s: Split) -> Split:
        return Split(s.x, table[s.y], s.source)

    return SuiteData(split(data.train), split(data.val), split(data.test), n_classes=len(groups),
                     class_names=tuple(name for name, _ in groups))


def cache_dir() -> Path:
    """Where suites keep downloads, tokenizers and decoded images: ``$NEGBENCH_CACHE``, else
    ``~/.cache/negbench`` (read at call time, so a test or a user may set it late)."""
    return Path(os.environ.get("NEGBENCH_CACHE") or Path.home() / ".cache" / "negbench")


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stratified_holdout(idx, y, fraction: float, seed: int):
    """Split index array ``idx`` (labels ``y[idx]``) into (kept, held-out), stratified by label,
    fixed by ``seed``; both sorted."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    kept, held = train_test_split(idx, test_size=fraction, stratify=y[idx], random_state=seed)
    return np.sort(kept), np.sort(held)
