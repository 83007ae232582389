"""Cost of the channel dependency analysis on large models: time and extra memory.

The graph must stay light: a few integers per channel, never per weight. For VGG-16 (BN) widened
to about 100 M parameters and ResNet-56 widened to about 30 M, this measures the wall time of
`secateurs.structured.analyze` (fx trace, shape propagation on one 32×32 image, channel rules,
grouping) and the growth of the process's peak resident memory during it, against the model's
own size. Target: well under a minute, memory a small multiple of the model.

    python benchmarks/structured_graph_scale.py            # about a minute
    python benchmarks/structured_graph_scale.py --quick    # seconds (smaller widths)
Writes benchmarks/results/structured_graph_scale{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import torch

from secateurs.core.fileio import atomic_write_text
from secateurs.models import build_model
from secateurs.structured import analyze

RESULTS = Path(__file__).parent / "results"


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, width: float) -> dict[str, Any]:
    model = build_model(name, (3, 32, 32), 10, width=width, seed=0).eval()
    params = sum(p.numel() for p in model.parameters())
    before = peak_mib()
    started = time.perf_counter()
    graph = analyze(model, torch.zeros(1, 3, 32, 32))
    seconds = time.perf_counter() - started
    return {
        "model": f"{name} (width {width:g})",
        "params_millions": round(params / 1e6, 1),
        "model_mib": round(params * 4 / 2**20),
        "analyze_seconds": round(seconds, 2),
        "peak_rss_growth_mib": round(peak_mib() - before),
        "groups": len(graph.groups),
        "channel_labels": len(graph.labels.parent),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller widths (seconds)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [("resnet56", 1.0), ("vgg16", 0.5)] if args.quick else [("resnet56", 6.0), ("vgg16", 2.6)]
    rows = []
    for name, width in cases:  # smallest first: the peak-memory growth of each is its own
        rows.append(measure(name, width))
        print(rows[-1], flush=True)
    stem = "structured_graph_scale" + ("_quick" if args.quick else "")
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(rows, indent=2) + "\n")
    lines = [
        "# Channel dependency analysis on large models (1 thread, one 32×32 input)",
        "",
        "| model | parameters | model size | analyze time | peak memory growth | channel groups |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['model']} | {r['params_millions']} M | {r['model_mib']} MiB | {r['analyze_seconds']} s "
            f"| {r['peak_rss_growth_mib']} MiB | {r['groups']:,} |"
            for r in rows
        ),
    ]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
