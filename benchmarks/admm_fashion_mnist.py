"""ADMM vs gradual magnitude pruning at the same structure: LeNet-300-100 and LeNet-5 on Fashion-MNIST.

Every seed trains one dense model per architecture (3 epochs, SGD 0.1 momentum 0.9, cosine,
batch 128), and every sparse run starts from it (`init_from`), so ADMM and gradual magnitude
share the same dense pretraining bit for bit. From there both spend the same budget:
  prune stage  2 epochs, SGD 0.01 momentum 0.9, cosine;
  finetune     1 epoch, same optimizer, with the mask (unification: projected training, `hold`).
Structures (per layer, every constrained layer at the same sparsity, as in the ADMM papers):
  unstructured 90 / 95 / 98 %;  N:M 2:4 and 1:4;  4×4 blocks at 90 % of the blocks;
  unification: 1×4 micro-blocks, 75 % of them pruned, the kept ones sharing one magnitude per block
  with at most 16 magnitudes per layer.
Methods:
  ADMM     `admm` block (Zhang et al. 2018): ρ 0.1, ×1.3 per dual update up to 1.0, Z/U updated
           every 100 steps (not once per epoch: 2 epochs would give only 2 dual updates); hard
           prune to the projection at the end of the stage.
  gradual  Zhu & Gupta cubic schedule from 0 to the target during the prune stage (update every 25
           steps, ending at 75 % of the stage), magnitude, uniform allocation (the same per-layer
           sparsity as ADMM; at 1 − n/m it gives exact N:M), block scores pooled by L2 like the
           ADMM block projection.
  one-shot unification + hold: no gradual counterpart exists for unification, so the dense model
           is projected once and trained with projection after every step for the same 2 + 1 epochs.
Layers a structure cannot tile (LeNet-5's convs for m = 4; the 10-way classifiers for 4×4 blocks)
stay dense; the results list them. The unification table is computed from the final checkpoints
(`secateurs.methods.training.admm.unification_report`): bits vs dense float32, compression, multiplies saved.

Unification finetuning (`hold`) keeps the partition of the first projection (which blocks are
kept, which level each uses) and moves each level to the mean |w| of its blocks after every step:
O(weights) per step instead of a k-means over the levels (`secateurs.methods.training.admm.UnifiedBlocks`).

Grid: 6 dense runs (2 models × 3 seeds, 3 epochs) + 84 sparse runs (2 models × 14 method ×
structure pairs × 3 seeds, 2 + 1 epochs), 270 epochs in all, 6 × 4 of them projected unification
epochs (held partition: cheap).

The grid is written as sweep YAML files and run by the CLI (`secateurs sweep`) into one results
store, then reported (`secateurs.results.report.write_report`) with the tables below. Finished runs are
skipped, so an interrupted benchmark resumes.

    python benchmarks/admm_fashion_mnist.py            # about 8 min, 2 workers on 2 otherwise idle cores
    python benchmarks/admm_fashion_mnist.py --quick    # about 2 minutes: LeNet-300-100, 1 seed, a few methods
Writes benchmarks/results/admm_fashion_mnist{,_quick}.json and .../admm_fashion_mnist{,_quick}/report.md
(and report.html, the same in one self-contained page).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from _jobs import benchmark_args
from _sweeps import cells, mean, prepare, run_sweeps, store_minutes

from secateurs.core.errors import ConfigError
from secateurs.core.fileio import atomic_write_text
from secateurs.results.db import ResultsDB
from secateurs.results.html_report import write_html_report
from secateurs.results.report import RunSummary, collect, write_report

HERE = Path(__file__).parent
WORK = HERE / ".work"
RESULTS = HERE / "results"
NAME = "admm_fashion_mnist"
DATA = "fashion_mnist"
INPUT = (1, 28, 28)
CLASSES = 10
MODELS = ["lenet300", "lenet5"]
SEEDS = [0, 1, 2]
SGD = {"name": "sgd", "momentum": 0.9}
ADMM_HPARAMS = {"rho": 0.1, "rho_growth": 1.3, "rho_max": 1.0}
LEVELS = 16  # distinct magnitudes per layer for unification (held fixed while finetuning: cheap)
UNIFY = {"bh": 1, "bw": 4, "levels": LEVELS}
UNIFY_SPARSITY = 0.75
BLOCK_SPARSITY = 0.9


@dataclass(frozen=True)
class Structure:
    """One constraint set, as an ADMM projection and (where one exists) a gradual prune structure."""

    label: str
    sparsity: float  # the recipe's target (for N:M: 1 − n/m, which the uniform allocation makes exact)
    projection: str
    options: dict[str, Any] = field(default_factory=dict)
    structure: str | None = None  # None: no gradual counterpart (unification)
    structure_options: dict[str, Any] = field(default_factory=dict)


STRUCTURES = [
    *(
        Structure(f"unstructured {100 * s:g} %", s, "unstructured", {}, "unstructured")
        for s in (0.9, 0.95, 0.98)
    ),
    Structure("N:M 2:4", 0.5, "nm", {"n": 2, "m": 4}, "nm", {"n": 2, "m": 4}),
    Structure("N:M 1:4", 0.75, "nm", {"n": 1, "m": 4}, "nm", {"n": 1, "m": 4}),
    Structure(
        f"block 4×4 ({100 * BLOCK_SPARSITY:g} %)",
        BLOCK_SPARSITY,
        "block",
        {"bh": 4, "bw": 4},
        "block",
        {"bh": 4, "bw": 4, "pool": "l2"},
    ),
    Structure(
        f"unify 1×4 ({100 * UNIFY_SPARSITY:g} %, {UNIFY['levels']} levels)", UNIFY_SPARSITY, "unify", UNIFY
    ),
]
QUICK_STRUCTURES = ["unstructured 90 %", "N:M 2:4", STRUCTURES[5].label, STRUCTURES[6].label]
ADMM, GRADUAL, ONESHOT = "ADMM", "gradual magnitude", "one-shot + hold"


def budget(quick: bool) -> dict[str, Any]:
    """Training lengths; quick mode counts iterations, the full grid epochs."""
    if quick:
        return {
            "unit": "iterations",
            "dense": 200,
            "prune": 100,
            "finetune": 50,
            "update_every": 20,
            "frequency": 10,
            "models": ["lenet300"],
            "seeds": [0],
            "structures": QUICK_STRUCTURES,
        }
    return {
        "unit": "epochs",
        "dense": 3,
        "prune": 2,
        "finetune": 1,
        "update_every": 100,
        "frequency": 25,
        "models": MODELS,
        "seeds": SEEDS,
        "structures": [s.label for s in STRUCTURES],
    }


def dense_layers(model: str, s: Structure) -> list[str]:
    """Module names of the prunable layers the structure cannot tile: they stay dense (excluded)."""
    from secateurs.methods.layers import select_parameters
    from secateurs.methods.structures import NM, Block
    from secateurs.models import build_model

    net = build_model(model, INPUT, CLASSES, seed=0)
    params = dict(net.named_parameters())
    checker = {"nm": lambda: NM(**s.options), "block": lambda: Block(**s.options)}
    checker["unify"] = lambda: Block(bh=s.options["bh"], bw=s.options["bw"])
    if s.projection not in checker:
        return []
    structure = checker[s.projection]()
    out = []
    for name in select_parameters(net):
        try:
            structure.check(name, tuple(params[name].shape))
        except ConfigError:
            out.append(name.removesuffix(".weight"))
    return out


def recipe(model: str, s: Structure, method: str, b: dict[str, Any]) -> dict[str, Any]:
    """A sparse run from the dense checkpoint (`init_from`, set per seed): prune stage, finetune, evaluate."""
    unit = b["unit"]
    admm = {"projection": s.projection, "options": dict(s.options), **ADMM_HPARAMS}
    hold = {"projection": s.projection, "options": dict(s.options), "hold": True}
    if method == ADMM:
        first: dict[str, Any] = {"admm": {**admm, "update_every": b["update_every"]}}
    elif method == GRADUAL:
        schedule = {"name": "gradual", "initial_sparsity": 0.0, "frequency": b["frequency"]}
        first = {
            "prune": {
                "criterion": "magnitude",
                "allocation": "uniform",
                "structure": s.structure,
                "structure_options": dict(s.structure_options),
                "schedule": schedule,
            }
        }
    else:  # one-shot projection of the dense model, then projected training throughout
        first = {"admm": hold}
    finetune: dict[str, Any] = {unit: b["finetune"]}
    if s.projection == "unify":
        finetune["admm"] = hold  # keeps every block's shared magnitude (a mask alone would not)
    out: dict[str, Any] = {
        "name": f"{method} · {s.label}",
        "description": f"{NAME}: {method} at {s.label} from the dense checkpoint",
        "data": DATA,
        "model": model,
        "sparsity": s.sparsity,
        "train": {
            unit: b["prune"],
            "batch_size": 128,
            "optimizer": {**SGD, "lr": 0.01},
            "lr_schedule": {"name": "cosine"},
            "eval_every_epoch": False,
        },
        "stages": [{"train": first}, {"train": finetune}, {"evaluate": {"label": "final"}}],
    }
    excluded = dense_layers(model, s)
    if excluded:
        out["layers"] = {"exclude": excluded}
    return out


def dense_recipe(b: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "dense",
        "description": f"{NAME}: the dense model every sparse run starts from",
        "data": DATA,
        "model": "lenet300",
        "train": {
            b["unit"]: b["dense"],
            "batch_size": 128,
            "optimizer": {**SGD, "lr": 0.1},
            "lr_schedule": {"name": "cosine"},
            "eval_every_epoch": False,
        },
        "stages": [{"train": {}}, {"evaluate": {"label": "dense"}}],
    }


def methods_of(s: Structure) -> list[str]:
    return [ADMM, GRADUAL] if s.structure is not None else [ADMM, ONESHOT]


def chosen(b: dict[str, Any]) -> list[Structure]:
    return [s for s in STRUCTURES if s.label in b["structures"]]


def dense_sweep(b: dict[str, Any], out: Path) -> dict[str, Any]:
    path = atomic_write_text(out / "recipes" / "dense.yaml", yaml.safe_dump(dense_recipe(b), sort_keys=False))
    return {
        "name": "admm-dense",
        "recipes": [{"recipe": str(path.resolve()), "label": "dense"}],
        "models": b["models"],
        "data": [DATA],
        "seeds": b["seeds"],
    }


def dense_checkpoints(root: Path) -> dict[tuple[str, int], str]:
    """(model, seed) → the dense run's model.pt in the store."""
    with ResultsDB(root / "results.db", create=False) as db:
        runs = collect(db, name="dense")
    return {(r.model, r.seed): str(Path(r.masks_path).resolve()) for r in runs if r.masks_path}


