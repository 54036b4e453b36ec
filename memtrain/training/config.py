"""The run configuration: typed dataclasses owned by their modules, gathered in `RunConfig`,
serialised as plain JSON (fields.py) and overridden from the command line with dotted `key=value`
pairs. `memtrain train --help` lists every setting with the comment on its line here.

Settings marked `control(...)` are run control: when a run stops, how often it evaluates, logs and
saves, where it runs. Only they may change when a run is resumed (training/resume.py).
"""
from __future__ import annotations

import copy
import typing
from dataclasses import dataclass, field, fields, is_dataclass

from ..fields import from_dict, set_dotted, to_dict
from ..methods import METHODS
from ..methods.bptt import BPTTConfig
from ..methods.dmt import DMTConfig
from ..methods.rollout import RolloutConfig
from ..methods.smt import SMTConfig
from ..methods.smt_dmt import HandoverConfig
from ..models.cells import RESIDUAL_KINDS, CellConfig
from ..models.teacher import TeacherConfig

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "bf16", "fp32")
RESUME_MODES = ("auto", "never", "require")
EVAL_ROWS = ("batch", "all")
# settings renamed since the first release: saved runs are translated (`upgrade`), the command line
# names the new one
RENAMED = {"bptt.truncate": "bptt.grad_horizon", "task_args.eval_path": "task_args.val_path",
           "smt.dyn_samples": "smt.transitions"}
# defaults before memtrain 0.5 made the recommended recipe (the demo's) the default
OLD_DEFAULTS = {"method": "smt", "teacher.token_shift": False, "smt.dec_samples": 32, "smt.coef_last_input": 0.0}
# settings added in format 7 (memtrain 0.6), off at their defaults: a run saved before them trained without them
ADDED_IN_7 = ("own_steps", "own_gain", "far_samples", "coef_far", "slow_tokens", "coef_slow")
ADDED_IN_8 = ("coef_dyn_teacher",)  # smt settings added in format 8 (handover's are all filled in below)
# format 9 (0.10): the cosine schedule's own length, DMT's growing rollouts (handover.smt_steps / dmt_schedule are filled in below)
ADDED_IN_9 = {"train.schedule_steps": None, "dmt.grow": None, "dmt.grow_patience": 5, "dmt.grow_on": "next", "teacher.features": None,
              "teacher.output": "categorical", "teacher.targets": None, "cell.features": None, "cell.output": "categorical",
              "cell.targets": None}
ADDED_IN_10 = {"dmt.grow_min_steps": 0}  # format 10 (0.11): off, how every older run grew
ADDED_IN_12 = {"teacher.running_sums": None}  # format 12 (0.14): off (11, 0.13: handover.count_from, filled in with handover below)
ADDED_IN_13 = {"smt.decoder_reads": "all", "smt.lagged_inputs": None}  # format 13 (0.19): the decoder read every future input


def control(default):
    """A run-control setting (may change on resume)."""
    return field(default=default, metadata={"run_control": True})


