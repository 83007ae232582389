"""Sanity checks of pruning at init on a BatchNorm network (issue 21): does layerwise shuffling
(or reinitialising) barely change SNIP, GraSP and SynFlow, as Frankle et al. (2021, "Pruning
neural networks at initialization: why are we missing the mark?") and Su et al. (2020,
"Sanity-checking pruning methods") found?

benchmarks/pai_sweep.py did not reproduce it at 98 % with one epoch on LeNet-5 without
BatchNorm, where random masks of that density barely train. Here: LeNet-5 with BatchNorm after
every conv and hidden linear (`lenet5` with `batchnorm: true`) on Fashion-MNIST, 3 epochs of SGD
0.1 momentum 0.9 cosine, batch 128, at which random masks of 80-98 % train. Methods: SNIP and
GraSP (10 samples per class), SynFlow (100 rounds), global allocation; each also with the
prune stage's sanity check `shuffle` (the method's per-layer keep ratios, positions shuffled
within each layer) and `reinit` (the method's mask, weights re-drawn). Random (ERK) and random
(uniform) masks and dense training are the references. Sparsities 80, 90, 95, 98 %, 3 seeds.

    python benchmarks/pai_sanity_bn.py            # about 26 min on an idle 2-core machine
    python benchmarks/pai_sanity_bn.py --quick    # a few minutes: 1 seed, 90/98 %, 150 steps
Writes benchmarks/results/pai_sanity_bn{,_quick}.{json,md} and .../pai_sanity_bn{,_quick}/report.{md,html};
finished runs are kept in a results store, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from _jobs import benchmark_args
from _sweeps import dense_fashion_recipe, prepare, run_sweeps, store_minutes
from pai_sweep import summarise

from secateurs.core.fileio import atomic_write_text
from secateurs.results.db import ResultsDB
from secateurs.results.html_report import write_html_report
from secateurs.results.report import collect, write_report

HERE = Path(__file__).parent
WORK = HERE / ".work"
RESULTS = HERE / "results"
STEM = "pai_sanity_bn"
EPOCHS = 3
SPARSITIES = [0.8, 0.9, 0.95, 0.98]
MODEL = {"name": "lenet5", "options": {"batchnorm": True}}
PRUNE = "stages.0.prune"
SCORED: list[tuple[str, list[str]]] = [
    ("SNIP", []),
    ("GraSP", [f"{PRUNE}.criterion=grasp"]),
    ("SynFlow", [f"{PRUNE}.criterion=synflow", f"{PRUNE}.rounds=100"]),
]
REFERENCES: list[tuple[str, list[str]]] = [
    ("random (ERK)", [f"{PRUNE}.criterion=random", f"{PRUNE}.allocation=erk"]),
    ("random (uniform)", [f"{PRUNE}.criterion=random", f"{PRUNE}.allocation=uniform"]),
]
CHECKS = ["shuffle", "reinit"]
TOLERANCE = 0.01  # "barely changes": within 1 point, or within the seeds' summed std if larger
DENSE_RECIPE = dense_fashion_recipe(
    MODEL, EPOCHS, "dense training from scratch, the reference of the BN sanity-check benchmark"
)


def sweeps(quick: bool, out: Path) -> list[dict[str, Any]]:
    steps = ["train.epochs=null", "train.iterations=150"] if quick else [f"train.epochs={EPOCHS}"]
    common = {"models": [MODEL], "data": ["fashion_mnist"], "seeds": [0] if quick else [0, 1, 2]}
    pai = [*steps, f"{PRUNE}.allow_collapse=true"]
    methods = [
        {"recipe": "prune-at-init", "label": label, "set": [*pai, *o]} for label, o in SCORED + REFERENCES
    ]
    checks = [
        {"recipe": "prune-at-init", "label": label, "set": [*pai, *o, f"{PRUNE}.sanity={check}"]}
        for label, o in SCORED
        for check in CHECKS
    ]
    dense_file = atomic_write_text(out / "dense.yaml", yaml.safe_dump(DENSE_RECIPE, sort_keys=False))
    sparsities = [0.9, 0.98] if quick else SPARSITIES
    return [
        {
            "name": "bn-dense",
            "recipes": [{"recipe": str(dense_file), "label": "dense", "set": steps}],
            **common,
        },
        {"name": "bn-pai", "recipes": [*methods, *checks], "sparsities": sparsities, **common},
    ]


def check_table(acc: dict[str, Any]) -> list[str]:
    """Markdown: per method and sparsity, its accuracy, each check's change and the verdict."""
    sparsities = sorted({s for m, _ in SCORED for s in acc.get(m, {})}, key=float)
    lines = [
        "| method | sparsity | accuracy | "
        + " | ".join(f"{c}: change (points)" for c in CHECKS)
        + " | verdict |",
        "|---|---|---|" + "---|" * (len(CHECKS) + 1),
    ]
    for method, _ in SCORED:
        for sp in sparsities:
            base = acc.get(method, {}).get(sp)
            if base is None:
                continue
            changes, gaps = [], []
            for check in CHECKS:
                other = acc.get(f"{method} [{check}]", {}).get(sp)
                if other is None:
                    changes.append("—")
                    continue
                gaps.append((other["mean"] - base["mean"], max(TOLERANCE, base["std"] + other["std"])))
                changes.append(
                    f"{100 * gaps[-1][0]:+.2f} (std {100 * base['std']:.2f} / {100 * other['std']:.2f})"
                )
            verdict = verdict_of(gaps)
            lines.append(
                f"| {method} | {100 * float(sp):g} % | {100 * base['mean']:.2f} ± {100 * base['std']:.2f} | "
                + " | ".join(changes)
                + f" | {verdict} |"
            )
    return lines


