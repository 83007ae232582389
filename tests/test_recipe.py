"""Specification of recipes: presets, the stage syntax, `--set` overrides and error messages.

A recipe error must be a `ConfigError` that names the file and the offending field by the same
dotted path `--set` takes (e.g. `stages.1.prune.sparsity`), never a pydantic dump.
"""

from __future__ import annotations

import copy
import re
from importlib import resources
from pathlib import Path

import pytest
import yaml
from tiny import tiny_recipe

from secateurs.core.errors import ConfigError
from secateurs.methods.closed_form import TRAINERS, SolvedTraining
from secateurs.methods.schedules import Gradual, Iterative
from secateurs.methods.training.gradual import GradualPrune
from secateurs.pipeline.recipe import (
    EvaluateStage,
    PruneStage,
    Recipe,
    RepeatStage,
    ResetStage,
    TrainStage,
    apply_override,
    load_recipe,
    parse_recipe,
    preset_names,
    read_recipe_text,
    recipe_from_raw,
    recipe_to_raw,
    walk,
)

TINY = """\
name: tiny
data: {name: synthetic, options: {input_shape: [20], num_classes: 3, num_train: 96, num_test: 48}}
model: {name: mlp, options: {hidden: [16]}}
sparsity: 0.5
train: {iterations: 3, batch_size: 32}
stages:
  - train: {}
  - prune: {criterion: magnitude}
  - evaluate: {}
"""


def config_error(text: str, overrides: list[str] | None = None) -> str:
    """The message of the ConfigError that parsing `text` must raise."""
    with pytest.raises(ConfigError) as info:
        parse_recipe(text, "my.yaml", overrides)
    return str(info.value)


# -- presets ----------------------------------------------------------------------------------
def test_preset_names_are_the_yaml_files_shipped_in_the_package() -> None:
    folder = resources.files("secateurs") / "recipes"
    files = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
    assert preset_names() == files
    assert {"oneshot-magnitude", "iterative-magnitude", "gradual-magnitude"} <= set(files)


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_validates_and_is_named_after_its_file(name: str) -> None:
    recipe = load_recipe(name)
    assert isinstance(recipe, Recipe)
    assert recipe.name == name
    assert recipe.description  # `secateurs methods` shows it
    assert recipe.sparsity is not None and 0 < recipe.sparsity < 1
    assert recipe.stages
    # Every training stage resolves to a valid budget, and the preset is the same by name or path.
    for stage in walk(recipe.stages):
        if isinstance(stage, TrainStage):
            config = recipe.train_config(stage.options)
            if isinstance(config, SolvedTraining):  # a `method` solving the weights has no optimizer budget
                assert config.method in TRAINERS
                continue
            assert (config.epochs is None) != (config.iterations is None)
    path = Path(str(resources.files("secateurs") / "recipes" / f"{name}.yaml"))
    assert load_recipe(path) == recipe
    assert load_recipe(f"{name}.yaml") == recipe


def test_unknown_recipe_source_lists_the_presets() -> None:
    with pytest.raises(ConfigError, match=r"'nope' is neither a file nor a preset.*oneshot-magnitude"):
        read_recipe_text("nope")


# -- stage syntax -----------------------------------------------------------------------------
NESTED = """\
sparsity: 0.9
train: {epochs: 4, optimizer: {lr: 0.1, momentum: 0.5}}
stages:
  - train: {iterations: 7, prune: {criterion: random, schedule: {name: gradual, frequency: 3}}}
  - prune: {criterion: taylor, allocation: erk, sparsity: 0.3, data_batches: 2}
  - reset: {mode: rewind, step: 4}
  - repeat:
      schedule: {name: iterative, rate: 0.5}
      stages:
        - prune: {}
        - reset: {mode: reinit}
        - repeat:
            schedule: {name: oneshot, sparsity: 0.95}
            stages: [{evaluate: {label: inner}}]
        - train: {epochs: 1}
  - evaluate: {label: final, per_layer: true}
"""


