"""Pieces the text suites share: a WordPiece tokenizer trained on a suite's training split and
cached, batched on-device text views (span cropping and token dropout), and a small transformer
encoder trained from scratch.

Stored form of a text item: a row of token ids, 0 (``[PAD]``) after its end. A view is a
(N, L) int64 batch of the same form; the encoder finds the padding itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from negbench import atomic_path
from negbench.suites.base import SuiteError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL = (PAD, UNK, CLS, SEP, MASK)  # ids 0..4, in this order
PAD_ID = 0


# --------------------------------------------------------------------------- tokenizer
def json_lines(path: Path, convert: Callable[[dict], tuple], suite: str,
               expected: str) -> Iterator[tuple]:
    """``convert(record)`` of each non-blank JSON line of ``path``; a line that is not JSON, or
    lacks a field, is a SuiteError naming the suite, the file, the line and the ``expected``
    fields."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                yield convert(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SuiteError(f"{suite}: {path}, line {i + 1}: expected JSON with "
                                 f"{expected} ({type(e).__name__})") from None


def train_tokenizer(texts: Sequence[str], vocab_size: int, cache_dir: Path):
    """A lower-casing WordPiece tokenizer (``tokenizers``) with about ``vocab_size`` tokens,
    trained on ``texts`` once and cached under ``cache_dir`` by a hash of the texts and the size,
    so every run of a suite reads the same file."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    h = hashlib.sha256(f"wordpiece-v1|{vocab_size}".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    path = Path(cache_dir) / f"wordpiece-{vocab_size}-{h.hexdigest()[:16]}.json"
    if path.exists():
        return Tokenizer.from_file(str(path))
    tok = Tokenizer(models.WordPiece(unk_token=UNK))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL),
                                        show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    with atomic_path(path) as tmp:  # a crash never leaves a half-written tokenizer behind
        tok.save(str(tmp))
    return tok


def encode_texts(tok, texts: Sequence[str], length: int) -> Tensor:
    """(N, length) int64 token ids of each text, cut at ``length``, ``[PAD]`` (0) after it."""
    out = torch.zeros(len(texts), length, dtype=torch.long)
    for i, enc in enumerate(tok.encode_batch(list(texts), add_special_tokens=False)):
        ids = enc.ids[:length]
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def decode_ids(tok, row: Tensor) -> str:
    """The text of one stored row (padding dropped)."""
    return tok.decode([int(i) for i in row.tolist() if i != PAD_ID])


def vocab_fingerprint(tok) -> str:
    return hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- views
def lengths(x: Tensor) -> Tensor:
    """(N,) tokens before the padding of each row of ``x`` (N, L)."""
    return (x != PAD_ID).sum(1)


def crop(x: Tensor, length: int, g: torch.Generator | None) -> Tensor:
    """(N, length): a span of ``length`` tokens of each row of ``x`` (N, L), starting uniformly
    at random among the starts that keep the span inside the row's tokens (at 0 with no
    generator, or when the row is shorter than the span). Batched: one gather."""
    n, big_l = x.shape
    dev = x.device
    room = (lengths(x) - length).clamp_min(0)  # (N,) the latest start that fits
    if g is None:
        start = torch.zeros(n, dtype=torch.long, device=dev)
    else:
        u = torch.rand(n, generator=g, device=dev)  # (N,)
        start = (u * (room + 1).to(u.dtype)).long().clamp_max(room)  # (N,) uniform 0..room
    cols = start[:, None] + torch.arange(length, device=dev)[None, :]  # (N, length)
    inside = cols < big_l
    out = x.gather(1, cols.clamp_max(big_l - 1))  # (N, length)
    return torch.where(inside, out, PAD_ID)


def token_dropout(x: Tensor, p: float, g: torch.Generator) -> Tensor:
    """Each token but a row's first replaced by ``[PAD]`` with probability ``p`` (the encoder
    then ignores it), so no row becomes empty."""
    if p <= 0:
        return x
    drop = torch.rand(x.shape, generator=g, device=x.device) < p  # (N, L)
    drop[:, 0] = False
    return x.masked_fill(drop, PAD_ID)


def fit(x: Tensor, length: int) -> Tensor:
    """(N, length): ``x`` cut or padded to ``length`` columns."""
    if x.shape[1] >= length:
        return x[:, :length]
    return F.pad(x, (0, length - x.shape[1]), value=PAD_ID)


# --------------------------------------------------------------------------- encoder

ENCODERS = ("transformer", "minilm")  # from scratch on the suite's tokens | pretrained (extra)


def check_text_config(suite: str, cfg, lengths: tuple[str, ...], longest: str) -> None:
    """The checks every text suite's config shares, each a one-line SuiteError: val_fraction
    and test_fraction (when the config splits by fractions) in (0, 1) with a sum below 1;
    vocab_size >= 100; the token lengths ``lengths`` (field names, ``longest`` among them) >= 1
    and none above ``longest``; dropout_p in [0, 1); the encoder one of :data:`ENCODERS` (when
    the config has one); view_len within the transformer's max_len when the transformer is the
    encoder."""
    if hasattr(cfg, "val_fraction") and not (
            0 < cfg.val_fraction < 1 and 0 < cfg.test_fraction < 1
            and cfg.val_fraction + cfg.test_fraction < 1):
        raise SuiteError(f"{suite}: val_fraction and test_fraction must lie in (0, 1) and sum "
                         "to less than 1")
    if cfg.vocab_size < 100:
        raise SuiteError(f"{suite}: vocab_size must be >= 100, got {cfg.vocab_size}")
    for name in lengths:
        if getattr(cfg, name) < 1:
            raise SuiteError(f"{suite}: {name} must be >= 1, got {getattr(cfg, name)}")
    for name in lengths:
        if getattr(cfg, name) > getattr(cfg, longest):
            raise SuiteError(f"{suite}: {name} ({getattr(cfg, name)}) must not exceed {longest} "
                             f"({getattr(cfg, longest)})")
    if not 0.0 <= cfg.dropout_p < 1.0:
        raise SuiteError(f"{suite}: dropout_p must lie in [0, 1), got {cfg.dropout_p}")
    encoder = getattr(cfg, "encoder", "transformer")
    if encoder not in ENCODERS:
        raise SuiteError(f"{suite}: encoder must be one of {', '.join(ENCODERS)}; "
                         f"got {encoder!r}")
    if encoder == "transformer" and cfg.view_len > cfg.transformer.max_len:
        raise SuiteError(f"{suite}: view_len ({cfg.view_len}) exceeds the transformer's "
                         f"max_len ({cfg.transformer.max_len})")

@dataclass(frozen=True)
class TransformerConfig:
    dim: int = 128  # model width
    layers: int = 2
    heads: int = 4
    ff: int = 256  # feed-forward width
    dropout: float = 0.0  # inside the blocks; the views drop tokens already
    max_len: int = 128  # positions (views are cut to this)
    proj_dim: int = 64


class TinyTransformer(nn.Module):
    """A small pre-LayerNorm transformer encoder trained from scratch: token and learned position
    embeddings, ``layers`` self-attention blocks that ignore ``[PAD]``, mean pooling over the real
    tokens (``features``), and a two-layer projection head to unit vectors (``forward``)."""

    def __init__(self, vocab_size: int, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(vocab_size, cfg.dim, padding_idx=PAD_ID)
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, cfg.ff, cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.ReLU(inplace=True),
                                  nn.Linear(cfg.dim, cfg.proj_dim))
        self.feature_dim, self.out_dim = cfg.dim, cfg.proj_dim
        nn.init.normal_(self.tok.weight, std=cfg.dim ** -0.5)
        nn.init.normal_(self.pos.weight, std=0.02)
        with torch.no_grad():
            self.tok.weight[PAD_ID].zero_()

    def features(self, x: Tensor) -> Tensor:
        """(N, dim) mean of the final token states over each row's real tokens."""
        x = x[:, : self.cfg.max_len]
        keep = x != PAD_ID  # (N, L)
        pos = torch.arange(x.shape[1], device=x.device)
        h = self.tok(x) + self.pos(pos)[None]  # (N, L, dim)
        # a row of padding only (never made by the views) would give NaN attention: keep its
        # first position visible
        keep = keep.clone()
        keep[:, 0] = True
        h = self.norm(self.blocks(h, src_key_padding_mask=~keep))  # (N, L, dim)
        w = keep.to(h.dtype)[..., None]  # (N, L, 1)
        return (h * w).sum(1) / w.sum(1)  # (N, dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.features(x)), dim=1)  # (N, proj_dim)


