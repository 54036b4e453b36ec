import pytest
import torch

from memtrain.methods.rollout import rollout
from memtrain.stream import Stream

from conftest import V, tiny_cell
from helpers import train_here

KINDS = ["mlp", "memtok", "gru", "torch-lstm", "torch-gru"]


@pytest.mark.parametrize("kind", KINDS)
def test_steps_give_the_whole_sequence_rollouts_predictions_in_float64(kind):
    cell = tiny_cell(kind).double()
    x = torch.randint(0, V, (3, 12))
    with torch.no_grad():
        M = rollout(cell, cell.init_memory(3), x)  # (B, T+1, Z), the fused path where the cell has one
        want = torch.stack([cell.readout(M[:, t + 1]) for t in range(12)], 1)
    stream = Stream(cell, batch_size=3)
    got = torch.stack([stream.step(x[:, t]) for t in range(12)], 1)
    assert got.dtype == torch.float64 and got.shape == (3, 12, V)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(stream.memory, M[:, -1], rtol=1e-10, atol=1e-10)
    assert stream.steps.tolist() == [12, 12, 12]


def test_predict_reads_the_current_memory_without_moving_it():
    cell = tiny_cell()
    stream = Stream(cell, 2)
    first = stream.predict()
    torch.testing.assert_close(first, cell.readout(cell.init_memory(2)).detach())
    stream.step(torch.tensor([1, 2]))
    m = stream.memory.clone()
    torch.testing.assert_close(stream.predict(), cell.readout(m).detach())
    assert torch.equal(stream.memory, m) and not torch.equal(stream.predict(), first)


def test_state_round_trips_exactly_and_continues_as_if_never_stopped():
    cell = tiny_cell()
    x = torch.randint(0, V, (2, 20))
    straight = Stream(cell, 2)
    want = [straight.step(x[:, t]) for t in range(20)]
    a = Stream(cell, 2)
    for t in range(9):
        a.step(x[:, t])
    saved = a.state()
    a.step(x[:, 9])  # the saved copy does not move with the stream
    b = Stream(cell, 2)
    b.load_state(saved)
    got = [b.step(x[:, t]) for t in range(9, 20)]
    for g, w in zip(got, want[9:]):
        assert torch.equal(g, w)
    assert b.steps.tolist() == [20, 20]


def test_reset_starts_only_the_chosen_rows_afresh():
    cell = tiny_cell()
    x = torch.randint(0, V, (3, 6))
    stream = Stream(cell, 3)
    for t in range(6):
        stream.step(x[:, t])
    before = stream.memory.clone()
    stream.reset(torch.tensor([False, True, False]))
    assert torch.equal(stream.memory[[0, 2]], before[[0, 2]])
    assert torch.equal(stream.memory[1], cell.init_memory(1)[0].detach())
    assert stream.steps.tolist() == [6, 0, 6]
    # the reset row now behaves like a fresh stream, the others like the uninterrupted one
    fresh, other = Stream(cell, 1), Stream(cell, 3)
    for t in range(6):
        other.step(x[:, t])
    y = torch.randint(0, V, (3,))
    out, ref_other, ref_fresh = stream.step(y), other.step(y), fresh.step(y[1:2])
    assert torch.equal(out[[0, 2]], ref_other[[0, 2]]) and torch.equal(out[1], ref_fresh[0])
    stream.reset()
    assert torch.equal(stream.memory, cell.init_memory(3).detach()) and stream.steps.tolist() == [0, 0, 0]


def test_memory_stays_one_row_per_stream_however_long_it_runs():
    cell = tiny_cell()
    stream = Stream(cell, 2)
    for _ in range(300):
        stream.step(torch.randint(0, V, (2,)))
    assert set(stream.state()) == {"memory", "steps"}
    assert stream.memory.shape == (2, cell.Z) and stream.memory.grad_fn is None


def test_bad_input_is_refused_with_the_reason():
    cell = tiny_cell()
    stream = Stream(cell, 2)
    with pytest.raises(ValueError, match=rf"\[0, {V - 1}\]"):
        stream.step(torch.tensor([0, V]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        stream.step(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="integer"):
        stream.step(torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="bool mask"):
        stream.reset(torch.tensor([1, 0]))
    with pytest.raises(ValueError, match=f"\\(B, {cell.Z}\\)"):
        stream.load_state({"memory": torch.zeros(2, cell.Z + 1)})
    with pytest.raises(ValueError, match="non-finite"):
        stream.load_state({"memory": torch.full((2, cell.Z), float("nan"))})
    with pytest.raises(ValueError, match="'memory'"):
        stream.load_state({})
    with pytest.raises(ValueError, match="batch_size"):
        Stream(cell, 0)
    assert stream.steps.tolist() == [0, 0]  # nothing moved


def test_a_stream_from_a_finished_run_predicts_as_the_runs_cell(tmp_path):
    train_here(["method=bptt", "train.steps=2"], tmp_path / "run")
    from memtrain.runs import load_run

    cell = load_run(str(tmp_path / "run"))[3]
    stream = Stream.from_run(str(tmp_path / "run"), batch_size=2)
    x = torch.randint(0, cell.cfg.vocab_size, (2, 5))
    with torch.no_grad():
        M = rollout(cell, cell.init_memory(2), x)
    for t in range(5):
        torch.testing.assert_close(stream.step(x[:, t]), cell.readout(M[:, t + 1]).detach())


def test_a_stream_of_real_features_matches_the_rollout_and_refuses_token_ids():
    from memtrain.models.cells import CellConfig, build_cell
    torch.manual_seed(0)
    cell = build_cell(CellConfig(kind="gru", vocab_size=None, features=3, output="gaussian", targets=2, mem_tokens=2, d_mem=8,
                                 n_heads=2, readout_depth=1)).double()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    M = rollout(cell, cell.init_memory(2), x)
    s = Stream(cell, batch_size=2)
    for t in range(7):
        out = s.step(x[:, t])
        torch.testing.assert_close(out, cell.readout(M[:, t + 1]), rtol=0, atol=1e-12)
    assert out.shape == (2, 4)
    with pytest.raises(ValueError, match="3 real features per row"):
        s.step(torch.tensor([1, 2]))
