"""What keeping a mask applied costs per optimizer step, against every eager way to do it (issue 18).

Dynamic sparse training keeps pruned weights at exactly +0.0 after every optimizer step. On
LeNet-300-100 that pass over the weights is most of what separates a SET/RigL epoch from a dense
one (`dst_overhead.py`), so this measures the pass alone and its alternatives, on the models'
real weight shapes and 90 % random ERK masks, after a real `torch.optim.SGD` step (momentum 0.9,
weight decay 5e-4, its default implementation: on a CPU, per tensor), one thread:

  library (AND, hook)  the library's way: `MaskSet.attach`'s post-step hook, a bitwise AND of the
                       weights' bit patterns with an integer mask (exact +0.0, NaN and inf cleared);
  AND alone            the same AND without the hook (what the hook's Python costs is the rest);
  foreach multiply     one `torch._foreach_mul_` by float masks: -0.0 for negative weights, NaN kept;
  masked_fill_ / where / multiply by bool   with 1-byte masks;
  fused, last update   no pass: SGD's last update `w += -lr * buf` written as `w += -lr * buf * mask`
                       (`_foreach_addcmul_`), so pruned weights never move; addcmul may round a
                       kept weight differently from SGD's add, so it is not bit-identical;
  fused, momentum      no pass: the gradient enters the momentum as `buf += g * mask`, with the
                       buffers of pruned entries zero, so `w += -lr * buf` adds ±0 to them. At kept
                       entries every operation is SGD's own (a product by 1.0 is exact), so kept
                       weights are bit-identical to SGD + AND; pruned momentum is zero (as with
                       `mask_grads`), which SNFS, growing by the momentum of inactive weights, cannot use.

The passes after the step are timed as (torch's SGD step + pass) minus torch's step alone; the
fused steps, written with the same foreach calls as a lean SGD step without masks, against that
lean step, whose own time beside torch's shows what torch's step adds around the same
arithmetic. Thread CPU time, the minimum over interleaved rounds, set against one dense training
step of the library's loop (batch 128, Fashion-MNIST) measured in the same process. For each
fused step the table counts, after 10 steps from the same state, the kept weights that differ
from SGD + AND and the pruned ones that are not +0.0.

    python benchmarks/mask_floor.py            # about 30 s
    python benchmarks/mask_floor.py --quick    # about 10 s
Writes benchmarks/results/mask_floor{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from secateurs.core.fileio import atomic_write_text
from secateurs.core.masks import masks_of
from secateurs.data import load_dataset
from secateurs.methods.pruning import prune
from secateurs.models import build_model
from secateurs.train import TrainConfig, train

RESULTS = Path(__file__).parent / "results"
MODELS = ["lenet300", "lenet5"]
SPARSITY = 0.9
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4
EXACT = (
    "library (AND, hook)",
    "AND alone",
    "fused, momentum",
)  # exact: kept weights as SGD + AND, pruned +0.0


class Setting:
    """One model's masked weights, their gradients and an SGD optimizer with momentum state."""

    def __init__(self, name: str, data_shape: tuple[int, ...], classes: int) -> None:
        model = build_model(name, data_shape, classes, seed=0)
        prune(model, SPARSITY, criterion="random", allocation="erk", seed=0)
        masks = masks_of(model)
        assert masks is not None
        params = dict(model.named_parameters())
        self.masks = masks
        self.model = model
        self.params = [params[n] for n in masks]
        self.bool_masks = [masks[n] for n in masks]
        self.pruned = [~m for m in self.bool_masks]
        self.float_masks = [m.to(p.dtype) for m, p in zip(self.bool_masks, self.params, strict=True)]
        self.int_masks = [-m.to(torch.int32) for m in self.bool_masks]
        gen = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen) * 1e-2
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
        )
        self.optimizer.step()  # momentum buffers exist from here on
        self.clear_pruned()
        self.by_id = dict(zip(map(id, self.params), self.float_masks, strict=True))
        self.zero = torch.zeros(())

    @torch.no_grad()
    def clear_pruned(self) -> None:
        """Pruned entries: +0.0 weights and zero momentum (what the momentum fold starts from)."""
        for w, bits in zip(self.params, self.int_masks, strict=True):
            w.view(torch.int32).bitwise_and_(bits)
            self.optimizer.state[w]["momentum_buffer"].view(torch.int32).bitwise_and_(bits)

    def variants(self) -> dict[str, Callable[[], Any]]:
        p, zero = self.params, self.zero
        return {
            "AND alone": lambda: [
                w.view(torch.int32).bitwise_and_(m) for w, m in zip(p, self.int_masks, strict=True)
            ],
            "foreach multiply": lambda: torch._foreach_mul_(p, self.float_masks),
            "masked_fill_": lambda: [w.masked_fill_(m, 0.0) for w, m in zip(p, self.pruned, strict=True)],
            "where": lambda: [
                torch.where(m, w, zero, out=w) for w, m in zip(p, self.bool_masks, strict=True)
            ],
            "multiply by bool": lambda: [w.mul_(m) for w, m in zip(p, self.bool_masks, strict=True)],
        }

    def lean_step(self) -> None:
        sgd_step(self.optimizer, {}, fold="none")

    def fused_last_update(self) -> None:
        sgd_step(self.optimizer, self.by_id, fold="update")

    def fused_momentum(self) -> None:
        sgd_step(self.optimizer, self.by_id, fold="momentum")


