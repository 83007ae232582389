"""`secateurs llm`: one-shot pruning and evaluation of pretrained transformers (offline)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from secateurs.core.errors import ConfigError
from secateurs.front.app import App
from secateurs.front.console import console, friendly_errors

F = TypeVar("F", bound=Callable[..., Any])

llm_app = App(
    name="llm",
    help="Prune pretrained transformers (SmolLM2, MiniLM or a saved directory): magnitude, Wanda, SparseGPT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="smollm2, minilm, a Hugging Face model directory (e.g. from `llm prune --out`), "
        "a .gguf file or a directory holding one",
    ),
]
TextOpt = Annotated[str, typer.Option("--text", help="built-in text source: kjv, fortunes or gpl3")]
SeqLenOpt = Annotated[int, typer.Option("--seq-len", help="tokens per window")]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="CPU threads for torch (default: torch's, all cores)")
]


def _print(text: str) -> None:
    console.print(text, highlight=False)


def _quiet_transformers() -> None:
    from secateurs.llm.models import require_transformers

    transformers = require_transformers()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _threads(threads: int | None) -> None:
    """Large matrix products use every core well: only an explicit --threads changes torch's default."""
    import torch

    if threads is None:
        return
    if threads < 1:
        raise ConfigError(
            f"--threads must be at least 1, got {threads}", where="--threads", fix="pass 1 or more"
        )
    torch.set_num_threads(threads)


