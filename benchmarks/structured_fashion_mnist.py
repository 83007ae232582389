"""Channel pruning on Fashion-MNIST: L1 vs BN slimming vs Taylor vs FPGM, one-shot vs iterative.

Model: LeNet-5 with BatchNorm after every conv and hidden linear (6-16 channels,
120-84 neurons). Each seed trains two dense models: a plain one, and one with the network-
slimming L1 penalty on BN scales (the train stage's `bn_l1`), from which `bn_scale` prunes. Then, from the
dense weights, every criterion removes 30 / 50 / 70 % of the channels and neurons of every layer
(`structure: channel`, uniform allocation, the classifier's outputs kept):
  one-shot   prune once, finetune FT epochs;
  iterative  prune in 3 equal steps, finetune FT epochs after each.
Each pruned model is then physically shrunk (`secateurs.structured.shrink`), checked equal to
the masked model, BatchNorm-folded like the dense baseline, and timed on one CPU thread at batch
1 and 64 (minimum over interleaved rounds). Finished jobs are kept in
benchmarks/results/structured_fashion_mnist_runs.json, so an interrupted benchmark resumes.

    python benchmarks/structured_fashion_mnist.py            # about 30 minutes with 2 workers
    python benchmarks/structured_fashion_mnist.py --quick    # about 2 minutes: 1 seed, 50 %, short training
Writes benchmarks/results/structured_fashion_mnist{,_quick}.{json,md}.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from _jobs import benchmark_args, load_done, run_phase
from _timing import min_latency_ms

from secateurs.core.fileio import atomic_write_text

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / ".work"
MODEL = {"name": "lenet5", "options": {"width": 1.0, "batchnorm": True}}
CRITERIA = ["l1", "bn_scale", "taylor", "fpgm"]
SCHEDULES = ["one-shot", "iterative"]
SLIMMING = 5e-4  # λ of the L1 penalty on BN scales while training the dense model for bn_scale


def budget(quick: bool) -> dict[str, Any]:
    if quick:
        return {"dense_epochs": 0.3, "ft_epochs": 0.1, "seeds": [0], "sparsities": [0.5]}
    return {"dense_epochs": 4, "ft_epochs": 0.5, "seeds": [0, 1, 2], "sparsities": [0.3, 0.5, 0.7]}


def recipe(job: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    sgd = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
    base: dict[str, Any] = {
        "name": f"structured-{job['kind']}",
        "seed": job["seed"],
        "data": "fashion_mnist",
        "model": MODEL,
        "train": {
            "epochs": b["ft_epochs"],
            "batch_size": 128,
            "optimizer": sgd,
            "lr_schedule": {"name": "cosine"},
        },
    }
    if job["kind"] == "dense":
        base["train"] |= {"epochs": b["dense_epochs"], "optimizer": {**sgd, "lr": 0.1}}
        slimming = {"bn_l1": job["bn_l1"]} if job["bn_l1"] else {}  # a training-time method of the stage
        base["stages"] = [{"train": slimming}, {"evaluate": {"label": "dense"}}]
        return base
    base["init_from"] = job["init"]
    prune = {"structure": "channel", "criterion": job["criterion"], "allocation": "uniform"}
    prune["structure_options"] = {"exclude": ["classifier.7"]}  # the classes
    if job["kind"] == "one-shot":
        base["stages"] = [{"prune": {**prune, "sparsity": job["sparsity"]}}, {"train": {}}, {"evaluate": {}}]
    else:
        steps = [round(job["sparsity"] * k / 3, 4) for k in (1, 2, 3)]
        base["stages"] = [
            {
                "repeat": {
                    "schedule": {"name": "levels", "sparsities": steps},
                    "stages": [{"prune": prune}, {"train": {}}],
                }
            },
            {"evaluate": {}},
        ]
    return base


def latency_ms(models: dict[str, Any], batch: int, rounds: int = 7) -> dict[str, float]:
    import torch

    x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return min_latency_ms(models, x, rounds=rounds, iters=40 if batch == 1 else 4)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One dense training or one pruning run in a worker process (one torch thread)."""
    import shutil

    import torch

    import secateurs
    from secateurs.eval.macs import count_costs
    from secateurs.graph.masking import shrink
    from secateurs.models import build_model
    from secateurs.pipeline.outputs import read_checkpoint
    from secateurs.structured import fold_batchnorm

    torch.set_num_threads(1)
    b = budget(job["quick"])
    started = time.perf_counter()
    if job["kind"] == "dense":
        out = Path(job["out"])
        if out.exists():
            shutil.rmtree(out)
        result = secateurs.run(recipe(job, b), out=out)
        return {"accuracy": result.final["accuracy"], "seconds": time.perf_counter() - started}
    result = secateurs.run(recipe(job, b))
    x = torch.zeros(2, 1, 28, 28)
    model = result.model.eval()
    small = shrink(model, x).eval()
    probe = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        gap = float((small(probe) - model(probe)).abs().max())
    dense = build_model("lenet5", (1, 28, 28), 10, seed=job["seed"], **MODEL["options"])
    dense.load_state_dict(read_checkpoint(job["init"])[0])
    folded = {"dense": fold_batchnorm(dense.eval()), "pruned": fold_batchnorm(small)}
    lat = {f"b{b_}": latency_ms(folded, b_) for b_ in (1, 64)}
    shape = (1, 28, 28)
    return {
        "accuracy": result.final["accuracy"],
        "macs": count_costs(small, shape).macs,
        "dense_macs": count_costs(dense, shape).macs,
        "params": sum(p.numel() for p in small.parameters()),
        "max_abs_gap_masked_vs_shrunk": gap,
        "speedup_b1": lat["b1"]["dense"] / lat["b1"]["pruned"],
        "speedup_b64": lat["b64"]["dense"] / lat["b64"]["pruned"],
        "seconds": time.perf_counter() - started,
    }


