"""The names `from memtrain import ...` offered by 0.1 keep working, and lead to the same objects as
their modules in the new layout."""
import memtrain

OLD_NAMES = ["BPTT", "BPTTConfig", "CELLS", "Cell", "CellConfig", "adopt_teacher", "build_cell", "RunConfig",
             "TrainConfig", "apply_overrides", "DMT", "DMTConfig", "evaluate", "rollout", "SMT", "SMTConfig",
             "TASKS", "build_task", "Teacher", "TeacherConfig", "build", "train", "TrainingError", "prepare",
             "load_prepared", "generate", "sample_run", "start_memory"]


def test_the_names_of_0_1_are_still_exported():
    assert set(OLD_NAMES) <= set(memtrain.__all__)
    from memtrain.methods.smt import SMT, adopt_teacher
    from memtrain.training.build import build
    from memtrain.training.trainer import train

    assert (memtrain.SMT, memtrain.adopt_teacher, memtrain.build, memtrain.train) == (SMT, adopt_teacher, build, train)
    assert memtrain.METHODS["smt"] is SMT and issubclass(memtrain.SMT, memtrain.Method)