# --------------------------------------------------------------------------- retrieval
@torch.no_grad()
def retrieval_metrics(queries: Tensor, docs: Tensor, ks: Sequence[int] = (1, 10),
                      chunk: int = 1024) -> dict[str, float]:
    """Recall@k and mean reciprocal rank of query i retrieving document i among all documents,
    by cosine similarity. A tie with the right document counts against it (rank = 1 + the number
    of documents scoring at least as high, other than itself)."""
    qn, dn = F.normalize(queries, dim=1), F.normalize(docs, dim=1)
    n = qn.shape[0]
    ranks = []
    for i in range(0, n, chunk):
        s = qn[i:i + chunk] @ dn.T  # (C, N)
        rows = torch.arange(i, min(i + chunk, n), device=s.device)
        right = s[torch.arange(s.shape[0], device=s.device), rows]  # (C,)
        ranks.append((s >= right[:, None]).sum(1))  # (C,) 1 = first
    r = torch.cat(ranks).to(torch.float64)  # (N,)
    out = {f"retrieval_r{k}": float((r <= k).double().mean()) for k in ks}
    out["retrieval_mrr"] = float((1.0 / r).mean())
    return out


# --------------------------------------------------------------------------- paired texts
class PairedTextViews:
    """Views and retrieval of a suite whose stored item is (2, L) token ids: row 0 a short text
    (a headline, a title), row 1 a long one (a body, a description). The positive pair is (the
    short text, a passage cropped from the long one), each with token dropout; evaluation reads
    the long text's lede; retrieval is short -> long among an evaluated split's items, with the
    encoder's projections (the space the objective trains). A mixin for
    :class:`negbench.suites.Suite` subclasses whose config has ``view_len`` and ``dropout_p``."""

    def headline(self, x: Tensor) -> Tensor:
        """(N, view_len) the short texts of stored items, un-augmented."""
        return fit(x[:, 0], self.cfg.view_len)

    def prepare(self, x: Tensor) -> Tensor:
        """(N, view_len) the long text's lede, un-augmented: what topic evaluation reads."""
        return fit(x[:, 1], self.cfg.view_len)

    def view(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A random passage of the long text with token dropout (an extra, mined item's view)."""
        return token_dropout(crop(x[:, 1], self.cfg.view_len, generator), self.cfg.dropout_p,
                             generator)

    def views(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(the short text with token dropout, a passage of the long one with token dropout)."""
        head = token_dropout(self.headline(x), self.cfg.dropout_p, generator)
        return head, self.view(x, generator)

    @torch.no_grad()
    def evaluate_extra(self, encoder: nn.Module, data, split: str) -> dict[str, float]:
        """Retrieval short -> long text among the ``split``'s items (recall@1, @10, MRR)."""
        s = data.split(split)
        was = encoder.training
        encoder.eval()
        chunk = 1024
        heads = torch.cat([encoder(self.headline(s.x[i:i + chunk]))
                           for i in range(0, len(s), chunk)])
        docs = torch.cat([encoder(self.prepare(s.x[i:i + chunk]))
                          for i in range(0, len(s), chunk)])
        encoder.train(was)
        return retrieval_metrics(heads, docs)