@dataclass
class TrainConfig:
    """The optimisation and the run around it."""
    steps: int = control(1000)  # updates to train for (a resumed run may be given more)
    batch_size: int = 32  # sequences per update (the global batch: processes x grad_accum x micro-batch)
    lr: float = 1e-3  # AdamW learning rate (after warmup)
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW betas
    weight_decay: float = 0.01  # AdamW weight decay
    clip: float | None = 1.0  # gradient-norm clip (None: off)
    warmup: int = 50  # linear learning-rate warmup, in updates
    schedule: str = "constant"  # "constant" | "cosine" (after warmup, down to 0 at `schedule_steps`)
    schedule_steps: int | None = None  # the cosine schedule's length in updates, after which the rate stays at 0 (None: train.steps); lets a time-limited run end its schedule where it chooses
    eval_every: int = control(100)  # evaluate the RNN alone every this many updates
    eval_batch: int = control(256)  # held-out sequences per evaluation
    seed: int = 0  # the data stream, the networks' initial weights and the loss randomness
    device: str = control("auto")  # "auto" (CUDA if there is one) | "cpu" | "cuda" | "mps"
    threads: int | None = control(None)  # CPU threads for torch (None: torch's default)
    time_limit: float | None = control(None)  # stop after this many seconds of training (None: no limit)
    compile: bool = control(False)  # torch.compile the cell step and the teacher encoder (see build.compile_networks)
    log_every: int = control(10)  # write the training loss to metrics.jsonl every this many steps
    ckpt_every: int | None = control(500)  # save a training checkpoint every this many steps (None: only at the end / on a stop signal)
    keep_last: int = control(2)  # training checkpoints kept in out_dir/checkpoints
    resume: str = control("auto")  # "auto": continue out_dir's run if it has one | "require" | "never" (see resume.py)
    max_bad_steps: int = control(10)  # stop after this many updates in a row with a non-finite loss or gradient
    grad_accum: int = control(1)  # micro-batches per update (batch_size is the global batch: processes x grad_accum x micro)
    precision: str = control("auto")  # "auto": bf16 autocast on CUDA, fp32 elsewhere | "bf16" (any device) | "fp32"
    tf32: bool = control(True)  # CUDA: TF32 matmuls and convolutions (see build.configure_precision)
    flush_denormal: bool = control(True)  # CPU: flush denormal floats to zero while training (they slowed BPTT ~9x here, docs/CHANGELOG.md)
    eval_rows: str = control("batch")  # "batch": train.eval_batch held-out sequences drawn once | "all": every held-out row once (file tasks)
    keep_best: bool = control(False)  # also keep the model with the lowest held-out RNN-alone loss (rnn_ce) in out_dir/best
    progress_every: float = control(30.0)  # seconds between plain progress lines when stderr is not a terminal (a log file)
    tensorboard: bool = control(False)  # also log metrics for TensorBoard in out_dir/tensorboard (pip install 'memtrain[tensorboard]')

    def validate(self) -> None:
        for n in ("steps", "batch_size", "eval_every", "eval_batch", "log_every", "keep_last", "max_bad_steps", "grad_accum"):
            if getattr(self, n) < 1:
                raise ValueError(f"train.{n} must be >= 1, got {getattr(self, n)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        for n in ("warmup", "weight_decay", "seed"):
            if getattr(self, n) < 0:
                raise ValueError(f"train.{n} must be >= 0, got {getattr(self, n)}")
        for n, unset in (("threads", "torch's default"), ("ckpt_every", "only at the end"), ("clip", "off")):
            v = getattr(self, n)
            if v is not None and v <= 0:
                raise ValueError(f"train.{n} must be > 0 or null ({unset}), got {v}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(f"train.time_limit must be > 0 seconds or null, got {self.time_limit}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"train.schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.schedule_steps is not None and self.schedule_steps <= self.warmup:
            raise ValueError(f"train.schedule_steps must be > train.warmup={self.warmup} or null (train.steps), got {self.schedule_steps}")
        if self.seed >= 2**63:
            raise ValueError(f"train.seed must be < 2**63, got {self.seed}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must both be in [0, 1), got {list(self.betas)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.batch_size={self.batch_size} must split evenly into train.grad_accum={self.grad_accum} micro-batches")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.resume not in RESUME_MODES:
            raise ValueError(f"train.resume must be one of {RESUME_MODES}, got {self.resume!r}")
        if self.eval_rows not in EVAL_ROWS:
            raise ValueError(f"train.eval_rows must be one of {EVAL_ROWS}, got {self.eval_rows!r}")
        if self.progress_every <= 0:
            raise ValueError(f"train.progress_every must be > 0 seconds, got {self.progress_every}")
        if self.device not in DEVICES:
            raise ValueError(f"train.device must be one of {DEVICES}, got {self.device!r}")


@dataclass
class RunConfig:
    """One run: what to train, on what, how."""
    method: str = "smt-dmt"  # the training method: smt-dmt | smt | dmt | bptt (or one added with methods.register)
    task: str = "retrieval"  # the data: retrieval | copy | stack | kv | icl | parity | tokens | npz | prepared
    task_args: dict = field(default_factory=dict)  # the task's own parameters, e.g. {"length": 64} (see memtrain.data)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    cell: CellConfig = field(default_factory=CellConfig)
    smt: SMTConfig = field(default_factory=SMTConfig)
    dmt: DMTConfig = field(default_factory=DMTConfig)
    bptt: BPTTConfig = field(default_factory=BPTTConfig)
    handover: HandoverConfig = field(default_factory=HandoverConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)  # how the cell runs through time: stepped or solved in parallel
    method_args: dict = field(default_factory=dict)  # settings of a registered method without a section here
    train: TrainConfig = field(default_factory=TrainConfig)
    init_from: str | None = control(None)  # a finished run's directory to start from (e.g. DMT or BPTT after SMT)
    out_dir: str | None = control(None)  # where metrics and checkpoints go (None: nothing written)

    def validate(self) -> None:
        """Check every setting as it stands. `resolve` calls it once, on the derived configuration (where
        the cell's shape is the teacher's); on a configuration as written, unset shapes are not checked."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {self.method!r}")
        for part in (self.teacher, self.cell, self.smt, self.dmt, self.bptt, self.handover, self.rollout, self.train):
            part.validate()
        if self.smt.slow_tokens >= self.teacher.mem_tokens:
            raise ValueError(f"smt.slow_tokens={self.smt.slow_tokens} must leave at least one of teacher.mem_tokens="
                             f"{self.teacher.mem_tokens} memory tokens fast (for the recent inputs)")
        cls = METHODS[self.method]
        own_section = bool(cls.sections) or hasattr(self, self.method)
        if self.method_args and own_section:
            where = " / ".join(f"{s}.<name>" for s in cls.sections or (self.method,))
            raise ValueError(f"method_args is for registered methods without a section of their own; "
                             f"method {self.method!r} takes its settings as {where}=...")
        settings = method_settings(self)
        if not own_section and hasattr(settings, "validate"):
            settings.validate()  # a registered method's method_args (its sections were checked above)


# cell setting <- teacher setting, where the cell's is unset
SHAPE_FROM_TEACHER = {"mem_tokens": "mem_tokens", "d_mem": "d_model", "n_heads": "n_heads", "readout_depth": "decoder_depth",
                      "features": "features", "output": "output", "targets": "targets"}


def resolve(cfg: RunConfig, task=None) -> RunConfig:
    """The one place a run's settings are derived and checked: a new configuration (`cfg` is not
    changed) that everything downstream takes as it is; a run saves it, `memtrain config` prints it.

    Derived where the user left them unset: the cell's memory shape (mem_tokens, d_mem, n_heads,
    readout_depth) from the teacher section, so one set of numbers shapes both (in a BPTT run the
    teacher section only does that); the cell's own defaults (`CellConfig.filled`: residual,
    norm_memory); and, given the run's task, the vocabulary sizes (unset: as the other one, else the
    task's; a set one must hold the task's token ids) and, with `smt.decoder_reads=known`, which of its
    inputs are lagged targets (`smt.lagged_inputs`). Then every setting is checked once, and with a
    task also the method's settings against its sequence length. Without a task the vocabularies
    stay unset (what `memtrain config` shows)."""
    r = copy.deepcopy(cfg)
    for c, t in SHAPE_FROM_TEACHER.items():
        if getattr(r.cell, c) is None:
            setattr(r.cell, c, getattr(r.teacher, t))
    r.cell = r.cell.filled()  # (the shapes are set: this gives `residual` and `norm_memory` the cell's own defaults)
    r.validate()
    if task is None:
        return r
    if getattr(task, "features", None) is not None:
        _real_valued(r, task)
    else:
        V = task.vocab_size
        for part, name in ((r.teacher, "teacher"), (r.cell, "cell")):
            if part.vocab_size is not None and part.vocab_size < V:
                raise ValueError(f"{name}.vocab_size={part.vocab_size} but task '{r.task}' uses token ids up to {V - 1} (vocab {V})")
        chosen = r.teacher.vocab_size or r.cell.vocab_size or V  # unset: as the other one, else the task's
        r.teacher.vocab_size = r.teacher.vocab_size or chosen
        r.cell.vocab_size = r.cell.vocab_size or chosen
    if r.smt.decoder_reads == "known" and r.smt.lagged_inputs is None:
        r.smt.lagged_inputs = getattr(task, "lagged_inputs", None)
    r.smt.check_features(getattr(task, "features", None), r.task)
    cls = METHODS[r.method]
    cls.check(method_settings(r), task.length)
    if cls.needs_init and not r.init_from:
        raise ValueError(f"method {r.method!r} fine-tunes a finished run: set init_from=<run dir>")
    return r


def _real_valued(r: RunConfig, task) -> None:
    """A task of real feature inputs (task=series): both networks read its F features; for real targets
    (its `output` not categorical) they predict its G targets, a categorical output (the default)
    becoming the task's distribution; for token targets, over its vocabulary."""
    categorical = task.output == "categorical"
    for part, name in ((r.teacher, "teacher"), (r.cell, "cell")):
        wanted = [("features", task.features)] + ([] if categorical else [("targets", task.targets)])
        for key, want in wanted:
            have = getattr(part, key)
            if have is not None and have != want:
                raise ValueError(f"{name}.{key}={have} but task '{r.task}' has {want}")
            setattr(part, key, want)
        if categorical:
            part.vocab_size = part.vocab_size or task.vocab_size
        else:
            if part.output == "categorical":
                part.output = task.output
            part.vocab_size = None


