"""PaT on real images: LeNet-300-100 on Fashion-MNIST, dense vs one-shot / iterative / gradual magnitude.

Every method is a secateurs recipe (built below as a dict) run through the public API:
  dense       train E_dense epochs (SGD 0.1, momentum 0.9, weight decay 5e-4, cosine, batch 128);
  one-shot    from the dense weights: prune to s by global magnitude, finetune E_ft epochs (SGD 0.01, cosine);
  iterative   from the dense weights: one chain through the levels 50, 80, 90, 95, 98 %, finetuning
              E_ft epochs after each level (the accuracy at a level is recorded for that sparsity);
  gradual     from the dense weights: E_ft + 2 epochs of finetuning while the cubic schedule (Zhu & Gupta)
              raises sparsity from 0 to s over the first E_ft epochs, every 50 steps.
Pruned layers: all Linear weights, global allocation. Three seeds; the dense model of a seed is
shared by its methods. Progress is printed per job, finished jobs are kept in
benchmarks/results/pat_fashion_mnist_runs.json, so an interrupted benchmark resumes where it stopped.

    python benchmarks/pat_fashion_mnist.py              # about 30 minutes with 2 workers
    python benchmarks/pat_fashion_mnist.py --quick      # about 2 minutes: 1 seed, 1 epoch per phase
Writes benchmarks/results/pat_fashion_mnist{,_quick}.{json,md,png}.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from _jobs import benchmark_args, load_done, run_phase

from secateurs.core.fileio import atomic_write_text

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / ".work"
SPARSITIES = [0.5, 0.8, 0.9, 0.95, 0.98]
METHODS = ["one-shot", "iterative", "gradual"]


def budget(quick: bool) -> dict[str, Any]:
    if quick:
        return {"dense_epochs": 1, "ft_epochs": 1, "seeds": [0]}
    return {"dense_epochs": 30, "ft_epochs": 8, "seeds": [0, 1, 2]}


def sgd(lr: float) -> dict[str, Any]:
    return {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 5e-4}


def recipe(
    method: str, seed: int, sparsity: float | None, b: dict[str, Any], quick: bool, init: str | None
) -> dict:
    """The secateurs recipe of one job."""
    base: dict[str, Any] = {
        "name": f"pat-{method}",
        "seed": seed,
        "data": "fashion_mnist",
        "model": "lenet300",
        "train": {
            "epochs": b["ft_epochs"],
            "batch_size": 128,
            "optimizer": sgd(0.01),
            "lr_schedule": {"name": "cosine"},
        },
        "init_from": init,
    }
    prune = {"criterion": "magnitude", "allocation": "global"}
    if method == "dense":
        base["train"] = {**base["train"], "epochs": b["dense_epochs"], "optimizer": sgd(0.1)}
        base["stages"] = [{"train": {}}, {"evaluate": {"label": "dense"}}]
    elif method == "one-shot":
        base["stages"] = [
            {"prune": {**prune, "sparsity": sparsity}},
            {"train": {}},
            {"evaluate": {"label": "final"}},
        ]
    elif method == "iterative":
        base["stages"] = [
            {
                "repeat": {
                    "schedule": {"name": "levels", "sparsities": SPARSITIES},
                    "stages": [{"prune": prune}, {"train": {}}, {"evaluate": {"label": "level"}}],
                }
            }
        ]
    elif method == "gradual":
        schedule = {
            "name": "gradual",
            "sparsity": sparsity,
            "start_step": 0,
            "end_epoch": b["ft_epochs"],
            "frequency": 50,
        }
        base["stages"] = [
            {"train": {"epochs": b["ft_epochs"] + 2, "prune": {**prune, "schedule": schedule}}},
            {"evaluate": {"label": "final"}},
        ]
    return base


def run_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one job in a worker process (one torch thread); returns one row per (sparsity)."""
    import torch

    import secateurs

    torch.set_num_threads(1)
    started = time.perf_counter()
    b = budget(job["quick"])
    out = Path(job["out"]) if job["method"] == "dense" else None
    if out is not None and out.exists():
        import shutil

        shutil.rmtree(out)
    result = secateurs.run(
        recipe(job["method"], job["seed"], job.get("sparsity"), b, job["quick"], job.get("init")), out=out
    )
    seconds = time.perf_counter() - started
    rows = []
    for rec in result.records:
        rows.append(
            {
                "method": job["method"],
                "seed": job["seed"],
                "target": round(rec["sparsity"], 4) if rec["sparsity"] else 0.0,
                "accuracy": rec["accuracy"],
                "sparsity": rec["sparsity"],
                "nonzero_params": rec["nonzero_params"],
                "params": rec["params"],
                "nonzero_macs": rec["nonzero_macs"],
                "macs": rec["macs"],
                "seconds": seconds,
            }
        )
    return rows


def key(job: dict[str, Any]) -> str:
    return f"{job['method']}|{job['seed']}|{job.get('sparsity')}"


