"""memtrain: train nonlinear RNNs without backpropagation through time (SMT and DMT, Kumar & Isola
2026), with BPTT baselines."""
from .data.prepare import load_prepared, prepare
from .data.tasks import TASKS, build_task
from .methods import METHODS, Method, register
from .methods.bptt import BPTT, BPTTConfig
from .methods.dmt import DMT, DMTConfig
from .methods.evaluate import evaluate
from .methods.rollout import Rollout, rollout
from .methods.smt import SMT, SMTConfig, adopt_teacher
from .models.cells import CELLS, Cell, CellConfig, build_cell
from .models.teacher import Teacher, TeacherConfig
from .runs import evaluate_run, load_run
from .sample import generate, sample_run, start_memory
from .stream import Stream
from .training.build import build
from .training.config import RunConfig, TrainConfig, apply_overrides
from .training.trainer import TrainingError, train

__version__ = "0.19.0"
__all__ = ["BPTT", "BPTTConfig", "CELLS", "Cell", "CellConfig", "adopt_teacher", "build_cell", "RunConfig",
           "TrainConfig", "apply_overrides", "DMT", "DMTConfig", "evaluate", "rollout", "Rollout", "SMT", "SMTConfig",
           "TASKS", "build_task", "Teacher", "TeacherConfig", "build", "train", "TrainingError", "prepare", "load_prepared", "generate",
           "sample_run", "start_memory", "METHODS", "Method", "register", "load_run", "evaluate_run", "Stream"]