def test_single_key_stages_parse_to_their_kinds_with_their_fields() -> None:
    recipe = parse_recipe(NESTED)
    train, prune, reset, repeat, evaluate = recipe.stages
    assert isinstance(train, TrainStage)
    assert train.options == {"iterations": 7}  # the budget override, without the prune block
    assert isinstance(train.methods["prune"], GradualPrune)
    assert train.methods["prune"].criterion == "random"
    assert train.methods["prune"].schedule == Gradual(frequency=3)
    assert isinstance(prune, PruneStage)
    assert (prune.criterion, prune.allocation, prune.sparsity, prune.data_batches) == (
        "taylor",
        "erk",
        0.3,
        2,
    )
    assert isinstance(reset, ResetStage)
    assert (reset.mode, reset.options.step) == ("rewind", 4)
    assert isinstance(evaluate, EvaluateStage)
    assert (evaluate.label, evaluate.per_layer) == ("final", True)
    assert isinstance(repeat, RepeatStage)
    assert repeat.schedule == Iterative(rate=0.5)
    assert [type(s) for s in repeat.stages] == [PruneStage, ResetStage, RepeatStage, TrainStage]
    assert repeat.stages[1].mode == "reinit"
    assert repeat.stages[3].options == {"epochs": 1}
    inner = repeat.stages[2]
    assert inner.schedule.levels() == [0.95]
    assert inner.stages == [EvaluateStage(label="inner")]


def test_walk_visits_every_stage_depth_first() -> None:
    kinds = [stage.kind for stage in walk(parse_recipe(NESTED).stages)]
    assert kinds == [
        "train",
        "prune",
        "reset",
        "repeat",
        "prune",
        "reset",
        "repeat",
        "evaluate",
        "train",
        "evaluate",
    ]


def test_kind_form_and_single_key_form_are_the_same_stage() -> None:
    single = parse_recipe(TINY)
    keyed = TINY.replace("- prune: {criterion: magnitude}", "- {kind: prune, criterion: magnitude}")
    assert parse_recipe(keyed) == single


def test_train_stage_without_body_uses_the_defaults() -> None:
    recipe = parse_recipe(TINY.replace("- train: {}", "- train:"))
    assert recipe.stages[0] == TrainStage()
    assert recipe.train_config(recipe.stages[0].options).iterations == 3


# -- train_config merging ---------------------------------------------------------------------
def test_stage_epochs_replace_default_iterations_and_vice_versa() -> None:
    recipe = parse_recipe(TINY)
    by_epochs = recipe.train_config({"epochs": 2})
    assert (by_epochs.epochs, by_epochs.iterations, by_epochs.batch_size) == (2, None, 32)
    epochs_recipe = parse_recipe(TINY.replace("iterations: 3", "epochs: 4"))
    by_iterations = epochs_recipe.train_config({"iterations": 5})
    assert (by_iterations.epochs, by_iterations.iterations) == (None, 5)


def test_stage_options_merge_deeply_and_leave_the_defaults_untouched() -> None:
    recipe = parse_recipe(NESTED)
    config = recipe.train_config({"optimizer": {"lr": 0.01}})
    assert (config.optimizer.lr, config.optimizer.momentum, config.epochs) == (0.01, 0.5, 4)
    assert recipe.train == {"epochs": 4, "optimizer": {"lr": 0.1, "momentum": 0.5}}


def test_a_stage_giving_both_budgets_is_an_error() -> None:
    message = config_error(TINY.replace("- train: {}", "- train: {epochs: 2, iterations: 3}"))
    assert "stages.0.train: give exactly one training budget" in message


# -- overrides --------------------------------------------------------------------------------
def test_overrides_set_top_level_nested_and_stage_fields() -> None:
    recipe = load_recipe(
        "oneshot-magnitude",
        [
            "train.epochs=3",
            "sparsity=0.8",
            "stages.2.prune.criterion=taylor",
            "stages.5.train.optimizer.lr=0.5",
        ],
    )
    assert recipe.train["epochs"] == 3
    assert recipe.train["batch_size"] == 128  # siblings of an overridden key survive
    assert recipe.sparsity == 0.8
    assert recipe.stages[2].criterion == "taylor"
    assert recipe.train_config(recipe.stages[5].options).optimizer.lr == 0.5
    assert load_recipe("oneshot-magnitude").stages[2].criterion == "magnitude"  # presets are not mutated


def test_override_values_are_parsed_as_yaml() -> None:
    recipe = parse_recipe(TINY, overrides=["model.options.hidden=[8, 4]", "layers.skip_last=true", "seed=7"])
    assert recipe.model.options == {"hidden": [8, 4]}
    assert recipe.layers.skip_last is True
    assert recipe.seed == 7


def test_override_inside_a_repeat_block() -> None:
    recipe = load_recipe("iterative-magnitude", ["stages.2.repeat.stages.2.train.epochs=1"])
    assert recipe.stages[2].stages[2].options["epochs"] == 1