def method_settings(cfg: RunConfig):
    """The settings of `cfg.method`: its RunConfig section(s), or `method_args` read as its config
    class (checked by `RunConfig.validate`)."""
    cls = METHODS[cfg.method]
    if cls.sections:
        return tuple(getattr(cfg, name) for name in cls.sections)
    if hasattr(cfg, cfg.method) and is_dataclass(getattr(cfg, cfg.method)):
        return getattr(cfg, cfg.method)
    if cls.config_class is None:
        if cfg.method_args:
            raise ValueError(f"method {cfg.method!r} takes no settings, got method_args={cfg.method_args}")
        return None
    return from_dict(cls.config_class, cfg.method_args, "method_args.")


def run_control_keys(cls=RunConfig, prefix: str = "") -> set[str]:
    """Dotted names of every run-control setting (the `control(...)` fields)."""
    hints = typing.get_type_hints(cls)
    keys = set()
    for f in fields(cls):
        if f.metadata.get("run_control"):
            keys.add(prefix + f.name)
        elif is_dataclass(hints[f.name]):
            keys |= run_control_keys(hints[f.name], f"{prefix}{f.name}.")
    return keys


def upgrade(config: dict, version: int) -> dict:
    """A configuration saved by format `version` (1, 2: memtrain 0.1; 3: 0.2; 4: 0.3; 5: 0.4; 6: 0.5; 7: 0.6-0.7; 8: 0.8-0.9; 9: 0.10; 10: 0.11-0.12; 11: 0.13; 12: 0.14-0.18) in today's names and
    values: renamed settings, sections added since (at their defaults, which is how the run behaved);
    before 3 also None instead of 0 or "" for "not set" and `residual` only on cells that have one."""
    if version >= 13:
        return config
    if not isinstance(config, dict):
        return config  # from_dict refuses it with the reason
    c = copy.deepcopy(config)
    section = lambda name: c[name] if isinstance(c.get(name), dict) else {}  # noqa: E731  (a broken file: from_dict names it)
    for old, new in RENAMED.items():
        (sec, o), (_, n) = old.split("."), new.split(".")
        if o in section(sec):
            c[sec][n] = c[sec].pop(o)
    # format 4 (0.3): the smt-dmt method's section; 5 (0.4): handover.teacher_min_gain; 8 (0.8): handover.solved_coef_dyn_teacher;
    # 9 (0.10): handover.smt_steps, dmt_schedule; 11 (0.13): handover.count_from ("start"); at their defaults
    # (an smt-dmt run of 0.3 resumed today no longer counts a teacher that has learned nothing as solved)
    handover = c.setdefault("handover", {}) if isinstance(c.get("handover", {}), dict) else {}
    for key, value in to_dict(HandoverConfig()).items():
        handover.setdefault(key, value)
    # memtrain 0.5 made the recommended recipe the default; a setting an older run's file lacks takes
    # the default of its time, which is how the run behaved
    for key, old in OLD_DEFAULTS.items():
        sec, _, name = key.rpartition(".")
        if not sec:
            c.setdefault(name, old)
        elif isinstance(c.get(sec, {}), dict):
            c.setdefault(sec, {}).setdefault(name, old)
    # 6 (0.5): the rollout section, at its defaults (before, every rollout was stepped)
    if isinstance(c.get("rollout", {}), dict):
        c["rollout"] = {**to_dict(RolloutConfig()), **c.get("rollout", {})}
    # 7 (0.6): smt's error-correcting settings; 8 (0.8): smt.coef_dyn_teacher (and
    # handover.solved_coef_dyn_teacher, above); all at their defaults (off: how every older run trained)
    if isinstance(c.get("smt", {}), dict):
        for name in ADDED_IN_7 + ADDED_IN_8:
            c.setdefault("smt", {}).setdefault(name, getattr(SMTConfig(), name))
    # 9 (0.10): train.schedule_steps and dmt.grow, at their defaults (the schedule spanned train.steps, rollouts were fixed);
    # 10 (0.11): dmt.grow_min_steps, 0; 12 (0.14): teacher.running_sums, off; 13 (0.19): smt.decoder_reads, "all"
    # (every step above only fills in what a file lacks, so a format 10-12 file passes through it unchanged but
    # for what came after it)
    for key, value in {**ADDED_IN_9, **ADDED_IN_10, **ADDED_IN_12, **ADDED_IN_13}.items():
        sec, _, name = key.partition(".")
        if isinstance(c.get(sec, {}), dict):
            c.setdefault(sec, {}).setdefault(name, value)
    if version >= 3:
        return c
    train, cell, args = section("train"), section("cell"), section("task_args")
    for key in ("threads", "clip", "ckpt_every"):
        if train.get(key) == 0:
            train[key] = None
    for part in (section("teacher"), cell):
        if part.get("vocab_size") == 0:
            part["vocab_size"] = None
    for key in ("init_from", "out_dir"):
        if c.get(key) == "":
            c[key] = None
    if cell.get("kind") not in RESIDUAL_KINDS and "residual" in cell:
        cell["residual"] = None
    for key, unset in (("val_path", ""), ("vocab", 0), ("length", 0), ("layout", ""), ("path", "")):
        if args.get(key) == unset:
            del args[key]
    c.setdefault("method_args", {})
    return c


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply 'a.b=value' overrides (e.g. cell.kind=gru, train.steps=200, task_args.length=128)."""
    data = to_dict(cfg)
    for item in overrides:
        key = item.split("=", 1)[0]
        if key in RENAMED:
            raise ValueError(f"setting {key!r} is now called {RENAMED[key]!r}: write {RENAMED[key]}=...")
        set_dotted(data, item, free=("task_args", "method_args"))
    return from_dict(RunConfig, data)
