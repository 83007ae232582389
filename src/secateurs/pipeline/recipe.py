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
import difflib
from importlib import resources
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from secateurs.core.config import StrictModel
from secateurs.core.device import DEVICE_FORMS, check_device_name
from secateurs.core.errors import ConfigError
from secateurs.core.fileio import MAX_OVERRIDE_CHARS, load_yaml, read_config_text
from secateurs.core.plugins import import_callable, load_entry_points, load_plugins
from secateurs.core.registry import validate_options
from secateurs.methods.closed_form import TRAINERS, SolvedTraining
from secateurs.methods.controls import CONTROLS, check_controls
from secateurs.methods.ensemble import EnsembleSpec
from secateurs.methods.layers import LayerSelection
from secateurs.methods.resets import RESETS
from secateurs.methods.schedules import SCHEDULES, LevelSchedule
from secateurs.methods.spec import PruneSpec, known
from secateurs.methods.training import TRAINING
from secateurs.models.factory import DATA_FILLED
from secateurs.train.config import TrainConfig
from secateurs.train.execution import Execution, Precision

STAGE_KINDS = ("train", "prune", "reset", "repeat", "evaluate", "ensemble")
QUICK_KEY = "quick"  # a recipe's quick form: overrides, not a field (`quick_form`)


Path_ = tuple[str | int, ...]


class Problem(NamedTuple):
    """One invalid field: where (the path `--set` takes), what is wrong, and the fix for that kind
    of mistake ("" when the message already says it)."""

    path: Path_
    message: str
    fix: str = ""


class FieldProblems(ValueError):
    """Problems found by a validator at paths below the object it validates.

    Pydantic reports a validator's error at the validator's own level (e.g. the whole recipe);
    carrying the paths lets `format_validation_error` name the exact field the user wrote.
    """

    def __init__(self, problems: list[Problem] | list[tuple[Path_, str]]) -> None:
        self.problems = [Problem(*p) for p in problems]
        super().__init__("; ".join(f"{_dotted(p.path) or '(top level)'}: {p.message}" for p in self.problems))


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path)


def _unwrap_stage_list(value: Any) -> Any:
    """Unwrap every `{kind: body}` stage of a mapping's `stages` list, naming a bad one by index."""
    if not (isinstance(value, dict) and isinstance(value.get("stages"), list)):
        return value
    stages = []
    for i, stage in enumerate(value["stages"]):
        try:
            stages.append(_unwrap(stage))
        except FieldProblems as err:
            raise FieldProblems([p._replace(path=("stages", i, *p.path)) for p in err.problems]) from None
        except ValueError as err:
            raise FieldProblems([(("stages", i), str(err))]) from None
    return {**value, "stages": stages}


class SourceRef(StrictModel):
    """Where the model or the data comes from: a registered name, or the import path of a factory
    of your own (`package.module:function`), with options.

    YAML may give just the name (`model: lenet5`) or a name with its options in one key
    (`data: {image_folder: {train: DIR, test: DIR}}`).
    """

    name: str | None = None
    factory: str | None = Field(None, description="import path package.module:function of your own factory")
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and len(value) == 1:
            ((key, body),) = value.items()
            if key not in cls.model_fields and (body is None or isinstance(body, dict)):
                return {"name": key, "options": body or {}}
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SourceRef:
        if (self.name is None) == (self.factory is None):
            raise ValueError("give a registered name or a factory (package.module:function), not both")
        return self

    @property
    def label(self) -> str:
        """The name, or the factory's import path."""
        return self.name if self.name is not None else str(self.factory)


