"""Lottery tickets on MNIST-1D: the MLP (100-100), ticket vs reinit vs random mask, 3 seeds.

Adam 1e-3, batch 100, 40 epochs per level, 20 % per level for the hidden layers and 10 % for the
output layer, rewind to the initialisation, down to 95 % sparsity of the hidden layers (14
levels). Published on MNIST-1D: MLP tickets reach about 72-73 % at 80-95 % sparsity against about
64 % dense.

    python benchmarks/lth_mnist1d.py            # about 10 minutes with 2 workers
    python benchmarks/lth_mnist1d.py --quick    # about a minute
Writes benchmarks/results/lth_mnist1d{,_quick}.{md,json,png}.
"""

from __future__ import annotations

from _lth import main

SETUP = {
    "name": "lth-mnist1d",
    "title": "MLP on MNIST-1D",
    "data": "mnist1d",
    "model": "mlp",
    "sparsity": 0.95,
    "train": {"epochs": 40, "batch_size": 100, "optimizer": {"name": "adam", "lr": 1e-3}},
    "seeds": [0, 1, 2],
}
QUICK = {"sparsity": 0.5, "seeds": [0], "train": {**SETUP["train"], "epochs": 4}}

if __name__ == "__main__":
    main(SETUP, QUICK, "lth_mnist1d", __doc__)
