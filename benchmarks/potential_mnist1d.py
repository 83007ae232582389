"""Prune potential on MNIST-1D with its bootstrap interval (issue 21).

The prune potential (Liebenwein et al. 2021: the largest sparsity whose accuracy stays within δ
of dense) with δ = 0.5 points was noisy on MNIST-1D's 1000 test samples: one accuracy's standard
error there is about 1.5 points. Here each seed trains the MLP (100-100, Adam 1e-3, batch 100,
40 epochs), prunes it once by global magnitude to each sparsity and finetunes 10 epochs (PaT);
every model's per-sample correctness on the test set gives the potential and its 95 % paired
bootstrap interval (`secateurs.eval.prune_potential_interval`, 2000 resamples, seeded), at
δ = 0.5 and 1 point, on MNIST-1D's 1000 test samples and on those plus 9000 fresh ones (the
`mnist1d` option `extra_test`). 3 seeds.

    python benchmarks/potential_mnist1d.py            # about 5 min on an idle 2-core machine
    python benchmarks/potential_mnist1d.py --quick    # about a minute: 1 seed, 3 sparsities, short
Writes benchmarks/results/potential_mnist1d{,_quick}.{md,json}; finished seeds are kept, so an
interrupted run resumes.
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
STEM = "potential_mnist1d"
SETUP: dict[str, Any] = {
    "train": {"epochs": 40, "batch_size": 100, "optimizer": {"name": "adam", "lr": 1e-3}},
    "finetune_epochs": 10,
    "sparsities": [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95],
    "deltas": [0.005, 0.01],
    "resamples": 2000,
    "extra_test": 9000,
    "seeds": [0, 1, 2],
}
QUICK: dict[str, Any] = {
    "train": {**SETUP["train"], "epochs": 6},
    "finetune_epochs": 2,
    "sparsities": [0.5, 0.8, 0.9],
    "resamples": 500,
    "extra_test": 1000,
    "seeds": [0],
}


def correctness(model: Any, extra_test: int) -> str:
    """The model's per-sample correctness on the MNIST-1D test set (its 1000 samples, then
    `extra_test` fresh ones: the data set's option), as a string of 0/1."""
    from secateurs.data import load_dataset
    from secateurs.eval import predict

    data = load_dataset("mnist1d", extra_test=extra_test)
    logits, labels = predict(model, data.test_loader())
    return "".join("1" if c else "0" for c in (logits.argmax(1) == labels).tolist())


def run_seed(job: dict[str, Any]) -> dict[str, Any]:
    """Dense training, then one-shot magnitude pruning + finetuning from it at every sparsity."""
    import torch

    import secateurs

    torch.set_num_threads(1)
    started = time.perf_counter()
    setup, seed = job["setup"], job["seed"]
    base = {"seed": seed, "data": "mnist1d", "model": "mlp", "train": setup["train"]}
    dense = secateurs.run(
        {**base, "name": "potential-dense", "stages": [{"train": {}}, {"evaluate": {"label": "dense"}}]}
    )
    out = {"dense": correctness(dense.model, setup["extra_test"]), "pruned": {}}
    for sparsity in setup["sparsities"]:
        pruned = secateurs.run(
            {
                **base,
                "name": "potential-pruned",
                "sparsity": sparsity,
                "stages": [
                    {"prune": {"criterion": "magnitude", "allocation": "global"}},
                    {"train": {"epochs": setup["finetune_epochs"]}},
                    {"evaluate": {"label": "finetuned"}},
                ],
            },
            model=dense.model,
        )
        out["pruned"][str(sparsity)] = correctness(pruned.model, setup["extra_test"])
    return {**out, "seconds": time.perf_counter() - started, "setup": setup}


def accuracy(bits: str) -> float:
    return bits.count("1") / len(bits)


def report(setup: dict[str, Any], done: dict[str, Any], stem: str, quick: bool) -> None:
    n_all = len(next(iter(done.values()))["dense"])
    lines = [
        "# Prune potential on MNIST-1D, with its bootstrap interval",
        "",
        f"Budget: MLP 100-100, Adam 1e-3, batch 100, {setup['train']['epochs']} epochs dense; one-shot "
        f"global magnitude pruning + {setup['finetune_epochs']} epochs of finetuning per sparsity; "
        f"{len(done)} seed(s); 95 % paired percentile bootstrap over the test samples, "
        f"{setup['resamples']} resamples (seeded); first on MNIST-1D's own 1000 test samples, then on "
        f"those plus {setup['extra_test']} fresh ones (`mnist1d` option `extra_test`). "
        + ("**--quick budget.** " if quick else "")
        + f"Runs took {sum(v['seconds'] for v in done.values()) / 60:.1f} min in total.",
        "",
    ]
    potentials: dict[str, Any] = {}
    for name, cut in (("1000 test samples", 1000), (f"{n_all} test samples", n_all)):
        part = {
            k: {"dense": v["dense"][:cut], "pruned": {s: b[:cut] for s, b in v["pruned"].items()}}
            for k, v in done.items()
        }
        lines += section(name, part, setup, potentials.setdefault(name, {}))
    lines += findings(potentials, setup)
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")
    payload = {"setup": setup, "potential": potentials, "runs": done}
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(payload, indent=1))


