"""Offline text for calibrating and evaluating language models.

Sources are packages already on the machine, so nothing downloads: the King James Bible
(Debian `bible-kjv`, dumped with the `bible` command), the Debian `fortunes` files and, for
tests, the GPL-3 text. Each source has two disjoint splits so that a model is never evaluated
on the text it was calibrated on:

- kjv: calibration = Old Testament (Genesis–Malachi), evaluation = New Testament.
- fortunes: calibration = even-numbered fortunes, evaluation = odd-numbered (files sorted by name).
- gpl3: calibration = the first half of its paragraphs, evaluation = the second half.

A user's own text files take the place of either split (`read_text_file`).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from secateurs.core.errors import ConfigError, DataUnavailableError

SOURCES = ("kjv", "fortunes", "gpl3")
SPLITS = ("calibration", "evaluation", "all")

FORTUNES_DIR = Path("/usr/share/games/fortunes")
GPL3_PATH = Path("/usr/share/common-licenses/GPL-3")
_KJV_SPEC = "Gen1:1-Rev22:21"
_KJV_FIRST_NT = "Mat1:1"
_VERSE_REF = re.compile(r"^(\S+?)(\d+):(\d+) ")


@functools.lru_cache(maxsize=1)
def kjv_verses() -> tuple[tuple[str, str], ...]:
    """(reference, text) for each of the 31,102 verses, in canonical order."""
    exe = shutil.which("bible")
    if exe is None:
        raise DataUnavailableError(
            "the `bible` command (Debian package bible-kjv) is not installed",
            where="text source 'kjv'",
            fix="apt-get install bible-kjv",
        )
    out = subprocess.run(
        [exe, "-f", _KJV_SPEC], check=True, capture_output=True, text=True, env={"COLUMNS": "100000"}
    ).stdout
    verses = []
    for line in out.splitlines():
        m = _VERSE_REF.match(line)
        if m is None:
            if verses and line.strip():  # a wrapped continuation line
                ref, text = verses[-1]
                verses[-1] = (ref, f"{text} {line.strip()}")
            continue
        verses.append((line[: m.end() - 1], line[m.end() :].strip()))
    return tuple(verses)


def _kjv(split: str) -> str:
    verses = kjv_verses()
    refs = [ref for ref, _ in verses]
    cut = refs.index(_KJV_FIRST_NT)
    chosen = {"calibration": verses[:cut], "evaluation": verses[cut:], "all": verses}[split]
    return "\n".join(text for _, text in chosen)


@functools.lru_cache(maxsize=1)
def fortunes() -> tuple[str, ...]:
    """Every fortune (files sorted by name, fortunes in file order), stripped."""
    if not FORTUNES_DIR.is_dir():
        raise DataUnavailableError(
            f"{FORTUNES_DIR} does not exist", where="text source 'fortunes'", fix="apt-get install fortunes"
        )
    items: list[str] = []
    for path in sorted(FORTUNES_DIR.iterdir()):
        if path.suffix or not path.is_file():  # skip .dat indexes and .u8 links
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        items.extend(f.strip() for f in re.split(r"^%$", text, flags=re.M) if f.strip())
    return tuple(items)


def _gpl3(split: str) -> str:
    if not GPL3_PATH.is_file():
        raise DataUnavailableError(
            f"{GPL3_PATH} does not exist", where="text source 'gpl3'", fix="apt-get install base-files"
        )
    paras = [p.strip() for p in GPL3_PATH.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    half = len(paras) // 2
    chosen = {"calibration": paras[:half], "evaluation": paras[half:], "all": paras}[split]
    return "\n\n".join(chosen)


def load_text(source: str = "kjv", split: str = "all") -> str:
    """The text of `source` ('kjv', 'fortunes', 'gpl3'), one split of it; splits are disjoint."""
    if source not in SOURCES:
        raise ConfigError(
            f"unknown text source {source!r}", where="text", fix=f"use one of {', '.join(SOURCES)}"
        )
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}", where="text", fix=f"use one of {', '.join(SPLITS)}")
    if source == "kjv":
        return _kjv(split)
    if source == "gpl3":
        return _gpl3(split)
    items = fortunes()
    chosen = {"calibration": items[0::2], "evaluation": items[1::2], "all": items}[split]
    return "\n\n".join(chosen)


def read_text_file(path: str | os.PathLike[str], what: str) -> str:
    """A user's own text (`--calib-text FILE`, `--eval-text FILE`), read as UTF-8."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"the {what} text file {file} does not exist", where="text", fix="check the path"
        ) from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"the {what} text file {file} is not UTF-8 text ({err.reason} at byte {err.start})",
            where="text",
            fix="convert it to UTF-8 (e.g. iconv -t UTF-8)",
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read the {what} text file {file} ({err})", where="text") from None
    if not text.strip():
        raise ConfigError(f"the {what} text file {file} is empty", where="text", fix="give a file with text")
    return text


