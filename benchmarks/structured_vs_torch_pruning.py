"""Structured pruning of CIFAR ResNet-56, 50 % of channels by L1: secateurs vs Torch-Pruning.

Both libraries prune the same model (our zoo's ResNet-56, option-B shortcuts) in one process:
  secateurs      `secateurs.structured.prune_channels(model, x, 0.5, criterion="l1", allocation="uniform")`;
  torch-pruning  `tp.pruner.MagnitudePruner(model, x, tp.importance.MagnitudeImportance(p=1),
                 pruning_ratio=0.5, ignored_layers=[fc])` then `step()`.
Per library: graph+prune seconds (median of 3), MACs and parameters before/after (our counter),
and CPU latency at batch 1 and 64 of the pruned model against the dense one. Every model — the
dense baseline included — is BatchNorm-folded (`secateurs.structured.fold_batchnorm`) and then
timed on two inference paths, each applied to dense and pruned alike:
  eager        PyTorch eager, `torch.inference_mode`, one thread;
  onnxruntime  exported with `secateurs.export.export_onnx`, run by ONNX Runtime (all graph
               optimisations: conv+add+relu fusion, prepacked weights), one thread.
At batch 1 per-op overhead dominates eager PyTorch, which is what a fusing runtime removes.
Latencies are the minimum over interleaved rounds. `speedup_over_macs_ratio` = (dense / pruned
latency) / (dense / pruned MACs): the share of the theoretical speed-up that is realised.

Torch-Pruning and ONNX Runtime are optional extras, only for this benchmark: `pip install -e ".[bench]"`.

    python benchmarks/structured_vs_torch_pruning.py            # about 3 minutes
    python benchmarks/structured_vs_torch_pruning.py --quick    # about a minute (fewer rounds)
Writes benchmarks/results/structured_vs_torch_pruning{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _timing import min_latency_ms
from torch import nn

from secateurs.core.fileio import atomic_write_text
from secateurs.eval.macs import count_costs
from secateurs.models import build_model
from secateurs.structured import fold_batchnorm, prune_channels

RESULTS = Path(__file__).parent / "results"
SHAPE = (3, 32, 32)
SPARSITY = 0.5
TARGETS = {"b64": 0.85, "b1": 0.6}
PATHS = ("eager", "onnxruntime")
BATCHES = ("b1", "b64")


def dense_model() -> nn.Module:
    model = build_model("resnet56", SHAPE, 10, seed=0)
    with torch.no_grad():  # BN statistics of a trained-looking network (folding must matter)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def ours(model: nn.Module, x: torch.Tensor) -> nn.Module:
    return prune_channels(model, x, SPARSITY, criterion="l1", allocation="uniform", exclude=["fc"])


def theirs(model: nn.Module, x: torch.Tensor) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(model)
    pruner = tp.pruner.MagnitudePruner(
        model,
        x,
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=SPARSITY,
        ignored_layers=[model.fc],
    )
    pruner.step()
    return model


def timed(
    prune: Callable[[nn.Module, torch.Tensor], nn.Module], model: nn.Module, x: torch.Tensor
) -> tuple[nn.Module, float]:
    seconds, pruned = [], model
    for _ in range(3):
        started = time.perf_counter()
        pruned = prune(model, x)
        seconds.append(time.perf_counter() - started)
    return pruned, statistics.median(seconds)


def onnxruntime_callable(model: nn.Module, x: torch.Tensor, folder: Path) -> Callable[[torch.Tensor], Any]:
    """`model` exported to ONNX and wrapped in a one-thread ONNX Runtime session, called like the model."""
    import warnings

    import onnxruntime as ort

    from secateurs.export import export_onnx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notice that the TorchScript-based exporter is legacy
        path = export_onnx(model, x, folder / f"model_{id(model)}_{x.shape[0]}.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    expected = model(x).detach().numpy()
    got = session.run(None, {name: x.numpy()})[0]
    assert abs(got - expected).max() <= 1e-3 * abs(expected).max(), "ONNX Runtime disagrees with PyTorch"
    return lambda t: session.run(None, {name: t.numpy()})


def latencies(
    models: dict[str, nn.Module], path: str, batch: int, rounds: int, iters: int, folder: Path
) -> dict[str, float]:
    """Minimum time per forward (ms) of each model at `batch` on inference `path`, rounds interleaved."""
    x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(0))
    if path == "onnxruntime":
        with torch.no_grad():
            runners = {k: onnxruntime_callable(m, x, folder) for k, m in models.items()}
        return min_latency_ms(runners, x, rounds=rounds, iters=iters)
    return min_latency_ms(models, x, rounds=rounds, iters=iters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer latency rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        import onnxruntime  # noqa: F401
        import torch_pruning
    except ImportError as err:
        raise SystemExit(f'error: {err.name} is not installed. Fix: pip install -e ".[bench]"') from None
    model = dense_model()
    x = torch.randn(1, *SHAPE)
    pruned = {"secateurs": timed(ours, model, x), "torch_pruning": timed(theirs, model, x)}
    dense_cost = count_costs(model, SHAPE)
    folded = {"dense": fold_batchnorm(model)} | {k: fold_batchnorm(m.eval()) for k, (m, _) in pruned.items()}
    with torch.no_grad():
        for name, m in folded.items():
            assert m(x).shape == (1, 10), name
    rounds = 5 if args.quick else 15
    lat: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for path in PATHS:
            lat[path] = {
                "b1": latencies(folded, path, 1, rounds, 20, Path(folder)),
                "b64": latencies(folded, path, 64, rounds, 2, Path(folder)),
            }
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread",
        "torch_pruning_version": torch_pruning.__version__,
        "model": "resnet56 (CIFAR, option-B shortcuts)",
        "sparsity": SPARSITY,
        "dense": {
            "macs": dense_cost.macs,
            "params": dense_cost.params,
            "latency_ms": {p: {b: round(lat[p][b]["dense"], 3) for b in lat[p]} for p in PATHS},
        },
        "libraries": {},
    }
    for name, (m, seconds) in pruned.items():
        cost = count_costs(m, SHAPE)
        macs_ratio = dense_cost.macs / cost.macs
        entry: dict[str, Any] = {
            "graph_prune_s": round(seconds, 3),
            "macs_before": dense_cost.macs,
            "macs_after": cost.macs,
            "params_after": cost.params,
            "macs_ratio": round(macs_ratio, 3),
            "latency_ms": {p: {b: round(lat[p][b][name], 3) for b in lat[p]} for p in PATHS},
            "paths": {},
        }
        for p in PATHS:
            realised = entry["paths"][p] = {}
            for b in BATCHES:
                speedup = lat[p][b]["dense"] / lat[p][b][name]
                realised[f"speedup_{b}"] = round(speedup, 3)
                realised[f"speedup_over_macs_ratio_{b}"] = round(speedup / macs_ratio, 3)
        for b in BATCHES:  # the best path per batch size: what a user deploying the model would pick
            best = max(PATHS, key=lambda p: entry["paths"][p][f"speedup_over_macs_ratio_{b}"])
            entry[f"path_{b}"] = best
            entry[f"speedup_{b}"] = entry["paths"][best][f"speedup_{b}"]
            entry[f"speedup_over_macs_ratio_{b}"] = entry["paths"][best][f"speedup_over_macs_ratio_{b}"]
        results["libraries"][name] = entry
        print(name, entry, flush=True)
    ours_entry, their_entry = results["libraries"]["secateurs"], results["libraries"]["torch_pruning"]
    results["targets"] = {
        **{
            f"speedup_over_macs_ratio_{b}>={t}": ours_entry[f"speedup_over_macs_ratio_{b}"] >= t
            for b, t in TARGETS.items()
        },
        "graph_prune_s<=torch_pruning": ours_entry["graph_prune_s"] <= their_entry["graph_prune_s"],
    }
    write(results, args.quick)


def write(results: dict[str, Any], quick: bool) -> None:
    stem = "structured_vs_torch_pruning" + ("_quick" if quick else "")
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(results, indent=2) + "\n")
    version, sparsity = results["torch_pruning_version"], int(100 * results["sparsity"])
    lines = [
        f"# ResNet-56, {sparsity} % of channels by L1: secateurs vs Torch-Pruning {version}",
        "",
        f"{results['machine']}; every model BN-folded, then timed on two inference paths, dense and "
        "pruned alike: eager PyTorch (`torch.inference_mode`) and ONNX Runtime (exported, all graph "
        "optimisations). Latency = min over interleaved rounds; realised = speed-up / MACs ratio.",
        "",
        "| library | path | graph+prune s | MACs after (ratio) | params after | speed-up b1 | realised b1 "
        "| speed-up b64 | realised b64 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in results["libraries"].items():
        for path, r in e["paths"].items():
            cells = [
                name,
                path,
                f"{e['graph_prune_s']:.2f}",
                f"{e['macs_after']:,} ({e['macs_ratio']:.2f}×)",
                f"{e['params_after']:,}",
                *(f"{r[k]:.2f}" for k in ("speedup_b1", "speedup_over_macs_ratio_b1")),
                *(f"{r[k]:.2f}" for k in ("speedup_b64", "speedup_over_macs_ratio_b64")),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    dense = results["dense"]
    lat = dense["latency_ms"]
    lines += [
        "",
        f"Dense: {dense['macs']:,} MACs, {dense['params']:,} parameters; "
        + "; ".join(f"{p}: {lat[p]['b1']:.2f} ms at batch 1, {lat[p]['b64']:.1f} ms at batch 64" for p in lat)
        + ".",
        "",
        "Targets (secateurs, best path per batch size: "
        + ", ".join(f"{b} {results['libraries']['secateurs'][f'path_{b}']}" for b in ("b1", "b64"))
        + "): "
        + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in results["targets"].items())
        + ".",
    ]
    atomic_write_text(RESULTS / f"{stem}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
