"""RunConfig: JSON round trip, dotted command-line overrides, and clear errors that name the key."""
from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memtrain.fields import from_dict, parse_value, to_dict
from memtrain.training.config import RunConfig, TrainConfig, apply_overrides, resolve
from memtrain.training.resume import flatten
from memtrain.presets import PRESETS, preset_config

from helpers import JSON

# resolve() checks every setting once (vocab sizes too, which a run fills in from the task); set them so
# that a base config is valid and each bad value below is the only problem.
RESOLVED = ["teacher.vocab_size=9", "cell.vocab_size=9"]


def resolved(*overrides: str) -> RunConfig:
    return apply_overrides(RunConfig(), RESOLVED + list(overrides))


# ---- round trip ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [
    RunConfig(),
    preset_config("tiny"),
    preset_config("tiny", ["cell.kind=gru", "train.betas=[0.8,0.9]", "smt.dec_samples=null", "teacher.window=5",
                           "dmt.rollout=7", "dmt.grad_horizon=null", "bptt.grad_horizon=3", "task=copy",
                           'task_args={"length": 21, "reverse": true}', "out_dir=runs/x", "init_from=runs/y"]),
], ids=["default", "tiny", "custom"])
def test_to_dict_from_dict_round_trip(cfg):
    d = to_dict(cfg)
    assert json.loads(json.dumps(d)) == d, "to_dict gives plain JSON values"
    assert isinstance(d["train"]["betas"], list)
    back = from_dict(RunConfig, d)
    assert back == cfg
    assert isinstance(back.train.betas, tuple)
    assert to_dict(back) == d
    # and through a real JSON string, as in run.json
    assert from_dict(RunConfig, json.loads(json.dumps(d, indent=1))) == cfg


def test_every_preset_resolves_and_round_trips():
    for name in PRESETS:
        cfg = preset_config(name)
        assert from_dict(RunConfig, to_dict(cfg)) == cfg


def test_tiny_preset_values():
    cfg = resolve(preset_config("tiny"))  # the cell's shape follows the teacher's
    assert (cfg.teacher.d_model, cfg.cell.d_mem, cfg.cell.mem_tokens, cfg.teacher.mem_tokens) == (16, 16, 2, 2)
    assert cfg.task_args == {"length": 12}
    assert cfg.train.steps == 5 and cfg.smt.dec_samples == 4


# ---- overrides -----------------------------------------------------------------------------------

def test_nested_overrides_set_typed_values():
    base = RunConfig()
    cfg = apply_overrides(base, ["cell.kind=gru", "train.steps=3", "smt.dec_samples=null", "task_args.length=20",
                                 "train.betas=[0.9,0.99]", "train.lr=1", "cell.norm_memory=false",
                                 "teacher.window=8", "method=bptt", "out_dir=runs/a=b"])
    assert cfg.cell.kind == "gru"
    assert cfg.train.steps == 3 and type(cfg.train.steps) is int
    assert cfg.smt.dec_samples is None
    assert cfg.task_args == {"length": 20}
    assert cfg.train.betas == (0.9, 0.99) and isinstance(cfg.train.betas, tuple)
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float
    assert cfg.cell.norm_memory is False
    assert cfg.teacher.window == 8
    assert cfg.method == "bptt"
    assert cfg.out_dir == "runs/a=b", "only the first '=' separates key and value"
    # everything not overridden keeps its default
    untouched = to_dict(cfg)
    defaults = to_dict(RunConfig())
    for section, key in [("cell", "d_mem"), ("train", "batch_size"), ("smt", "future"), ("teacher", "d_model")]:
        assert untouched[section][key] == defaults[section][key]
    # the input config is not modified
    assert base == RunConfig()


def test_task_args_overrides_merge_and_later_wins():
    cfg = preset_config("tiny", ["task_args.n_symbols=4", "train.steps=3", "train.steps=4"])
    assert cfg.task_args == {"length": 12, "n_symbols": 4}
    assert cfg.train.steps == 4
    cfg = preset_config("tiny", ['task_args={"length": 30}', "task_args.max_frac=0.25"])
    assert cfg.task_args == {"length": 30, "max_frac": 0.25}


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5
    assert parse_value("true") is True and parse_value("null") is None
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("gru") == "gru" and parse_value("runs/x") == "runs/x"


