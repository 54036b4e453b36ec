"""memtrain: train nonlinear RNNs without backpropagation through time (SMT and DMT, Kumar & Isola
2026), with BPTT baselines."""
from .bptt import BPTT, BPTTConfig
from .cells import CELLS, Cell, CellConfig, adopt_teacher, build_cell
from .config import RunConfig, TrainConfig, apply_overrides
from .dmt import DMT, DMTConfig
from .evaluate import evaluate
from .prepare import load_prepared, prepare
from .rollout import rollout
from .sample import generate, sample_run, start_memory
from .smt import SMT, SMTConfig
from .tasks import TASKS, build_task
from .teacher import Teacher, TeacherConfig
from .trainer import TrainingError, build, train

__version__ = "0.1.0"
__all__ = ["BPTT", "BPTTConfig", "CELLS", "Cell", "CellConfig", "adopt_teacher", "build_cell", "RunConfig",
           "TrainConfig", "apply_overrides", "DMT", "DMTConfig", "evaluate", "rollout", "SMT", "SMTConfig",
           "TASKS", "build_task", "Teacher", "TeacherConfig", "build", "train", "TrainingError", "prepare", "load_prepared", "generate",
           "sample_run", "start_memory"]
