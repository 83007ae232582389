"""Lottery tickets on Fashion-MNIST: LeNet-300-100, Frankle & Carbin's protocol, with controls.

Adam 1.2e-3, batch 60, 20 % per level for the hidden layers and 10 % for the output layer, rewind
to the initialisation, 16 levels (down to about 3 % of the weights), 3 seeds. Frankle & Carbin
trained 50K iterations per level on MNIST; this CPU budget gives each level 2 epochs (2000
iterations), stated beside the results. Published finding on MNIST: tickets match or beat dense
down to about 3.6 % of the weights while reinitialised ones degrade early.

    python benchmarks/lth_lenet300.py            # about 13 minutes with 2 workers on 2 idle cores
    python benchmarks/lth_lenet300.py --quick    # about a minute
Writes benchmarks/results/lth_lenet300{,_quick}.{md,json,png}.
"""

from __future__ import annotations

from _lth import main

SETUP = {
    "name": "lth-lenet300",
    "title": "LeNet-300-100 on Fashion-MNIST",
    "data": "fashion_mnist",
    "model": "lenet300",
    "sparsity": 0.972,  # 16 levels of 20 %: 0.8^16 = 2.8 % of the hidden weights remain
    # read test accuracy every 100 iterations, as Frankle & Carbin did: the early-stop step to 5 %
    # of the 2000-step budget, not one of the two epoch ends
    "train": {"epochs": 2, "batch_size": 60, "optimizer": {"name": "adam", "lr": 1.2e-3}, "eval_every": 100},
    "seeds": [0, 1, 2],
}
QUICK = {"sparsity": 0.5, "seeds": [0], "train": {**SETUP["train"], "epochs": 0.2, "eval_every": 25}}

if __name__ == "__main__":
    main(SETUP, QUICK, "lth_lenet300", __doc__)
