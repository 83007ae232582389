"""Regularization-based channel pruning on Fashion-MNIST: one-shot L1 + finetune vs penalties (issue 24).

Models: LeNet-5 with BatchNorm (6-16 channels, 120-84 neurons) and a small BN VGG-11 (width
0.25: 16-32-64-64-128-128-128-128 channels). Each seed trains one dense model per architecture;
from its weights every method removes 50 / 70 / 90 % of the channels and neurons of every layer
(`structure: channel`, L1 filter norm, uniform allocation, the classes kept), with the same
total number of epochs after the dense training (REG + FT):
  l1         one-shot: prune at once, then finetune REG + FT epochs;
  fixed      `reg_fixed`: an L2 penalty of constant strength on the picked channels for REG
             epochs (prune after 90 % of them), then FT epochs of finetuning;
  greg1      `greg1`: the L2 coefficient of the picked channels grows every 5 steps, sized so that
             it reaches its ceiling (1) halfway through the REG epochs, held 10 % of them, prune;
  greg2      `greg2`: a uniform coefficient grows to the picking ceiling (1e-2) in the first
             quarter, the set is picked by magnitude then, and pushed to zero as greg1.
  tpp        `tpp`: trainability-preserving pruning, the Gram entries coupling the picked filters
             to the kept ones (weight 100·r) plus L2 r·w on the picked filters and BatchNorm, r
             growing as greg1's, then prune;
  merge      `merge`: each layer's filters clustered (k-means) to the kept count, pulled to their
             cluster centres (ε = 3), merged into one filter each once they have met (or at the
             stage's end), the next layer's input weights summed.
Penalised entries: every tensor of a channel group (`sites: all`: the filter, its BatchNorm scale
and shift, the columns reading it), so a channel at zero is removed exactly. The regularized
stage trains with SGD 0.01 (momentum 0.9); finetuning with SGD at FT_LR = 1e-2 and 1e-3 (cosine),
the learning-rate effect of Wang et al. 2021 ("Dynamical isometry"). Each run reports the test
accuracy right after the prune and after finetuning, the MACs of the physically shrunk model, and
the singular values of its input-output Jacobian (`secateurs.eval.isometry`, 32 test images)
after the prune and after finetuning.

The method list is `METHODS` (name → `Method`); the trainability-preserving and merging methods
of issue 24 add themselves there.

    python benchmarks/regularization.py            # the full grid (~45 min, 2 workers, idle 2-core machine)
    python benchmarks/regularization.py --quick    # about a minute: LeNet-5, 1 seed, 50 %, short training
Writes benchmarks/results/regularization{,_quick}.{json,md}.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _jobs import benchmark_args, load_done, run_phase

from secateurs.core.fileio import atomic_write_text

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / ".work"
MODELS: dict[str, dict[str, Any]] = {
    "lenet5": {"model": {"name": "lenet5", "options": {"batchnorm": True}}, "classes": "classifier.7"},
    "vgg11": {"model": {"name": "vgg11", "options": {"width": 0.25}}, "classes": "classifier"},
}
FT_LRS = [1e-2, 1e-3]
REG_LR = 1e-2
STEPS_PER_EPOCH = 469  # Fashion-MNIST's 60000 training images in batches of 128
INTERVAL = 5


def budget(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "models": ["lenet5"],
            "dense_epochs": 0.3,
            "reg_epochs": 0.2,
            "ft_epochs": 0.1,
            "seeds": [0],
            "sparsities": [0.5],
        }
    # sized to about 45 min with 2 workers on an idle 2-core machine (1 thread each: LeNet-5-BN ~9 s
    # and VGG-11 at width 0.25 ~39 s of CPU per epoch): fewer epochs for the larger VGG
    return {
        "models": ["lenet5", "vgg11"],
        "dense_epochs": 4,
        "reg_epochs": 1,
        "ft_epochs": 1,
        "per_model": {"vgg11": {"dense_epochs": 2, "reg_epochs": 0.5, "ft_epochs": 0.5}},
        "seeds": [0, 1, 2],
        "sparsities": [0.5, 0.7, 0.9],
    }


def model_budget(b: dict[str, Any], model: str) -> dict[str, Any]:
    """The budget with `model`'s own epochs (`per_model`) in place of the shared ones."""
    return {**b, **b.get("per_model", {}).get(model, {})}


@dataclass(frozen=True)
class Method:
    """A pruning method of the comparison: the stages that take the dense model to a pruned one
    (given the job, the budget and the prune step's common fields), and whether they train (then
    the finetuning gets FT epochs, else REG + FT)."""

    stages: Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], list[dict[str, Any]]]
    trains: bool = True