def sparse_sweep(b: dict[str, Any], out: Path, dense: dict[tuple[str, int], str]) -> dict[str, Any]:
    """One sweep of every (model, structure, method, seed); entries carry their seed and init_from.

    Unification runs come first: projected training makes them the longest, so the workers
    start them early instead of waiting on them at the end.
    """
    entries = []
    structures = sorted(chosen(b), key=lambda s: s.projection != "unify")
    for model in b["models"]:
        for s in structures:
            for method in methods_of(s):
                slug = f"{model}-{method}-{s.label}".replace(" ", "_")
                slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in slug)
                text = yaml.safe_dump(recipe(model, s, method, b), sort_keys=False, allow_unicode=True)
                path = atomic_write_text(out / "recipes" / f"{slug}.yaml", text)
                for seed in b["seeds"]:
                    entries.append(
                        {
                            "recipe": str(path.resolve()),
                            "label": f"{method} · {s.label}",
                            "set": [f"seed={seed}", f"init_from={dense[(model, seed)]}"],
                        }
                    )
    entries.sort(key=lambda e: "unify" not in e["label"])
    return {"name": "admm-sparse", "recipes": entries}


# -- summaries ----------------------------------------------------------------------------------
def unification(runs: list[RunSummary]) -> dict[str, dict[str, dict[str, Any]]]:
    """{model: {method: storage and arithmetic of its unified layers}}, mean over seeds, from checkpoints."""
    import torch

    from secateurs.eval.macs import count_costs
    from secateurs.methods.layers import LayerSelection, select_parameters
    from secateurs.methods.training.admm import unification_report
    from secateurs.models import build_model
    from secateurs.pipeline.outputs import read_checkpoint

    s = next(x for x in STRUCTURES if x.projection == "unify")
    per: dict[str, dict[str, list[dict[str, float]]]] = {}
    errors: dict[str, dict[str, str]] = {}
    for r in runs:
        if s.label not in r.method or r.masks_path is None:
            continue
        method = r.method.split(" · ")[0]
        net = build_model(r.model, INPUT, CLASSES, seed=r.seed)
        net.load_state_dict(read_checkpoint(r.masks_path)[0])
        names = select_parameters(net, LayerSelection(exclude=dense_layers(r.model, s)))
        try:
            with torch.no_grad():
                row = unification_report(net, names, s.options["bh"], s.options["bw"])
        except ConfigError as err:  # the final weights are not unified: report it, do not hide it
            errors.setdefault(r.model, {})[method] = err.what
            continue
        row["model_macs"] = count_costs(net, INPUT).macs
        row["model_mults_saved_fraction"] = row["mults_saved"] / row["model_macs"]
        params = dict(net.named_parameters())
        magnitudes = [params[n].detach().abs() for n in names]
        row["levels_max"] = max(int(torch.unique(t[t > 0]).numel()) for t in magnitudes)
        per.setdefault(r.model, {}).setdefault(method, []).append(row)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for model, methods in per.items():
        for method, rows in methods.items():
            keys = rows[0].keys()
            out.setdefault(model, {})[method] = {k: mean([float(x[k]) for x in rows]) for k in keys}
            out[model][method]["layers"] = select_layers_text(model, s)
            out[model][method]["seeds"] = len(rows)
    for model, methods in errors.items():
        for method, what in methods.items():
            out.setdefault(model, {})[method] = {"error": what}
    return out


