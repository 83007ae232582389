"""Every method on MNIST-1D (MLP and 1-D CNN) at 50/80/90/95 %, 3 seeds, through the results store.

The grid is the demo's method list (`secateurs.front.demo.DEMO_METHODS`) with beyond-accuracy metrics
at every evaluation; it is written to a sweep YAML and run by the CLI exactly as a user would:
    secateurs sweep SWEEP.yaml --root ROOT --workers 2
    secateurs report --root ROOT --out benchmarks/results/sweep_mnist1d
Finished runs are skipped, so an interrupted benchmark resumes.

    python benchmarks/sweep_mnist1d.py            # about 10 minutes on 2 idle cores
    python benchmarks/sweep_mnist1d.py --quick    # about a minute (1 seed, MLP, 2 sparsities, few epochs)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import yaml

from secateurs.core.fileio import atomic_write_text
from secateurs.front.demo import demo_sweep
from secateurs.results.html_report import write_html_report

HERE = Path(__file__).parent
WORK = HERE / ".work"
RESULTS = HERE / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, the MLP, two sparsities, few epochs")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    suffix = "_quick" if args.quick else ""
    if args.quick:
        sweep = demo_sweep(quick=True)
    else:
        sweep = demo_sweep(seeds=[0, 1, 2], models=["mlp", "cnn1d"], sparsities=[0.5, 0.8, 0.9, 0.95])
    sweep["name"] = f"sweep_mnist1d{suffix}"
    sweep_file = atomic_write_text(RESULTS / f"sweep_mnist1d{suffix}" / "sweep.yaml", yaml.safe_dump(sweep))
    root = WORK / f"sweep_mnist1d{suffix}"
    cli = [sys.executable, "-m", "secateurs"]
    started = time.perf_counter()
    subprocess.run(
        [*cli, "sweep", str(sweep_file), "--root", str(root), "--workers", str(args.workers)], check=True
    )
    swept = time.perf_counter() - started
    out = RESULTS / f"sweep_mnist1d{suffix}"
    subprocess.run([*cli, "report", "--root", str(root), "--out", str(out)], check=True)
    report = out / "report.md"
    text = report.read_text(encoding="utf-8")
    note = (
        "\nBudget: the presets' own epochs (60 pretraining epochs, 20 finetuning; iterative 8 per level; "
        f"gradual 80), {args.workers} workers; sweep wall time of this invocation {swept / 60:.1f} min "
        "(0 when every run was already in the store).\n"
    )
    atomic_write_text(report, text + note)
    write_html_report(root, report, notes=note)  # the report and this note in one self-contained page
    print(f"report: {report}")


if __name__ == "__main__":
    main()