def key(job: dict[str, Any]) -> str:
    if job["kind"] == "dense":
        return f"dense|{job['bn_l1']}|{job['seed']}"
    return f"{job['kind']}|{job['criterion']}|{job['sparsity']}|{job['seed']}"


def describe(job: dict[str, Any], r: dict[str, Any]) -> str:
    extra = f", MACs ×{r['dense_macs'] / r['macs']:.2f}, b64 ×{r['speedup_b64']:.2f}" if "macs" in r else ""
    return f"{100 * r['accuracy']:.2f}%{extra} ({r['seconds']:.0f} s)"


def run_all(quick: bool, workers: int, fresh: bool) -> dict[str, Any]:
    b = budget(quick)
    suffix = "_quick" if quick else ""
    store = RESULTS / f"structured_fashion_mnist{suffix}_runs.json"
    done: dict[str, Any] = load_done(store, fresh=fresh)
    work = WORK / f"structured{suffix}"
    dense_jobs = [
        {"kind": "dense", "seed": s, "bn_l1": l1, "quick": quick, "out": str(work / f"dense-{l1}-{s}")}
        for s in b["seeds"]
        for l1 in (0.0, SLIMMING)
    ]
    for job in dense_jobs:  # a pending pruning job needs its dense checkpoint: re-create it if wiped
        if not Path(job["out"]).exists():
            done.pop(key(job), None)
    prune_jobs = [
        {
            "kind": schedule,
            "criterion": c,
            "sparsity": a,
            "seed": s,
            "quick": quick,
            "init": str(work / f"dense-{SLIMMING if c == 'bn_scale' else 0.0}-{s}"),
        }
        for s in b["seeds"]
        for c in CRITERIA
        for schedule in SCHEDULES
        for a in b["sparsities"]
    ]
    for phase in (dense_jobs, prune_jobs):
        run_phase(phase, key=key, work=run_job, store=store, done=done, workers=workers, describe=describe)
    return done


