"""Criteria of different paradigms on the same structures at the same sparsity (one pruning stack).

Ten criteria (five paradigms and a random baseline), each applied unchanged to channel groups of a
conv net and to the attention heads and FFN channels of two pretrained transformers; every group
score comes from the same scoring → pooling → uniform allocation → selection path
(`secateurs.methods.pruning.plan`), and the chosen groups are removed physically (a smaller dense
model):
  pruning after training  l1, l2 (|θ| pooled by L1 / L2 norm), taylor (Σ g·θ over the group, squared);
  pruning at init         snip (|g·θ|), grasp (θ·Hg), synflow (data-free path saliency);
  LLM pruning             wanda (|W|·‖X_j‖ on calibration inputs);
  filter geometry         fpgm (distance to the layer's other filters);
  network slimming        bn_scale (|γ| of the BatchNorms);
  baseline                random (seeded draw per group).

1. LeNet-5 with BatchNorm (the model of structured_fashion_mnist.py) on Fashion-MNIST, trained per
   seed once (same weights for every criterion), then 50 % of every layer's channel groups removed
   (`secateurs.structured.prune_channels`, uniform, the classifier's outputs kept): test accuracy
   right after removal and after a short finetune, MACs of the shrunk model. Data criteria score the
   same training batches; bn_scale prunes the plainly trained model (no slimming penalty).
2. SmolLM2-135M (causal LM, perplexity on KJV New Testament windows) and all-MiniLM-L6-v2 (encoder,
   cosine of mean-pooled sentence embeddings to the dense model's on held-out sentences): 25 % and
   50 % of each block's head groups, or of its FFN channels, removed (uniform; no finetuning).
   Calibration: token windows of text disjoint from the evaluation text (KJV Old Testament; even
   fortunes + Old Testament for MiniLM); the gradient criteria of the causal LM differentiate the
   next-token cross-entropy (`prune_structured`'s default loss), grasp on a model loaded with eager
   attention (its double backward).
A seed changes the trained conv net, its scoring batches and finetuning order; on the pretrained
transformers it changes the calibration windows and the random draw, so data-free deterministic
criteria (l1, l2, fpgm) run once there. A combination the library refuses is kept as "n/a" with
its error; one that is not defined for the model (gradient criteria of an encoder without a loss)
is not attempted and says why.

    python benchmarks/cross_paradigm.py            # about 35 minutes with 2 workers
    python benchmarks/cross_paradigm.py --quick    # 1-2 minutes: 1 seed, tiny budgets
Finished jobs are kept in benchmarks/.work/cross_paradigm{,_quick}/runs.json and skipped on rerun
(--fresh forgets them). Writes benchmarks/results/cross_paradigm{,_quick}.{json,md}.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from _jobs import benchmark_args, load_done, run_phase

from secateurs.core.fileio import atomic_write_bytes, atomic_write_text

RESULTS = Path(__file__).parent / "results"
WORK = Path(__file__).parent / ".work"
SMOLLM2_DENSE = WORK / "cross_paradigm_smollm2_dense"  # the dequantized GGUF, shared by quick and full
CRITERIA = ["l1", "l2", "taylor", "snip", "grasp", "synflow", "wanda", "fpgm", "bn_scale", "random"]
PARADIGM = {
    "l1": "after training: magnitude",
    "l2": "after training: magnitude",
    "taylor": "after training: gradient",
    "snip": "at init: gradient",
    "grasp": "at init: Hessian-gradient",
    "synflow": "at init: data-free",
    "wanda": "LLM: activations",
    "fpgm": "filter geometry",
    "bn_scale": "network slimming",
    "random": "baseline",
}
GRADIENT = ("taylor", "snip", "grasp")  # criteria differentiating a loss
SEEDED = (*GRADIENT, "wanda", "random")  # their result on a pretrained model depends on the seed
CONV_SPARSITY = 0.5
LLM_SPARSITIES = (0.25, 0.5)
PARTS = ("heads", "ffn")
MODEL = {"width": 1.0, "batchnorm": True}  # structured_fashion_mnist.py's LeNet-5
EXCLUDE = ["classifier.7"]  # the classifier's outputs (the classes) are kept
ENCODER_NO_LOSS = (
    "not attempted: MiniLM is a bare sentence encoder (no MLM head), so there is no training loss to "
    "differentiate, and a distillation loss to the dense embeddings has zero gradient at the dense model"
)
# Why the library refuses a combination, beside the error it raised (only shown when it did raise).
EXPLAIN = {
    "bn_scale": "a transformer block has no BatchNorm (bn_scale is defined for channel groups only)",
}


def budget(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "seeds": [0],
            "conv": {"dense_epochs": 0.3, "ft_epochs": 0.1, "score_batches": 2, "batch_size": 64},
            "smollm2": {
                "calib_windows": 2,
                "calib_len": 64,
                "calib_batch": 2,
                "eval_len": 128,
                "eval_tokens": 256,
            },
            "minilm": {"calib_windows": 2, "calib_len": 64, "calib_batch": 2, "eval_per_source": 8},
        }
    return {
        "seeds": [0, 1, 2],
        "conv": {"dense_epochs": 10, "ft_epochs": 1, "score_batches": 8, "batch_size": 128},
        "smollm2": {
            "calib_windows": 16,
            "calib_len": 256,
            "calib_batch": 4,
            "eval_len": 512,
            "eval_tokens": 16384,
        },
        "minilm": {"calib_windows": 16, "calib_len": 256, "calib_batch": 4, "eval_per_source": 256},
    }


def _error(err: Exception) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


# -- conv net -------------------------------------------------------------------------------------
def _train(model: Any, splits: Any, epochs: float, lr: float, seed: int) -> None:
    """SGD (momentum 0.9, weight decay 5e-4), cosine schedule over `epochs` (fractions allowed), batch 128."""
    import torch
    import torch.nn.functional as F

    loader = splits.train_loader(128, seed=seed)
    steps = max(1, math.ceil(epochs * len(loader)))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    step = 0
    for epoch in range(math.ceil(epochs)):
        loader.set_epoch(epoch)
        for x, y in loader:
            if step == steps:
                break
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
            step += 1


def _accuracy(model: Any, splits: Any) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in splits.test_loader(1000):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(splits.test_y)


def _lenet(seed: int) -> Any:
    from secateurs.models import build_model

    return build_model("lenet5", (1, 28, 28), 10, seed=seed, **MODEL)


def conv_dense(job: dict[str, Any]) -> dict[str, Any]:
    import io

    import torch

    from secateurs.data.fashion import load_fashion_mnist

    b = budget(job["quick"])["conv"]
    splits = load_fashion_mnist()
    model = _lenet(job["seed"])
    _train(model, splits, b["dense_epochs"], 0.1, job["seed"])
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    atomic_write_bytes(job["out"], buffer.getvalue())
    return {"accuracy": _accuracy(model, splits)}


def conv_prune(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from secateurs.data.fashion import load_fashion_mnist
    from secateurs.eval.macs import count_costs
    from secateurs.structured import prune_channels

    b = budget(job["quick"])["conv"]
    splits = load_fashion_mnist()
    model = _lenet(job["seed"])
    model.load_state_dict(torch.load(job["init"], weights_only=True))
    model.eval()
    order = torch.randperm(len(splits.train_y), generator=torch.Generator().manual_seed(1000 + job["seed"]))
    idx = order[: b["score_batches"] * b["batch_size"]].split(b["batch_size"])
    batches = [(splits.train_x[i], splits.train_y[i]) for i in idx]  # the same for every data criterion
    c = job["criterion"]
    options = {"criterion_options": {"num_batches": len(batches)}} if c in GRADIENT else {}
    started = time.perf_counter()
    try:
        small = prune_channels(
            model,
            torch.zeros(2, 1, 28, 28),
            CONV_SPARSITY,
            criterion=c,
            allocation="uniform",
            data=batches,
            seed=job["seed"],
            exclude=EXCLUDE,
            input_shape=(1, 28, 28),
            **options,
        )
    except Exception as err:  # a refused combination is a result ("n/a" with its reason)
        return {"error": _error(err)}
    prune_s = time.perf_counter() - started
    pruned = _accuracy(small, splits)
    _train(small, splits, b["ft_epochs"], 0.01, job["seed"])
    return {
        "accuracy_pruned": pruned,
        "accuracy_finetuned": _accuracy(small, splits),
        "macs": count_costs(small, (1, 28, 28)).macs,
        "dense_macs": count_costs(model, (1, 28, 28)).macs,
        "params": sum(p.numel() for p in small.parameters()),
        "dense_params": sum(p.numel() for p in model.parameters()),
        "prune_s": prune_s,
    }


# -- transformers ---------------------------------------------------------------------------------
_CACHE: dict[tuple[Any, ...], Any] = {}  # per worker process: models and token ids reused across jobs


def _cached(key: tuple[Any, ...], make: Any) -> Any:
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def _fingerprint(model: Any) -> float:
    import torch

    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in model.parameters()))


class _Text:
    """A model with its calibration windows and its metric (perplexity or cosine to the dense model).

    A worker loads each model and tokenizes each text once; the dense model is never changed by a prune
    (the removal makes a copy), which the parameter fingerprint checks at the start of every job.
    """

    def __init__(self, name: str, b: dict[str, Any], seed: int, attention: str | None = None) -> None:
        from secateurs.llm.models import load_model
        from secateurs.llm.text import calibration_batch, eval_windows, load_text, sentences, tokenize

        self.name = name
        source = str(SMOLLM2_DENSE) if name == "smollm2" else "minilm"
        loaded = _cached(("model", name, attention), lambda: load_model(source, attention=attention))
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        fingerprint = ("fingerprint", name, attention)
        if _cached(fingerprint, lambda: _fingerprint(self.model)) != _fingerprint(self.model):
            raise RuntimeError(f"the cached dense {name} changed during an earlier job")
        if name == "smollm2":
            calib_ids = _cached(
                ("ids", "calibration"), lambda: tokenize(self.tokenizer, load_text("kjv", "calibration"))
            )
            ids = _cached(
                ("ids", "evaluation"), lambda: tokenize(self.tokenizer, load_text("kjv", "evaluation"))
            )
            self.windows = eval_windows(ids, b["eval_len"], b["eval_tokens"])
        else:
            n = b["eval_per_source"]
            self.sentences = sentences("fortunes", "evaluation", n) + sentences("kjv", "evaluation", n)
            self.sentences.sort(key=len)  # similar lengths pad little; the mean cosine ignores order
            held_out = set(self.sentences)  # a verse or fortune repeated across the splits stays held out
            text = sentences("fortunes", "calibration", 4 * n) + sentences("kjv", "calibration", 4 * n)
            text = [t for t in text if t not in held_out]
            calib_ids = _cached(("sentence ids", n), lambda: tokenize(self.tokenizer, "\n".join(text)))
            self.dense = _cached(("dense embeddings", n), lambda: self.embed(self.model))
        calib = calibration_batch(calib_ids, b["calib_windows"], b["calib_len"], seed=seed)
        self.calibration = list(calib.split(b["calib_batch"]))

    def embed(self, model: Any) -> Any:
        from secateurs.llm.evaluate import sentence_embeddings

        return sentence_embeddings(model, self.tokenizer, self.sentences)

    def metric(self, model: Any) -> dict[str, Any]:
        from secateurs.llm.evaluate import embedding_similarity, perplexity

        if self.name == "smollm2":
            ppl = perplexity(model, self.windows)
            return {"value": ppl.perplexity, "tokens": ppl.tokens, "windows": ppl.windows}
        cos = embedding_similarity(self.dense, self.embed(model))
        return {"value": cos["mean"], "min": cos["min"], "sentences": len(self.sentences)}


def prune_part(text: _Text, part: str, sparsity: float, criterion: str, seed: int) -> Any:
    """A smaller copy of the model without `sparsity` of each block's head groups or FFN channels
    (`secateurs.llm.structured.prune_structured`: the gradient criteria differentiate its default
    next-token loss on the calibration ids)."""
    from secateurs.llm.structured import prune_structured

    data = criterion in (*GRADIENT, "wanda")
    return prune_structured(
        text.model,
        sparsity,
        parts=(part,),
        criterion=criterion,
        calibration=text.calibration if data else None,
        criterion_options={"num_batches": len(text.calibration)} if criterion in GRADIENT else None,
        seed=seed,
    )


def _removed_fraction(dense: Any, pruned: Any, part: str) -> float:
    from secateurs.graph.hf import layer_sizes

    field = "num_key_value_heads" if part == "heads" else "intermediate_size"
    before = sum(s[field] for s in layer_sizes(dense))
    return 1 - sum(s[field] for s in layer_sizes(pruned)) / before


def llm_dense(job: dict[str, Any]) -> dict[str, Any]:
    text = _Text(job["model"], budget(job["quick"])[job["model"]], 0)
    started = time.perf_counter()
    metric = text.metric(text.model)
    return {
        **metric,
        "params": sum(p.numel() for p in text.model.parameters()),
        "eval_s": time.perf_counter() - started,
    }


def llm_prune(job: dict[str, Any]) -> dict[str, Any]:
    # GraSP differentiates twice: Hugging Face's fused attention kernels have no double backward
    attention = "eager" if job["criterion"] == "grasp" else None
    text = _Text(job["model"], budget(job["quick"])[job["model"]], job["seed"], attention)
    cells: dict[str, Any] = {}
    for part in PARTS:
        for sparsity in LLM_SPARSITIES:
            started = time.perf_counter()
            try:
                pruned = prune_part(text, part, sparsity, job["criterion"], job["seed"]).eval()
            except Exception as err:  # a refused combination is a result ("n/a" with its reason)
                cells[f"{part}|{sparsity}"] = {"error": _error(err)}
                continue
            prune_s = time.perf_counter() - started
            started = time.perf_counter()
            cells[f"{part}|{sparsity}"] = {
                **text.metric(pruned),
                "removed": _removed_fraction(text.model, pruned, part),
                "params": sum(p.numel() for p in pruned.parameters()),
                "prune_s": prune_s,
                "eval_s": time.perf_counter() - started,
            }
    return cells


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One job in a worker process (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    if job["model"] != "lenet5":
        from secateurs.llm.models import require_transformers

        transformers = require_transformers()
        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    work = {
        ("conv", "dense"): conv_dense,
        ("conv", "prune"): conv_prune,
        ("llm", "dense"): llm_dense,
        ("llm", "prune"): llm_prune,
    }[("conv" if job["model"] == "lenet5" else "llm", job["kind"])]
    started = time.perf_counter()
    return {**work(job), "seconds": time.perf_counter() - started, "budget": section_budget(job)}


def section_budget(job: dict[str, Any]) -> dict[str, Any]:
    """The budget a job's result depends on (a result kept under another budget is run again)."""
    return budget(job["quick"])["conv" if job["model"] == "lenet5" else job["model"]]