def section(name: str, done: dict[str, Any], setup: dict[str, Any], potentials: dict[str, Any]) -> list[str]:
    """Markdown: accuracy per seed and sparsity, then the potential with its interval per δ."""
    import torch

    from secateurs.eval import prune_potential, prune_potential_interval

    def as_bool(bits: str) -> torch.Tensor:
        return torch.tensor([b == "1" for b in bits])

    lines = [
        f"## On {name}",
        "",
        "Test accuracy (%):",
        "",
        "| seed | dense | " + " | ".join(f"{100 * s:g} %" for s in setup["sparsities"]) + " |",
        "|---|---|" + "---|" * len(setup["sparsities"]),
    ]
    for k, v in sorted(done.items()):
        cells = [f"{100 * accuracy(v['pruned'][str(s)]):.1f}" for s in setup["sparsities"]]
        lines.append(f"| {k} | {100 * accuracy(v['dense']):.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Prune potential (% sparsity) [95 % bootstrap interval]:", ""]
    lines.append("| δ (points) | " + " | ".join(sorted(done)) + " | from the seeds' mean accuracies |")
    lines.append("|---|" + "---|" * (len(done) + 1))
    for delta in setup["deltas"]:
        row = []
        for k, v in sorted(done.items()):
            got = prune_potential_interval(
                {float(s): as_bool(b) for s, b in v["pruned"].items()},
                as_bool(v["dense"]),
                delta,
                resamples=setup["resamples"],
                seed=0,
            )
            potentials.setdefault(str(delta), {})[k] = got.__dict__
            row.append(got.text())
        mean_dense = statistics.fmean(accuracy(v["dense"]) for v in done.values())
        mean_points = [
            (s, statistics.fmean(accuracy(v["pruned"][str(s)]) for v in done.values()))
            for s in setup["sparsities"]
        ]
        pooled = prune_potential(mean_points, mean_dense, delta)
        lines.append(f"| {100 * delta:g} | " + " | ".join(row) + f" | {100 * pooled:g} |")
    return [*lines, ""]


def findings(potentials: dict[str, Any], setup: dict[str, Any]) -> list[str]:
    out = ["## Findings (computed from the tables)", ""]
    for name, by_delta in potentials.items():
        for delta, per_seed in by_delta.items():
            widths = [p["high"] - p["low"] for p in per_seed.values()]
            estimates = [p["potential"] for _, p in sorted(per_seed.items())]
            out.append(
                f"- {name}, δ = {100 * float(delta):g} points: the seeds' potentials are "
                f"{', '.join(f'{100 * e:g} %' for e in estimates)}; their 95 % intervals are "
                f"{100 * min(widths):g}-{100 * max(widths):g} points of sparsity wide (the grid: "
                f"{', '.join(f'{100 * s:g}' for s in setup['sparsities'])} %)."
            )
    return out


def main() -> None:
    args = benchmark_args(__doc__, "1 seed, 3 sparsities, 6 + 2 epochs")
    setup, stem = (SETUP, STEM) if not args.quick else ({**SETUP, **QUICK}, f"{STEM}_quick")
    store = RESULTS / f"{stem}_runs.json"
    done = {k: v for k, v in load_done(store, fresh=args.fresh).items() if v.get("setup") == setup}
    jobs = [{"seed": s, "setup": setup} for s in setup["seeds"]]
    run_phase(
        jobs,
        key=lambda j: f"seed={j['seed']}",
        work=run_seed,
        store=store,
        done=done,
        workers=args.workers,
        describe=lambda j, r: f"dense {100 * accuracy(r['dense']):.1f} % ({r['seconds'] / 60:.1f} min)",
    )
    report(
        setup,
        {f"seed={s}": done[f"seed={s}"] for s in setup["seeds"] if f"seed={s}" in done},
        stem,
        args.quick,
    )
    print((RESULTS / f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