def summarise(done: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    def cell(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

    table: dict[str, Any] = {}
    for l1 in (0.0, SLIMMING):
        accs = [r["accuracy"] for k, r in done.items() if k.startswith(f"dense|{l1}|")]
        if accs:
            table[f"dense (bn_l1={l1:g})"] = cell(accs)
    for schedule in SCHEDULES:
        for c in CRITERIA:
            for a in b["sparsities"]:
                rows = [r for k, r in done.items() if k.startswith(f"{schedule}|{c}|{a}|")]
                if rows:
                    table[f"{schedule}|{c}|{a}"] = {
                        "accuracy": cell([r["accuracy"] for r in rows]),
                        "macs_ratio": statistics.fmean(r["dense_macs"] / r["macs"] for r in rows),
                        "speedup_b1": cell([r["speedup_b1"] for r in rows]),
                        "speedup_b64": cell([r["speedup_b64"] for r in rows]),
                        "params": statistics.fmean(r["params"] for r in rows),
                        "max_abs_gap_masked_vs_shrunk": max(r["max_abs_gap_masked_vs_shrunk"] for r in rows),
                        "seeds": len(rows),
                    }
    return table


def write(table: dict[str, Any], b: dict[str, Any], quick: bool, minutes: float) -> None:
    suffix = "_quick" if quick else ""
    lines = [
        "# Channel pruning, LeNet-5 (BatchNorm) on Fashion-MNIST" + (" (QUICK budget)" if quick else ""),
        "",
        f"Budget: dense {b['dense_epochs']} epochs (SGD 0.1); finetuning {b['ft_epochs']} epoch(s) per prune "
        f"step (SGD 0.01); seeds {b['seeds']}; bn_scale prunes the dense model trained with "
        f"bn_l1 = {SLIMMING:g}; "
        f"wall time {minutes:.1f} min with 2 workers. Latency: BN-folded dense vs BN-folded shrunk model, "
        "1 thread, min over rounds.",
        "",
    ]
    for name, c in table.items():
        if name.startswith("dense"):
            lines.append(f"- {name}: {100 * c['mean']:.2f} ± {100 * c['std']:.2f} %")
    lines += [
        "",
        "| schedule | criterion | channels removed | accuracy (%) | MACs × fewer | speed-up b1 "
        "| speed-up b64 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in table.items():
        if name.startswith("dense"):
            continue
        schedule, criterion, sparsity = name.split("|")
        acc, s1, s64 = r["accuracy"], r["speedup_b1"], r["speedup_b64"]
        accuracy = f"{100 * acc['mean']:.2f} ± {100 * acc['std']:.2f}"
        lines.append(
            f"| {schedule} | {criterion} | {100 * float(sparsity):g} % | {accuracy} "
            f"| {r['macs_ratio']:.2f} | {s1['mean']:.2f} | {s64['mean']:.2f} |"
        )
    gap = max(
        (r["max_abs_gap_masked_vs_shrunk"] for n, r in table.items() if not n.startswith("dense")), default=0
    )
    lines += ["", f"Largest |masked − shrunk| output difference over all runs: {gap:.2e}."]
    atomic_write_text(RESULTS / f"structured_fashion_mnist{suffix}.md", "\n".join(lines) + "\n")
    payload = {"budget": b, "wall_minutes": minutes, "table": table}
    atomic_write_text(RESULTS / f"structured_fashion_mnist{suffix}.json", json.dumps(payload, indent=1))


def main() -> None:
    args = benchmark_args(__doc__, "1 seed, 50 %% of channels, 0.3 dense epochs, 0.1 per finetuning")
    started = time.perf_counter()
    done = run_all(args.quick, args.workers, args.fresh)
    b = budget(args.quick)
    write(summarise(done, b), b, args.quick, (time.perf_counter() - started) / 60)
    print(f"wrote {RESULTS / 'structured_fashion_mnist'}{'_quick' if args.quick else ''}.md")


if __name__ == "__main__":
    main()