def admm_residuals(root: Path, runs: list[RunSummary]) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {method: mean over seeds of the last relative primal residual ‖W − Z‖/‖W‖}} of ADMM runs.

    How far the ADMM stage got toward its constraint set before the hard prune: near 0 the prune
    barely moves the weights, near 1 it is close to a one-shot projection of the trained model.
    """
    values: dict[str, dict[str, list[float]]] = {}
    with ResultsDB(root / "results.db", create=False) as db:
        for r in runs:
            rows = [m for m in db.metrics(r.hash) if m.kind == "admm" and m.name == "primal_residual"]
            rows = [m for m in rows if m.value is not None and m.step is not None]
            if rows:
                last = max(rows, key=lambda m: (m.stage, m.step))
                values.setdefault(r.model, {}).setdefault(r.method, []).append(float(last.value))
    return {
        m: {method: {"mean": mean(v), "n": len(v)} for method, v in by.items()} for m, by in values.items()
    }


def structure_violations(runs: list[RunSummary]) -> list[str]:
    """Final checkpoints whose mask breaks their structure: an N:M group with more than n kept, or a
    block only partly kept (unification is checked by `unification_report` instead)."""
    from secateurs.methods.structures import NM, Block
    from secateurs.pipeline.outputs import read_checkpoint

    by_label = {x.label: x for x in STRUCTURES}
    bad = []
    for r in runs:
        s = by_label.get(r.method.split(" · ")[-1])
        if s is None or s.projection not in ("nm", "block") or r.masks_path is None:
            continue
        masks = read_checkpoint(r.masks_path)[1] or {}
        for name, mask in masks.items():
            if s.projection == "nm":
                ok = int(NM(**s.options).to_groups(mask).sum(1).max()) <= s.options["n"]
            else:
                kept = Block(**s.options).to_blocks(mask).sum(1)
                ok = bool(((kept == 0) | (kept == s.options["bh"] * s.options["bw"])).all())
            if not ok:
                bad.append(f"{r.model} seed {r.seed}, {r.method}: {name}")
    return bad


def select_layers_text(model: str, s: Structure) -> str:
    from secateurs.methods.layers import LayerSelection, select_parameters
    from secateurs.models import build_model

    net = build_model(model, INPUT, CLASSES, seed=0)
    names = select_parameters(net, LayerSelection(exclude=dense_layers(model, s)))
    return ", ".join(n.removesuffix(".weight") for n in names)


def pct(cell: dict[str, float] | None) -> str:
    return "—" if not cell else f"{100 * cell['mean']:.2f} ± {100 * cell['std']:.2f}"


def main_table(
    accuracy: dict[str, Any],
    sparsity: dict[str, Any],
    residual: dict[str, Any],
    models: list[str],
    structures: list[Structure],
) -> list[str]:
    """Markdown: rows method × structure; per model accuracy, achieved sparsity, ADMM's last residual."""
    head = "| structure | method | " + " | ".join(
        f"{m}: accuracy (%) | {m}: sparsity (%) | {m}: ADMM residual" for m in models
    )
    lines = [head + " |", "|---|---|" + "---|---|---|" * len(models)]
    row = ["dense", "—"]
    for m in models:
        row += [pct(next(iter(accuracy.get(m, {}).get("dense", {}).values()), None)), "0", ""]
    lines.append("| " + " | ".join(row) + " |")
    for s in structures:
        for method in methods_of(s):
            label = f"{method} · {s.label}"
            row = [s.label, method]
            for m in models:
                acc = accuracy.get(m, {}).get(label, {}).get(f"{s.sparsity:g}")
                sp = sparsity.get(m, {}).get(label, {}).get(f"{s.sparsity:g}")
                res = residual.get(m, {}).get(label)
                row += [
                    pct(acc),
                    f"{100 * sp['mean']:.2f}" if sp else "—",
                    f"{res['mean']:.3f}" if res else "",
                ]
            lines.append("| " + " | ".join(row) + " |")
    return lines


