import pytest
import torch

from memtrain.methods.rollout import rollout
from memtrain.sample import draw, generate, load_state, save_state, start_memory

from conftest import V, tiny_cell, tiny_teacher


def test_greedy_generation_matches_a_rollout_on_its_own_tokens():
    cell = tiny_cell()
    m0 = cell.init_memory(3)
    tokens, m_last = generate(cell, m0, 10, temperature=0)
    M = rollout(cell, m0, tokens)  # (B, 11, Z): memories after each generated token
    # each token is the argmax of the readout of the memory before it
    assert torch.equal(cell.readout(M[:, :-1].reshape(-1, M.shape[-1])).argmax(-1).view(3, 10), tokens)
    torch.testing.assert_close(m_last, M[:, -1])


def test_sampling_is_deterministic_under_a_seeded_generator_and_varies_with_the_seed():
    cell = tiny_cell()
    m0 = cell.init_memory(4)
    a, _ = generate(cell, m0, 20, gen=torch.Generator().manual_seed(1))
    b, _ = generate(cell, m0, 20, gen=torch.Generator().manual_seed(1))
    c, _ = generate(cell, m0, 20, gen=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() < V


def test_draw_follows_the_tempered_softmax():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(20000, 3)
    gen = torch.Generator().manual_seed(0)
    for temp in (1.0, 2.0):
        freq = torch.bincount(draw(logits, temp, gen), minlength=3).float() / 20000
        torch.testing.assert_close(freq, torch.softmax(logits[0] / temp, -1), atol=0.015, rtol=0)
    assert torch.equal(draw(logits[:2], 0.0, gen), torch.tensor([2, 2]))


def test_saved_and_resumed_state_continues_exactly(tmp_path):
    cell = tiny_cell()
    m0 = start_memory(cell, torch.tensor([[1, 2, 3], [4, 5, 6]]))
    straight, _ = generate(cell, m0, 16, gen=torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(7)
    first, m = generate(cell, m0, 8, gen=gen)
    save_state(tmp_path / "s.safetensors", m, gen, {"tokens": 8})
    m2, g_state, info = load_state(tmp_path / "s.safetensors", mem_size=cell.Z)
    gen2 = torch.Generator()
    gen2.set_state(g_state)
    second, _ = generate(cell, m2, 8, gen=gen2)
    assert info == {"tokens": 8}
    assert torch.equal(torch.cat([first, second], 1), straight)


def test_start_memory_rnn_and_teacher_modes():
    cell, teacher = tiny_cell(), tiny_teacher()
    prompt = torch.randint(0, V, (2, 5))
    torch.testing.assert_close(start_memory(cell, prompt), rollout(cell, cell.init_memory(2), prompt)[:, -1])
    with torch.no_grad():
        want = teacher.encode(prompt)[:, -1]
    torch.testing.assert_close(start_memory(cell, prompt, teacher, mode="teacher"), want)


@pytest.mark.parametrize("prompt, teacher, mode, match", [
    (torch.tensor([[0, V]]), None, "rnn", "vocabulary"),
    (torch.tensor([[-1, 0]]), None, "rnn", "vocabulary"),
    (torch.zeros(1, 0, dtype=torch.long), None, "rnn", "at least one token"),
    (torch.tensor([[0, 1]]), None, "teacher", "needs a run with a teacher"),
    (torch.tensor([[0, 1]]), None, "encoder", "prompt mode"),
])
def test_bad_prompts_are_refused(prompt, teacher, mode, match):
    with pytest.raises(ValueError, match=match):
        start_memory(tiny_cell(), prompt, teacher, mode)


def test_bad_state_files_are_refused(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(ValueError, match="does not exist"):
        load_state(tmp_path / "none.safetensors")
    (tmp_path / "junk").write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="corrupt"):
        load_state(tmp_path / "junk")
    save_file({"memory": torch.zeros(1, 4)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match="not a memtrain sampling state"):
        load_state(tmp_path / "foreign.safetensors")
    save_state(tmp_path / "ok.safetensors", torch.zeros(1, 4))
    with pytest.raises(ValueError, match="memory size"):
        load_state(tmp_path / "ok.safetensors", mem_size=8)
    assert {p.name for p in tmp_path.iterdir()} == {"junk", "foreign.safetensors", "ok.safetensors"}, "no temporary file left"
