"""The run configuration: typed dataclasses owned by their modules, gathered in `RunConfig`,
serialised as plain JSON and overridden from the command line with dotted `key=value` pairs."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..fields import from_dict, set_dotted, to_dict

from ..methods.bptt import BPTTConfig
from ..models.cells import CellConfig
from ..methods.dmt import DMTConfig
from .resume import RESUME_MODES
from ..methods.smt import SMTConfig
from ..models.teacher import TeacherConfig

METHODS = ("smt", "dmt", "bptt")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    clip: float = 1.0  # gradient-norm clip (0: off)
    warmup: int = 50
    schedule: str = "constant"  # "constant" | "cosine" (after warmup)
    eval_every: int = 100
    eval_batch: int = 256
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # CPU threads for torch (0: leave torch's default)
    time_limit: float | None = None  # stop after this many seconds of training (None: no limit)
    compile: bool = False  # torch.compile the cell step and the teacher encoder (see trainer.compile_networks)
    log_every: int = 10  # write the training loss to metrics.jsonl every this many steps
    ckpt_every: int = 500  # save a training checkpoint every this many steps (0: only at the end / on a stop signal)
    keep_last: int = 2  # training checkpoints kept in out_dir/checkpoints
    resume: str = "auto"  # "auto": continue out_dir's run if it has one | "require" | "never" (see resume.py)
    max_bad_steps: int = 10  # stop after this many updates in a row with a non-finite loss or gradient
    grad_accum: int = 1  # micro-batches per update (batch_size is the global batch: processes x grad_accum x micro)
    precision: str = "auto"  # "auto": bf16 autocast on CUDA, fp32 elsewhere | "bf16" (any device) | "fp32"
    tf32: bool = True  # CUDA: TF32 matmuls and convolutions (see trainer.configure_precision)

    def validate(self) -> None:
        for n in ("steps", "batch_size", "eval_every", "eval_batch", "log_every", "keep_last", "max_bad_steps", "grad_accum"):
            if getattr(self, n) < 1:
                raise ValueError(f"train.{n} must be >= 1, got {getattr(self, n)}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        for n in ("warmup", "threads", "clip", "weight_decay", "ckpt_every", "seed"):
            if getattr(self, n) < 0:
                raise ValueError(f"train.{n} must be >= 0, got {getattr(self, n)}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise ValueError(f"train.time_limit must be > 0 seconds or null, got {self.time_limit}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"train.schedule must be 'constant' or 'cosine', got {self.schedule!r}")
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
        if self.device not in DEVICES:
            raise ValueError(f"train.device must be one of {DEVICES}, got {self.device!r}")


@dataclass
class RunConfig:
    method: str = "smt"  # "smt" | "dmt" | "bptt"
    task: str = "retrieval"
    task_args: dict = field(default_factory=dict)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    cell: CellConfig = field(default_factory=CellConfig)
    smt: SMTConfig = field(default_factory=SMTConfig)
    dmt: DMTConfig = field(default_factory=DMTConfig)
    bptt: BPTTConfig = field(default_factory=BPTTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    init_from: str = ""  # a finished run's directory to start from (e.g. DMT or BPTT after SMT)
    out_dir: str = ""  # where metrics and the checkpoint go ("" = nothing written)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        for part in (self.teacher, self.cell, self.smt, self.dmt, self.bptt, self.train):
            part.validate()


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply 'a.b=value' overrides (e.g. cell.kind=gru, train.steps=200, task_args.length=128)."""
    data = to_dict(cfg)
    for item in overrides:
        set_dotted(data, item, free=("task_args",))
    return from_dict(RunConfig, data)