@llm_app.command()
@friendly_errors
def prune(
    model: ModelOpt = "smollm2",
    method: Annotated[str, typer.Option(help="magnitude, wanda or sparsegpt")] = "wanda",
    sparsity: Annotated[
        float | None, typer.Option(help="fraction of each Linear removed (0 ≤ s < 1)")
    ] = None,
    nm: Annotated[
        str | None, typer.Option("--nm", help="N:M pattern, e.g. 2:4 (implies the sparsity)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write the pruned model here (save_pretrained)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
    samples: Annotated[int, typer.Option(help="calibration windows")] = 32,
    seq_len: SeqLenOpt = 512,
    text: TextOpt = "kjv",
    seed: Annotated[int, typer.Option(help="seed of the calibration window offsets")] = 0,
    calib_text: Annotated[
        Path | None, typer.Option("--calib-text", help="calibrate on this UTF-8 text file instead of --text")
    ] = None,
    draw: Annotated[
        str, typer.Option(help="calibration windows: random (seeded offsets) or consecutive from the start")
    ] = "random",
    ties: Annotated[
        str,
        typer.Option(
            help="rule among weights tied at the cut: index, reverse, random or original "
            "(the Wanda / SparseGPT code's; dequantized weights tie often)"
        ),
    ] = "index",
    rounding: Annotated[
        str,
        typer.Option(
            help="how the removed count s·n is rounded: half_up, floor (the Wanda / SparseGPT "
            "code's int(s·n)) or ceil"
        ),
    ] = "half_up",
    counts: Annotated[
        str,
        typer.Option(
            help="what wanda's sparsity counts: layer (the layer's sparsity exact) or row (every row "
            "on its own, as Wanda's code: with --rounding floor and --ties original, its masks)"
        ),
    ] = "layer",
    threads: ThreadsOpt = None,
) -> None:
    """One-shot prune every Linear of the transformer blocks, block by block on calibration text.

    The command is a recipe (`hf` model, `text` data, one prune stage: `secateurs.llm.methods.prune_step`)
    run by the pipeline, then saved with save_pretrained.
    """
    from secateurs.core.sparsity import check_rounding
    from secateurs.core.topk import check_ties
    from secateurs.llm.methods import check_method, make_pattern, prune_step
    from secateurs.llm.models import LoadedModel, load_tokenizer, model_kind, save_model
    from secateurs.methods.structures.nm import check_row_count
    from secateurs.pipeline.recipe import recipe_from_raw
    from secateurs.pipeline.runner import Pipeline

    _threads(threads)
    check_method(method)
    pattern = make_pattern(sparsity, nm)
    if out is not None and out.exists() and not overwrite:
        raise ConfigError(
            f"{out} already exists", where="--out", fix="choose a new directory or pass --overwrite"
        )
    _quiet_transformers()
    calibrated = method != "magnitude"
    step = prune_step(
        method,
        pattern,
        ties=check_ties(ties, "--ties"),
        rounding=check_rounding(rounding, "--rounding"),
        counts=check_row_count(counts, "--counts", where=None),
    )
    step |= {"data_batches": -(-samples // 8), "data_batch_size": 8}
    recipe = {
        "name": f"llm-{method}",
        "model": {"name": "hf", "options": {"path": model}},
        "data": {
            "name": "text",
            "options": {
                "source": text,
                "tokenizer": model,
                "seq_len": seq_len,
                "calibration_samples": samples if calibrated else 0,
                "eval_tokens": 0,
                "seed": seed,
                "draw": draw,
                "calibration_file": str(calib_text) if calib_text is not None else None,
            },
        },
        "stages": [{"prune": step}],
    }
    pipeline = Pipeline(recipe_from_raw(recipe, "secateurs llm prune"))
    started = time.perf_counter()
    result = pipeline.run()
    seconds = time.perf_counter() - started
    assert result.masks is not None
    layers = [{"name": r.name, "numel": r.numel, "pruned": r.pruned} for r in result.masks.report()]
    pruned = sum(r["pruned"] for r in layers)
    total = sum(r["numel"] for r in layers)
    _print(
        f"{method} {pattern.label}: pruned {pruned:,} of {total:,} block Linear weights "
        f"({pruned / total:.2%}) in {len(layers)} layers, {seconds:.1f} s"
    )
    if out is not None:
        meta: dict[str, Any] = {
            "model": model,
            "method": method,
            "sparsity": pattern.sparsity,
            "nm": list(pattern.nm) if pattern.nm else None,
            "calibration": None
            if not calibrated
            else {
                "text": str(calib_text) if calib_text is not None else text,
                "split": "whole file" if calib_text is not None else "calibration",
                "samples": samples,
                "seq_len": seq_len,
                "seed": seed,
                "draw": draw,
            },
            "seconds": seconds,
            "layers": layers,
            "recipe": recipe,
        }
        loaded = LoadedModel(result.model, load_tokenizer(model), model_kind(model), model)
        save_model(loaded, out, meta, overwrite=overwrite)
        _print(f"wrote {out}")


@llm_app.command("eval")
@friendly_errors
def eval_(
    model: ModelOpt = "smollm2",
    text: TextOpt = "kjv",
    seq_len: SeqLenOpt = 512,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="token budget of the evaluation text")
    ] = 16384,
    reference: Annotated[
        str | None,
        typer.Option(help="encoders: compare mean-pooled embeddings with this model (e.g. minilm)"),
    ] = None,
    sentences: Annotated[int, typer.Option(help="encoders: how many held-out sentences")] = 256,
    eval_text: Annotated[
        Path | None,
        typer.Option("--eval-text", help="evaluate on this UTF-8 text file (encoders: its non-empty lines)"),
    ] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Perplexity on held-out text (causal LMs) or embedding similarity to a reference (encoders).

    For a causal LM this is a recipe (`hf` model, `text` data, one evaluate stage) run by the pipeline.
    """
    from secateurs.llm.evaluate import embedding_similarity, linear_sparsity, sentence_embeddings
    from secateurs.llm.models import load_model, model_kind
    from secateurs.llm.text import read_text_file
    from secateurs.llm.text import sentences as held_out_sentences
    from secateurs.pipeline.recipe import recipe_from_raw
    from secateurs.pipeline.runner import Pipeline

    _threads(threads)
    if max_tokens < 1:
        raise ConfigError(
            f"--max-tokens must be positive, got {max_tokens}", where="--max-tokens", fix="e.g. 16384"
        )
    _quiet_transformers()
    if model_kind(model) == "causal":
        options = {"source": text, "tokenizer": model, "seq_len": seq_len}
        if eval_text is not None:
            options["evaluation_file"] = str(eval_text)
        recipe = {
            "name": "llm-eval",
            "model": {"name": "hf", "options": {"path": model}},
            "data": {
                "name": "text",
                "options": options | {"calibration_samples": 0, "eval_tokens": max_tokens},
            },
            "stages": [{"evaluate": {"label": model}}],
        }
        pipeline = Pipeline(recipe_from_raw(recipe, "secateurs llm eval"))
        record = pipeline.run().final
        sparsity = linear_sparsity(pipeline.model)["overall"]
        windows = pipeline.data.info.num_test
        _print(
            f"{model}: perplexity {record['perplexity']:.3f} on {record['eval_tokens']:,} predicted tokens "
            f"({windows} windows × {seq_len}, {eval_text or f'{text} evaluation split'}); "
            f"block Linear sparsity {sparsity:.2%}"
        )
        return
    loaded = load_model(model)
    sparsity = linear_sparsity(loaded.model)["overall"]
    if reference is None:
        raise ConfigError(
            f"{model} is an encoder: it has no perplexity",
            where="llm eval",
            fix="pass --reference minilm to compare its sentence embeddings with the dense model",
        )
    ref = load_model(reference)
    if eval_text is not None:
        lines = read_text_file(eval_text, "evaluation").splitlines()
        batch = [line.strip() for line in lines if line.strip()][:sentences]
    else:
        batch = held_out_sentences(text, "evaluation", sentences)
    sim = embedding_similarity(
        sentence_embeddings(ref.model, ref.tokenizer, batch),
        sentence_embeddings(loaded.model, loaded.tokenizer, batch),
    )
    _print(
        f"{model} vs {reference}: cosine similarity of mean-pooled embeddings on {len(batch)} sentences: "
        f"mean {sim['mean']:.4f}, median {sim['median']:.4f}, min {sim['min']:.4f}; "
        f"block Linear sparsity {sparsity:.2%}"
    )
