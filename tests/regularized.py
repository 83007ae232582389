"""What the TPP and filter-merging tests share: a small BN convnet, batches of images, and a
regularization schedule built as a train stage would build it (issue 24)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from secateurs.core.masks import MaskSet
from secateurs.methods.layers import LayerSelection, select_parameters
from secateurs.methods.pruning import compute_masks
from secateurs.methods.structures import LayoutContext, build_structure
from secateurs.methods.training import TRAINING
from secateurs.methods.training.regularization import RegularizedPruning

SHAPE = (1, 8, 8)


def convnet(seed: int = 0) -> nn.Sequential:
    """Conv-BN-ReLU (8 channels), Conv-BN-ReLU (6), global average pool, Linear to 3 classes."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    with torch.no_grad():  # BatchNorm scales and shifts that differ from channel to channel
        for bn in (model[1], model[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model


class ResidualNet(nn.Module):
    """A stem (Conv-BN-ReLU, 8 channels), one residual block (Conv-BN-ReLU to 6, Conv-BN back to 8,
    added to the stem's output), global average pool, Linear: the stem's channels and the block's
    second conv's form one residual stream."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(
            nn.Conv2d(8, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x: Tensor) -> Tensor:
        a = self.stem(x)
        return self.head(torch.relu(a + self.branch(a)))


def residual_net(seed: int = 0) -> ResidualNet:
    torch.manual_seed(seed)
    return ResidualNet()


def image_batches(n: int, seed: int = 0, size: int = 16) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, *SHAPE, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)
    ]


def schedule_of(
    kind: str, model: nn.Module, sparsity: float = 0.5, shape: tuple[int, ...] | None = SHAPE, **options: Any
) -> RegularizedPruning:
    """The `RegularizedPruning` of method `kind` over `model`, picking as a prune stage would."""
    spec = TRAINING.get(kind).schema(**options)
    selection = LayerSelection()

    def pick() -> MaskSet:
        return compute_masks(
            model,
            sparsity,
            criterion=spec.criterion,
            allocation=spec.allocation,
            structure=spec.structure,
            structure_options=spec.structure_options,
            layers=selection,
            input_shape=shape,
        )

    def layout() -> Any:
        names = select_parameters(model, selection)
        structure = build_structure(spec.structure, **spec.structure_options)
        device = next(model.parameters()).device
        example = torch.zeros(2, *shape, device=device) if shape is not None else None  # transformers: none
        return structure.layout(LayoutContext(model, names, selection, example))

    return TRAINING.get(kind).schedule(spec, pick, layout, sparsity)


def bn_lenet_recipe(method: str, options: dict[str, Any]) -> dict[str, Any]:
    """A tiny BN LeNet-5 on synthetic images: train, train with the `method` block, train, evaluate."""
    return {
        "name": f"tiny-{method}",
        "data": {
            "name": "synthetic",
            "options": {"input_shape": [1, 16, 16], "num_classes": 3, "num_train": 64, "num_test": 32},
        },
        "model": {"name": "lenet5", "options": {"width": 0.5, "batchnorm": True}},
        "sparsity": 0.5,
        "train": {"iterations": 10, "batch_size": 32, "optimizer": {"name": "sgd", "lr": 0.05}},
        "stages": [
            {"train": {}},
            {"train": {method: options}},
            {"train": {}},
            {"evaluate": {"label": "end"}},
        ],
    }