def verdict_of(gaps: list[tuple[float, float]]) -> str:
    """*breaks* if a check loses more than its margin; *holds (checks better)* if one gains more."""
    if not gaps:
        return "—"
    if any(gap < -margin for gap, margin in gaps):
        return "breaks"
    return "holds (a check is better)" if any(gap > margin for gap, margin in gaps) else "holds"


def reference_table(acc: dict[str, Any], dense: float) -> list[str]:
    sparsities = sorted({s for m, _ in REFERENCES for s in acc.get(m, {})}, key=float)
    lines = [
        f"Dense: {100 * dense:.2f} %. Random masks at the same sparsities (do they train at this budget?):",
        "",
        "| reference | " + " | ".join(f"{100 * float(s):g} %" for s in sparsities) + " |",
        "|---|" + "---|" * len(sparsities),
    ]
    for name, _ in REFERENCES:
        by = acc.get(name, {})
        cells = [
            f"{100 * by[s]['mean']:.2f} ± {100 * by[s]['std']:.2f}" if s in by else "—" for s in sparsities
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    args = benchmark_args(__doc__, "1 seed, 90/98 %%, 150 training steps per run")
    suffix, root, out = prepare(STEM, WORK, RESULTS, quick=args.quick, fresh=args.fresh)
    swept = run_sweeps(sweeps(args.quick, out), root=root, out=out, workers=args.workers)
    report = write_report(root, out)
    timing = store_minutes(root)
    with ResultsDB(root / "results.db", create=False) as db:
        summary = summarise(collect(db))
    pair = next(iter(summary.values()), None)
    budget = "150 steps per run" if args.quick else f"{EPOCHS} epochs per run"
    lines = [
        "# Sanity checks of pruning at init on LeNet-5 with BatchNorm (Fashion-MNIST)",
        "",
        f"Budget: {budget}, SGD 0.1 momentum 0.9 cosine, batch 128; {args.workers} workers; the runs took "
        f"{timing['run_minutes']} min summed, {timing['wall_minutes']} min of wall time (this invocation: "
        f"{swept:.1f} min). "
        + ("**--quick budget: one seed, too short to conclude.**" if args.quick else ""),
        "",
        "Frankle et al. (2021) and Su et al. (2020): shuffling a PaI method's mask within each layer, or "
        "re-drawing its weights, does not reduce accuracy. Verdict per row: *breaks* when a check loses more "
        f"than {100 * TOLERANCE:g} point and more than the two rows' summed std; *holds* otherwise, noted "
        "when a check is better by that margin (the method's positions then help less than random ones).",
        "",
    ]
    if pair is not None:
        acc = pair["accuracy"]
        lines += [*check_table(acc), "", *reference_table(acc, pair["dense"]["mean"])]
    lines += ["", f"Full report of the store: [{STEM}{suffix}/report.md]({STEM}{suffix}/report.md)"]
    atomic_write_text(RESULTS / f"{STEM}{suffix}.md", "\n".join(lines) + "\n")
    write_html_report(root, report, notes="\n".join(lines))  # the findings and the store, in one page
    payload = {"budget": budget, "sweep_minutes": swept, **timing, "pairs": summary}
    atomic_write_text(RESULTS / f"{STEM}{suffix}.json", json.dumps(payload, indent=1))
    print((RESULTS / f"{STEM}{suffix}.md").read_text(), f"\nreport: {report}")


if __name__ == "__main__":
    main()