def test_override_creates_missing_mappings() -> None:
    recipe = parse_recipe(
        TINY,
        overrides=[
            "stages.1.prune.allocation=explicit",
            "stages.1.prune.allocation_options.sparsities={'classifier': 0.1}",
        ],
    )
    assert recipe.stages[1].allocation_options == {"sparsities": {"classifier": 0.1}}


@pytest.mark.parametrize(
    ("assignment", "pattern"),
    [
        ("stages.3.prune.sparsity=0.5", r"'stages\.3' needs a list index below 3"),
        ("stages.x.prune.sparsity=0.5", r"'stages\.x' needs a list index below 3"),
        ("stages.-1.prune.sparsity=0.5", r"'stages\.-1' needs a list index below 3"),
        ("sparsity=[0.5", r"override 'sparsity=\[0\.5': the value is not valid YAML"),
        ("sparsity", r"--set needs KEY=VALUE, got .sparsity."),
        ("sparsity.deep=1", r"'sparsity' is a value, not a mapping"),
        ("sparsity=1.5", r"sparsity: Input should be less than 1"),
        ("stages.1.prune.criterion=[a, b]", r"stages\.1\.prune\.criterion: Input should be a valid string"),
    ],
)
def test_bad_overrides_are_config_errors(assignment: str, pattern: str) -> None:
    message = config_error(TINY, [assignment])
    assert re.search(pattern, message), message
    assert "\n" not in message  # one line, for the CLI


def test_apply_override_edits_the_raw_mapping_in_place() -> None:
    raw = yaml.safe_load(TINY)
    apply_override(raw, "stages.1.prune.sparsity=0.25")
    assert raw["stages"][1] == {"prune": {"criterion": "magnitude", "sparsity": 0.25}}


# -- errors name the field --------------------------------------------------------------------
def test_yaml_syntax_error_names_the_line() -> None:
    broken = TINY.replace("sparsity: 0.5", "sparsity: 0.5: 3")  # line 4 of TINY
    message = config_error(broken)
    assert message.startswith("my.yaml: YAML syntax error at line 4, column 14: mapping values"), message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("name: tiny", "name: tiny\nbogus: 1", "bogus: Extra inputs are not permitted"),
        ("- evaluate: {}", "- finetune: {}", "stages.2: unknown stage 'finetune'; stages are train, prune"),
        ("- evaluate: {}", "- {evaluate: {}, prune: {}}", "stages.2: a stage is a mapping with one key"),
        (
            "- evaluate: {}",
            "- evaluate: {lable: x}",
            "stages.2.evaluate.lable: Extra inputs are not permitted",
        ),
        ("{criterion: magnitude}", "{criterion: magnitude, foo: 1}", "stages.1.prune.foo: Extra inputs"),
        ("- train: {}", "- train: {epoch: 3}", "stages.0.train.epoch: Extra inputs are not permitted"),
        ("- train: {}", "- train: {epochs: many}", "stages.0.train.epochs: Input should be a valid number"),
        (
            "- train: {}",
            "- train: {eval_every: 0}",
            "stages.0.train.eval_every: Input should be greater than 0",
        ),
        (
            "- train: {}",
            "- train: {eval_every: 4}",
            "stages.0.train: eval_every=4 is more than the 3 iterations: no evaluation before the end",
        ),
        (
            "- train: {}",
            "- train: {prune: {schedule: {frequency: 0}}}",
            "stages.0.train.prune.schedule.frequency: Input should be greater than 0",
        ),
        ("sparsity: 0.5", "sparsity: 1.5", "sparsity: Input should be less than 1"),
        ("sparsity: 0.5", "sparsity: -0.1", "sparsity: Input should be greater than or equal to 0"),
        ("sparsity: 0.5", "sparsity: high", "sparsity: Input should be a valid number"),
        ("{criterion: magnitude}", "{sparsity: 1.5}", "stages.1.prune.sparsity: Input should be less than 1"),
        (
            "{criterion: magnitude}",
            "{sparsity: -0.1}",
            "stages.1.prune.sparsity: Input should be greater than",
        ),
        ("iterations: 3", "iterations: 3, epochs: 2", "train: give exactly one training budget"),
        ("iterations: 3", "iterations: three", "train.iterations: Input should be a valid integer"),
        (
            "batch_size: 32",
            "batch_size: 32, optimizer: {lr: fast}",
            "train.optimizer.lr: Input should be a valid",
        ),
        (
            "- evaluate: {}",
            "- reset: {mode: rewinds}",
            "stages.2.reset.mode: unknown reset mode 'rewinds'. Did you mean 'rewind'? "
            "Use one of: keep, lr_rewind, orthp, reinit, rewind",
        ),
        (
            "- evaluate: {}",
            "- repeat: {schedule: {name: iterative, rate: 2}, stages: []}",
            "stages.2.repeat.schedule.rate: Input should be less than 1",
        ),
        (
            "- evaluate: {}",
            "- repeat: {schedule: {name: oneshot}, stages: [{prune: {bar: 1}}]}",
            "stages.2.repeat.stages.0.prune.bar: Extra inputs are not permitted",
        ),
        (
            "- evaluate: {}",
            "- repeat: {schedule: {name: oneshot}, stages: [{zap: {}}]}",
            "stages.2.repeat.stages.0: unknown stage 'zap'",
        ),
        (
            "- evaluate: {}",
            "- repeat: {schedule: {name: oneshot}, stages: [{train: {iterations: 0}}]}",
            "stages.2.repeat.stages.0.train.iterations: Input should be greater than 0",
        ),
        ("- evaluate: {}", "- evaluate", "stages.2: Input should be a valid dictionary"),
    ],
)
def test_invalid_recipes_name_the_offending_field(old: str, new: str, expected: str) -> None:
    assert TINY.count(old) == 1
    message = config_error(TINY.replace(old, new))
    assert message.startswith("my.yaml: invalid recipe: "), message
    assert expected in message, message
    assert "\n" not in message


