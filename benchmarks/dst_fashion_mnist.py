"""Dynamic sparse training vs static sparse training vs sparse selection: LeNet-5 on Fashion-MNIST.

Sparsities 80, 90, 95, 98 %, three seeds, every method trained from scratch for the same number
of epochs (SGD 0.1, momentum 0.9, cosine, batch 128):
  dense; static random (ERK); static SNIP and SynFlow (100 rounds), global allocation;
  SET, DSR, SNFS, RigL from a random ERK mask, ΔT = 100 steps, drop fraction 0.3 with cosine
  decay, updates until 75 % of training (the RigL paper's defaults);
  edge-popup (weights frozen at a signed Kaiming constant, per-layer top-k scores, weight decay 5e-4).
Every run records its training FLOPs as in the RigL paper (appendix H); the table gives them
relative to dense training of the same steps.

The grid is written as sweep YAML files and run by the CLI (`secateurs sweep`) into one results
store, then reported (`secateurs.results.report.write_report`) with an accuracy/FLOPs table and a check
of the literature's ordering at 90 %+ (RigL ≥ SET ≥ static random). Finished runs are skipped, so
an interrupted benchmark resumes.

    python benchmarks/dst_fashion_mnist.py            # about 15 minutes on 2 idle cores
    python benchmarks/dst_fashion_mnist.py --quick    # about 2 minutes: 1 seed, 90 %, 60 steps each
Writes benchmarks/results/dst_fashion_mnist{,_quick}.json and .../dst_fashion_mnist{,_quick}/report.md
(and report.html, the same in one self-contained page).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import yaml
from _jobs import benchmark_args
from _sweeps import dense_fashion_recipe, lenet_dst_cells, prepare, run_sweeps, store_minutes

from secateurs.core.fileio import atomic_write_text
from secateurs.results.html_report import write_html_report
from secateurs.results.report import write_report

HERE = Path(__file__).parent
WORK = HERE / ".work"
RESULTS = HERE / "results"
SPARSITIES = [0.8, 0.9, 0.95, 0.98]
EPOCHS = 3
DST = "stages.2.train.dst.method"
STATIC = "stages.0.prune"
# (label, preset, overrides)
METHODS: list[tuple[str, str, list[str]]] = [
    ("static random (ERK)", "prune-at-init", [f"{STATIC}.criterion=random", f"{STATIC}.allocation=erk"]),
    ("SNIP (static)", "prune-at-init", []),
    ("SynFlow (static)", "prune-at-init", [f"{STATIC}.criterion=synflow", f"{STATIC}.rounds=100"]),
    ("SET", "dynamic-sparse", [f"{DST}=set"]),
    ("DSR", "dynamic-sparse", [f"{DST}=dsr"]),
    ("SNFS", "dynamic-sparse", [f"{DST}=snfs"]),
    ("RigL", "dynamic-sparse", [f"{DST}=rigl"]),
    ("edge-popup", "edge-popup", []),
]
DENSE_RECIPE = dense_fashion_recipe(
    "lenet5", EPOCHS, "dense training from scratch, the reference of the DST benchmark"
)


def sweeps(quick: bool, out: Path) -> list[dict[str, Any]]:
    steps = ["train.epochs=null", "train.iterations=60"] if quick else [f"train.epochs={EPOCHS}"]
    dst_quick = ["stages.2.train.dst.update_every=10"] if quick else []  # so that 60 steps see updates
    common = {"models": ["lenet5"], "data": ["fashion_mnist"], "seeds": [0] if quick else [0, 1, 2]}
    recipes = []
    for label, preset, overrides in METHODS:
        extra = [f"{STATIC}.allow_collapse=true"] if preset != "edge-popup" else []
        extra += dst_quick if preset == "dynamic-sparse" else []
        recipes.append({"recipe": preset, "label": label, "set": [*steps, *extra, *overrides]})
    dense_file = atomic_write_text(out / "dense.yaml", yaml.safe_dump(DENSE_RECIPE, sort_keys=False))
    return [
        {
            "name": "dst-dense",
            "recipes": [{"recipe": str(dense_file), "label": "dense", "set": steps}],
            **common,
        },
        {"name": "dst-sparse", "recipes": recipes, "sparsities": [0.9] if quick else SPARSITIES, **common},
    ]


def ordering(accuracy: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """Markdown lines: does RigL ≥ SET ≥ static random (ERK) hold at each sparsity ≥ 90 %?"""
    lines = []
    chain = ["RigL", "SET", "static random (ERK)"]
    for sp in sorted({s for m in chain for s in accuracy.get(m, {})}, key=float):
        if float(sp) < 0.9 or not all(sp in accuracy.get(m, {}) for m in chain):
            continue
        values = [accuracy[m][sp] for m in chain]
        holds = all(a["mean"] >= b["mean"] for a, b in itertools.pairwise(values))
        text = " vs ".join(
            f"{m} {100 * v['mean']:.2f} ± {100 * v['std']:.2f}" for m, v in zip(chain, values, strict=True)
        )
        lines.append(f"- {100 * float(sp):g} %: {'holds' if holds else 'does not hold'} ({text})")
    return lines


def flops_table(accuracy: dict[str, Any], flops: dict[str, Any]) -> list[str]:
    """Markdown: accuracy and training FLOPs relative to dense, per method and sparsity."""
    sparsities = sorted({s for m in accuracy.values() for s in m if float(s) > 0}, key=float)
    lines = [
        "| method | " + " | ".join(f"{100 * float(s):g} %: acc (FLOPs × dense)" for s in sparsities) + " |",
        "|---|" + "---|" * len(sparsities),
    ]
    dense = accuracy.get("dense", {}).get("0")
    if dense:
        lines.append(
            f"| dense | {100 * dense['mean']:.2f} ± {100 * dense['std']:.2f} (1.00) |"
            + " |" * (len(sparsities) - 1)
        )
    for method, by_s in accuracy.items():
        if method == "dense":
            continue
        row = []
        for s in sparsities:
            a, f = by_s.get(s), flops.get(method, {}).get(s)
            row.append(f"{100 * a['mean']:.2f} ± {100 * a['std']:.2f} ({f['mean']:.3f})" if a and f else "—")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


def main() -> None:
    args = benchmark_args(__doc__, "1 seed, 90 %%, 60 training steps per run")
    suffix, root, out = prepare("dst_fashion_mnist", WORK, RESULTS, quick=args.quick, fresh=args.fresh)
    swept = run_sweeps(sweeps(args.quick, out), root=root, out=out, workers=args.workers)
    report = write_report(root, out)
    timing = store_minutes(root)
    accuracy, flops = lenet_dst_cells(root)
    budget = "60 steps per run" if args.quick else f"{EPOCHS} epochs per run"
    note = [
        "",
        "## Accuracy and training cost",
        "",
        "Test accuracy (%, mean ± std over seeds) and, in brackets, training FLOPs relative to dense",
        "training of the same steps (RigL paper, appendix H: 3·f_S per step, 2·f_S + f_D when the",
        "method needs the dense gradient: RigL at its updates, SNFS at every step).",
        "",
        *flops_table(accuracy, flops),
        "",
        "## Comparison with the literature",
        "",
        "Expected at 90 %+ (Evci et al. 2020): RigL ≥ SET ≥ static random (ERK).",
        "",
        *ordering(accuracy),
        "",
        f"Budget: {budget}, SGD 0.1 momentum 0.9 cosine, batch 128; {args.workers} workers; "
        f"the grid's runs took {timing['run_minutes']} min summed, {timing['wall_minutes']} min of wall time "
        f"while runs were running (this invocation: {swept:.1f} min).",
        "",
    ]
    atomic_write_text(report, report.read_text(encoding="utf-8") + "\n".join(note))
    write_html_report(root, report, notes="\n".join(note))  # the same findings, in one self-contained page
    payload = {
        "budget": budget,
        "sweep_minutes": swept,
        **timing,
        "accuracy": accuracy,
        "train_flops_vs_dense": flops,
    }
    atomic_write_text(RESULTS / f"dst_fashion_mnist{suffix}.json", json.dumps(payload, indent=1))
    print(f"report: {report}")


if __name__ == "__main__":
    main()