def run_all(quick: bool, workers: int, fresh: bool = False) -> dict[str, list[dict[str, Any]]]:
    b = budget(quick)
    suffix = "_quick" if quick else ""
    store = RESULTS / f"pat_fashion_mnist{suffix}_runs.json"
    done: dict[str, list[dict[str, Any]]] = load_done(store, fresh=fresh)
    work = WORK / f"pat{suffix}"
    dense_jobs = [
        {"method": "dense", "seed": s, "quick": quick, "out": str(work / f"dense-{s}")} for s in b["seeds"]
    ]
    method_jobs = []
    for s in b["seeds"]:
        init = str(work / f"dense-{s}")
        for m in METHODS:
            targets = [None] if m == "iterative" else SPARSITIES
            method_jobs += [
                {"method": m, "seed": s, "sparsity": t, "quick": quick, "init": init} for t in targets
            ]
    # a dense checkpoint is needed by pending method jobs: re-create it if the work dir was wiped
    for job in dense_jobs:
        if not Path(job["out"]).exists():
            done.pop(key(job), None)
    for phase in (dense_jobs, method_jobs):
        run_phase(phase, key=key, work=run_job, store=store, done=done, workers=workers, describe=describe)
    return done


def describe(job: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    accuracies = ", ".join(f"{r['target']:.2f}->{100 * r['accuracy']:.2f}%" for r in rows)
    return f"{accuracies} ({rows[0]['seconds']:.0f} s)"


def summarize(done: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    rows = [r for rs in done.values() for r in rs]
    table = []
    for method in ["dense", *METHODS]:
        targets = [0.0] if method == "dense" else SPARSITIES
        for t in targets:
            accs = [r["accuracy"] for r in rows if r["method"] == method and abs(r["target"] - t) < 1e-6]
            if accs:
                table.append(
                    {
                        "method": method,
                        "sparsity": t,
                        "n": len(accs),
                        "mean": 100 * statistics.mean(accs),
                        "std": 100 * statistics.stdev(accs) if len(accs) > 1 else 0.0,
                    }
                )
    return table


def report(table: list[dict[str, Any]], quick: bool, wall: float, b: dict[str, Any]) -> None:
    suffix = "_quick" if quick else ""
    dense = next((r for r in table if r["method"] == "dense"), None)
    lines = [
        "# PaT on Fashion-MNIST: LeNet-300-100, global magnitude pruning"
        + (" (QUICK budget)" if quick else ""),
        "",
        f"Budget: dense {b['dense_epochs']} epochs; finetuning {b['ft_epochs']} epochs per prune (gradual: "
        f"{b['ft_epochs'] + 2}); seeds {b['seeds']}; wall time {wall / 60:.1f} min "
        "on 2 CPU cores (2 workers).",
        "Test accuracy in %, mean ± std over seeds.",
        "",
        "| method | " + " | ".join(f"{int(100 * s)} %" for s in SPARSITIES) + " |",
        "|---|" + "---|" * len(SPARSITIES),
    ]
    if dense:
        lines.append(
            "| dense | " + " | ".join(f"{dense['mean']:.2f} ± {dense['std']:.2f}" for _ in SPARSITIES) + " |"
        )
    for m in METHODS:
        cells = []
        for s in SPARSITIES:
            r = next((r for r in table if r["method"] == m and r["sparsity"] == s), None)
            cells.append(f"{r['mean']:.2f} ± {r['std']:.2f}" if r else "—")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if dense:
        lines += ["", "Gap to dense at 90 % (points; expected ≤ 1 for iterative and gradual):", ""]
        for m in METHODS:
            r = next((r for r in table if r["method"] == m and r["sparsity"] == 0.9), None)
            if r:
                lines.append(f"- {m}: {r['mean'] - dense['mean']:+.2f}")
    atomic_write_text(RESULTS / f"pat_fashion_mnist{suffix}.md", "\n".join(lines) + "\n")
    atomic_write_text(
        RESULTS / f"pat_fashion_mnist{suffix}.json",
        json.dumps({"budget": b, "wall_seconds": wall, "table": table}, indent=2),
    )
    plot(table, RESULTS / f"pat_fashion_mnist{suffix}.png")


def plot(table: list[dict[str, Any]], path: Path) -> Path:
    """Accuracy against the remaining weights per method (`secateurs.results.figures`), the band
    within one point of dense shaded; PNG + SVG."""
    from secateurs.results import figures

    curves = [
        figures.Curve(
            m,
            None,
            [
                (1 - r["sparsity"], figures.Stat(r["mean"] / 100, r["std"] / 100))
                for r in table
                if r["method"] == m
            ],
        )
        for m in METHODS
    ]
    dense = next((r for r in table if r["method"] == "dense"), None)
    reference = figures.Stat(dense["mean"] / 100, dense["std"] / 100) if dense else None
    title = "LeNet-300-100 on Fashion-MNIST, magnitude pruning"
    fig = figures.accuracy_figure([figures.Panel(title, curves, reference)])
    if dense:
        (ax,) = fig.axes
        ax.axhspan(
            dense["mean"] - 1, dense["mean"], color="grey", alpha=0.15, label="within 1 point of dense"
        )
        figures.legend_outside(fig, fig.axes)
    return figures.save(fig, path)


def main() -> None:
    args = benchmark_args(__doc__, "one seed, one epoch per phase")
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = run_all(args.quick, args.workers, args.fresh)
    report(summarize(done), args.quick, time.perf_counter() - started, budget(args.quick))
    print((RESULTS / f"pat_fashion_mnist{'_quick' if args.quick else ''}.md").read_text())


if __name__ == "__main__":
    main()