def test_missing_stages_and_non_mapping_recipes_are_errors() -> None:
    assert "stages: Field required" in config_error("seed: 1\n")
    assert "a recipe must be a YAML mapping" in config_error("- train: {}\n")
    assert "a recipe must be a YAML mapping" in config_error("")


# -- plain data in and out --------------------------------------------------------------------
def test_recipe_from_raw_copies_its_input_and_accepts_tuples() -> None:
    raw = yaml.safe_load(TINY)
    raw["data"]["options"]["input_shape"] = (20,)
    before = copy.deepcopy(raw)
    recipe = recipe_from_raw(raw, "<dict>", ["sparsity=0.7", "stages.1.prune.criterion=random"])
    assert recipe.sparsity == 0.7 and recipe.stages[1].criterion == "random"
    assert raw == before


@pytest.mark.parametrize("source", [*preset_names(), "nested"])
def test_recipe_to_raw_round_trips_in_the_single_key_form(source: str) -> None:
    recipe = parse_recipe(NESTED) if source == "nested" else load_recipe(source)
    raw = recipe_to_raw(recipe)
    assert all(len(stage) == 1 and "kind" not in stage for stage in raw["stages"])
    assert recipe_from_raw(yaml.safe_load(yaml.safe_dump(raw))) == recipe
    if source == "oneshot-magnitude":  # the override paths of the original work on the dump
        changed = recipe_from_raw(raw, overrides=["stages.2.prune.sparsity=0.3", "stages.5.train.epochs=1"])
        assert changed.stages[2].sparsity == 0.3
        assert changed.stages[5].options["epochs"] == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.1.prune.criterion_options={tempreture: 2}", "criterion 'grasp' has no option 'tempreture'"),
        ("stages.1.prune.criterion_options={temperature: -1}", "grasp temperature must be a positive number"),
        ("stages.1.prune.structure_options={n: 9}", "structure 'unstructured' has no option 'n'"),
        ("stages.1.prune.allocation_options={normalize: max}", "normalize: Input should be 'none' or 'mean'"),
        ("stages.1.prune.sanity=shufle", "unknown sanity check 'shufle'"),
        ("model.options={hidden: abc}", "model 'mlp': invalid option \\(hidden"),
        ("data.options={num_train: x}", "data 'synthetic': invalid option \\(num_train"),
        ("model.options={depth: 3}", "model 'mlp' has no option 'depth'"),
        ("stages.0.train.dst={method: set, options: {zeta: 1}}", "method 'set' has no option 'zeta'"),
        ("stages.0.train.admm={projection: nm, options: {k: 2}}", "projection 'nm' has no option 'k'"),
        ("stages.0.train.select={method: edge_pop}", "unknown selection method 'edge_pop'"),
    ],
)
def test_every_component_option_is_checked_when_the_recipe_is_read(override: str, message: str) -> None:
    """One error naming the component and the option, before anything is built or trained."""
    raw = tiny_recipe({"train": {}}, {"prune": {"criterion": "grasp"}}, {"evaluate": {}})
    with pytest.raises(ConfigError, match=message) as caught:
        recipe_from_raw(raw, "<tiny>", [override])
    assert str(caught.value).count("invalid recipe:") == 1
