"""Pretrained transformers and text as recipe components: the `hf` model, the `text` and
`random_tokens` data sets.

So a recipe prunes a Hugging Face language model like any other model:

    model: {name: hf, options: {path: smollm2}}          # a short name or a save_pretrained directory
    data: {name: text, options: {source: kjv, tokenizer: smollm2, seq_len: 512, calibration_samples: 32}}
    stages:
      - prune: {criterion: wanda, structure: rows, allocation: uniform, sparsity: 0.5,
                calibration: {mode: sequential}, data_batches: 4, data_batch_size: 8}
      - evaluate: {label: wanda}                          # perplexity on the held-out split

The data set's training split holds the calibration windows (drawn at seeded offsets of the
calibration text), its test split the non-overlapping evaluation windows of the held-out text;
both are token ids, and the task is language modelling (evaluations report perplexity).
Nothing downloads: models come from installed packages or directories, texts from Debian.
"""

from __future__ import annotations

import torch
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.data.catalog import dataset
from secateurs.data.core import DatasetInfo, DataSplits
from secateurs.llm.models import load_tokenizer, load_weights
from secateurs.llm.text import calibration_batch, eval_windows, load_text, read_text_file, tokenize
from secateurs.models import register_model

TASK = "language_modeling"


@register_model(
    "hf",
    input_ranks=(1,),
    description="a pretrained Hugging Face transformer (path: smollm2, minilm or a directory)",
    task=TASK,
    pretrained=True,
)
def make_hf(
    input_shape: tuple[int, ...], num_classes: int, *, path: str = "smollm2", attention: str | None = None
) -> nn.Module:
    """The model at `path` in float32, eval mode (`attention`: "eager" for criteria that differentiate
    twice); the data set's shape and vocabulary are not used."""
    return load_weights(path, attention=attention)


def _splits(name: str, vocab: int, calibration: torch.Tensor, evaluation: torch.Tensor) -> DataSplits:
    info = DatasetInfo(
        name, (int(calibration.shape[1]),), vocab, int(calibration.shape[0]), int(evaluation.shape[0]), TASK
    )
    return DataSplits(info, calibration, calibration.clone(), evaluation, evaluation.clone())


@dataset(
    "text", "held-out text for language models: calibration and evaluation windows (needs the llm extra)"
)
def load_text_windows(
    source: str = "kjv",
    tokenizer: str = "smollm2",
    seq_len: int = 512,
    calibration_samples: int = 32,
    eval_tokens: int | None = 16384,
    seed: int = 0,
    draw: str = "random",
    calibration_file: str | None = None,
    evaluation_file: str | None = None,
) -> DataSplits:
    """`calibration_samples` windows of `seq_len` tokens of the calibration text (`draw`: at seeded
    random offsets, or consecutive from the start), and up to `eval_tokens` tokens of the
    evaluation text in non-overlapping windows (`source`: kjv, fortunes, gpl3; the two splits never
    share text; `calibration_file` / `evaluation_file`: your own UTF-8 text instead). A split of
    size 0 is not tokenized (a prune-only run needs no evaluation text, and the reverse)."""
    tok = load_tokenizer(tokenizer)
    calibration = evaluation = torch.zeros(0, seq_len, dtype=torch.long)

    def text(split: str, file: str | None) -> str:
        return read_text_file(file, split) if file is not None else load_text(source, split)

    if calibration_samples:
        ids = tokenize(tok, text("calibration", calibration_file))
        calibration = calibration_batch(ids, calibration_samples, seq_len, seed, draw)
    if eval_tokens != 0:
        evaluation = eval_windows(tokenize(tok, text("evaluation", evaluation_file)), seq_len, eval_tokens)
    return _splits("text", len(tok), calibration, evaluation)


@dataset("random_tokens", "uniform random token windows (a language-model stand-in for tests)")
def load_random_tokens(
    vocab_size: int = 100,
    seq_len: int = 32,
    calibration_samples: int = 8,
    eval_windows: int = 4,
    seed: int = 0,
) -> DataSplits:
    """Token ids drawn uniformly from [0, vocab_size), seeded: no text, no tokenizer."""
    if min(vocab_size, seq_len, calibration_samples, eval_windows) < 1 or seq_len < 2:
        raise ConfigError(
            "random_tokens sizes must be positive (seq_len at least 2)",
            fix="e.g. vocab_size: 100, seq_len: 32",
        )
    gen = torch.Generator().manual_seed(seed)
    calibration = torch.randint(0, vocab_size, (calibration_samples, seq_len), generator=gen)
    evaluation = torch.randint(0, vocab_size, (eval_windows, seq_len), generator=gen)
    return _splits("random_tokens", vocab_size, calibration, evaluation)
