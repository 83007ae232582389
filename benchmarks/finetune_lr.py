"""Finetuning LR after structured pruning, and dynamical isometry (Wang et al. 2021) on Fashion-MNIST.

Protocol, per model and seed:
  1. pretrain (SGD 0.01, momentum 0.9, batch 128, step decay ×0.1 at 50 % and 75 % of the epochs);
  2. remove 80 % of the neurons of every hidden layer by L1 norm of their incoming weights
     (physical removal: a smaller dense MLP);
  3. optionally OrthP: replace every Linear weight of the pruned model by its polar factor U Vᵀ;
  4. finetune with LR 1e-2 or 1e-3 (same optimizer and step decay), recording test accuracy and the
     mean singular value of the input-output Jacobian (JSV) on 32 fixed test samples every epoch.
Models: a 7-layer linear MLP (width 100), the same with ReLU, and LeNet-300-100. Three seeds.
The question: does the larger finetuning LR help, does JSV explain it, does OrthP close the gap?

    python benchmarks/finetune_lr.py            # about 25 minutes with 2 workers
    python benchmarks/finetune_lr.py --quick    # about a minute: one seed, one model, 1 epoch each
Writes benchmarks/results/finetune_lr{,_quick}.{json,md,png}; finished jobs are kept in
finetune_lr{,_quick}_runs.json, so an interrupted run resumes.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from _jobs import benchmark_args, load_done, run_phase

from secateurs.core.fileio import atomic_write_text

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / ".work"
MODELS: dict[str, dict[str, Any]] = {
    "linear7": {"name": "mlp", "options": {"hidden": [100] * 6, "activation": "linear"}},
    "relu7": {"name": "mlp", "options": {"hidden": [100] * 6, "activation": "relu"}},
    "lenet300": {"name": "lenet300"},
}
LRS = [1e-2, 1e-3]
NEURON_SPARSITY = 0.8
JSV_SAMPLES = 32


def budget(quick: bool) -> dict[str, Any]:
    if quick:
        return {"pretrain_epochs": 1, "finetune_epochs": 1, "seeds": [0], "models": ["relu7"]}
    return {"pretrain_epochs": 15, "finetune_epochs": 20, "seeds": [0, 1, 2], "models": list(MODELS)}


def train_options(epochs: int, lr: float) -> dict[str, Any]:
    return {
        "epochs": epochs,
        "batch_size": 128,
        "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9},
        "lr_schedule": {"name": "step", "milestones": [0.5 * epochs, 0.75 * epochs], "gamma": 0.1},
    }


def pretrain(job: dict[str, Any]) -> dict[str, Any]:
    """Dense pretraining through a secateurs recipe; the checkpoint is kept for the finetune jobs."""
    import shutil

    import torch

    import secateurs

    torch.set_num_threads(1)
    started = time.perf_counter()
    out = Path(job["out"])
    if out.exists():
        shutil.rmtree(out)
    result = secateurs.run(
        {
            "name": f"pretrain-{job['model']}",
            "seed": job["seed"],
            "data": "fashion_mnist",
            "model": MODELS[job["model"]],
            "train": train_options(job["epochs"], 1e-2),
            "stages": [{"train": {}}, {"evaluate": {"label": "dense"}}],
        },
        out=out,
    )
    return {"accuracy": result.final["accuracy"], "seconds": time.perf_counter() - started}


def finetune(job: dict[str, Any]) -> dict[str, Any]:
    """Prune neurons, maybe OrthP, finetune; accuracy and JSV after pruning and every epoch."""
    import torch
    from torch import nn

    from secateurs.data import load_dataset
    from secateurs.eval import evaluate
    from secateurs.eval.isometry import jsv_stats, orthogonalize_
    from secateurs.models import build_model
    from secateurs.pipeline.outputs import read_checkpoint
    from secateurs.structured import prune_neurons
    from secateurs.train.config import TrainConfig
    from secateurs.train.engine import train

    torch.set_num_threads(1)
    started = time.perf_counter()
    data = load_dataset("fashion_mnist")
    spec = MODELS[job["model"]]
    dense = build_model(spec["name"], data.info.input_shape, data.info.num_classes, **spec.get("options", {}))
    state, _, _ = read_checkpoint(job["init"])
    dense.load_state_dict(state)
    model, _ = prune_neurons(dense, NEURON_SPARSITY)
    if job["orthp"]:
        with torch.no_grad():
            for layer in model.modules():
                if isinstance(layer, nn.Linear):
                    orthogonalize_(layer.weight)
    probe = data.test_x[:JSV_SAMPLES]
    test_loader = data.test_loader()

    def measure(m: nn.Module) -> dict[str, float]:
        return {**evaluate(m, test_loader), "jsv_mean": jsv_stats(m, probe)["jsv_mean"]}

    after_prune = measure(model)
    config = TrainConfig(**train_options(job["epochs"], job["lr"]))
    result = train(
        model, data.train_loader(128, seed=job["seed"]), config, evaluate_fn=measure, seed=job["seed"]
    )
    curve = [
        {"epoch": r["epoch"], "accuracy": r["test_accuracy"], "jsv_mean": r["test_jsv_mean"]}
        for r in result.history
    ]
    return {
        "after_prune_accuracy": after_prune["accuracy"],
        "after_prune_jsv": after_prune["jsv_mean"],
        "final_accuracy": curve[-1]["accuracy"],
        "mean_jsv": statistics.fmean(r["jsv_mean"] for r in curve),
        "curve": curve,
        "seconds": time.perf_counter() - started,
    }


def key(job: dict[str, Any]) -> str:
    if job["kind"] == "pretrain":
        return f"pretrain|{job['model']}|{job['seed']}"
    return f"finetune|{job['model']}|{job['seed']}|lr={job['lr']}|orthp={job['orthp']}"


def work(job: dict[str, Any]) -> dict[str, Any]:
    return pretrain(job) if job["kind"] == "pretrain" else finetune(job)


def describe(job: dict[str, Any], r: dict[str, Any]) -> str:
    if job["kind"] == "pretrain":
        return f"dense {100 * r['accuracy']:.2f}% ({r['seconds']:.0f} s)"
    return (
        f"after prune {100 * r['after_prune_accuracy']:.2f}% (JSV {r['after_prune_jsv']:.3f}) -> "
        f"{100 * r['final_accuracy']:.2f}% (mean JSV {r['mean_jsv']:.3f}) ({r['seconds']:.0f} s)"
    )


def run_all(quick: bool, workers: int, fresh: bool = False) -> dict[str, Any]:
    b = budget(quick)
    suffix = "_quick" if quick else ""
    store = RESULTS / f"finetune_lr{suffix}_runs.json"
    done = load_done(store, fresh=fresh)
    work_dir = WORK / f"finetune_lr{suffix}"
    pre = [
        {
            "kind": "pretrain",
            "model": m,
            "seed": s,
            "epochs": b["pretrain_epochs"],
            "out": str(work_dir / f"{m}-{s}"),
        }
        for m in b["models"]
        for s in b["seeds"]
    ]
    for job in pre:  # a finetune job needs its pretrained checkpoint: redo it if the work dir was wiped
        if not Path(job["out"]).exists():
            done.pop(key(job), None)
    fine = [
        {
            "kind": "finetune",
            "model": p["model"],
            "seed": p["seed"],
            "lr": lr,
            "orthp": orthp,
            "epochs": b["finetune_epochs"],
            "init": p["out"],
        }
        for p in pre
        for lr in LRS
        for orthp in (False, True)
    ]
    for phase in (pre, fine):
        run_phase(phase, key=key, work=work, store=store, done=done, workers=workers, describe=describe)
    return done


def mean_std(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * std:.{digits}f}"


def findings(done: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The three questions, answered from the numbers (mean over seeds)."""

    def mean(model: str, lr: float, orthp: bool, field: str) -> float | None:
        runs = [done.get(f"finetune|{model}|{s}|lr={lr}|orthp={orthp}") for s in b["seeds"]]
        values = [r[field] for r in runs if r is not None]
        return statistics.fmean(values) if values else None

    out = ["## Findings (computed from the table)", ""]
    high, low = LRS
    for m in b["models"]:
        acc = {(lr, o): mean(m, lr, o, "final_accuracy") for lr in LRS for o in (False, True)}
        jsv = {(lr, o): mean(m, lr, o, "mean_jsv") for lr in LRS for o in (False, True)}
        if any(v is None for v in acc.values()):
            continue
        gap = 100 * (acc[(high, False)] - acc[(low, False)])  # type: ignore[operator]
        gap_orthp = 100 * (acc[(high, True)] - acc[(low, True)])  # type: ignore[operator]
        lift = 100 * (acc[(low, True)] - acc[(low, False)])  # type: ignore[operator]
        out.append(
            f"- {m}: LR {high:g} beats {low:g} by {gap:+.2f} points without OrthP and by {gap_orthp:+.2f} "
            f"with it; mean JSV while finetuning {jsv[(high, False)]:.3f} vs {jsv[(low, False)]:.3f} "
            f"without OrthP; OrthP lifts the LR {low:g} result by {lift:+.2f} points."
        )
    return out


