"""negbench in your own training loop: a strategy picks the negatives, an objective scores them,
the loop (model, data, optimiser) is yours, as with a pytorch-metric-learning miner and loss.

    python examples/own_loop.py [--strategy hcl] [--steps 200] [--batch 128]

A small MLP learns embeddings of scikit-learn's digits (real 8x8 images, in its wheel) from two
noisy, shifted views of each image. What it learned is measured on the test split by view
retrieval (is the nearest of the second views of every test image its own? what contrastive
training optimises) and by a 1-nearest-neighbour vote on the classes (near its ceiling on raw
digits already: this short schedule trades a few points of it for invariance to the views).
Any registered strategy name works (`negbench strategies`), the stateful ones included:
they ask the loop for embeddings of other items through the step context's ``encode`` and
``encode_all`` (random, dynamic), want keys from a momentum copy of the encoder when
``strategy.key_momentum`` is set (memory-bank, adversarial: MoCo's key encoder), and learn
from ``update`` after each step.
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import negbench


def view(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """One random view of a batch of (N, 64) images in [0, 1]: a shift of up to one pixel and
    Gaussian noise (your own augmentation goes here)."""
    img = x.view(-1, 1, 8, 8)
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
    img = torch.roll(img, shifts=(dy, dx), dims=(2, 3))
    return (img.flatten(1) + 0.05 * torch.randn(img.shape[0], 64, generator=g)).clamp(0, 1)


class Encoder(nn.Module):
    def __init__(self, dim: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)  # unit embeddings: what strategies expect


@torch.no_grad()
def evaluate(model: Encoder, x_tr, y_tr, x_te, y_te) -> tuple[float, float]:
    """(view retrieval top-1, 1-NN class accuracy) on the test split, views of a fixed seed."""
    g = torch.Generator().manual_seed(123)
    a, b = model(view(x_te, g)), model(view(x_te, g))
    retrieval = float(((a @ b.T).argmax(1) == torch.arange(len(x_te))).float().mean())
    nearest = (model(x_te) @ model(x_tr).T).argmax(1)
    return retrieval, float((y_tr[nearest] == y_te).float().mean())


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategy", default="hcl", help="any registered strategy name")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    tr, te = train_test_split(torch.arange(len(y)), test_size=0.2, stratify=y,
                              random_state=0)
    x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
    n = len(x_tr)

    model = Encoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    strategy = negbench.create(args.strategy, dim=32, n_train=n)  # the miner
    # MoCo-style strategies take their keys from a slowly moving copy of the encoder
    m = strategy.key_momentum
    key_model = copy.deepcopy(model).requires_grad_(False) if m is not None else model
    g = torch.Generator().manual_seed(args.seed)
    before = evaluate(model, x_tr, y_tr, x_te, y_te)

    def encode(ids: torch.Tensor, grad: bool) -> torch.Tensor:  # other items, one view each
        with torch.set_grad_enabled(grad):
            return model(view(x_tr[ids], g))

    def encode_all() -> torch.Tensor:  # the whole training set, un-augmented (index refresh)
        with torch.no_grad():
            return model(x_tr)

    losses = []
    for step in range(args.steps):
        ids = torch.randperm(n, generator=g)[: args.batch]  # dataset ids of the batch
        q = model(view(x_tr[ids], g))  # the positive pair: two views of each item
        with torch.set_grad_enabled(m is None):
            k = key_model(view(x_tr[ids], g))
        ctx = negbench.StepContext(step=step, fraction=step / args.steps, ids=ids, generator=g,
                                   n_train=n, encode=encode, encode_all=encode_all)
        negs = strategy.select(q, k, ctx)  # which negatives each anchor is contrasted with
        loss = negbench.info_nce(negs, temperature=0.2).loss  # the loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if m is not None:  # the key encoder follows the encoder: k <- m k + (1 - m) q
            with torch.no_grad():
                for pk, pq in zip(key_model.parameters(), model.parameters(), strict=True):
                    pk.lerp_(pq, 1 - m)
        strategy.update(q.detach(), k.detach(), ctx)  # queues, indexes, adversaries learn here
        losses.append(loss.detach())  # read once at the end: no host sync inside the step
    strategy.check()  # raises if any selection broke the contract (e.g. an anchor's own view)
    after = evaluate(model, x_tr, y_tr, x_te, y_te)
    loss = torch.stack(losses).tolist()
    out = {"loss_first": sum(loss[:10]) / len(loss[:10]), "loss_last": sum(loss[-10:]) / 10,
           "retrieval_before": before[0], "retrieval_after": after[0],
           "knn_before": before[1], "knn_after": after[1]}
    print(f"{args.strategy}, {args.steps} steps: loss {out['loss_first']:.3f} -> "
          f"{out['loss_last']:.3f} (first and last 10 steps); test view retrieval "
          f"{before[0]:.3f} -> {after[0]:.3f}; 1-NN class accuracy {before[1]:.3f} -> "
          f"{after[1]:.3f}")
    return out


if __name__ == "__main__":
    main()
