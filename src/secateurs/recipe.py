"""Recipes: a pruning method as an ordered list of stages, validated with pydantic.

A recipe YAML names the data, the model, default training options and the stages:

    stages:
      - train: {}                                  # the default `train` options
      - prune: {criterion: magnitude, allocation: global}
      - reset: {mode: keep}
      - train: {epochs: 5, optimizer: {lr: 0.01}}  # partial override of the defaults
      - evaluate: {}

A `repeat` stage runs its stages once per level of an iterative schedule; a `train` stage with
a `prune` block prunes gradually while it trains. Unknown fields anywhere are errors.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from secateurs.errors import ConfigError
from secateurs.layers import LayerSelection
from secateurs.schedules import Gradual, LevelSchedule
from secateurs.train.config import StrictModel, TrainConfig

STAGE_KINDS = ("train", "prune", "reset", "repeat", "evaluate")


class NamedOptions(StrictModel):
    """A registry name with its options (YAML may give just the name)."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class PruneSpec(StrictModel):
    """criterion × allocation × structure × layers, at a sparsity."""

    criterion: str = "magnitude"
    criterion_options: dict[str, Any] = Field(default_factory=dict)
    allocation: str = "global"
    allocation_options: dict[str, Any] = Field(default_factory=dict)
    structure: str = "unstructured"
    structure_options: dict[str, Any] = Field(default_factory=dict)
    sparsity: float | None = Field(None, ge=0, lt=1)
    layers: LayerSelection | None = None
    allow_collapse: bool = False
    data_batches: int = Field(1, gt=0, description="batches fed to data-dependent criteria")
    data_batch_size: int = Field(128, gt=0)


class GradualPrune(PruneSpec):
    """Pruning applied during a training stage, following a step schedule."""

    schedule: Gradual = Field(default_factory=Gradual)


class TrainStage(StrictModel):
    kind: Literal["train"] = "train"
    options: dict[str, Any] = Field(default_factory=dict, description="overrides of the recipe's `train`")
    prune: GradualPrune | None = None


class PruneStage(PruneSpec):
    kind: Literal["prune"] = "prune"


class ResetStage(StrictModel):
    kind: Literal["reset"] = "reset"
    mode: Literal["keep", "rewind", "reinit"] = "keep"
    step: int = Field(0, ge=0, description="rewind target: optimizer step of the first training stage")


class EvaluateStage(StrictModel):
    kind: Literal["evaluate"] = "evaluate"
    label: str = ""
    per_layer: bool = False


class RepeatStage(StrictModel):
    kind: Literal["repeat"] = "repeat"
    schedule: LevelSchedule
    stages: list[Stage]

    @model_validator(mode="before")
    @classmethod
    def _unwrap_stages(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("stages"), list):
            value = {**value, "stages": [_unwrap(s) for s in value["stages"]]}
        return value


Stage = Annotated[TrainStage | PruneStage | ResetStage | EvaluateStage | RepeatStage, Field(discriminator="kind")]
RepeatStage.model_rebuild()


def _unwrap(stage: Any) -> Any:
    """`{train: {...}}` → `{kind: train, ...}`; a train stage's overrides move under `options`."""
    if not isinstance(stage, dict) or "kind" in stage:
        return stage
    if len(stage) != 1:
        raise ValueError(f"a stage is a mapping with one key (one of {', '.join(STAGE_KINDS)}), got {list(stage)}")
    (kind, body), = stage.items()
    if kind not in STAGE_KINDS:
        raise ValueError(f"unknown stage {kind!r}; stages are {', '.join(STAGE_KINDS)}")
    body = dict(body or {})
    if kind == "train":
        prune = body.pop("prune", None)
        return {"kind": "train", "options": body, **({"prune": prune} if prune is not None else {})}
    return {"kind": kind, **body}


