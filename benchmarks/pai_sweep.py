"""Pruning at initialisation: SNIP, GraSP, SynFlow, random, magnitude vs dense and one-shot magnitude.

Two model/data pairs: LeNet-5 on Fashion-MNIST and the MLP on MNIST-1D. Sparsities 50 … 99.9 %,
three seeds. Methods (all global allocation unless named, every layer collapse allowed so that it
is measured rather than refused):
  SNIP (10 samples/class), GraSP (T=200, 10 samples/class), SynFlow (100 rounds), random uniform,
  random ERK, magnitude at init; and one-shot magnitude after dense pretraining (PaT), whose dense
  evaluation is the dense row of the table.
Sanity checks (Frankle et al. 2021) at 90 and 98 %: shuffle (the "random ticket": a random mask with
the method's per-layer ratios), invert, reinit for every scored method; random labels and random
pixels for the data-dependent ones (SNIP, GraSP).

The grid is written as sweep YAML files and run by the CLI exactly as a user would
(`secateurs sweep FILE --root ROOT --workers 2`) into one results store, then reported with
`secateurs.results.report.write_report` plus a section that checks three findings of the literature.
Finished runs are skipped, so an interrupted benchmark resumes.

    python benchmarks/pai_sweep.py            # about 20 minutes on 2 idle cores
    python benchmarks/pai_sweep.py --quick    # about a minute: MNIST-1D, 1 seed, 90/98 %, 4 epochs
Writes benchmarks/results/pai_sweep{,_quick}.json and benchmarks/results/pai_sweep{,_quick}/report.md
(and report.html, the same in one self-contained page).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from _jobs import benchmark_args
from _sweeps import cells, mean, prepare, run_sweeps, store_minutes

from secateurs.core.fileio import atomic_write_text
from secateurs.results.db import ResultsDB
from secateurs.results.html_report import write_html_report
from secateurs.results.report import RunSummary, collect, write_report

HERE = Path(__file__).parent
WORK = HERE / ".work"
RESULTS = HERE / "results"
SPARSITIES = [0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999]
CHECK_SPARSITIES = [0.9, 0.98]
SCORED = ["SNIP", "GraSP", "SynFlow"]  # the scored PaI criteria the literature's findings are about

PRUNE = "stages.0.prune"
# (label, prune-at-init overrides): every method is the prune-at-init preset with another criterion.
PAI_METHODS: list[tuple[str, list[str]]] = [
    ("SNIP", []),
    ("GraSP", [f"{PRUNE}.criterion=grasp"]),
    ("SynFlow", [f"{PRUNE}.criterion=synflow", f"{PRUNE}.rounds=100"]),
    ("random (uniform)", [f"{PRUNE}.criterion=random", f"{PRUNE}.allocation=uniform"]),
    ("random (ERK)", [f"{PRUNE}.criterion=random", f"{PRUNE}.allocation=erk"]),
    ("magnitude at init", [f"{PRUNE}.criterion=magnitude"]),
]
DATA_CHECKS = ["random_labels", "random_pixels"]
WEIGHT_CHECKS = ["shuffle", "invert", "reinit"]
CHECKED = {"SNIP": WEIGHT_CHECKS + DATA_CHECKS, "GraSP": WEIGHT_CHECKS + DATA_CHECKS}
CHECKED |= {"SynFlow": WEIGHT_CHECKS, "magnitude at init": WEIGHT_CHECKS}


def pairs(quick: bool) -> list[dict[str, Any]]:
    """Model/data pairs with their epoch budgets (PaI training; one-shot pretraining and finetuning)."""
    if quick:
        return [{"data": "mnist1d", "model": "mlp", "epochs": 4, "pretrain": 4, "finetune": 2}]
    return [
        {"data": "mnist1d", "model": "mlp", "epochs": 40, "pretrain": 60, "finetune": 20},
        {"data": "fashion_mnist", "model": "lenet5", "epochs": 1, "pretrain": 1, "finetune": 1},
    ]


def sweeps(quick: bool) -> list[dict[str, Any]]:
    """The sweep files: per pair, the method grid over every sparsity, then the sanity checks."""
    seeds = [0] if quick else [0, 1, 2]
    out = []
    for pair in pairs(quick):
        common = {"models": [pair["model"]], "data": [pair["data"]], "seeds": seeds}
        pai = [f"train.epochs={pair['epochs']}", f"{PRUNE}.allow_collapse=true"]
        methods = [{"recipe": "prune-at-init", "label": label, "set": [*pai, *o]} for label, o in PAI_METHODS]
        oneshot = {
            "recipe": "oneshot-magnitude",
            "label": "one-shot magnitude (PaT)",
            "set": [
                f"train.epochs={pair['pretrain']}",
                f"stages.5.train.epochs={pair['finetune']}",
                "stages.2.prune.allow_collapse=true",
            ],
        }
        out.append(
            {
                "name": f"pai-{pair['data']}",
                "recipes": [*methods, oneshot],
                "sparsities": CHECK_SPARSITIES if quick else SPARSITIES,
                **common,
            }
        )
        checks = [
            {"recipe": "prune-at-init", "label": label, "set": [*pai, *o, f"{PRUNE}.sanity={check}"]}
            for label, o in PAI_METHODS
            for check in CHECKED.get(label, [])
        ]
        name = f"pai-{pair['data']}-checks"
        out.append({"name": name, "recipes": checks, "sparsities": CHECK_SPARSITIES, **common})
    return out


# -- the literature's findings, checked on our runs ---------------------------------------------------
def summarise(runs: list[RunSummary]) -> dict[str, Any]:
    """Per (data·model): accuracy mean/std per method and sparsity, first collapse, sanity deltas."""
    out: dict[str, Any] = {}
    accuracy = cells(runs, "accuracy")
    for name, table in accuracy.items():
        group = [r for r in runs if f"{r.data}·{r.model}" == name]
        dense = [r.dense["accuracy"] for r in group if r.dense is not None]
        collapse: dict[str, list[float]] = defaultdict(list)
        for r in group:
            if r.final.get("collapsed_layers", 0) > 0:
                collapse[r.method].append(r.sparsity)
        checks = {f"{r.base_method} [{r.check}]": r.base_method for r in group if r.check is not None}
        deltas = {
            checked: {
                s: table[checked][s]["mean"] - table[base][s]["mean"]
                for s in table[checked]
                if s in table.get(base, {})
            }
            for checked, base in checks.items()
        }
        out[name] = {
            "dense": {"mean": mean(dense), "n": len(dense)},
            "accuracy": table,
            "first_collapse": {m: min(collapse[m]) if collapse[m] else None for m in table},
            "sanity_delta": deltas,
        }
    return out


def _pt(x: float) -> str:
    return f"{100 * x:+.2f}"


def literature(summary: dict[str, Any]) -> list[str]:
    """Markdown lines: for each pair, does each finding of the literature hold on our runs?"""
    lines = ["## Comparison with the literature", ""]
    for name, s in summary.items():
        lines += [f"### {name}", ""]
        first = s["first_collapse"]
        snip, synflow = first.get("SNIP"), first.get("SynFlow")

        def at(sparsity: float | None) -> str:
            return "never (at the sparsities run)" if sparsity is None else f"{100 * sparsity:g} %"

        holds = (synflow is None and snip is not None) or (
            synflow is not None and snip is not None and synflow > snip
        )
        neither = snip is None and synflow is None
        verdict = "agrees" if holds else ("no collapse for either" if neither else "disagrees")
        collapses = ", ".join(f"{m} {at(first.get(m))}" for m in [*SCORED, "magnitude at init"] if m in first)
        lines.append(
            f"- *SynFlow avoids layer collapse where SNIP collapses* (Tanaka et al. 2020): {verdict}. "
            f"First layer collapse: {collapses}."
        )
        shuffle = {m: s["sanity_delta"].get(f"{m} [shuffle]", {}) for m in SCORED}
        changes = [abs(d) for per in shuffle.values() for d in per.values()]
        worst = max(changes, default=math.nan)
        verdict = "agrees" if worst <= 0.02 else "disagrees"
        detail = "; ".join(
            f"{m} " + ", ".join(f"{100 * float(sp):g} %: {_pt(d)}" for sp, d in sorted(per.items()))
            for m, per in shuffle.items()
            if per
        )
        lines.append(
            f"- *Layerwise shuffling barely changes SNIP/GraSP/SynFlow accuracy* (Frankle et al. 2021; "
            f"Su et al. 2020): {verdict} (largest change {100 * worst:.2f} points, threshold 2). "
            f"Change in points: {detail}."
        )
        acc = s["accuracy"]
        gaps = []
        for sp in ("0.5", "0.8", "0.9"):
            best = max((acc[m][sp]["mean"] for m in SCORED if sp in acc.get(m, {})), default=math.nan)
            if "random (ERK)" in acc and sp in acc["random (ERK)"]:
                gaps.append((sp, acc["random (ERK)"][sp]["mean"] - best))
        worst_gap = min((g for _, g in gaps), default=math.nan)
        verdict = "agrees" if worst_gap >= -0.02 else "disagrees"
        lines.append(
            "- *Random pruning with a good allocation (ERK) is competitive at moderate sparsity* "
            f"(Liu et al. 2022): {verdict} (random ERK minus the best scored method, points: "
            + ", ".join(f"{100 * float(sp):g} %: {_pt(g)}" for sp, g in gaps)
            + "; competitive = within 2 points)."
        )
        lines.append("")
    return lines


def main() -> None:
    args = benchmark_args(__doc__, "MNIST-1D only, 1 seed, 90/98 %%, 4 epochs")
    suffix, root, out = prepare("pai_sweep", WORK, RESULTS, quick=args.quick, fresh=args.fresh)
    swept = run_sweeps(sweeps(args.quick), root=root, out=out, workers=args.workers)
    report = write_report(root, out)
    timing = store_minutes(root)
    with ResultsDB(root / "results.db", create=False) as db:
        summary = summarise(collect(db))
    budget = ", ".join(
        f"{p['data']}·{p['model']}: {p['epochs']} epochs of training after pruning at init; one-shot "
        f"{p['pretrain']} pretraining + {p['finetune']} finetuning"
        for p in pairs(args.quick)
    )
    note = [
        "",
        *literature(summary),
        f"Budget: {budget}; SGD 0.1, momentum 0.9, cosine, batch 128; {args.workers} workers; "
        f"the grid's runs took {timing['run_minutes']} min summed, {timing['wall_minutes']} min of wall time "
        f"while runs were running (this invocation: {swept:.1f} min).",
        "",
    ]
    atomic_write_text(report, report.read_text(encoding="utf-8") + "\n".join(note))
    write_html_report(root, report, notes="\n".join(note))  # the same findings, in one self-contained page
    payload = {"budget": budget, "sweep_minutes": swept, **timing, "pairs": summary}
    atomic_write_text(RESULTS / f"pai_sweep{suffix}.json", json.dumps(payload, indent=1))
    print(f"report: {report}")


if __name__ == "__main__":
    main()
