"""How fast the command line starts: `secateurs --help` and `secateurs methods` (issue 18: under 1 s).

Each command runs in a fresh interpreter (the installed `secateurs` script's Python, no shell shim),
side by side with what the same command costs when the package is imported eagerly, as before
issue 18 (every registry, the llm zoo and torch loaded first), and with the floors (`python -c pass`,
`import torch`). Wall time, minimum over interleaved rounds, so that a busy spell of the shared
machine hits every command alike.

    python benchmarks/cli_startup.py            # 5 rounds, about 30 s
    python benchmarks/cli_startup.py --quick    # 3 rounds
Writes benchmarks/results/cli_startup{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from secateurs.core.fileio import atomic_write_text

RESULTS = Path(__file__).parent / "results"
CLI = "import sys; from secateurs.front.cli import main; sys.argv = ['secateurs', *sys.argv[1:]]; main()"
EAGER = (
    "import secateurs.methods.pruning, secateurs.llm.zoo, secateurs.methods.catalog, "
    "secateurs.pipeline.recipe; "  # what `import secateurs` and `methods` imported before issue 18
)
COMMANDS: dict[str, list[str]] = {
    "python -c pass (floor)": ["-c", "pass"],
    "import torch (floor of the old start)": ["-c", "import torch"],
    "secateurs --help": ["-c", CLI, "--help"],
    "secateurs --help, eager imports (before)": ["-c", EAGER + CLI, "--help"],
    "secateurs run --help": ["-c", CLI, "run", "--help"],
    "secateurs methods": ["-c", CLI, "methods"],
    "secateurs methods, live registries (before)": ["-c", EAGER + CLI, "methods"],
}


def measure(rounds: int) -> dict[str, float]:
    """Minimum wall time (s) of each command over `rounds` interleaved rounds (after one warm-up)."""
    env = {**os.environ, "COLUMNS": "120"}
    best = dict.fromkeys(COMMANDS, float("inf"))
    for round_ in range(rounds + 1):
        for name, args in COMMANDS.items():
            started = time.perf_counter()
            subprocess.run([sys.executable, *args], env=env, capture_output=True, check=True)
            if round_:  # the first round warms the file cache
                best[name] = min(best[name], time.perf_counter() - started)
    return best


def write(results: dict[str, Any], quick: bool) -> None:
    stem = "cli_startup" + ("_quick" if quick else "")
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    times = results["seconds"]
    lines = [
        "# Command-line start-up",
        "",
        f"{results['machine']}; wall time of a fresh interpreter, minimum over {results['rounds']} "
        f"interleaved rounds. Load: {results['load']}.",
        "",
        "| command | s | target |",
        "|---|---:|---|",
    ]
    for name, seconds in times.items():
        target = "< 1 s" if name in ("secateurs --help", "secateurs methods") else ""
        lines.append(f"| {name} | {seconds:.3f} | {target} |")
    help_ratio = times["secateurs --help, eager imports (before)"] / times["secateurs --help"]
    methods_ratio = times["secateurs methods, live registries (before)"] / times["secateurs methods"]
    lines += [
        "",
        f"`--help` {help_ratio:.1f}x faster than with eager imports; `methods` {methods_ratio:.1f}x faster "
        "than from the live registries.",
    ]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 5")
    parser.add_argument("--load", default="not stated", help="the machine's load, for the report")
    args = parser.parse_args()
    rounds = 3 if args.quick else 5
    seconds = measure(rounds)
    import torch

    results = {
        "machine": f"{platform.machine()}, python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} cores",
        "rounds": rounds,
        "load": f"{args.load}; 1-minute load average at the end {os.getloadavg()[0]:.2f}",
        "seconds": {name: round(s, 4) for name, s in seconds.items()},
    }
    write(results, args.quick)
    for name, s in seconds.items():
        print(f"{name:50s} {s:.3f} s")


if __name__ == "__main__":
    main()