def sgd_step(optimizer: torch.optim.SGD, masks: dict[int, Tensor], fold: str) -> None:
    """SGD's update (momentum, weight decay; no dampening or Nesterov) in foreach calls, with
    each masked parameter's mask folded into the last update or into the momentum (`fold`)."""
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        grads = torch._foreach_add([p.grad for p in params], params, alpha=group["weight_decay"])
        bufs = [optimizer.state[p]["momentum_buffer"] for p in params]
        torch._foreach_mul_(bufs, group["momentum"])
        masked = [i for i, p in enumerate(params) if id(p) in masks]
        plain = [i for i, p in enumerate(params) if id(p) not in masks]
        into_momentum = plain if fold == "momentum" else list(range(len(params)))
        torch._foreach_add_([bufs[i] for i in into_momentum], [grads[i] for i in into_momentum], alpha=1.0)
        if fold == "momentum" and masked:
            torch._foreach_addcmul_(
                [bufs[i] for i in masked], [grads[i] for i in masked], [masks[id(params[i])] for i in masked]
            )
        plain_update = plain if fold == "update" else list(range(len(params)))
        torch._foreach_add_(
            [params[i] for i in plain_update], [bufs[i] for i in plain_update], alpha=-group["lr"]
        )
        if fold == "update" and masked:
            torch._foreach_addcmul_(
                [params[i] for i in masked],
                [bufs[i] for i in masked],
                [masks[id(params[i])] for i in masked],
                value=-group["lr"],
            )


@torch.no_grad()
def against_sgd_and(setting: Setting, fused: Callable[[], None], steps: int = 10) -> tuple[int, int]:
    """After `steps` steps from the same state: (kept weights where `fused` differs from SGD + AND,
    pruned weights that are not +0.0)."""
    setting.clear_pruned()  # the timed steps without a mask let them move
    state = {k: v.clone() for k, v in setting.model.state_dict().items()}
    bufs = {id(p): setting.optimizer.state[p]["momentum_buffer"].clone() for p in setting.model.parameters()}

    def restore() -> None:
        setting.model.load_state_dict(state)
        for p in setting.model.parameters():
            setting.optimizer.state[p]["momentum_buffer"].copy_(bufs[id(p)])

    restore()
    for _ in range(steps):
        setting.optimizer.step()
        setting.variants()["AND alone"]()
    reference = [w.clone() for w in setting.params]
    restore()
    for _ in range(steps):
        fused()
    differing = sum(
        int(torch.count_nonzero((a != b) & m))
        for a, b, m in zip(reference, setting.params, setting.bool_masks, strict=True)
    )
    not_plus_zero = sum(
        int(torch.count_nonzero(w.view(torch.int32)[~m]))
        for w, m in zip(setting.params, setting.bool_masks, strict=True)
    )
    restore()
    return differing, not_plus_zero


def thread_seconds(fn: Callable[[], Any], repeats: int) -> float:
    started = time.thread_time()
    for _ in range(repeats):
        fn()
    return (time.thread_time() - started) / repeats