def checks(accuracy: dict[str, Any], models: list[str], structures: list[Structure]) -> list[str]:
    """Markdown lines: per model and structure, does ADMM beat its comparison (mean over seeds)?"""
    lines = []
    for m in models:
        for s in structures:
            ours, theirs = (f"{method} · {s.label}" for method in methods_of(s))
            a = accuracy.get(m, {}).get(ours, {}).get(f"{s.sparsity:g}")
            g = accuracy.get(m, {}).get(theirs, {}).get(f"{s.sparsity:g}")
            if not a or not g:
                continue
            diff = 100 * (a["mean"] - g["mean"])
            noise = 100 * max(a["std"], g["std"])
            verdict = "ADMM better" if diff > 0 else "ADMM not better"
            if a["n"] > 1 and abs(diff) <= noise:
                verdict += " (within one std of the seeds)"
            other = methods_of(s)[1]
            lines.append(
                f"- {m}, {s.label}: {verdict}: ADMM {pct(a)} vs {other} {pct(g)} ({diff:+.2f} points)"
            )
    return lines


def unification_table(table: dict[str, dict[str, dict[str, Any]]], models: list[str]) -> list[str]:
    lines = [
        "| model | method | unified layers | kept blocks | levels | bits (dense → unified) | compression "
        "| mults saved (unified layers) | mults saved (whole model) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m in models:
        for method, r in table.get(m, {}).items():
            if "error" in r:
                lines.append(f"| {m} | {method} | not unified: {r['error']} |" + " |" * 6)
                continue
            lines.append(
                f"| {m} | {method} | {r['layers']} | {r['kept_blocks']:.0f} / {r['blocks']:.0f} "
                f"| ≤ {r['levels_max']:.0f} | {r['dense_bits']:.0f} → {r['unified_bits']:.0f} "
                f"| {r['compression']:.1f}× | {100 * r['macs_saved_fraction']:.1f} % "
                f"| {100 * r['model_mults_saved_fraction']:.1f} % |"
            )
    return lines


def main() -> None:
    args = benchmark_args(__doc__, "LeNet-300-100, 1 seed, 4 structures, 200/100/50 iterations")
    b = budget(args.quick)
    suffix, root, out = prepare(NAME, WORK, RESULTS, quick=args.quick, fresh=args.fresh)
    swept = run_sweeps([dense_sweep(b, out)], root=root, out=out, workers=args.workers)
    swept += run_sweeps(
        [sparse_sweep(b, out, dense_checkpoints(root))], root=root, out=out, workers=args.workers
    )
    report = write_report(root, out)
    timing = store_minutes(root)
    with ResultsDB(root / "results.db", create=False) as db:
        runs = collect(db)
    structures = chosen(b)
    accuracy = {k.split("·")[1]: v for k, v in cells(runs, "accuracy").items()}
    sparsity = {k.split("·")[1]: v for k, v in cells(runs, "sparsity").items()}
    unified = unification(runs)
    residual = admm_residuals(root, runs)
    violations = structure_violations(runs)
    kept = {m: {s.label: dense_layers(m, s) for s in structures} for m in b["models"]}
    unit = b["unit"]
    text_budget = (
        f"dense {b['dense']} {unit} (SGD 0.1), then per sparse run {b['prune']} {unit} prune stage + "
        f"{b['finetune']} {unit} finetune (SGD 0.01), momentum 0.9, cosine, batch 128; ADMM ρ 0.1 ×1.3 "
        f"(≤ 1.0) every {b['update_every']} steps; gradual updates every {b['frequency']} steps; "
        f"seeds {b['seeds']}"
    )
    s_unify = next(x for x in STRUCTURES if x.projection == "unify")
    note = [
        "",
        "## ADMM vs gradual magnitude at the same structure",
        "",
        "Test accuracy (%, mean ± std over seeds) after the finetune, the achieved sparsity of the",
        "constrained layers (the mask's; layers listed below stay dense), and for ADMM the relative",
        "primal residual ‖W − Z‖/‖W‖ at its last dual update (mean over seeds; how far the weights",
        "still were from the constraint set before the hard prune). Every sparse run starts from the",
        "same dense checkpoint of its seed.",
        "",
        *main_table(accuracy, sparsity, residual, b["models"], structures),
        "",
        "Layers that stay dense (the structure cannot tile them):",
        "",
        *[
            f"- {m}, {label}: {', '.join(layers)}"
            for m, by_s in kept.items()
            for label, layers in by_s.items()
            if layers
        ],
        "",
        "## Unification: storage and arithmetic",
        "",
        f"{s_unify.label}: final checkpoints, mean over seeds "
        "(`secateurs.methods.training.admm.unification_report`).",
        "Bits: dense float32 vs presence bitmap + sign bits + codebook index per kept block + float32",
        "codebook. Multiplies per sample: a kept 1×4 block needs one (sum the signed inputs, then",
        "scale); 'whole model' divides the multiplies saved by all of the model's MACs, dense layers",
        "included.",
        "",
        *unification_table(unified, b["models"]),
        "",
        "## Checks",
        "",
        "Does ADMM beat gradual magnitude (unification: one-shot projection + hold) at the same",
        "structure and budget? Mean accuracy over seeds.",
        "",
        *checks(accuracy, b["models"], structures),
        "",
        "Structure of the final masks (every N:M group keeps at most n, every block is kept whole or"
        " pruned whole): "
        + ("holds in every run." if not violations else "broken in " + "; ".join(violations) + "."),
        "",
        f"Budget: {text_budget}; {args.workers} workers; the grid's runs took "
        f"{timing['run_minutes']} min summed, "
        f"{timing['wall_minutes']} min of wall time while runs were running "
        f"(this invocation: {swept:.1f} min).",
        "",
    ]
    atomic_write_text(report, report.read_text(encoding="utf-8") + "\n".join(note))
    write_html_report(root, report, notes="\n".join(note))  # the same findings, in one self-contained page
    payload = {
        "budget": text_budget,
        "sweep_minutes": swept,
        **timing,
        "accuracy": accuracy,
        "sparsity": sparsity,
        "admm_primal_residual": residual,
        "unification": unified,
        "structure_violations": violations,
        "dense_layers": kept,
        "checks": checks(accuracy, b["models"], structures),
    }
    atomic_write_text(RESULTS / f"{NAME}{suffix}.json", json.dumps(payload, indent=1, ensure_ascii=False))
    print("\n".join(note))
    print(f"report: {report}")


if __name__ == "__main__":
    main()
