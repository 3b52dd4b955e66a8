"""Downstream accuracy of a frozen encoder: kNN top-1 and a linear probe.

kNN follows Wu et al. 2018 (instance discrimination): cosine similarity on the encoder's
features, the k=20 nearest training items vote for their class with weight exp(s / T), T=0.07.
The linear probe is a softmax classifier trained on standardised frozen features of the training
split (full-batch AdamW, seeded). Both score the test split, or the validation split when tuning.

Every evaluation reads its query split through :func:`read_split`, which tells the callables in
``split_listeners`` the split's name first: how a test (or an audit) can see that tuning never
evaluates on the test split, without mocking anything.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from negbench.harness.config import ConfigError, EvalConfig
from negbench.suites import Split, Suite, SuiteData

# called with the name of every split an evaluation reads ("val", "test"), before it reads it
split_listeners: list[Callable[[str], None]] = []


def read_split(data: SuiteData, name: str) -> Split:
    """The split ``name`` of ``data``, once every listener has been told its name."""
    for listener in list(split_listeners):
        listener(name)
    split = data.split(name)
    if split is None:  # a trainer evaluating on val holds no test split (harness.runner.Trainer)
        raise ValueError(f"the {name} split was withheld from this run (eval.split is not "
                         f"{name!r}), so it cannot be evaluated on")
    return split


@torch.no_grad()
def embed(encoder: nn.Module, suite: Suite, x: Tensor, batch: int = 2048,
          projection: bool = False) -> Tensor:
    """(N, F) features of stored items ``x`` (or, with ``projection``, the unit-norm projections
    the objective sees), un-augmented, encoder in eval mode, in chunks of ``batch``."""
    was = encoder.training
    encoder.eval()
    fn = encoder if projection else encoder.features
    out = torch.cat([fn(suite.prepare(x[i:i + batch])) for i in range(0, x.shape[0], batch)])
    encoder.train(was)
    return out


@torch.no_grad()
def knn_correct(train_f: Tensor, train_y: Tensor, query_f: Tensor, query_y: Tensor,
                n_classes: int, k: int = 20, temperature: float = 0.07,
                chunk: int = 1024) -> Tensor:
    """(Q,) bool: which query items the weighted kNN vote classifies right."""
    tf = F.normalize(train_f, dim=1)
    k = min(k, tf.shape[0])
    out = []
    for i in range(0, query_f.shape[0], chunk):
        q = F.normalize(query_f[i:i + chunk], dim=1)
        s, idx = (q @ tf.T).topk(k, dim=1)  # (Q, k)
        votes = torch.zeros(q.shape[0], n_classes, dtype=s.dtype, device=s.device)
        votes.scatter_add_(1, train_y[idx], torch.exp(s / temperature))  # (Q, C)
        out.append(votes.argmax(1) == query_y[i:i + chunk])
    return torch.cat(out)


def knn_top1(train_f: Tensor, train_y: Tensor, query_f: Tensor, query_y: Tensor,
             n_classes: int, k: int = 20, temperature: float = 0.07,
             chunk: int = 1024) -> float:
    """kNN top-1 accuracy: the share of :func:`knn_correct`."""
    right = knn_correct(train_f, train_y, query_f, query_y, n_classes, k, temperature, chunk)
    return right.sum().item() / query_f.shape[0]


def linear_probe(train_f: Tensor, train_y: Tensor, query_f: Tensor, query_y: Tensor,
                 n_classes: int, epochs: int = 300, lr: float = 0.05, seed: int = 0) -> float:
    """Linear-probe accuracy: the share of :func:`linear_correct`."""
    right = linear_correct(train_f, train_y, query_f, query_y, n_classes, epochs, lr, seed)
    return right.float().mean().item()


def linear_correct(train_f: Tensor, train_y: Tensor, query_f: Tensor, query_y: Tensor,
                   n_classes: int, epochs: int = 300, lr: float = 0.05,
                   seed: int = 0) -> Tensor:
    """(Q,) bool: which query items the linear probe classifies right."""
    mu, sd = train_f.mean(0), train_f.std(0).clamp_min(1e-6)
    xt, xq = (train_f - mu) / sd, (query_f - mu) / sd
    g = torch.Generator(device="cpu").manual_seed(seed)
    w = (torch.randn(n_classes, xt.shape[1], generator=g) * 0.01).to(xt.device)
    w.requires_grad_(True)
    b = torch.zeros(n_classes, device=xt.device, requires_grad=True)
    opt = torch.optim.AdamW([w, b], lr=lr, weight_decay=1e-3)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(xt @ w.T + b, train_y).backward()
            opt.step()
    with torch.no_grad():
        return (xq @ w.T + b).argmax(1) == query_y


def evaluate(encoder: nn.Module, suite: Suite, data: SuiteData, cfg: EvalConfig,
             seed: int) -> dict[str, float]:
    """kNN and linear accuracy on ``cfg.split`` (test, or val when tuning), and the suite's own
    metrics on the same split (:meth:`negbench.suites.Suite.evaluate_extra`)."""
    return evaluate_items(encoder, suite, data, cfg, seed)[0]


def evaluate_items(encoder: nn.Module, suite: Suite, data: SuiteData, cfg: EvalConfig,
                   seed: int) -> tuple[dict[str, float], dict[str, Tensor]]:
    """:func:`evaluate`'s metrics, and which items of the split each probe got right
    (``{"knn": (Q,) bool, "linear": (Q,) bool}``, in the split's order): what the report's
    per-item intervals and paired tests are computed from."""
    query = read_split(data, cfg.split)
    if not data.labelled:  # no labels, no probe: the suite's own metrics alone
        return dict(suite.evaluate_extra(encoder, data, cfg.split)), {}
    tf = embed(encoder, suite, data.train.x)
    qf = embed(encoder, suite, query.x)
    items = {"knn": knn_correct(tf, data.train.y, qf, query.y, data.n_classes, cfg.knn_k,
                                cfg.knn_temperature)}
    metrics = {"knn_acc": items["knn"].sum().item() / len(query)}
    if cfg.linear_epochs:  # 0: no probe (a tuning trial, whose objective reads kNN alone)
        items["linear"] = linear_correct(tf, data.train.y, qf, query.y, data.n_classes,
                                         cfg.linear_epochs, cfg.linear_lr, seed)
        metrics["linear_acc"] = items["linear"].float().mean().item()
    metrics.update(suite.evaluate_extra(encoder, data, cfg.split))
    return metrics, items


def items_record(split: str, items: dict[str, Tensor]) -> dict[str, str | int]:
    """Per-item correctness as a small JSON record: one '0'/'1' string per probe."""
    out: dict[str, str | int] = {"split": split}
    for name, right in items.items():
        bits = right.to("cpu", torch.uint8).tolist()
        out[f"{name}_correct"] = "".join("1" if b else "0" for b in bits)
        out["items"] = len(bits)
    return out


def knn_accuracy(encoder: nn.Module, suite: Suite, data: SuiteData, split: str,
                 cfg: EvalConfig) -> float:
    """kNN top-1 alone on ``split``: the cheap evaluation tuning reports at its checkpoints."""
    if not data.labelled:
        raise ConfigError(f"{suite.name}: its data has no labels, so no kNN accuracy")
    query = read_split(data, split)
    tf = embed(encoder, suite, data.train.x)
    qf = embed(encoder, suite, query.x)
    return knn_top1(tf, data.train.y, qf, query.y, data.n_classes, cfg.knn_k,
                    cfg.knn_temperature)