def reg_steps(b: dict[str, Any]) -> int:
    return max(int(b["reg_epochs"] * STEPS_PER_EPOCH), 4 * INTERVAL)


def one_shot(job: dict[str, Any], b: dict[str, Any], prune: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"prune": prune}]


def fixed(job: dict[str, Any], b: dict[str, Any], prune: dict[str, Any]) -> list[dict[str, Any]]:
    steps = reg_steps(b)
    block = {**prune, "sites": "all", "strength": 0.5, "steps": int(0.9 * steps), "interval": INTERVAL}
    return [{"train": {"epochs": b["reg_epochs"], "reg_fixed": block}}]


def growing(job: dict[str, Any], b: dict[str, Any], prune: dict[str, Any]) -> list[dict[str, Any]]:
    updates = reg_steps(b) // INTERVAL
    block = {
        **prune,
        "sites": "all",
        "interval": INTERVAL,
        "delta": 1.0 / max(updates // 2, 1),  # the ceiling (1) halfway through the stage
        "stabilize": reg_steps(b) // 10,
    }
    return [{"train": {"epochs": b["reg_epochs"], "greg1": block}}]


def growing_pick(job: dict[str, Any], b: dict[str, Any], prune: dict[str, Any]) -> list[dict[str, Any]]:
    updates = reg_steps(b) // INTERVAL
    quarter = max(updates // 4, 1)
    block = {
        **prune,
        "sites": "all",
        "interval": INTERVAL,
        "pick_ceiling": 1e-2,
        "pick_delta": 1e-2 / quarter,  # the picking ceiling after a quarter of the stage
        "delta": (1.0 - 1e-2) / max(updates // 2, 1),  # then the ceiling a half later
        "stabilize": reg_steps(b) // 10,
    }
    return [{"train": {"epochs": b["reg_epochs"], "greg2": block}}]


def trainability(job: dict[str, Any], b: dict[str, Any], prune: dict[str, Any]) -> list[dict[str, Any]]:
    updates = reg_steps(b) // INTERVAL
    block = {
        **prune,
        "interval": INTERVAL,
        "delta": 1.0 / max(updates // 2, 1),  # r at its ceiling (1) halfway through the stage, as greg1
        "scale": 100.0,  # the authors' Gram weight × LR (1000 × 1e-3) at this stage's LR (1e-2)
        "stabilize": reg_steps(b) // 10,
        "jsv_samples": 0,  # measured below on test images, as for every method
    }
    return [{"train": {"epochs": b["reg_epochs"], "tpp": block}}]


def merging(job: dict[str, Any], b: dict[str, Any], prune: dict[str, Any]) -> list[dict[str, Any]]:
    # ε·LR = 0.03 with momentum 0.9: a cluster's spread falls ~5 % a step; merged once below 1e-3
    block = {**prune, "strength": 3.0, "norm_scale_factor": 1.0, "tolerance": 1e-3, "interval": INTERVAL}
    return [{"train": {"epochs": b["reg_epochs"], "merge": block}}]


METHODS: dict[str, Method] = {
    "l1": Method(one_shot, trains=False),
    "fixed": Method(fixed),
    "greg1": Method(growing),
    "greg2": Method(growing_pick),
    "tpp": Method(trainability),
    "merge": Method(merging),
}


def base_recipe(job: dict[str, Any], epochs: float, lr: float) -> dict[str, Any]:
    return {
        "name": f"regularization-{job['kind']}",
        "seed": job["seed"],
        "data": "fashion_mnist",
        "model": MODELS[job["model"]]["model"],
        "train": {
            "epochs": epochs,
            "batch_size": 128,
            "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 5e-4},
            "lr_schedule": {"name": "cosine"},
        },
    }


def pruning_recipe(job: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The recipe that regularizes and prunes the dense model (one per method, shared by both LRs)."""
    prune = {
        "structure": "channel",
        "structure_options": {"exclude": [MODELS[job["model"]]["classes"]]},
        "criterion": "magnitude",
        "allocation": "uniform",
        "sparsity": job["sparsity"],
    }
    b = model_budget(b, job["model"])
    recipe = base_recipe(job, b["reg_epochs"], REG_LR)
    recipe["init_from"] = job["init"]
    recipe["stages"] = [*METHODS[job["method"]].stages(job, b, prune), {"evaluate": {"label": "pruned"}}]
    return recipe


def finetuning_recipe(job: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The finetuning after it: FT epochs, or REG + FT after a method that does not train."""
    b = model_budget(b, job["model"])
    epochs = b["ft_epochs"] + (0 if METHODS[job["method"]].trains else b["reg_epochs"])
    recipe = base_recipe(job, epochs, job["ft_lr"])
    recipe["init_from"] = job["pruned"]
    recipe["stages"] = [{"train": {}}, {"evaluate": {"label": "finetuned"}}]
    return recipe


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One dense training, one method's prune, or one finetuning, in a worker process (one thread)."""
    import shutil

    import torch

    import secateurs
    from secateurs.data import load_dataset
    from secateurs.eval.isometry import jsv_stats
    from secateurs.eval.macs import count_costs
    from secateurs.graph.masking import shrink
    from secateurs.models import build_model

    torch.set_num_threads(1)
    b = model_budget(budget(job["quick"]), job["model"])
    started = time.perf_counter()
    probe = next(iter(load_dataset("fashion_mnist").test_loader(32)))[0]
    if job["kind"] in ("dense", "prune"):
        out = Path(job["out"])
        if out.exists():
            shutil.rmtree(out)
        if job["kind"] == "dense":
            recipe = base_recipe(job, b["dense_epochs"], 0.1)
            recipe["stages"] = [{"train": {}}, {"evaluate": {"label": "dense"}}]
        else:
            recipe = pruning_recipe(job, b)
        result = secateurs.run(recipe, out=out)
        return {
            "accuracy": result.final["accuracy"],
            "jsv": jsv_stats(result.model, probe),
            "seconds": time.perf_counter() - started,
        }
    result = secateurs.run(finetuning_recipe(job, b))
    shape = (1, 28, 28)
    small = shrink(result.model.eval(), torch.zeros(2, *shape))
    spec = MODELS[job["model"]]["model"]
    return {
        "accuracy": result.final["accuracy"],
        "macs": count_costs(small, shape).macs,
        "dense_macs": count_costs(build_model(spec["name"], shape, 10, **spec["options"]), shape).macs,
        "jsv": jsv_stats(result.model, probe),
        "seconds": time.perf_counter() - started,
    }


def key(job: dict[str, Any]) -> str:
    if job["kind"] == "dense":
        return f"dense|{job['model']}|{job['seed']}"
    common = f"{job['model']}|{job['method']}|{job['sparsity']}"
    if job["kind"] == "prune":
        return f"prune|{common}|{job['seed']}"
    return f"{common}|{job['ft_lr']:g}|{job['seed']}"


def describe(job: dict[str, Any], r: dict[str, Any]) -> str:
    extra = f", MACs ×{r['dense_macs'] / r['macs']:.2f}" if "macs" in r else ""
    return f"{100 * r['accuracy']:.2f}%{extra}, JSV mean {r['jsv']['jsv_mean']:.3f} ({r['seconds']:.0f} s)"


def run_all(quick: bool, workers: int, fresh: bool) -> dict[str, Any]:
    b = budget(quick)
    suffix = "_quick" if quick else ""
    store = RESULTS / f"regularization{suffix}_runs.json"
    done: dict[str, Any] = load_done(store, fresh=fresh)
    work = WORK / f"regularization{suffix}"
    grid = [(m, s) for m in b["models"] for s in b["seeds"]]
    dense = [{"kind": "dense", "model": m, "seed": s, "out": str(work / f"dense-{m}-{s}")} for m, s in grid]
    prune = [
        {
            "kind": "prune",
            "model": m,
            "seed": s,
            "method": name,
            "sparsity": a,
            "init": str(work / f"dense-{m}-{s}"),
        }
        for m, s in grid
        for name in METHODS
        for a in b["sparsities"]
    ]
    for job in prune:
        job["out"] = str(work / key(job).replace("|", "-"))
    finetune = [
        {**job, "kind": "finetune", "ft_lr": lr, "pruned": job["out"]} for job in prune for lr in FT_LRS
    ]
    phases = [dense, prune, finetune]
    for phase in phases:
        for job in phase:
            job["quick"] = quick
    for earlier in phases[:2]:  # a pending job needs the checkpoint before it: re-create it if wiped
        for job in earlier:
            if not Path(job["out"]).exists():
                done.pop(key(job), None)
    for phase in phases:
        run_phase(phase, key=key, work=run_job, store=store, done=done, workers=workers, describe=describe)
    return done


def cell(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(done: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for m in b["models"]:
        dense = [r for k, r in done.items() if k.startswith(f"dense|{m}|")]
        if dense:
            table[f"dense|{m}"] = {
                "accuracy": cell([r["accuracy"] for r in dense]),
                "jsv": cell([r["jsv"]["jsv_mean"] for r in dense]),
            }
        for name in METHODS:
            for a in b["sparsities"]:
                pruned = {s: done.get(f"prune|{m}|{name}|{a}|{s}") for s in b["seeds"]}
                for lr in FT_LRS:
                    rows = [
                        (pruned[s], done[k])
                        for s in b["seeds"]
                        if (k := f"{m}|{name}|{a}|{lr:g}|{s}") in done
                    ]
                    if not rows:
                        continue
                    table[f"{m}|{name}|{a}|{lr:g}"] = {
                        "accuracy_pruned": cell([p["accuracy"] for p, _ in rows]),
                        "accuracy": cell([r["accuracy"] for _, r in rows]),
                        "macs_ratio": statistics.fmean(r["dense_macs"] / r["macs"] for _, r in rows),
                        "jsv_pruned": cell([p["jsv"]["jsv_mean"] for p, _ in rows]),
                        "jsv_pruned_std": cell([p["jsv"]["jsv_std"] for p, _ in rows]),
                        "jsv_finetuned": cell([r["jsv"]["jsv_mean"] for _, r in rows]),
                        "seeds": len(rows),
                    }
    return table


def write(table: dict[str, Any], b: dict[str, Any], quick: bool, minutes: float) -> None:
    suffix = "_quick" if quick else ""
    lines = [
        "# Regularization-based channel pruning on Fashion-MNIST" + (" (QUICK budget)" if quick else ""),
        "",
        f"Budget: dense {b['dense_epochs']} epochs (SGD 0.1); then, for every method, {b['reg_epochs']} "
        f"regularized epoch(s) (SGD {REG_LR:g}) + {b['ft_epochs']} finetuning epoch(s), or "
        f"{b['reg_epochs'] + b['ft_epochs']:g} finetuning epochs for one-shot l1; finetuning LR "
        f"{' and '.join(f'{lr:g}' for lr in FT_LRS)}; "
        + "".join(
            f"{model}: dense {o['dense_epochs']}, regularized {o['reg_epochs']}, finetuning {o['ft_epochs']} "
            "epoch(s) instead; "
            for model, o in b.get("per_model", {}).items()
            if model in b["models"]
        )
        + f"seeds {b['seeds']}; wall time {minutes:.1f} min with "
        "2 workers (the machine shared with other jobs). JSV: the singular values of the input-output "
        "Jacobian on 32 test images, their mean (and their spread, JSV std) right after the prune and "
        "their mean after finetuning; ± is over seeds.",
        "",
    ]
    for name, c in table.items():
        if name.startswith("dense"):
            acc, jsv = c["accuracy"], c["jsv"]
            lines.append(
                f"- {name.split('|')[1]} dense: {100 * acc['mean']:.2f} ± {100 * acc['std']:.2f} %, "
                f"JSV mean {jsv['mean']:.3f}"
            )
    lines += [
        "",
        "| model | method | channels removed | finetune LR | acc. after prune (%) | acc. finetuned (%) "
        "| MACs × fewer | JSV mean after prune | JSV std after prune | JSV mean finetuned |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def pm(c: dict[str, float], scale: float = 1.0, digits: int = 2) -> str:
        return f"{scale * c['mean']:.{digits}f} ± {scale * c['std']:.{digits}f}"

    for name, r in table.items():
        if name.startswith("dense"):
            continue
        m, method, sparsity, lr = name.split("|")
        lines.append(
            f"| {m} | {method} | {100 * float(sparsity):g} % | {lr} | {pm(r['accuracy_pruned'], 100)} "
            f"| {pm(r['accuracy'], 100)} | {r['macs_ratio']:.2f} | {pm(r['jsv_pruned'], digits=3)} "
            f"| {pm(r['jsv_pruned_std'], digits=3)} | {pm(r['jsv_finetuned'], digits=3)} |"
        )
    atomic_write_text(RESULTS / f"regularization{suffix}.md", "\n".join(lines) + "\n")
    payload = {"budget": b, "ft_lrs": FT_LRS, "wall_minutes": minutes, "table": table}
    atomic_write_text(RESULTS / f"regularization{suffix}.json", json.dumps(payload, indent=1))


def main() -> None:
    args = benchmark_args(__doc__, "LeNet-5, 1 seed, 50 %% of channels, 0.3 dense epochs, 0.2 + 0.1 after")
    started = time.perf_counter()
    done = run_all(args.quick, args.workers, args.fresh)
    b = budget(args.quick)
    write(summarise(done, b), b, args.quick, (time.perf_counter() - started) / 60)
    print(f"wrote {RESULTS / 'regularization'}{'_quick' if args.quick else ''}.md")


if __name__ == "__main__":
    main()