@pytest.mark.parametrize("item,key", [
    ("cell.foo=1", "cell.foo"),
    ("foo=1", "foo"),
    ("foo.bar=1", "foo.bar"),
    ("train.steps.x=1", "train.steps.x"),
    ("task_args.a.b=1", "task_args.a.b"),
])
def test_unknown_keys_are_named(item, key):
    with pytest.raises(ValueError, match=f"unknown setting.*'{key}'"):
        apply_overrides(RunConfig(), [item])


def test_override_without_equals():
    with pytest.raises(ValueError, match="'train.steps' must look like key=value"):
        apply_overrides(RunConfig(), ["train.steps"])


@pytest.mark.parametrize("item,key,what", [
    ("train.steps=abc", "train.steps", "integer"),
    ("train.steps=2.5", "train.steps", "integer"),
    ("train.steps=true", "train.steps", "integer"),
    ("cell.norm_memory=3", "cell.norm_memory", "true or false"),
    ("cell.norm_memory=yes", "cell.norm_memory", "true or false"),
    ("train.lr=fast", "train.lr", "number"),
    ("train.betas=[0.9]", "train.betas", "list of 2"),
    ("train.betas=0.9", "train.betas", "list of 2"),
    ("train.betas=[0.9,\"a\"]", "train.betas", "number"),
    ("cell.kind=[3]", "cell.kind", "string"),
    ("teacher.window=abc", "teacher.window", "integer"),
    ("task_args=3", "task_args", "mapping"),
])
def test_wrong_types_name_the_key(item, key, what):
    with pytest.raises(ValueError, match=f"{key} must be .*{what}"):
        apply_overrides(RunConfig(), [item])


def test_from_dict_refuses_unknown_keys_and_wrong_types():
    d = to_dict(RunConfig())
    bad = copy.deepcopy(d)
    bad["cell"]["foo"] = 1
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['cell.foo'\]"):
        from_dict(RunConfig, bad)
    bad = copy.deepcopy(d)
    bad["colour"] = "red"
    with pytest.raises(ValueError, match=r"\['colour'\]"):
        from_dict(RunConfig, bad)
    bad = copy.deepcopy(d)
    bad["train"]["steps"] = "3"
    with pytest.raises(ValueError, match="train.steps must be an integer"):
        from_dict(RunConfig, bad)
    bad = copy.deepcopy(d)
    bad["smt"] = 5
    with pytest.raises(ValueError, match="smt"):
        from_dict(RunConfig, bad)
    with pytest.raises(ValueError, match="must be a mapping"):
        from_dict(RunConfig, [1, 2])
    # missing keys take their defaults (an older run.json still loads)
    partial = {"method": "bptt", "train": {"steps": 7}}
    cfg = from_dict(RunConfig, partial)
    assert cfg.method == "bptt" and cfg.train.steps == 7 and cfg.train.lr == TrainConfig().lr


# ---- validate ------------------------------------------------------------------------------------

def test_resolved_base_and_presets_validate():
    resolve(resolved())
    resolve(resolved("method=dmt", "dmt.start=encoder", "teacher.encoder=window", "teacher.window=4", "cell.kind=lstm"))
    for name in PRESETS:
        resolve(apply_overrides(preset_config(name), RESOLVED))


