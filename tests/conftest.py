import pytest
import torch

from memtrain.models.cells import CellConfig, build_cell
from memtrain.models.teacher import Teacher, TeacherConfig

V, K, D, H = 7, 2, 8, 2


def tiny_teacher(**kw) -> Teacher:
    cfg = dict(vocab_size=V, mem_tokens=K, d_model=D, n_heads=H, encoder_depth=2, decoder_depth=1)
    cfg.update(kw)
    return Teacher(TeacherConfig(**cfg))


def tiny_cell(kind="mlp", **kw):
    cfg = dict(kind=kind, vocab_size=V, mem_tokens=K, d_mem=D, n_heads=H, depth=1, hidden_mult=2, readout_depth=1)
    cfg.update(kw)
    return build_cell(CellConfig(**cfg))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models: one torch thread is much faster than two fighting over a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# Property-based tests (hypothesis): the same examples on every run, so CI is reproducible; run
# `pytest --hypothesis-profile=explore` for many more, freshly random ones.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("explore", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("ci")


@pytest.fixture
def ctrl_c_interrupts():
    """Python's usual SIGINT handler, also where the test runner was started with SIGINT ignored (a
    background job): for tests that send themselves SIGINT."""
    import signal

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)