def report(done: dict[str, Any], quick: bool, wall: float) -> None:
    b = budget(quick)
    suffix = "_quick" if quick else ""
    lines = [
        "# Finetuning LR after 80 % neuron pruning, and dynamical isometry (Fashion-MNIST)"
        + (" — QUICK budget" if quick else ""),
        "",
        f"Budget: pretrain {b['pretrain_epochs']} epochs, finetune {b['finetune_epochs']} epochs "
        f"(SGD, momentum 0.9, step decay ×0.1 at 50/75 %), seeds {b['seeds']}; the jobs took "
        f"{sum(r['seconds'] for r in done.values()) / 60:.1f} min in total, run 2 at a time on 2 CPU cores "
        f"(wall time of this invocation {wall / 60:.1f} min). Accuracy in %, mean ± std over "
        "seeds; JSV = mean singular value of the input-output Jacobian "
        f"on {JSV_SAMPLES} test samples (1 = isometry).",
        "",
        "| model | dense | finetune LR | OrthP | acc. after prune | JSV after prune | final acc. "
        "| mean JSV while finetuning |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in b["models"]:
        dense = [done[f"pretrain|{m}|{s}"]["accuracy"] for s in b["seeds"] if f"pretrain|{m}|{s}" in done]
        for lr in LRS:
            for orthp in (False, True):
                rows = [done.get(f"finetune|{m}|{s}|lr={lr}|orthp={orthp}") for s in b["seeds"]]
                rows = [r for r in rows if r is not None]
                if not rows:
                    continue
                lines.append(
                    f"| {m} | {mean_std(dense)} | {lr:g} | {'yes' if orthp else 'no'} | "
                    f"{mean_std([r['after_prune_accuracy'] for r in rows])} | "
                    f"{mean_std([r['after_prune_jsv'] for r in rows], 1.0, 3)} | "
                    f"{mean_std([r['final_accuracy'] for r in rows])} | "
                    f"{mean_std([r['mean_jsv'] for r in rows], 1.0, 3)} |"
                )
    lines += ["", *findings(done, b)]
    atomic_write_text(RESULTS / f"finetune_lr{suffix}.md", "\n".join(lines) + "\n")
    import json

    atomic_write_text(
        RESULTS / f"finetune_lr{suffix}.json", json.dumps({"budget": b, "runs": done}, indent=1)
    )
    plot(done, b, RESULTS / f"finetune_lr{suffix}.png")


def plot(done: dict[str, Any], b: dict[str, Any], path: Path) -> Path:
    """Test accuracy and mean JSV per finetuning epoch, one column per model: one colour per
    learning rate, OrthP as its variant's line style (`secateurs.results.figures`); PNG + SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from secateurs.results import figures

    styles = figures.Styles([f"lr {lr:g}" for lr in LRS], ["OrthP"])
    fig, axes = plt.subplots(2, len(b["models"]), figsize=(5 * len(b["models"]) + 1.8, 7), squeeze=False,
                             layout="constrained")  # fmt: skip
    for col, m in enumerate(b["models"]):
        for lr in LRS:
            for orthp in (False, True):
                runs = [done.get(f"finetune|{m}|{s}|lr={lr}|orthp={orthp}") for s in b["seeds"]]
                runs = [r for r in runs if r is not None]
                if not runs:
                    continue
                label = f"lr {lr:g}" + (" + OrthP" if orthp else "")
                style = styles.line(f"lr {lr:g}", "OrthP" if orthp else None).kwargs()
                epochs = [p["epoch"] for p in runs[0]["curve"]]
                for row, metric, scale in ((0, "accuracy", 100.0), (1, "jsv_mean", 1.0)):
                    values = [
                        scale * statistics.fmean(r["curve"][i][metric] for r in runs)
                        for i in range(len(epochs))
                    ]
                    axes[row][col].plot(epochs, values, label=label, **style)
        axes[0][col].set_title(m)
        axes[0][col].set_ylabel("test accuracy (%)")
        axes[1][col].set_ylabel("mean JSV")
        axes[1][col].set_xlabel("finetuning epoch")
        for row in (0, 1):
            axes[row][col].grid(alpha=0.3)
    figures.legend_outside(fig, [ax for row in axes for ax in row])
    return figures.save(figures.thin_tick_labels(fig), path)


def main() -> None:
    args = benchmark_args(__doc__, "one seed, one model, one epoch per phase")
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = run_all(args.quick, args.workers, args.fresh)
    report(done, args.quick, time.perf_counter() - started)
    print((RESULTS / f"finetune_lr{'_quick' if args.quick else ''}.md").read_text())


if __name__ == "__main__":
    main()
