"""Checks of a Hugging Face model directory's files before transformers reads them.

transformers reports a malformed config.json, a truncated safetensors file or a missing tokenizer
with a traceback from deep inside (a Rust ``SafetensorError: incomplete metadata``, "Couldn't
instantiate the backend tokenizer ... sentencepiece"). These checks read only headers and JSON,
and name the file that is wrong and how to mend it, in one `ConfigError`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from secateurs.core.errors import ConfigError

# A tokenizer is one of these files (fast tokenizers, sentencepiece models, WordPiece or BPE vocabularies).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.txt",
    "vocab.json",
)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
_RECOPY = "copy the model directory again from where it came from (save_pretrained writes every file whole)"
_RESTORE = (
    "restore {name} from the original model: copy the directory again (save_pretrained writes it whole)"
)
_HEADER_LIMIT = 100 * 2**20  # safetensors' own limit on the JSON header


def read_json(file: Path) -> Any:
    """The JSON in `file`, or a ConfigError naming the file, the line and the column of the problem."""
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"the file is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})",
            where=str(file),
            fix=_RESTORE.format(name=file.name),
        ) from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"the file is not UTF-8 text (byte {err.start})",
            where=str(file),
            fix=_RESTORE.format(name=file.name),
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read the file ({err.strerror or err})", where=str(file)) from None


def check_config(directory: Path) -> None:
    """config.json holds a JSON object."""
    file = directory / "config.json"
    if not isinstance(read_json(file), dict):
        raise ConfigError(
            "the file is not a JSON object ({...} with model_type and the sizes)",
            where=str(file),
            fix=_RESTORE.format(name=file.name),
        )


def check_weights(directory: Path) -> None:
    """The directory holds weights, a shard index that parses, and safetensors files that are whole."""
    files = sorted({f for pattern in WEIGHT_PATTERNS for f in directory.glob(pattern)})
    if not files:
        raise ConfigError(
            "no weights file here (model.safetensors or pytorch_model.bin)",
            where=str(directory),
            fix=f"save the model with save_pretrained into it, or {_RECOPY}",
        )
    for index in sorted(directory.glob("*.index.json")):
        shards = read_json(index)
        mapping = shards.get("weight_map") if isinstance(shards, dict) else None
        for shard in sorted(set(mapping.values()) if isinstance(mapping, dict) else ()):
            if not (directory / str(shard)).is_file():
                raise ConfigError(
                    f"{index.name} names the shard {shard}, which is missing",
                    where=str(directory),
                    fix=_RECOPY,
                )
    for file in files:
        if file.suffix == ".safetensors":
            check_safetensors(file)


def check_safetensors(file: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header, then exactly the tensor bytes
    the header's offsets describe: a file cut short (or padded) is named with both sizes."""
    size = file.stat().st_size
    with file.open("rb") as handle:
        prefix = handle.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
        if length is None or 8 + length > size or length > _HEADER_LIMIT:
            raise _truncated(file, f"{size:,} bytes, too few for its header")
        try:
            header = json.loads(handle.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
    if not isinstance(header, dict):
        raise ConfigError("the weights file's header is not valid JSON", where=str(file), fix=_RECOPY)
    ends = [
        int(entry["data_offsets"][1])
        for key, entry in header.items()
        if key != "__metadata__" and isinstance(entry, dict) and isinstance(entry.get("data_offsets"), list)
    ]
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        raise _truncated(file, f"{size:,} of the {expected:,} bytes its header describes")
    if size > expected:
        raise ConfigError(
            f"the weights file has {size - expected:,} bytes more than its header describes ({size:,} "
            f"instead of {expected:,})",
            where=str(file),
            fix=_RECOPY,
        )


def _truncated(file: Path, sizes: str) -> ConfigError:
    return ConfigError(f"the weights file is cut short ({sizes})", where=str(file), fix=_RECOPY)


def check_tokenizer(directory: Path) -> None:
    """A tokenizer file is there, and the tokenizer's JSON files parse."""
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(
            f"no tokenizer here (none of {', '.join(TOKENIZER_FILES)})",
            where=str(directory),
            fix="save the tokenizer of the model it came from into it: "
            "AutoTokenizer.from_pretrained(ORIGINAL).save_pretrained(DIR)",
        )
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (directory / name).is_file():
            read_json(directory / name)
