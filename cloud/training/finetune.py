"""Optional end-to-end fine-tune after the head search (``train.finetune_epochs``, default 0).

The cached-feature search gets 1.000 on the sample, so this is off by default: on two CPU cores
one epoch over the sample's train split costs minutes. It exists for larger or harder data,
on a GPU. Only the last ``finetune_blocks`` MBConv blocks, the head convolution and the
classifier learn; batch-norm statistics stay frozen (small batches would corrupt them). Each
epoch sees a fresh augmented view of every image, produced by the same recipe and the same
``edge.preprocess`` as the cached features, deterministically for the seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from cloud.training.augment import make_view
from cloud.training.backbone import Classifier, pooled_features
from cloud.training.data import Item
from cloud.training.head import class_weights
from edge.preprocess import Preprocessor, load_image
from shared.modelpkg import PreprocessSpec

VIEW_BASE = 1000  # view ids for fine-tune epochs, disjoint from the cached feature views


def trainable_parameters(model: Classifier, blocks: int) -> list[nn.Parameter]:
    backbone = model.backbone
    for p in model.parameters():
        p.requires_grad_(False)
    modules: list[nn.Module] = [model.head, backbone._conv_head, backbone._bn1]  # type: ignore[list-item]
    all_blocks = list(backbone._blocks)  # type: ignore[arg-type]
    modules += all_blocks[len(all_blocks) - blocks :] if blocks > 0 else []
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def finetune(
    model: Classifier,
    items: Sequence[Item],
    labels: Sequence[str],
    spec: PreprocessSpec,
    epochs: int,
    lr: float,
    blocks: int,
    seed: int,
    batch_size: int,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> Classifier:
    torch.manual_seed(seed)
    pre = Preprocessor(spec)
    model.to(device)
    params = trainable_parameters(model, blocks)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    total = max(1, epochs * math.ceil(len(items) / batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    y_all = np.array([list(labels).index(i.label) for i in items], dtype=np.int64)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(y_all, len(labels)).to(device))
    gen = torch.Generator().manual_seed(seed)
    images = {i.sha256: load_image(i.path) for i in items}  # decoded once; views differ per epoch
    for epoch in range(epochs):
        model.eval()  # frozen batch-norm statistics and no dropout in the backbone
        model.head.train()
        order = torch.randperm(len(items), generator=gen).tolist()
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            frames = [
                make_view(images[items[k].sha256], seed, items[k].sha256, VIEW_BASE + epoch) for k in idx
            ]
            x = torch.from_numpy(pre(frames)).to(device)
            y = torch.from_numpy(y_all[idx]).to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model.head(pooled_features(model.backbone, x)), y)
            loss.backward()
            opt.step()
            sched.step()
            if progress:
                progress(len(idx))
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to("cpu").eval()
