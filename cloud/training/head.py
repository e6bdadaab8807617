"""Training the classification head on cached features: one trial = one call, a few seconds on CPU."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cloud.training.backbone import make_head

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class HeadParams:
    lr: float
    weight_decay: float
    epochs: int
    label_smoothing: float
    hidden: int = 0
    dropout: float = 0.0
    batch_size: int = 32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def class_weights(y: I64, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights so the minority label's recall is not sacrificed (recall-gap gate)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    w = counts.sum() / (n_classes * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32)


def train_head(x: F32, y: I64, params: HeadParams, seed: int, n_classes: int) -> nn.Module:
    """AdamW with cosine decay on (features, label) rows; deterministic for a seed on CPU.

    Runs on one thread: the matrices are tiny, so more threads only add overhead (and a fixed
    thread count keeps float reductions, hence results, identical across machines).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_head(x, y, params, seed, n_classes)
    finally:
        torch.set_num_threads(threads)


def _train_head(x: F32, y: I64, params: HeadParams, seed: int, n_classes: int) -> nn.Module:
    torch.manual_seed(seed)
    head = make_head(params.hidden, params.dropout, n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    steps_per_epoch = math.ceil(len(x) / params.batch_size)
    total = max(1, params.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y, n_classes), label_smoothing=params.label_smoothing)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    head.train()
    for _ in range(params.epochs):
        order = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(order), params.batch_size):
            idx = order[i : i + params.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(head(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    return head


def predict_proba(head: nn.Module, x: F32) -> F32:
    head.eval()
    with torch.inference_mode():
        return torch.softmax(head(torch.from_numpy(x)), dim=1).numpy().astype(np.float32)


def log_loss(probs: F32, y: I64) -> float:
    p = np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)
    return float(-np.mean(np.log(p)))


def logits(head: nn.Module, x: F32) -> F32:
    head.eval()
    with torch.inference_mode():
        out: F32 = head(torch.from_numpy(x)).numpy().astype(np.float32)
    return out


def fit_temperature(z: F32, y: I64) -> float:
    """The one temperature T that makes softmax(z / T) best calibrated on held-out rows (least
    log-loss; Guo et al. 2017). Why: label smoothing and class weights, which the search may pick
    for accuracy, leave confidences too low or too high, and the promotion gate bounds the ECE.
    Dividing logits by T never changes a prediction, only how sure it says it is."""
    if len(y) == 0:
        return 1.0
    z64 = z.astype(np.float64)
    best_t, best_loss = 1.0, math.inf
    # Bounded: on a small, perfectly separated validation set the log-loss keeps falling as T
    # goes to 0, which would only saturate every probability at 0 or 1.
    for t in np.exp(np.linspace(np.log(0.25), np.log(10.0), 161)):
        s = z64 / t
        s = s - s.max(axis=1, keepdims=True)
        logp = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
        loss = float(-logp[np.arange(len(y)), y].mean())
        if loss < best_loss:
            best_t, best_loss = float(t), loss
    return best_t


def apply_temperature(head: nn.Module, t: float) -> nn.Module:
    """Fold 1/T into the head's last linear layer, so the exported graph is unchanged in shape."""
    last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.div_(t)
        if last.bias is not None:
            last.bias.div_(t)
    return head