def sentences(source: str = "kjv", split: str = "evaluation", n: int = 256, min_chars: int = 20) -> list[str]:
    """The first `n` real sentences (KJV verses / fortunes / GPL paragraphs) of a split, for encoders."""
    lines = [
        s.strip() for s in re.split(r"\n\n|\n" if source == "kjv" else r"\n\n", load_text(source, split))
    ]
    return [s for s in lines if len(s) >= min_chars][:n]


def tokenize(tokenizer: Any, text: str) -> torch.Tensor:
    """All token ids of `text` as one 1-D LongTensor (no special tokens; long texts allowed)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


DRAWS = ("random", "consecutive")


def calibration_batch(
    ids: torch.Tensor, n_samples: int, seq_len: int, seed: int = 0, draw: str = "random"
) -> torch.Tensor:
    """`n_samples` windows of `seq_len` tokens: [n_samples, seq_len]. `draw` "random" takes them at
    seeded random offsets (SparseGPT's and Wanda's protocol), "consecutive" one after another
    from the start (every calibration token used once, for short texts)."""
    if draw not in DRAWS:
        raise ConfigError(
            f"unknown window draw {draw!r}", where="calibration", fix=f"use one of {', '.join(DRAWS)}"
        )
    if n_samples < 1 or seq_len < 1:
        raise ConfigError(
            f"need n_samples >= 1 and seq_len >= 1, got {n_samples} and {seq_len}",
            where="calibration",
            fix="pass positive sizes",
        )
    if ids.numel() < seq_len + 1:
        raise ConfigError(
            f"calibration text has {ids.numel()} tokens, fewer than seq_len {seq_len}",
            where="calibration",
            fix="use a longer text or a shorter --seq-len",
        )
    if draw == "consecutive":
        if ids.numel() < n_samples * seq_len:
            raise ConfigError(
                f"calibration text has {ids.numel()} tokens, fewer than {n_samples} consecutive windows of "
                f"{seq_len}",
                where="calibration",
                fix="use fewer or shorter windows, a longer text, or draw: random",
            )
        return ids[: n_samples * seq_len].view(n_samples, seq_len).clone()
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len, (n_samples,), generator=gen)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def eval_windows(ids: torch.Tensor, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """Non-overlapping `seq_len`-token windows from the start, `max_tokens` at most: [n, seq_len]."""
    if seq_len < 2:
        raise ConfigError(
            f"seq_len must be >= 2, got {seq_len}", where="evaluation", fix="pass --seq-len 2 or more"
        )
    budget = ids.numel() if max_tokens is None else min(max_tokens, ids.numel())
    n = budget // seq_len
    if n < 1:
        raise ConfigError(
            f"evaluation budget of {budget} tokens is shorter than one window of {seq_len}",
            where="evaluation",
            fix="raise --max-tokens or lower --seq-len",
        )
    return ids[: n * seq_len].view(n, seq_len)