class Flattened(StrictModel):
    """A config whose `flattened` fields hold registered components' options written at its own level.

    A train stage's training-time methods (`dst: {...}`) and a reset's options (`step: 100`) are
    validated by the component's own schema, but in YAML, in dumps and in run hashes they stand
    beside the stage's fields, as users write them.
    """

    flattened: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _flatten(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in self.flattened:
            inner = data.pop(name, None)
            data.update(inner or {})
        return data


def _validated(schema: Any, value: Any, path: Path_) -> tuple[Any, list[Problem]]:
    """`value` validated by `schema`, or the problems at their paths below `path`."""
    try:
        return TypeAdapter(schema).validate_python(value), []
    except ValidationError as err:
        return None, problems_of(err, schema, path)


class TrainStage(Flattened):
    """Training, with any training-time methods (`secateurs.methods.training`), at most one of which
    changes the mask while it trains (gradual `prune`, `dst`, `select`, `admm`)."""

    kind: Literal["train"] = "train"
    options: dict[str, Any] = Field(default_factory=dict, description="overrides of the recipe's `train`")
    methods: dict[str, Any] = Field(default_factory=dict, description="training-time methods by name")
    flattened: ClassVar[tuple[str, ...]] = ("methods",)

    @model_validator(mode="before")
    @classmethod
    def _methods(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        value = dict(value)
        given = dict(value.pop("methods", None) or {})
        given.update({k: value.pop(k) for k in list(value) if k in TRAINING})  # the flat form, as dumped
        problems: list[tuple[tuple[str | int, ...], str]] = []
        methods = {}
        for key, body in given.items():
            if body is None:
                continue
            if key not in TRAINING:
                problems.append(
                    ((key,), f"unknown training-time method; use one of {', '.join(TRAINING.names())}")
                )
                continue
            methods[key], found = _validated(TRAINING.get(key).schema, body, (key,))
            problems += found
        changers = [key for key in methods if TRAINING.get(key).changes_mask]
        if len(changers) > 1:
            problems.append(
                (
                    (),
                    f"a train stage changes the mask in one way, but this one has {' and '.join(changers)}: "
                    "split it into train stages with one block each",
                )
            )
        if problems:
            raise FieldProblems(problems)
        return {**value, "methods": methods}


class PruneStage(PruneSpec):
    kind: Literal["prune"] = "prune"


class ResetStage(Flattened):
    """Where the surviving weights restart (`secateurs.methods.resets`), with the reset's own options
    beside `mode` (a rewind's `step` or `epoch`)."""

    kind: Literal["reset"] = "reset"
    mode: str = "keep"
    options: Any = Field(default=None, description="the reset's options (its schema)")
    flattened: ClassVar[tuple[str, ...]] = ("options",)

    @model_validator(mode="before")
    @classmethod
    def _options(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        value = dict(value)
        mode = value.get("mode", "keep")
        try:
            known(RESETS, mode)
        except ValueError as err:
            raise FieldProblems([(("mode",), str(err))]) from None
        schema = RESETS.get(mode).schema
        options = value.pop("options", None)
        if options is None or isinstance(options, dict):
            options = dict(options or {})
            options.update({k: value.pop(k) for k in list(value) if k not in ("kind", "mode")})
            unknown = [k for k in options if k not in schema.model_fields]
            if unknown:
                takes = ", ".join(schema.model_fields) or "no options"
                named = ", ".join(map(repr, unknown))
                message = f"reset mode {mode!r} has no option {named} (it takes {takes})"
                fix = did_you_mean(unknown[0], list(schema.model_fields)) or f"drop {named}"
                raise FieldProblems([Problem((), message, fix)])
            options, problems = _validated(schema, options, ())
            if problems:
                raise FieldProblems(problems)
        return {**value, "options": options}

    @property
    def reset(self) -> Any:
        """The reset this stage runs, built with its options."""
        return RESETS.get(self.mode)(self.options)


class EvaluateStage(StrictModel):
    kind: Literal["evaluate"] = "evaluate"
    label: str = ""
    per_layer: bool = False
    beyond: bool = Field(
        False, description="also compute beyond-accuracy metrics: calibration, shifts, agreement, JSV"
    )
    latency: bool = Field(True, description="with beyond: also time CPU inference at batch 1 and 64")


class EnsembleStage(EnsembleSpec):
    """Samples an ensemble from the parameter distribution of the trained model and evaluates it
    (`secateurs.methods.ensemble`); the run's model is left as it was."""

    kind: Literal["ensemble"] = "ensemble"


class RepeatStage(StrictModel):
    """Runs `stages` once per level of `schedule`; `controls` branch off after each level's prune."""

    kind: Literal["repeat"] = "repeat"
    schedule: Any = Field(description="a level schedule by name (`secateurs methods`)")
    stages: list[Stage]
    controls: list[str] = Field(
        default_factory=list,
        description="control experiments run beside every level: " + ", ".join(CONTROLS.names()),
    )

    @model_validator(mode="before")
    @classmethod
    def _unwrap_stages(cls, value: Any) -> Any:
        value = _unwrap_stage_list(value)
        if not isinstance(value, dict) or isinstance(value.get("schedule"), LevelSchedule):
            return value
        schedule = value.get("schedule")
        if not isinstance(schedule, dict) or "name" not in schedule:
            raise FieldProblems(
                [(("schedule",), "a schedule is a mapping with a `name`, e.g. {name: iterative}")]
            )
        try:
            known(SCHEDULES, schedule["name"])
        except ValueError as err:
            raise FieldProblems([(("schedule", "name"), str(err))]) from None
        built, problems = _validated(SCHEDULES.get(schedule["name"]), schedule, ("schedule",))
        if problems:
            raise FieldProblems(problems)
        return {**value, "schedule": built}

    @model_validator(mode="after")
    def _check_level(self) -> RepeatStage:
        if getattr(self.schedule, "layer_rates", None) and not any(
            isinstance(s, PruneStage) for s in self.stages
        ):
            raise ValueError("the schedule's layer_rates apply to prune stages: add one to the repeat")
        problem = check_controls(self.controls, self.stages)
        if problem:
            raise ValueError(problem)
        return self


Stage = Annotated[
    TrainStage | PruneStage | ResetStage | EvaluateStage | EnsembleStage | RepeatStage,
    Field(discriminator="kind"),
]
RepeatStage.model_rebuild()


def _unwrap(stage: Any) -> Any:
    """`{train: {...}}` → `{kind: train, ...}`; a train stage's overrides move under `options`."""
    if not isinstance(stage, dict) or "kind" in stage:
        return stage
    if len(stage) != 1:
        raise ValueError(
            f"a stage is a mapping with one key (one of {', '.join(STAGE_KINDS)}), got {list(stage)}"
        )
    ((kind, body),) = stage.items()
    if kind not in STAGE_KINDS:
        message = f"unknown stage {kind!r}; stages are {', '.join(STAGE_KINDS)}"
        raise FieldProblems([Problem((), message, did_you_mean(str(kind), list(STAGE_KINDS)))])
    if body is not None and not isinstance(body, dict):
        raise ValueError(f"the body of a {kind!r} stage must be a mapping of its options, got {body!r}")
    body = dict(body or {})
    if kind == "train":
        methods = {key: body.pop(key) for key in list(body) if key in TRAINING}
        return {"kind": "train", "options": body, "methods": methods}
    return {"kind": kind, **body}


class Recipe(StrictModel):
    """A complete, validated pruning experiment."""

    name: str = "recipe"
    description: str = Field("", max_length=10_000)  # copied into every run's outputs
    seed: int = 0
    data: SourceRef = Field(default_factory=lambda: SourceRef(name="mnist1d"))
    model: SourceRef = Field(default_factory=lambda: SourceRef(name="mlp"))
    plugins: list[str] = Field(
        default_factory=list, description="modules to import first: they register your own components"
    )
    init_from: str | None = Field(
        None,
        description="start from these weights (and masks): a model.pt or run directory of `secateurs run`",
    )
    beyond: bool = Field(
        False, description="every evaluate stage also measures robustness, calibration, agreement, latency"
    )
    sparsity: float | None = Field(
        None, ge=0, lt=1, description="default target of prune steps and schedules"
    )
    layers: LayerSelection = Field(default_factory=LayerSelection)
    train: dict[str, Any] = Field(default_factory=lambda: {"epochs": 10})
    device: str = Field("auto", description=f"where the run computes: {DEVICE_FORMS}")
    precision: Precision = Field("fp32", description="fp32, or mixed-precision training in bf16 / fp16")
    compile: bool | dict[str, Any] = Field(
        False, description="train through torch.compile (a mapping: its options)"
    )
    channels_last: bool = Field(False, description="conv weights and image batches in channels-last memory")
    stages: list[Stage] = Field(
        description="the steps in order, e.g. [{train: {}}, {prune: {}}, {evaluate: {}}]"
    )

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: Any) -> Any:
        return check_device_name(value) if isinstance(value, str) else value

    @property
    def execution(self) -> Execution:
        """How training executes (`secateurs.train.execution`)."""
        return Execution(precision=self.precision, compile=self.compile, channels_last=self.channels_last)

    @model_validator(mode="before")
    @classmethod
    def _unwrap_stages(cls, value: Any) -> Any:
        return _unwrap_stage_list(value)

    @model_validator(mode="after")
    def _check(self) -> Recipe:
        from secateurs.data import DATASETS
        from secateurs.models import MODELS

        problems = []
        for field, value, registry in (
            ("data", self.data, DATASETS),
            ("model", self.model, MODELS),
        ):
            try:
                if value.factory is not None:
                    try:
                        entry = import_callable(value.factory, where=f"{field}.factory")
                    except ConfigError as err:
                        problems.append(Problem((field, "factory"), err.what, err.fix or ""))
                        continue
                else:
                    assert value.name is not None
                    known(registry, value.name)
                    entry = registry.get(value.name)
                validate_options(
                    getattr(entry, "factory", entry),
                    value.options,
                    where=f"{field} {value.label!r}",
                    every_parameter=value.factory is not None,
                    filled=DATA_FILLED if field == "model" else (),
                )
            except ValueError as err:
                problems.append(Problem((field,), str(err)))
            except ConfigError as err:
                problems.append(Problem((field, "options"), err.what, err.fix or ""))
        if problems:
            raise FieldProblems(problems)
        self._check_train(("train",), {})  # the defaults must be valid on their own
        for path, stage in walk_paths(self.stages):
            if isinstance(stage, TrainStage):
                self._check_train((*path, "train"), stage.options, list(stage.methods))
        problems = self._lr_rewind_problems(self.stages, ("stages",))
        if problems:
            raise FieldProblems(problems)
        return self

    def _lr_rewind_problems(
        self, stages: list[Any], prefix: tuple[str | int, ...]
    ) -> list[tuple[tuple[str | int, ...], str]]:
        """An lr_rewind must be followed by a train stage replaying the first one's optimizer and LR schedule.

        Learning-rate rewinding (Renda et al. 2020) retrains with the original schedule; with
        another optimizer or schedule the run would be something else under that name.
        """
        first = next((s for s in walk(self.stages) if isinstance(s, TrainStage)), None)
        problems = []
        for i, stage in enumerate(stages):
            path = (*prefix, i)
            if isinstance(stage, RepeatStage):
                problems += self._lr_rewind_problems(stage.stages, (*path, "repeat", "stages"))
            if not (isinstance(stage, ResetStage) and RESETS.get(stage.mode).replays_first_training):
                continue
            after = next((s for s in stages[i + 1 :] if isinstance(s, TrainStage)), None)
            if after is None or first is None:
                problems.append(
                    ((*path, "reset"), f"{stage.mode} needs a train stage after it to replay the LR")
                )
                continue
            original, replay = self.train_config(first.options), self.train_config(after.options)
            if not (isinstance(original, TrainConfig) and isinstance(replay, TrainConfig)):
                problems.append(
                    (
                        (*path, "reset"),
                        f"{stage.mode} replays an optimizer's LR schedule: gradient train stages only",
                    )
                )
                continue
            differ = [
                f"{key} {getattr(replay, key).model_dump()} vs {getattr(original, key).model_dump()}"
                for key in ("optimizer", "lr_schedule")
                if getattr(replay, key) != getattr(original, key)
            ]
            if differ:
                problems.append(
                    (
                        (*path, "reset"),
                        f"{stage.mode} replays the first training stage's LR schedule, but the train stage "
                        f"after it differs: {'; '.join(differ)} (use the same optimizer and lr_schedule, "
                        "or reset mode keep to finetune with other options)",
                    )
                )
        return problems

    def _check_train(
        self, path: tuple[str | int, ...], overrides: dict[str, Any], methods: list[str] | None = None
    ) -> None:
        """Validate merged training options (and that a solved `method` has no training-time
        `methods` beside it); errors name the field under `path`."""
        method = self._train_options(overrides).get("method")
        if method is not None and methods:
            raise FieldProblems(
                [
                    Problem(
                        path,
                        f"train method {method} solves the weights, so the {', '.join(methods)} block(s) "
                        "cannot act while it trains",
                        "move them to a gradient train stage (without `method`)",
                    )
                ]
            )
        if method is not None and method not in TRAINERS:
            raise FieldProblems(
                [
                    Problem(
                        (*path, "method"),
                        f"unknown train method {method!r}",
                        f"use one of {', '.join(TRAINERS.names())}, or leave `method` out for "
                        "gradient training",
                    )
                ]
            )
        try:
            self.train_config(overrides)
        except ValidationError as err:
            also = TRAINING.names() if path[:1] == ("stages",) else ()  # a stage's methods stand beside
            schema = TrainConfig if method is None else TRAINERS.get(method)
            raise FieldProblems(problems_of(err, schema, path, also=also)) from None

    def _train_options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The recipe's `train` merged with a stage's overrides; a stage naming another train
        `method` than the recipe's starts from that method's defaults, not the recipe's options."""
        base = self.train
        if overrides.get("method", base.get("method")) != base.get("method"):
            base = {}
        merged = deep_merge(base, overrides)
        if merged.get("method", "") is None:  # `method: null`: gradient training
            del merged["method"]
        if "epochs" in overrides and "iterations" not in overrides:
            merged.pop("iterations", None)
        if "iterations" in overrides and "epochs" not in overrides:
            merged.pop("epochs", None)
        return merged

    def train_config(self, overrides: dict[str, Any]) -> TrainConfig | SolvedTraining:
        """The recipe's default training options merged with a stage's overrides: a `TrainConfig`,
        or with `method` the options of that registered trainer (`methods.closed_form.TRAINERS`)."""
        merged = self._train_options(overrides)
        if merged.get("method") is not None:
            return TRAINERS.get(merged["method"])(**merged)
        return TrainConfig(**merged)


def walk(stages: list[Any]) -> list[Any]:
    """All stages, depth first, including those inside `repeat` blocks."""
    out: list[Any] = []
    for stage in stages:
        out.append(stage)
        if isinstance(stage, RepeatStage):
            out.extend(walk(stage.stages))
    return out


def walk_paths(
    stages: list[Any], prefix: tuple[str | int, ...] = ("stages",)
) -> list[tuple[tuple[str | int, ...], Any]]:
    """(path, stage) for every stage, depth first; paths as `--set` takes them (stages.2.repeat.stages.0)."""
    out: list[tuple[tuple[str | int, ...], Any]] = []
    for i, stage in enumerate(stages):
        out.append(((*prefix, i), stage))
        if isinstance(stage, RepeatStage):
            out.extend(walk_paths(stage.stages, (*prefix, i, "repeat", "stages")))
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
    try:
        is_file = path.is_file()
    except OSError:  # a name the file system refuses (too long): not a file, maybe a preset
        is_file = False
    if is_file:
        return read_config_text(path, "recipe"), str(path)
    name = str(source).removesuffix(".yaml")
    if name in preset_names():
        return (resources.files("secateurs") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8"), name
    raise ConfigError(
        f"recipe {str(source)!r} is neither a file nor a preset",
        fix=f"give a YAML path or one of the presets: {', '.join(preset_names())}",
    )


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.key=value` override (value parsed as YAML) to a raw recipe dict."""
    key, _, text = assignment.partition("=")
    if not _ or not all(part.strip() for part in key.split(".")):
        raise ConfigError(
            f"--set needs KEY=VALUE, got {assignment!r}",
            fix="name the field by its dotted path, e.g. --set train.epochs=3",
        )
    try:
        value = load_yaml(text, f"override {key.strip()!r}", MAX_OVERRIDE_CHARS) if text.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(
            f"override {assignment!r}: the value is not valid YAML ({problem})",
            fix="quote strings that contain YAML syntax, e.g. --set \"name='a: b'\"",
        ) from None
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
            parent = ".".join(parts[:i])
            raise ConfigError(
                f"override {key!r}: {parent!r} is a value, not a mapping",
                fix=f"set {parent!r} as a whole, e.g. --set '{parent}={{name: ..., options: {{...}}}}'",
            )


def _message(error: Any) -> str:
    return str(error["msg"]).removeprefix("Value error, ")


GENERIC_FIX = "see `secateurs methods` and the presets in secateurs/recipes/ for valid fields"
# what a field of each type takes, and a value to show in an example
EXPECTED: dict[str, tuple[str, str]] = {
    "int": ("a whole number", "3"),
    "float": ("a number", "0.5"),
    "bool": ("true or false", "true"),
    "str": ("a string", "name"),
    "list": ("a list", "[a, b]"),
    "tuple": ("a list", "[0.9, 0.999]"),
    "dict": ("a mapping", "{key: value}"),
    "model": ("a mapping", "{key: value}"),
}
RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "too_long")


def did_you_mean(key: str, allowed: list[str]) -> str:
    """The question naming the allowed name closest to a mistyped `key`; "" if none is close."""
    close = difflib.get_close_matches(key, allowed, n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def unknown_key_fix(key: str, allowed: list[str], where: str) -> str:
    """Did you mean the allowed key closest to `key`, and every allowed key at that level."""
    mean = did_you_mean(key, allowed)
    return f"{mean + ' ' if mean else ''}{where} takes {', '.join(allowed) if allowed else 'no keys'}"


def _schema_at(schema: Any, loc: Path_) -> Any:
    """The type that validated the value at `loc` below `schema` (None where it cannot be told)."""
    for part in loc:
        schema = _unwrapped(schema)
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            field = schema.model_fields.get(str(part))
            if field is None:
                return None
            schema = field.annotation
        elif get_origin(schema) in (list, tuple) and isinstance(part, int):
            schema = (get_args(schema) or (None,))[0]
        elif get_origin(schema) is dict:
            schema = (get_args(schema) or (None, None))[1]
        elif get_origin(schema) in (Union, UnionType):  # a stage: its kind is in the path
            members = [_unwrapped(m) for m in get_args(schema)]
            schema = next((m for m in members if _kind(m) == part), None)
        else:
            return None
    return _unwrapped(schema)


def _unwrapped(schema: Any) -> Any:
    """`X` of `Annotated[X, ...]` and of `X | None`."""
    while get_origin(schema) is Annotated:
        schema = get_args(schema)[0]
    if get_origin(schema) in (Union, UnionType):
        members = [m for m in get_args(schema) if m is not type(None)]
        if len(members) == 1:
            return _unwrapped(members[0])
    return schema


def _kind(schema: Any) -> Any:
    """The `kind` a stage model is told by (None for other types)."""
    if isinstance(schema, type) and issubclass(schema, BaseModel) and "kind" in schema.model_fields:
        return schema.model_fields["kind"].default
    return None


def _keys(schema: Any) -> list[str] | None:
    """The keys a user may write in a mapping validated by `schema` (None: not a model)."""
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        return None
    hidden = {"kind", *getattr(schema, "flattened", ())}
    return [name for name in schema.model_fields if name not in hidden]


def _problem(error: Any, schema: Any, path: Path_, also: Any = (), top: str = "recipe") -> Problem:
    """One pydantic error as a Problem whose fix suits its kind: an unknown key gets the closest
    allowed key and the list of them; a wrong type the type expected, with an example; a missing
    field what to add; a value out of range the range. `also`: keys allowed besides the schema's;
    `top`: what the schema is (a recipe's fields can be set with --set, a sweep file's are YAML)."""
    kind, loc = error["type"], tuple(error["loc"])
    where = _dotted((*path, *loc))
    parent = _dotted((*path, *loc[:-1])) or f"the {top}"

    def example(value: str) -> str:
        return f"--set {where}={value}" if top == "recipe" else f"{where}: {value}"

    key = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        keys = _keys(_schema_at(schema, loc[:-1]))
        fix = GENERIC_FIX if keys is None else unknown_key_fix(key, [*keys, *also], parent)
        return Problem((*path, *loc), _message(error), fix)
    if kind == "missing":
        field = _schema_at(schema, loc[:-1])
        fields = field.model_fields if isinstance(field, type) and issubclass(field, BaseModel) else {}
        info = fields.get(key)
        what = f" ({info.description})" if info is not None and info.description else ""
        return Problem((*path, *loc), _message(error), f"add `{key}`{what} to {parent}")
    got = f", got {_shown(error.get('input'))}"
    if kind in RANGE_ERRORS:
        wanted = _message(error).removeprefix("Input should ").removeprefix("be ")
        return Problem((*path, *loc), _message(error) + got, f"give {where} a value {wanted}")
    if kind == "literal_error":
        choices = str((error.get("ctx") or {}).get("expected", ""))
        first = choices.split(",")[0].split(" or ")[0].strip().strip("'")
        fix = f"use one of {choices}, e.g. {example(first)}"
        return Problem((*path, *loc), _message(error) + got, fix)
    base = kind.split("_")[0]
    if base in EXPECTED and kind.endswith(("_type", "_parsing", "_from_float")):
        expected, sample = EXPECTED[base]
        fix = f"give {where} {expected}, e.g. {example(sample)}"
        return Problem((*path, *loc), _message(error) + got, fix)
    return Problem((*path, *loc), _message(error), "")


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def problems_of(
    err: ValidationError, schema: Any, path: Path_ = (), also: Any = (), top: str = "recipe"
) -> list[Problem]:
    """Every error of `err` (raised validating `schema`, a `top`, at `path`) as Problems, a
    validator's own FieldProblems at the paths they name."""
    problems: list[Problem] = []
    for e in err.errors():
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, FieldProblems):
            problems += [p._replace(path=(*path, *e["loc"], *p.path)) for p in cause.problems]
        else:
            problems.append(_problem(e, schema, path, also, top))
    return problems


def format_validation_error(
    err: ValidationError, origin: str, *, schema: Any = None, kind: str = "recipe", fix: str = GENERIC_FIX
) -> ConfigError:
    """One ConfigError naming every invalid field by its dotted path (the path `--set` takes), with
    the fixes for the kinds of mistake found (`fix` where none applies). `schema` is what was
    validated (a recipe by default; a sweep file passes its own)."""
    problems = problems_of(err, Recipe if schema is None else schema, top=kind)
    fixes = list(dict.fromkeys(p.fix for p in problems if p.fix)) or [fix]
    return ConfigError(
        f"invalid {kind}: " + "; ".join(f"{_dotted(p.path) or '(top level)'}: {p.message}" for p in problems),
        where=origin,
        fix="; ".join(fixes),
    )


def parse_recipe(
    text: str, origin: str = "<recipe>", overrides: list[str] | None = None, *, quick: bool = False
) -> Recipe:
    """Parse YAML text, apply overrides, validate; every problem becomes one ConfigError."""
    return recipe_from_raw(_parse_yaml(text, origin), origin, overrides, quick=quick)


def _parse_yaml(text: str, origin: str) -> Any:
    try:
        return load_yaml(text, origin)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"YAML syntax error{at}: {getattr(err, 'problem', err)}", where=origin) from None


def quick_form(raw: dict[str, Any], origin: str, *, required: bool = False) -> list[str] | None:
    """The recipe's `quick` list: overrides (as `--set` takes them) that shrink its training budgets so
    that it runs in well under a minute with the same stages; None if it has none (an error if
    `required`).

    `quick` is not a field of the recipe (nor of its hash): it says how to make a smaller one.
    """
    form = raw.get(QUICK_KEY)
    if form is None and required:
        raise ConfigError(
            "the recipe has no quick form",
            where=origin,
            fix=f"add `{QUICK_KEY}: [train.epochs=2, ...]` (overrides that shrink its training) to it, "
            "or shorten it with --set train.epochs=N",
        )
    if form is None:
        return None
    if not (isinstance(form, list) and all(isinstance(item, str) for item in form)):
        raise ConfigError(
            f"`{QUICK_KEY}` must be a list of KEY=VALUE overrides, got {_shown(form)}",
            where=origin,
            fix="write e.g. quick: [train.epochs=2, stages.5.train.epochs=1]",
        )
    return list(form)


def recipe_quick_form(source: str | Path) -> list[str]:
    """The quick form of a recipe file or preset (`quick_form`); an error if it has none."""
    text, origin = read_recipe_text(source)
    raw = _parse_yaml(text, origin)
    form = quick_form(raw if isinstance(raw, dict) else {}, origin, required=True)
    assert form is not None
    return form


def recipe_from_raw(
    raw: Any, origin: str = "<recipe>", overrides: list[str] | None = None, *, quick: bool = False
) -> Recipe:
    """Validate a recipe given as plain data (the parsed YAML); `raw` itself is not modified.

    With `quick`, the recipe's quick form (`quick_form`) applies before `overrides`.
    """
    if not isinstance(raw, dict):
        raise ConfigError("a recipe must be a YAML mapping with a `stages` list", where=origin)
    raw = copy.deepcopy(raw)
    form = quick_form(raw, origin, required=quick)
    raw.pop(QUICK_KEY, None)
    for assignment in [*(form or [] if quick else []), *(overrides or [])]:
        apply_override(raw, assignment)
    load_entry_points()
    plugins = raw.get("plugins") or []
    load_plugins(plugins if isinstance(plugins, list) else [plugins])  # before their names are checked
    try:
        return Recipe(**raw)
    except ValidationError as err:
        raise format_validation_error(err, origin) from None
    except ValueError as err:
        raise ConfigError(f"invalid recipe: {err}", where=origin) from None


def recipe_to_raw(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain data in the form users write (one key per stage), every default filled in.

    Written as a run's `recipe.yaml`; loading it gives an equal recipe, and `--set` paths such
    as `stages.2.prune.sparsity` work on it as on the original file.
    """
    raw = recipe.model_dump(mode="json", by_alias=True)
    raw["stages"] = [_wrap(stage) for stage in raw["stages"]]
    return raw


def _wrap(stage: dict[str, Any]) -> dict[str, Any]:
    """`{kind: train, options: {...}, dst: ...}` → `{train: {..., dst: ...}}` (inverse of `_unwrap`)."""
    body = {k: v for k, v in stage.items() if k != "kind"}
    if stage["kind"] == "train":
        body = {**body.pop("options"), **body}  # training options, then the methods' blocks
    elif stage["kind"] == "repeat":
        body["stages"] = [_wrap(s) for s in body["stages"]]
    return {stage["kind"]: body}


def load_recipe(source: str | Path, overrides: list[str] | None = None, *, quick: bool = False) -> Recipe:
    """Load a recipe from a YAML path or a preset name, with `key=value` overrides (after its quick
    form with `quick`)."""
    text, origin = read_recipe_text(source)
    return parse_recipe(text, origin, overrides, quick=quick)