def dense_step_seconds(name: str, steps: int, rounds: int) -> float:
    """One dense training step of the library's loop (batch 128): the minimum over rounds."""
    data = load_dataset("fashion_mnist")
    model: nn.Module = build_model(name, data.info.input_shape, data.info.num_classes, seed=0)
    config = TrainConfig(
        iterations=steps,
        batch_size=128,
        optimizer={"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY},
        eval_every_epoch=False,
    )
    best = float("inf")
    for r in range(rounds + 1):  # the first round warms up
        loader = data.train_loader(128, seed=r)
        started = time.thread_time()
        train(model, loader, config, seed=r)
        if r:
            best = min(best, (time.thread_time() - started) / steps)
    return best


def bench(name: str, repeats: int, rounds: int, dense_steps: int) -> dict[str, Any]:
    data = load_dataset("fashion_mnist")
    setting = Setting(name, tuple(data.info.input_shape), data.info.num_classes)
    sgd = setting.optimizer.step
    timed: dict[str, Callable[[], Any]] = {"SGD step": sgd}
    for label, extra in setting.variants().items():
        timed[label] = lambda extra=extra: (sgd(), extra())
    timed["lean SGD step"] = setting.lean_step
    fused = {"fused, last update": setting.fused_last_update, "fused, momentum": setting.fused_momentum}
    timed.update(fused)
    handle = setting.masks.attach(setting.model, setting.optimizer)  # the library's hook, from here on
    library = {"library (AND, hook)": sgd}
    best: dict[str, float] = {}
    for r in range(rounds):
        with torch.no_grad():  # the variants write the parameters in place, as a hook would
            order = list(timed.items())
            order = order[r % len(order) :] + order[: r % len(order)]
            handle.remove()
            for label, fn in order:
                best[label] = min(best.get(label, float("inf")), thread_seconds(fn, repeats))
            handle = setting.masks.attach(setting.model, setting.optimizer)
            for label, fn in library.items():
                best[label] = min(best.get(label, float("inf")), thread_seconds(fn, repeats))
    handle.remove()
    step = dense_step_seconds(name, dense_steps, max(2, rounds // 2))
    baseline = {k: "lean SGD step" if k in fused else "SGD step" for k in best}
    over = {k: v - best[baseline[k]] for k, v in best.items() if k not in ("SGD step", "lean SGD step")}
    checks = {k: against_sgd_and(setting, f) for k, f in fused.items()}
    return {
        "weights": sum(p.numel() for p in setting.params),
        "dense_step_us": round(step * 1e6, 1),
        "sgd_step_us": round(best["SGD step"] * 1e6, 1),
        "lean_sgd_step_us": round(best["lean SGD step"] * 1e6, 1),
        "over_sgd_us": {k: round(v * 1e6, 1) for k, v in over.items()},
        "share_of_dense_step": {k: round(v / step, 4) for k, v in over.items()},
        "kept_weights_differing": {k: c[0] for k, c in checks.items()},
        "pruned_weights_not_plus_zero": {k: c[1] for k, c in checks.items()},
        "exact_floor_share": round(min(over[k] for k in EXACT) / step, 4),
    }


def write(results: dict[str, Any], quick: bool) -> None:
    stem = "mask_floor_quick" if quick else "mask_floor"
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    labels = list(next(iter(results["models"].values()))["over_sgd_us"])
    lines = [
        "# Keeping a mask applied: cost per optimizer step of every eager way",
        "",
        f"{results['machine']}, 1 thread, sparsity {SPARSITY} (random ERK), SGD momentum {MOMENTUM}, "
        f"weight decay {WEIGHT_DECAY}; thread CPU time, minimum over {results['rounds']} interleaved rounds "
        f"of {results['repeats']} steps. Load average {results['load_before']} before, "
        f"{results['load_after']} after (2 cores).",
        "",
        "µs over torch's SGD step (the passes) or over the lean SGD step (the fused steps), and in "
        "brackets as a share of one dense training step of the library's loop (batch 128). The last "
        "columns check each fused step against SGD + AND after 10 steps: kept weights that differ, "
        "pruned weights that are not +0.0.",
        "",
        "| model | weights | dense step µs | torch SGD step µs | lean SGD step µs | "
        + " | ".join(labels)
        + " | last update: differing / not +0.0 | momentum: differing / not +0.0 |",
        "|---|---|---|---|---|" + "---|" * len(labels) + "---|---|",
    ]
    for name, r in results["models"].items():
        cells = [f"{r['over_sgd_us'][k]:.0f} ({100 * r['share_of_dense_step'][k]:.1f} %)" for k in labels]
        checks = [
            f"{r['kept_weights_differing'][k]} / {r['pruned_weights_not_plus_zero'][k]}"
            for k in ("fused, last update", "fused, momentum")
        ]
        lines.append(
            f"| {name} | {r['weights']} | {r['dense_step_us']:.0f} | {r['sgd_step_us']:.0f} | "
            f"{r['lean_sgd_step_us']:.0f} | " + " | ".join(cells + checks) + " |"
        )
    lines += [
        "",
        "Of the passes after the step only the AND keeps pruned weights at exactly +0.0 whatever they "
        "held: the float multiply leaves -0.0 and keeps NaN, and the 1-byte masks are slower. Folding "
        "the mask into the last update rounds some kept weights differently. Folding it into the momentum "
        "is exact (kept weights as SGD + AND, pruned +0.0 while gradients are finite) and replaces a pass "
        "by one more read inside an existing one; it needs SGD's own arithmetic in the library and zero "
        "momentum at pruned entries, which SNFS (growing by that momentum) cannot have.",
    ]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and repeats (about 10 s)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repeats, rounds, dense_steps = (50, 3, 50) if args.quick else (200, 9, 150)
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "repeats": repeats,
        "rounds": rounds,
        "models": {},
    }
    for name in MODELS:
        results["models"][name] = bench(name, repeats, rounds, dense_steps)
        print(f"{name}: {results['models'][name]}", flush=True)
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    write(results, args.quick)


if __name__ == "__main__":
    main()
