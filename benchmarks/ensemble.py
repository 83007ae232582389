"""Ensembles from the parameter distribution (issue 20) vs independently trained ensembles.

Per setting (MNIST-1D MLP, Fashion-MNIST LeNet-5; dense and 90 % global magnitude sparsity) and seed:
  - one training run whose last 2 epochs collect every weight's mean and variance (`param_stats`),
    then `ensemble` stages of 5 and 10 members sampled from N(mean, var): accuracy, ECE and
    excess error under Gaussian input noise against the single model;
  - an ensemble of 5 independently trained models of the same size (the same recipe with seeds
    seed, 1000 + seed, ...; member 0 is the single model), evaluated the same way.
The training cost is counted in training runs: the sampled ensembles cost the single run (the
statistics are collected while it trains), the independent ensemble costs one run per member.

    python benchmarks/ensemble.py            # 2 settings x 2 sparsities x 3 seeds, about 30 minutes
    python benchmarks/ensemble.py --quick    # MNIST-1D only, one seed, a few epochs: about a minute
Writes benchmarks/results/ensemble{,_quick}.{json,md}; finished jobs are kept in
ensemble{,_quick}_runs.json, so an interrupted run resumes.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from _jobs import benchmark_args, load_done, run_phase

from secateurs.core.fileio import atomic_write_text

RESULTS = Path(__file__).parent / "results"
SETTINGS: dict[str, dict[str, Any]] = {
    "mnist1d-mlp": {"data": "mnist1d", "model": "mlp", "epochs": 60, "finetune": 20, "lr": 0.1},
    # 8 + 4 epochs so that the whole benchmark (60 trainings of LeNet-5) fits in about 30 minutes here
    "fashion-lenet5": {"data": "fashion_mnist", "model": "lenet5", "epochs": 8, "finetune": 4, "lr": 0.05},
}
SPARSITIES = [0.0, 0.9]
MEMBERS = [5, 10]
INDEPENDENT = 5


def budget(quick: bool) -> dict[str, Any]:
    if quick:
        return {"settings": ["mnist1d-mlp"], "seeds": [0], "epochs": 4, "finetune": 2, "collect": 1}
    return {"settings": list(SETTINGS), "seeds": [0, 1, 2], "epochs": None, "finetune": None, "collect": 2}


def recipe(job: dict[str, Any], seed: int, *, ensembles: bool) -> dict[str, Any]:
    """Train (dense, or dense then prune and finetune), collecting over the last epochs of the
    training that made the final weights; with `ensembles`, the sampled ensembles after it."""
    s = SETTINGS[job["setting"]]
    epochs, finetune = job["epochs"] or s["epochs"], job["finetune"] or s["finetune"]
    collect = {"param_stats": {"epochs": job["collect"]}}
    stages: list[dict[str, Any]] = [{"train": collect if not job["sparsity"] else {}}]
    if job["sparsity"]:
        stages += [
            {"prune": {"criterion": "magnitude", "allocation": "global", "sparsity": job["sparsity"]}},
            {"train": {"epochs": finetune, "optimizer": {"lr": s["lr"] / 2}, **collect}},
        ]
    stages.append({"evaluate": {"label": "single", "beyond": ensembles, "latency": False}})
    if ensembles:
        stages += [{"ensemble": {"members": m, "label": f"sampled {m}"}} for m in MEMBERS]
    return {
        "name": f"ensemble-{job['setting']}",
        "seed": seed,
        "data": s["data"],
        "model": s["model"],
        "train": {
            "epochs": epochs,
            "batch_size": 128,
            "optimizer": {"name": "sgd", "lr": s["lr"], "momentum": 0.9},
            "lr_schedule": {"name": "cosine", "min_lr": s["lr"] / 10},
        },
        "stages": stages,
    }


def noise(row: dict[str, Any]) -> dict[str, float]:
    """Mean accuracy and mean excess error (vs the single model) over the Gaussian-noise severities."""
    acc = [v for k, v in row.items() if k.startswith("acc@gaussian_noise")]
    excess = [v for k, v in row.items() if k.startswith("excess_error@gaussian_noise")]
    return {
        "noise_accuracy": statistics.fmean(acc),
        "noise_excess_error": statistics.fmean(excess) if excess else 0.0,
    }


def summary(row: dict[str, Any], runs: int, members: int) -> dict[str, Any]:
    return {
        "accuracy": row["accuracy"],
        "ece": row["ece"],
        **noise(row),
        "train_runs": runs,
        "inference_x": members,
    }


def work(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    import secateurs

    torch.set_num_threads(1)
    started = time.perf_counter()
    seed = job["seed"]
    if job["kind"] == "sampled":
        records = secateurs.run(recipe(job, seed, ensembles=True)).records
        single = records[0]
        out = {"single": {**summary(single, 1, 1), "noise_excess_error": 0.0}}  # the reference itself
        for row, m in zip(records[1:], MEMBERS, strict=True):
            out[f"sampled {m}"] = summary(row, 1, m)
        return {"rows": out, "seconds": time.perf_counter() - started}
    from secateurs.data import load_recipe_data
    from secateurs.eval import beyond_accuracy, evaluate, expected_calibration_error, predict
    from secateurs.methods.ensemble import ParamEnsemble

    results = [secateurs.run(recipe(job, 1000 * k + seed, ensembles=False)) for k in range(INDEPENDENT)]
    models = [r.model.eval() for r in results]
    data = load_recipe_data(results[0].recipe.data)
    ens = ParamEnsemble(models).eval()
    logits, labels = predict(ens, data.test_loader())
    row = {
        "accuracy": evaluate(ens, data.test_loader())["accuracy"],
        "ece": expected_calibration_error(logits, labels),
        **beyond_accuracy(ens, data, dense=models[0], latency=False, seed=seed),
    }
    return {
        "rows": {f"independent {INDEPENDENT}": summary(row, INDEPENDENT, INDEPENDENT)},
        "seconds": time.perf_counter() - started,
    }


def key(job: dict[str, Any]) -> str:
    return f"{job['kind']}|{job['setting']}|{job['sparsity']}|{job['seed']}"


def describe(job: dict[str, Any], r: dict[str, Any]) -> str:
    return (
        ", ".join(f"{k} {100 * v['accuracy']:.2f}%" for k, v in r["rows"].items())
        + f" ({r['seconds']:.0f} s)"
    )


def table(done: dict[str, Any], b: dict[str, Any]) -> list[str]:
    lines = [
        "| setting | sparsity | method | accuracy % | ECE % | acc. under noise % "
        "| excess error under noise % | training cost (runs) | inference cost (x single) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for setting in b["settings"]:
        for sparsity in SPARSITIES:
            found: dict[str, list[dict[str, Any]]] = {}
            for kind in ("sampled", "independent"):
                for seed in b["seeds"]:
                    result = done.get(
                        key({"kind": kind, "setting": setting, "sparsity": sparsity, "seed": seed})
                    )
                    for name, row in (result or {}).get("rows", {}).items():
                        found.setdefault(name, []).append(row)
            for name, rows in found.items():

                def cell(field: str, rows: list[dict[str, Any]] = rows) -> str:
                    values = [100 * r[field] for r in rows]
                    std = statistics.stdev(values) if len(values) > 1 else 0.0
                    return f"{statistics.fmean(values):.2f} ± {std:.2f}"

                lines.append(
                    f"| {setting} | {sparsity:.0%} | {name} | {cell('accuracy')} | {cell('ece')} "
                    f"| {cell('noise_accuracy')} | {cell('noise_excess_error')} | {rows[0]['train_runs']} "
                    f"| {rows[0]['inference_x']} |"
                )
    return lines


def main() -> None:
    import json

    args = benchmark_args(__doc__ or "", "MNIST-1D only, one seed, a few epochs (about a minute)")
    b = budget(args.quick)
    suffix = "_quick" if args.quick else ""
    store = RESULTS / f"ensemble{suffix}_runs.json"
    done = load_done(store, fresh=args.fresh)
    jobs = [
        {
            "kind": kind,
            "setting": setting,
            "sparsity": sparsity,
            "seed": seed,
            **{k: b[k] for k in ("epochs", "finetune", "collect")},
        }
        for kind in ("sampled", "independent")
        for setting in b["settings"]
        for sparsity in SPARSITIES
        for seed in b["seeds"]
    ]
    run_phase(jobs, key=key, work=work, store=store, done=done, workers=args.workers, describe=describe)
    lines = [
        f"# Ensembles from the parameter distribution{' (quick)' if args.quick else ''}",
        "",
        "Budget: "
        + "; ".join(
            f"{name} {SETTINGS[name]['epochs'] if not args.quick else b['epochs']} epochs "
            f"(+{SETTINGS[name]['finetune'] if not args.quick else b['finetune']} after the 90 % prune), "
            f"statistics over the last {b['collect']}"
            for name in b["settings"]
        )
        + f"; {args.workers} worker processes, one thread each, on a 2-core machine shared with other jobs.",
        f"Seeds {b['seeds']}; mean ± std over seeds. Noise: Gaussian input noise at the default severities; "
        "excess error is the change of the error under noise beyond the clean change, against the single "
        "model (negative: more robust than it; 0 for the single model by definition).",
        "",
        *table(done, b),
        "",
    ]
    atomic_write_text(RESULTS / f"ensemble{suffix}.md", "\n".join(lines))
    atomic_write_text(RESULTS / f"ensemble{suffix}.json", json.dumps({"budget": b, "runs": done}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