@pytest.mark.parametrize("item,key", [
    ("cell.kind=foo", "cell.kind"),
    ("method=foo", "method"),
    ("teacher.encoder=foo", "teacher.encoder"),
    ("smt.future=0", "smt.future"),
    ("dmt.start=foo", "dmt.start"),
    ("smt.gamma=0", "smt.gamma"),
    ("smt.dec_samples=0", "smt.dec_samples"),
    ("dmt.every=0", "dmt.every"),
    ("dmt.rollout=0", "dmt.rollout"),
    ("bptt.grad_horizon=0", "bptt.grad_horizon"),
    ("train.schedule=linear", "train.schedule"),
    ("train.schedule_steps=50", "train.schedule_steps must be > train.warmup=50"),
    ("train.device=tpu", "train.device"),
    ("train.lr=0", "train.lr"),
    ("train.steps=0", "train.steps"),
    ("teacher.n_heads=3", "teacher.d_model"),
    ("cell.d_mem=10", "cell.d_mem"),
    ("teacher.window=0", "teacher.window"),
])
def test_validate_names_the_bad_setting(item, key):
    cfg = resolved(item)  # parsing succeeds: the value has the right type
    with pytest.raises(ValueError, match=f"{key}"):
        resolve(cfg)


def test_validate_window_encoder_needs_window():
    with pytest.raises(ValueError, match="teacher.window"):
        resolve(resolved("teacher.encoder=window"))


def test_validate_lstm_needs_even_memory_tokens():
    with pytest.raises(ValueError, match="cell.mem_tokens must be even"):
        resolve(resolved("cell.kind=lstm", "cell.mem_tokens=3"))


@pytest.mark.parametrize("item,key,value", [("out_dir=123", "out_dir", "123"), ("init_from=2024", "init_from", "2024")])
def test_numeric_looking_string_settings(item, key, value):
    assert getattr(apply_overrides(RunConfig(), [item]), key) == value


# ---- properties over random input (hypothesis) ---------------------------------------------------------

KEYS = sorted(flatten(to_dict(RunConfig()))) + ["task_args.length", "task_args.n_symbols", "cell", "train", "nosuch.key"]


def _valid_or_value_error(cfg: RunConfig) -> None:
    """A parsed config round-trips through JSON, and resolve() either passes or names a setting."""
    assert from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg), allow_nan=False))) == cfg
    try:
        resolve(cfg)
    except ValueError as e:
        assert str(e)


def _typed_value(default):
    """Values of the setting's own type (most parse; resolve() then judges them), rendered for the CLI."""
    if isinstance(default, bool):
        return st.booleans().map(json.dumps)
    if isinstance(default, int) or default is None:
        return st.one_of(st.integers(-3, 300), st.none()).map(json.dumps)
    if isinstance(default, float):
        return st.one_of(st.floats(-2, 2), st.floats(allow_nan=True)).map(json.dumps)
    if isinstance(default, str):
        return st.sampled_from(["smt", "dmt", "bptt", "mlp", "gru", "lstm", "memtok", "causal", "window", "empty",
                                "encoder", "cosine", "cpu", "auto", "never", "retrieval", "stack", "x"])
    return JSON.map(json.dumps)


DEFAULTS = flatten(to_dict(RunConfig()))
OVERRIDE = st.one_of(
    st.sampled_from(sorted(DEFAULTS)).flatmap(lambda k: _typed_value(DEFAULTS[k]).map(lambda v: (k, v))),
    st.tuples(st.sampled_from(KEYS), st.one_of(st.text(max_size=12), JSON.map(json.dumps))),
)


@given(items=st.lists(OVERRIDE, max_size=4))
def test_random_overrides_parse_or_raise_value_error(items):
    try:
        cfg = apply_overrides(RunConfig(), [f"{k}={v}" for k, v in items])
    except ValueError as e:
        assert str(e)
        return
    _valid_or_value_error(cfg)


@given(text=st.lists(st.text(max_size=20), max_size=3))
def test_random_text_overrides_parse_or_raise_value_error(text):
    try:
        cfg = apply_overrides(RunConfig(), text)
    except ValueError:
        return
    _valid_or_value_error(cfg)


@given(data=st.dictionaries(st.sampled_from(["method", "task", "task_args", "teacher", "cell", "train", "out_dir", "x"]), JSON,
                            max_size=4))
def test_random_json_configs_load_or_raise_value_error(data):
    try:
        cfg = from_dict(RunConfig, data)
    except ValueError:
        return
    _valid_or_value_error(cfg)
