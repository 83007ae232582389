"""Shared lottery-ticket reproduction: IMP with rewinding plus reinit / random-mask controls, over seeds.

Each seed is one secateurs recipe: train, then per level prune 20 % of every hidden layer's
surviving weights by magnitude (the output layer 10 %), rewind the survivors to their initial
values, retrain; the repeat's `controls` train the random-reinit and random-mask controls of
every level beside the ticket. Seeds run in parallel worker processes; finished seeds are kept
in a JSON file, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from _jobs import benchmark_args, load_done, run_phase

from secateurs.core.fileio import atomic_write_text
from secateurs.results.report import (
    Cell,
    levels_from_records,
    plot_ticket_curves,
    ticket_curves,
    ticket_table,
)

RESULTS = Path(__file__).parent / "results"
TOLERANCE = 0.005  # "matches dense": within half a point


def imp_recipe(setup: dict[str, Any], seed: int) -> dict[str, Any]:
    return {
        "name": setup["name"],
        "seed": seed,
        "data": setup["data"],
        "model": setup["model"],
        "sparsity": setup["sparsity"],
        "train": setup["train"],
        "stages": [
            {"train": {}},
            {"evaluate": {"label": "dense"}},
            {
                "repeat": {
                    "schedule": {"name": "iterative", "rate": 0.2, "layer_rates": {"classifier": 0.1}},
                    "controls": ["reinit", "random_mask"],
                    "stages": [
                        {"prune": {"criterion": "magnitude", "allocation": "uniform"}},
                        {"reset": {"mode": "rewind", "step": 0}},
                        {"train": {}},
                        {"evaluate": {"label": "level"}},
                    ],
                }
            },
        ],
    }


def run_seed(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    import secateurs

    torch.set_num_threads(1)
    started = time.perf_counter()
    result = secateurs.run(imp_recipe(job["setup"], job["seed"]))
    return {"records": result.records, "seconds": time.perf_counter() - started, "setup": job["setup"]}


def same_setup(done: dict[str, Any], setup: dict[str, Any], stem: str) -> dict[str, Any]:
    """The finished seeds that were run with `setup`, so a changed setup reruns them.

    A seed stored before seeds kept their setup counts as run with the setup of the last report.
    """
    report = RESULTS / f"{stem}.json"
    earlier = json.loads(report.read_text())["setup"] if report.exists() else setup
    return {k: v for k, v in done.items() if v.get("setup", earlier) == setup}


def describe(job: dict[str, Any], r: dict[str, Any]) -> str:
    levels = [x for x in r["records"] if x.get("level") is not None and x.get("control") is None]
    return f"{len(levels)} levels, last {100 * levels[-1]['accuracy']:.2f}% ({r['seconds'] / 60:.1f} min)"


def findings(curves: dict[str, Any], dense: Cell) -> list[str]:
    """Where tickets match dense, and how far the controls fall behind (from the means)."""
    ticket = curves["ticket"]
    matching = [p for p in ticket if p.metric.mean >= dense.mean - TOLERANCE]
    out = ["## Findings (computed from the table)", ""]
    if matching:
        low = min(matching, key=lambda p: p.remaining)
        out.append(
            f"- Tickets stay within {100 * TOLERANCE:g} point of dense ({100 * dense.mean:.2f} %) down "
            f"to {100 * low.remaining:.2f} % of the weights (level {low.level}); levels at or above dense: "
            f"{sum(p.metric.mean >= dense.mean for p in ticket)} of {len(ticket)}."
        )
    else:
        out.append(f"- No level's ticket stays within {100 * TOLERANCE:g} point of dense.")
    for name in ("control=reinit", "control=random_mask"):
        points = {p.level: p for p in curves.get(name, [])}
        gaps = [(p, p.metric.mean - points[p.level].metric.mean) for p in ticket if p.level in points]
        if not gaps:
            continue
        first = next((p for p, gap in gaps if gap > TOLERANCE), None)
        worst = max(gaps, key=lambda pg: pg[1])
        where = (
            f"from {100 * first.remaining:.2f} % remaining (level {first.level})" if first else "at no level"
        )
        out.append(
            f"- {name}: the ticket beats it by more than {100 * TOLERANCE:g} point {where}; the largest "
            f"gap is {100 * worst[1]:.2f} points at {100 * worst[0].remaining:.2f} % remaining."
        )
    return out


def report(setup: dict[str, Any], done: dict[str, Any], stem: str, budget_text: str) -> None:
    runs = [done[k]["records"] for k in sorted(done)]
    curves = ticket_curves([levels_from_records(r) for r in runs])
    dense = Cell([x["accuracy"] for r in runs for x in r if x.get("label") == "dense"])
    title = f"{setup['title']}"
    seconds = sum(v["seconds"] for v in done.values())
    lines = [
        f"# Lottery tickets: {title}",
        "",
        budget_text,
        f"{len(runs)} seeds; the seeds' runs took {seconds / 60:.1f} min in total, run 2 at a time on "
        f"2 CPU cores. Dense: {dense.text()} %.",
        "",
        ticket_table({title: curves}),
        *findings(curves, dense),
        "",
        f"![ticket curves]({stem}.png)",
    ]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps({"setup": setup, "runs": done}, indent=1))
    plot_ticket_curves({title: curves}, RESULTS / f"{stem}.png", dense={title: dense})


def main(setup: dict[str, Any], quick_setup: dict[str, Any], stem: str, doc: str) -> None:
    args = benchmark_args(doc, "one seed, few levels and epochs")
    if args.quick:
        setup, stem = {**setup, **quick_setup}, f"{stem}_quick"
    store = RESULTS / f"{stem}_runs.json"
    done = same_setup(load_done(store, fresh=args.fresh), setup, stem)
    jobs = [{"setup": setup, "seed": s} for s in setup["seeds"]]
    run_phase(
        jobs,
        key=lambda j: f"seed={j['seed']}",
        work=run_seed,
        store=store,
        done=done,
        workers=args.workers,
        describe=describe,
    )
    train = setup["train"]
    every = train.get("eval_every")
    evaluated = f"test accuracy read every {every} steps" if every else "test accuracy read after each epoch"
    budget_text = (
        f"Budget per level: {train['epochs']} epochs of {train['optimizer']['name']} "
        f"(lr {train['optimizer']['lr']:g}), batch {train['batch_size']}, {evaluated} (the early-stop "
        "step is the best of these); 20 % of each hidden layer per "
        f"level, output layer 10 %, rewind to initialisation, until {100 * setup['sparsity']:g} % of the "
        "hidden weights are pruned; controls per level: random reinit (same mask, fresh init) and random "
        "mask (same per-layer counts, random positions, original init)."
    )
    report(
        setup,
        {k: v for k, v in done.items() if k in {f"seed={s}" for s in setup["seeds"]}},
        stem,
        budget_text,
    )
    print((RESULTS / f"{stem}.md").read_text())