def key(job: dict[str, Any]) -> str:
    return f"{job['model']}|{job.get('criterion', 'dense')}|{job['seed']}"


def describe(job: dict[str, Any], r: dict[str, Any]) -> str:
    if "error" in r:
        text = r["error"]
    elif "accuracy_finetuned" in r:
        text = f"{100 * r['accuracy_pruned']:.2f}% → {100 * r['accuracy_finetuned']:.2f}% finetuned"
    elif "accuracy" in r:
        text = f"{100 * r['accuracy']:.2f}%"
    elif "value" in r:
        text = f"{r['value']:.4g}"
    else:
        text = ", ".join(
            f"{cell}: {v['value']:.4g}" if "value" in v else f"{cell}: n/a"
            for cell, v in r.items()
            if "|" in cell
        )
    return f"{text} ({r['seconds']:.0f} s)"


def jobs(quick: bool, work: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(first, heavy, second phase): the dense models and MiniLM; GraSP on SmolLM2, whose double
    backward holds about 13 GB (one job at a time: two would not fit in 24 GB); then the rest of
    SmolLM2 and the conv-net pruning (which needs the trained conv nets)."""
    seeds = budget(quick)["seeds"]
    dense = [
        {"model": "lenet5", "kind": "dense", "seed": s, "quick": quick, "out": str(work / f"lenet5-{s}.pt")}
        for s in seeds
    ]
    dense += [{"model": m, "kind": "dense", "seed": 0, "quick": quick} for m in ("smollm2", "minilm")]

    def llm(model: str) -> list[dict[str, Any]]:
        return [
            {"model": model, "kind": "prune", "criterion": c, "seed": s, "quick": quick}
            for c in CRITERIA
            if not (model == "minilm" and c in GRADIENT)
            for s in (seeds if c in SEEDED else seeds[:1])
        ]

    cost = {"taylor": 0, "snip": 1, "wanda": 2}  # the slowest SmolLM2 jobs first, the short conv jobs last
    smollm2 = sorted(llm("smollm2"), key=lambda j: cost.get(j["criterion"], 3))
    conv = [
        {
            "model": "lenet5",
            "kind": "prune",
            "criterion": c,
            "seed": s,
            "quick": quick,
            "init": str(work / f"lenet5-{s}.pt"),
        }
        for s in seeds
        for c in CRITERIA
    ]
    heavy = [j for j in smollm2 if j["criterion"] == "grasp"]
    return dense + llm("minilm"), heavy, [j for j in smollm2 if j not in heavy] + conv


def prepare_smollm2() -> float:
    """Dequantize the GGUF once and save it as a plain fp32 model the workers load quickly."""
    from secateurs.llm.models import load_model, require_transformers, save_model

    if (SMOLLM2_DENSE / "config.json").exists():
        return 0.0
    require_transformers().utils.logging.disable_progress_bar()
    started = time.perf_counter()
    save_model(load_model("smollm2"), SMOLLM2_DENSE)
    return time.perf_counter() - started


def source_state() -> dict[str, Any]:
    """Which secateurs was measured: its directory and commit (a `git archive` snapshot has a COMMIT file;
    a checkout reports HEAD and whether src/ differs from it)."""
    import subprocess

    import secateurs

    root = Path(secateurs.__file__).resolve().parents[2]
    if (root / "COMMIT").exists():
        commit = (root / "COMMIT").read_text().strip()
        return {"path": str(root), "commit": commit, "modified": [], "snapshot": True}

    def git(*args: str) -> str:
        run = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
        return run.stdout.strip() if run.returncode == 0 else ""

    modified = [line[3:] for line in git("status", "--porcelain", "src").splitlines()]
    return {
        "path": str(root),
        "commit": git("rev-parse", "HEAD") or "unknown",
        "modified": modified,
        "snapshot": False,
    }


# -- summary --------------------------------------------------------------------------------------
def _cell(values: list[float], seeds: list[int]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
        "values": values,
        "seeds": seeds,
    }


def _reason(criterion: str, error: str) -> str:
    why = EXPLAIN.get(criterion)
    return f"{why} — library error: {error}" if why else f"library error: {error}"


def summarise(done: dict[str, Any], quick: bool) -> dict[str, Any]:
    seeds = budget(quick)["seeds"]
    out: dict[str, Any] = {}
    trained = [s for s in seeds if f"lenet5|dense|{s}" in done]
    dense = [done[f"lenet5|dense|{s}"]["accuracy"] for s in trained]
    conv: dict[str, Any] = {"dense_accuracy": _cell(dense, trained) if dense else None, "rows": {}}
    for c in CRITERIA:
        runs = {s: done[k] for s in seeds if (k := f"lenet5|{c}|{s}") in done}
        errors = sorted({r["error"] for r in runs.values() if "error" in r})
        good = {s: r for s, r in runs.items() if "error" not in r}
        ok = list(good.values())
        row: dict[str, Any] = {"paradigm": PARADIGM[c]}
        if errors:
            row["na"] = _reason(c, "; ".join(errors))
        if ok:
            row |= {
                "accuracy_pruned": _cell([r["accuracy_pruned"] for r in ok], list(good)),
                "accuracy_finetuned": _cell([r["accuracy_finetuned"] for r in ok], list(good)),
                "macs": sorted({r["macs"] for r in ok}),
                "dense_macs": ok[0]["dense_macs"],
                "params": sorted({r["params"] for r in ok}),
                "dense_params": ok[0]["dense_params"],
                "prune_s": statistics.fmean(r["prune_s"] for r in ok),
            }
        conv["rows"][c] = row
    out["lenet5"] = conv
    for model in ("smollm2", "minilm"):
        d = done.get(f"{model}|dense|0")
        table: dict[str, Any] = {"dense": d, "rows": {}}
        for c in CRITERIA:
            row = {"paradigm": PARADIGM[c], "cells": {}}
            if model == "minilm" and c in GRADIENT:
                row["na"] = ENCODER_NO_LOSS
                table["rows"][c] = row
                continue
            runs = {s: done[k] for s in seeds if (k := f"{model}|{c}|{s}") in done}
            for part in PARTS:
                for sparsity in LLM_SPARSITIES:
                    name = f"{part}|{sparsity}"
                    results = {s: r[name] for s, r in runs.items() if name in r}
                    errors = sorted({r["error"] for r in results.values() if "error" in r})
                    good = {s: r for s, r in results.items() if "error" not in r}
                    ok = list(good.values())
                    if errors:
                        row["cells"][name] = {"na": _reason(c, "; ".join(errors))}
                    elif ok:
                        row["cells"][name] = {
                            **_cell([r["value"] for r in ok], list(good)),
                            "removed": sorted({round(r["removed"], 4) for r in ok}),
                            "params": sorted({r["params"] for r in ok}),
                            "prune_s": statistics.fmean(r["prune_s"] for r in ok),
                        }
            table["rows"][c] = row
        out[model] = table
    return out


def _fmt(cell: dict[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    mean, std = scale * cell["mean"], scale * cell["std"]
    if abs(mean) >= 1000:
        text = f"{mean:,.0f}" + (f" ± {std:,.0f}" if cell["n"] > 1 else "")
    else:
        text = f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if cell["n"] > 1 else "")
    return text


def _notes(reasons: list[str], text: str) -> str:
    if text not in reasons:
        reasons.append(text)
    return f"n/a [{reasons.index(text) + 1}]"


def _columns(summary: dict[str, Any]) -> list[tuple[str, bool, bool, dict[str, dict[str, Any]]]]:
    """(column, higher is better, paired by seed, criterion → cell) for every measured column."""
    columns = []
    conv = summary["lenet5"]["rows"]
    for metric, label in (("accuracy_pruned", "removed"), ("accuracy_finetuned", "finetuned")):
        cells = {c: r[metric] for c, r in conv.items() if metric in r}
        columns.append((f"LeNet-5 channels 50 % ({label})", True, True, cells))
    for model, higher, label in (("smollm2", False, "SmolLM2"), ("minilm", True, "MiniLM")):
        rows = summary[model]["rows"]
        for part in PARTS:
            for sparsity in LLM_SPARSITIES:
                name = f"{part}|{sparsity}"
                cells = {c: r["cells"][name] for c, r in rows.items() if "mean" in r["cells"].get(name, {})}
                columns.append((f"{label} {part} {100 * sparsity:g} %", higher, False, cells))
    return columns


def versus_random(cell: dict[str, Any], random: dict[str, Any], higher: bool, paired: bool) -> str:
    """+ better than random in every comparison, − worse in every one, ~ otherwise.

    Paired (the conv net: a seed is one trained model): seed against the same seed. Otherwise (the
    pretrained transformers: seeds are independent calibration or random draws): every run of the
    criterion against every random draw.
    """
    mine = dict(zip(cell["seeds"], cell["values"], strict=True))
    theirs = dict(zip(random["seeds"], random["values"], strict=True))
    if paired:
        pairs = [(mine[s], theirs[s]) for s in mine if s in theirs]
    else:
        pairs = [(a, b) for a in mine.values() for b in theirs.values()]
    wins = [a > b if higher else a < b for a, b in pairs]
    return "+" if all(wins) else "−" if not any(wins) else "~"


def transfer(summary: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The transfer table (criterion × column: +, −, ~ against random, n/a) and computed statements."""
    columns = _columns(summary)
    marks: dict[str, dict[str, str]] = {c: {} for c in CRITERIA if c != "random"}
    for column, higher, paired, cells in columns:
        for c in marks:
            if c in cells and "random" in cells:
                marks[c][column] = versus_random(cells[c], cells["random"], higher, paired)
    short = [
        column.replace("LeNet-5 channels 50 % ", "LeNet-5 ").replace(" %", "%") for column, *_ in columns
    ]
    table = [
        "| criterion | " + " | ".join(short) + " |",
        "|---|" + ":-:|" * len(columns),
    ]
    for c, row in marks.items():
        table.append(f"| {c} | " + " | ".join(row.get(column, "n/a") for column, *_ in columns) + " |")
    lines = []
    families = (
        ("criteria that read data (taylor, snip, grasp, wanda)", ("taylor", "snip", "grasp", "wanda")),
        (
            "criteria that read only the weights (l1, l2, fpgm, synflow, bn_scale)",
            ("l1", "l2", "fpgm", "synflow", "bn_scale"),
        ),
    )
    for where, prefix in (("Transformers", ("SmolLM2", "MiniLM")), ("LeNet-5", ("LeNet-5",))):
        counts = []
        for label, group in families:
            got = [m for c in group for column, m in marks[c].items() if column.startswith(prefix)]
            if got:
                counts.append(
                    f"{label}: {got.count('+')} of {len(got)} (criterion, column) cells better than random "
                    f"in every comparison, {got.count('−')} worse in every one, {got.count('~')} mixed"
                )
        if counts:
            lines.append(f"{where}, {'; '.join(counts)}.")
    everywhere = [c for c, row in marks.items() if row and all(m == "+" for m in row.values())]
    lines.append(
        "Better than random in every comparison of every column where it ran: "
        + (", ".join(f"{c} ({len(marks[c])} columns)" for c in everywhere) or "none")
        + "."
    )
    worse = {c: [k for k, m in row.items() if m == "−"] for c, row in marks.items()}
    if any(worse.values()):
        lines.append(
            "Worse than random in every comparison: "
            + "; ".join(f"{c} in {', '.join(cols)}" for c, cols in worse.items() if cols)
            + "."
        )
    best: dict[str, list[str]] = {}
    for column, higher, _, cells in columns:
        if cells:
            means = {c: cell["mean"] for c, cell in cells.items()}
            best.setdefault((max if higher else min)(means, key=means.__getitem__), []).append(column)
    lines.append(
        "Best mean per column: " + "; ".join(f"{c} in {', '.join(cols)}" for c, cols in best.items()) + "."
    )
    conv = summary["lenet5"]["rows"]
    for metric, label in (
        ("accuracy_finetuned", "after finetuning"),
        ("accuracy_pruned", "right after removal"),
    ):
        cells = {c: r[metric] for c, r in conv.items() if metric in r}
        if not cells:
            continue
        lo = min(cells, key=lambda c: cells[c]["mean"])
        hi = max(cells, key=lambda c: cells[c]["mean"])
        spread = max(cell["std"] for cell in cells.values())
        text = (
            f"LeNet-5 {label}: criteria from {100 * cells[lo]['mean']:.2f} % ({lo}) to "
            f"{100 * cells[hi]['mean']:.2f} % ({hi})"
        )
        if "random" in cells:
            text += f", random {100 * cells['random']['mean']:.2f} %"
        lines.append(text + f"; the largest std over seeds is {100 * spread:.2f} points.")
    return table, lines


def wall_time(invocations: list[dict[str, Any]]) -> str:
    """The wall time of the invocations that ran jobs (one, unless a run was interrupted and resumed)."""
    ran = [i for i in invocations if i["jobs_run"]]
    total = sum(i["wall_minutes"] for i in ran)
    if len(ran) <= 1:
        return f"Wall time {total:.1f} min"
    parts = ", ".join(f"{i['wall_minutes']:.1f} min ({i['jobs_run']} jobs)" for i in ran)
    return f"Wall time {total:.1f} min over {len(ran)} invocations ({parts})"


def write(summary: dict[str, Any], meta: dict[str, Any], quick: bool) -> None:
    suffix = "_quick" if quick else ""
    b = meta["budget"]
    bc, bs, bm = b["conv"], b["smollm2"], b["minilm"]
    conv = summary["lenet5"]
    lines = [
        "# Criteria of different paradigms on the same structures" + (" (QUICK budget)" if quick else ""),
        "",
        "Ten criteria through the one pruning stack (score → pool over the group → uniform allocation → "
        "select → physical removal), unchanged from structure to structure. Paradigms: after training "
        "(l1, l2, taylor), pruning at init (snip, grasp, synflow), LLM (wanda), filter geometry (fpgm), "
        "network slimming (bn_scale), baseline (random). "
        "`magnitude` is l1 on channels and l2 on heads/FFN (the structures' default pooling), so it is "
        "not a separate row. One shot; no BatchNorm recalibration.",
        "",
        f"Command: `{meta['command']}`. {wall_time(meta['invocations'])} with {meta['workers']} worker "
        f"processes (1 torch thread each) on {meta['machine']}, a machine shared with other work; sum of "
        f"job times {meta['job_minutes']:.1f} min.",
        "",
        f"Library: secateurs at commit {meta['secateurs']['commit'][:12]}"
        + (
            " (imported from a `git archive` snapshot of that commit, `PYTHONPATH=<snapshot>/src`, so that "
            "edits to the working tree during the run could not reach it)"
            if meta["secateurs"].get("snapshot")
            else ""
        )
        + (
            f" with uncommitted changes to {', '.join(meta['secateurs']['modified'])}"
            if meta["secateurs"]["modified"]
            else ""
        )
        + ".",
        "",
        f"## LeNet-5 (BatchNorm), Fashion-MNIST: {100 * CONV_SPARSITY:g} % of every layer's channel groups "
        "removed",
        "",
        f"Per seed ({', '.join(map(str, b['seeds']))}): dense training {bc['dense_epochs']} epochs (SGD 0.1, "
        f"momentum 0.9, cosine, batch 128), the same weights for every criterion; taylor, snip, grasp and "
        f"wanda score the same {bc['score_batches']} × {bc['batch_size']} training images; synflow gets the "
        f"input shape; bn_scale the plain model's |γ| (no slimming penalty). Channels 6-16-120-84 → "
        f"3-8-60-42 (the classifier's 10 outputs kept). Finetune: {bc['ft_epochs']} epoch(s), SGD 0.01, "
        "cosine. Test accuracy on the 10,000 test images, mean ± std over seeds.",
        "",
    ]
    if conv["dense_accuracy"]:
        lines.append(f"Dense: {_fmt(conv['dense_accuracy'], 100)} %.")
        lines.append("")
    lines += [
        "| criterion | paradigm | accuracy after removal (%) | after finetune (%) | MACs (dense → shrunk) |",
        "|---|---|---:|---:|---:|",
    ]
    reasons: list[str] = []
    for c, r in conv["rows"].items():
        if "accuracy_pruned" in r:
            macs = ", ".join(f"{m:,}" for m in r["macs"])
            lines.append(
                f"| {c} | {r['paradigm']} | {_fmt(r['accuracy_pruned'], 100)} | "
                f"{_fmt(r['accuracy_finetuned'], 100)} | {r['dense_macs']:,} → {macs} |"
            )
        elif "na" in r:
            na = _notes(reasons, r["na"])
            lines.append(f"| {c} | {r['paradigm']} | {na} | {na} | |")
    lines += [""] + [f"[{i + 1}] {t}" for i, t in enumerate(reasons)]
    titles = {
        "smollm2": (
            "SmolLM2-135M-Instruct (causal LM): perplexity, lower is better",
            f"Perplexity on {bs['eval_tokens']:,} tokens of the KJV New Testament (non-overlapping windows "
            f"of {bs['eval_len']}, {{tokens:,}} predicted tokens). Calibration: {bs['calib_windows']} × "
            f"{bs['calib_len']} tokens of the KJV Old Testament (random windows, seed = run seed), in "
            f"batches of {bs['calib_batch']}; wanda collects ‖X_j‖ on them, taylor/snip/grasp differentiate "
            "the next-token cross-entropy `F.cross_entropy(out.logits[:, :-1], ids[:, 1:])` on `(ids, ids)` "
            "batches. "
            "A head group is a key/value head with its 3 query heads (GQA: 3 groups per block), so 25 % "
            "and 50 % round to 1 and 2 of 3 groups; the removed fraction is in each column's header.",
        ),
        "minilm": (
            "all-MiniLM-L6-v2 (encoder): cosine to the dense embeddings, higher is better",
            f"Mean cosine between the pruned and the dense model's mean-pooled embeddings of "
            f"{{sentences}} held-out sentences (odd fortunes + New Testament, {bm['eval_per_source']} each). "
            f"Calibration for wanda: {bm['calib_windows']} × {bm['calib_len']} tokens cut from even "
            "fortunes + Old Testament sentences (seed = run seed; a sentence that also occurs among the "
            "evaluation sentences is left out). 12 heads and 1536 FFN channels per block.",
        ),
    }
    for model in ("smollm2", "minilm"):
        table = summary[model]
        title, text = titles[model]
        dense = table["dense"] or {}
        text = text.format(tokens=dense.get("tokens", 0), sentences=dense.get("sentences", 0))
        lines += ["", f"## {title}", "", text, ""]
        if model == "smollm2" and dense:
            lines += [
                f"Dense: perplexity {dense['value']:.2f}, {dense['params'] / 1e6:.1f} M parameters.",
                "",
            ]
        if model == "minilm" and dense:
            lines += [f"Dense: cosine 1 by definition, {dense['params'] / 1e6:.2f} M parameters.", ""]
        removed: dict[str, set[float]] = {}
        params: dict[str, set[int]] = {}
        for r in table["rows"].values():
            for name, cell in r["cells"].items():
                removed.setdefault(name, set()).update(cell.get("removed", []))
                params.setdefault(name, set()).update(cell.get("params", []))
        names = [f"{p}|{s}" for p in PARTS for s in LLM_SPARSITIES]

        def header(name: str, removed: dict[str, set[float]], params: dict[str, set[int]]) -> str:
            part, sparsity = name.split("|")
            actual = ", ".join(f"{100 * f:.0f} %" for f in sorted(removed.get(name, ())))
            size = ", ".join(f"{p / 1e6:.1f} M" for p in sorted(params.get(name, ())))
            label = "heads" if part == "heads" else "FFN channels"
            return f"{label} {100 * float(sparsity):g} % (removed {actual or '?'}; {size or '?'} params)"

        lines += ["| criterion | paradigm | " + " | ".join(header(n, removed, params) for n in names) + " |"]
        lines += ["|---|---|" + "---:|" * len(names)]
        reasons = []
        digits = 2 if model == "smollm2" else 4
        for c, r in table["rows"].items():
            cells = []
            for name in names:
                cell = r["cells"].get(name)
                if cell is None:
                    cells.append(_notes(reasons, r["na"]) if "na" in r else "—")
                elif "na" in cell:
                    cells.append(_notes(reasons, cell["na"]))
                else:
                    cells.append(_fmt(cell, digits=digits))
            lines.append(f"| {c} | {r['paradigm']} | " + " | ".join(cells) + " |")
        lines += [""] + [f"[{i + 1}] {t}" for i, t in enumerate(reasons)]
        lines += [
            "",
            f"Cells: mean ± std over seeds {', '.join(map(str, b['seeds']))} for "
            f"{', '.join(c for c in SEEDED if not (model == 'minilm' and c in GRADIENT))}; "
            "one run (no ±) for the deterministic data-free criteria.",
        ]
        draws = table["rows"]["random"]["cells"]
        if model == "smollm2" and any(cell.get("n", 0) > 1 for cell in draws.values()):
            per_seed = "; ".join(
                f"{name.split('|')[0]} {100 * float(name.split('|')[1]):g} %: "
                + " / ".join(f"{v:,.1f}" for v in cell["values"])
                for name, cell in draws.items()
                if "values" in cell
            )
            lines += [
                "",
                "The random rows' mean ± std is dominated by the worst draw; perplexity per random seed "
                f"({', '.join(map(str, b['seeds']))}): {per_seed}. Every run's values are in the JSON.",
            ]
    lines += ["", "## What the numbers show", ""]
    table, statements = transfer(summary)
    lines += [
        "Each criterion against random, per column: **+** better than random in every comparison, "
        "**−** worse in every one, **~** mixed. LeNet-5: seed against the same seed (one trained model "
        "per seed); transformers: every run of the criterion against every random draw (deterministic "
        "criteria ran once).",
        "",
        *table,
        "",
    ]
    lines += [f"- {line}" for line in statements]
    missing: dict[str, list[str]] = {}
    for c, r in conv["rows"].items():
        if "na" in r:
            missing.setdefault(c, []).append("LeNet-5 channels")
    for model, label in (("smollm2", "SmolLM2"), ("minilm", "MiniLM")):
        for c, r in summary[model]["rows"].items():
            refused = {n.split("|")[0] for n, cell in r["cells"].items() if "na" in cell}
            parts = list(PARTS) if "na" in r else [p for p in PARTS if p in refused]
            if parts:
                missing.setdefault(c, []).append(f"{label} {' and '.join(parts)}")
    if missing:
        lines.append(
            "- Not defined or refused (n/a, reasons under each table): "
            + "; ".join(f"{c} on {', '.join(where)}" for c, where in missing.items())
            + ". Every other combination ran."
        )
    atomic_write_text(RESULTS / f"cross_paradigm{suffix}.md", "\n".join(lines) + "\n")
    payload = {**meta, "summary": summary}
    atomic_write_text(RESULTS / f"cross_paradigm{suffix}.json", json.dumps(payload, indent=1) + "\n")


def main() -> None:
    import sys

    import torch

    args = benchmark_args(__doc__, "1 seed, tiny budgets (1-2 minutes)")
    started = time.perf_counter()
    suffix = "_quick" if args.quick else ""
    work = WORK / f"cross_paradigm{suffix}"
    work.mkdir(parents=True, exist_ok=True)
    store = work / "runs.json"
    done: dict[str, Any] = load_done(store, fresh=args.fresh)
    before = set(done)
    first, heavy, second = jobs(args.quick, work)
    for job in first + heavy + second:  # a result kept under another budget is stale
        if key(job) in done and done[key(job)].get("budget") != section_budget(job):
            done.pop(key(job))
            before.discard(key(job))
    for job in first:  # a pending conv job needs its dense checkpoint: re-create it if wiped
        if "out" in job and not Path(job["out"]).exists():
            done.pop(key(job), None)
            before.discard(key(job))
    prepared = prepare_smollm2()
    if prepared:
        print(f"dequantized and saved SmolLM2 in {prepared:.0f} s", flush=True)
    for phase, workers in ((first, args.workers), (heavy, 1), (second, args.workers)):
        run_phase(phase, key=key, work=run_job, store=store, done=done, workers=workers, describe=describe)
    keys = {key(j) for j in first + heavy + second}
    log = work / "invocations.json"  # wall time of each invocation since the last --fresh
    invocations = json.loads(log.read_text()) if log.exists() and not args.fresh else []
    invocations.append(
        {
            "started": time.strftime(
                "%Y-%m-%d %H:%M:%S UTC", time.gmtime(time.time() - time.perf_counter() + started)
            ),
            "wall_minutes": (time.perf_counter() - started) / 60,
            "jobs_run": len(keys - before),
        }
    )
    atomic_write_text(log, json.dumps(invocations, indent=1))
    meta = {
        "benchmark": "cross_paradigm",
        "quick": args.quick,
        "budget": budget(args.quick),
        "command": "python benchmarks/cross_paradigm.py" + (" --quick" if args.quick else ""),
        "workers": args.workers,
        "invocations": invocations,
        "job_minutes": sum(done[k]["seconds"] for k in keys) / 60,
        "resumed": len(keys & before),
        "secateurs": source_state(),
        "machine": f"{platform.machine()}, torch {torch.__version__}, python {sys.version.split()[0]}",
        "runs": {k: done[k] for k in sorted(keys)},
    }
    write(summarise(done, args.quick), meta, args.quick)
    print(f"wrote {RESULTS / 'cross_paradigm'}{suffix}.md")


if __name__ == "__main__":
    main()