class Recipe(StrictModel):
    """A complete, validated pruning experiment."""

    name: str = "recipe"
    description: str = ""
    seed: int = 0
    data: NamedOptions = Field(default_factory=lambda: NamedOptions(name="mnist1d"))
    model: NamedOptions = Field(default_factory=lambda: NamedOptions(name="mlp"))
    sparsity: float | None = Field(None, ge=0, lt=1, description="default target of prune steps and schedules")
    layers: LayerSelection = Field(default_factory=LayerSelection)
    train: dict[str, Any] = Field(default_factory=lambda: {"epochs": 10})
    stages: list[Stage]

    @model_validator(mode="before")
    @classmethod
    def _unwrap_stages(cls, value: Any) -> Any:
        if isinstance(value, dict) and isinstance(value.get("stages"), list):
            value = {**value, "stages": [_unwrap(s) for s in value["stages"]]}
        return value

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        self.train_config({})  # the defaults must be valid on their own
        for stage in walk(self.stages):
            if isinstance(stage, TrainStage):
                self.train_config(stage.options)
        return self

    def train_config(self, overrides: dict[str, Any]) -> TrainConfig:
        """The recipe's default training options merged with a stage's overrides."""
        merged = deep_merge(self.train, overrides)
        if "epochs" in overrides and "iterations" not in overrides:
            merged.pop("iterations", None)
        if "iterations" in overrides and "epochs" not in overrides:
            merged.pop("epochs", None)
        return TrainConfig(**merged)


def walk(stages: list[Any]) -> list[Any]:
    """All stages, depth first, including those inside `repeat` blocks."""
    out: list[Any] = []
    for stage in stages:
        out.append(stage)
        if isinstance(stage, RepeatStage):
            out.extend(walk(stage.stages))
    return out


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# -- loading --------------------------------------------------------------------------------------
def preset_names() -> list[str]:
    """Names of the recipes shipped in `secateurs/recipes/`."""
    folder = resources.files("secateurs") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_recipe_text(source: str | Path) -> tuple[str, str]:
    """(text, origin) of a recipe given as a file path or a preset name."""
    path = Path(source)
    if path.is_file():
        return path.read_text(encoding="utf-8"), str(path)
    name = str(source).removesuffix(".yaml")
    if name in preset_names():
        return (resources.files("secateurs") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8"), name
    raise ConfigError(
        f"recipe {str(source)!r} is neither a file nor a preset",
        fix=f"give a YAML path or one of the presets: {', '.join(preset_names())}",
    )


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` override (value parsed as YAML) to a raw recipe dict."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not key=value", fix="write e.g. --set train.epochs=3")
    key, _, text = assignment.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {assignment!r}: value is not valid YAML ({err})") from None
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"override {key!r}: {where!r} needs a list index below {len(node)}",
                    fix="stages are numbered from 0, e.g. --set stages.1.prune.sparsity=0.8",
                )
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:i])!r} is a value, not a mapping")


def format_validation_error(err: ValidationError, origin: str) -> ConfigError:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).endswith("Stage") and p not in STAGE_KINDS)
        lines.append(f"{loc or '(top level)'}: {e['msg']}")
    return ConfigError(
        "invalid recipe: " + "; ".join(lines),
        where=origin,
        fix="see `secateurs methods` and the presets in secateurs/recipes/ for valid fields",
    )


def parse_recipe(text: str, origin: str = "<recipe>", overrides: list[str] | None = None) -> Recipe:
    """Parse YAML text, apply overrides, validate; every problem becomes one ConfigError."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"YAML syntax error{at}: {getattr(err, 'problem', err)}", where=origin) from None
    if not isinstance(raw, dict):
        raise ConfigError("a recipe must be a YAML mapping with a `stages` list", where=origin)
    for assignment in overrides or []:
        apply_override(raw, assignment)
    try:
        return Recipe(**raw)
    except ValidationError as err:
        raise format_validation_error(err, origin) from None
    except ValueError as err:
        raise ConfigError(f"invalid recipe: {err}", where=origin) from None


def load_recipe(source: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe from a YAML path or a preset name, with `key=value` overrides."""
    text, origin = read_recipe_text(source)
    return parse_recipe(text, origin, overrides)
