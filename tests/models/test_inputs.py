"""Real-valued steps through the networks (models/inputs.py, models/heads.py): feature inputs in the
teacher and every cell, real-valued outputs from the decoder and the readout, in float64 against
plain references."""
import pytest
import torch
import torch.nn.functional as F

from memtrain.models.cells import CELLS, CellConfig, build_cell, check_compatible
from memtrain.models.heads import Categorical, RealOutput, make_output
from memtrain.models.inputs import FeatureEmbedding, flat, input_embedding, take
from memtrain.models.teacher import encode_reference
from tests.conftest import D, H, K, V, tiny_teacher

FEAT, G = 3, 2


def _x(B=3, T=9, seed=0):
    return torch.randn(B, T, FEAT, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_input_embeddings_and_indexing():
    e = input_embedding(None, FEAT, 5).double()
    assert isinstance(e, FeatureEmbedding) and e(torch.zeros(2, FEAT, dtype=torch.float64)).shape == (2, 5)
    x = torch.tensor([[1.0, float("nan"), 2.0]], dtype=torch.float64)
    torch.testing.assert_close(e(x), e(torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)))  # NaN reads as 0
    assert isinstance(input_embedding(V, None, 5), torch.nn.Embedding)
    xr, ids = _x(), torch.randint(0, V, (3, 9))
    idx = torch.tensor([[0, 4], [8, 8], [1, 2]])
    assert torch.equal(take(xr, idx)[1, 0], xr[1, 8]) and torch.equal(take(ids, idx), torch.gather(ids, 1, idx))
    assert flat(take(xr, idx)).shape == (6, FEAT) and flat(take(ids, idx)).shape == (6,)


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("encoder,window", [("causal", None), ("causal", 3), ("window", 4)])
def test_teacher_on_features_matches_the_per_prefix_reference(encoder, window, shift):
    t = tiny_teacher(vocab_size=None, features=FEAT, output="gaussian", targets=G, encoder=encoder, window=window,
                     token_shift=shift).double()
    x = _x()
    M = t.encode(x)
    assert M.shape == (3, 10, t.cfg.mem_size)
    torch.testing.assert_close(M, encode_reference(t, x), rtol=0, atol=1e-12)
    torch.testing.assert_close(t.empty_memory(2), M[:2, 0], rtol=0, atol=1e-12)
    out = t.decode(M[:, 4], x[:, 4:7])  # the next 4 outputs from memory 4 and the next 3 inputs
    assert out.shape == (3, 4, G * 2) and t.readout(M[:, 4]).shape == (3, G * 2)
    torch.testing.assert_close(out[:, 0], t.readout(M[:, 4]), rtol=0, atol=1e-12)


def test_token_shift_on_features_reads_the_previous_step():
    """With token_shift, step t's embedding adds a map of x_{t-1} (zeros before x_0): so changing x_3
    changes memory 4 on and nothing before, and changes it differently than without the shift."""
    t = tiny_teacher(vocab_size=None, features=FEAT, output="gaussian", targets=G, token_shift=True).double()
    x = _x()
    h = t.embed_inputs(x)
    torch.testing.assert_close(h[:, 0], t.embed(x[:, 0]) + t.prev_embed(torch.zeros_like(x[:, 0])), rtol=0, atol=1e-12)
    torch.testing.assert_close(h[:, 5], t.embed(x[:, 5]) + t.prev_embed(x[:, 4]), rtol=0, atol=1e-12)
    y = x.clone()
    y[:, 3] += 1.0
    M, N = t.encode(x), t.encode(y)
    assert torch.equal(M[:, :4], N[:, :4]) and not torch.allclose(M[:, 4:], N[:, 4:])


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_every_cell_reads_features_and_predicts_real_values(kind):
    cfg = CellConfig(kind=kind, vocab_size=None, features=FEAT, output="student-t", targets=G, mem_tokens=K, d_mem=D,
                     n_heads=H, depth=1, hidden_mult=2, readout_depth=1)
    cell = build_cell(cfg).double()
    x = _x()
    m = cell.init_memory(3)
    for t in range(x.shape[1]):
        m = cell.update(m, x[:, t])
    assert m.shape == (3, cell.Z) and torch.isfinite(m).all()
    raw = cell.readout(m)
    assert raw.shape == (3, G * 3) and cell.output.kind == "student-t"
    y = torch.randn(3, G, dtype=torch.float64)
    loss = cell.output.loss(raw, y)
    loss.backward()
    assert cell.embed.weight.grad is not None and cell.embed.weight.grad.abs().sum() > 0, "the loss reaches the input map"


def test_a_cell_and_a_teacher_must_agree_on_inputs_and_outputs():
    t = tiny_teacher(vocab_size=None, features=FEAT, output="gaussian", targets=G)
    base = dict(kind="mlp", mem_tokens=K, d_mem=D, n_heads=H, readout_depth=1)
    check_compatible(build_cell(CellConfig(**base, vocab_size=None, features=FEAT, output="gaussian", targets=G)).cfg, t.cfg)
    for wrong, named in (({"features": 4, "output": "gaussian", "targets": G}, "cell.features=4"),
                         ({"features": FEAT, "output": "quantile", "targets": G}, "cell.output=quantile but teacher has gaussian"),
                         ({"features": FEAT, "output": "gaussian", "targets": 1}, "cell.targets=1")):
        with pytest.raises(ValueError, match=named):
            check_compatible(build_cell(CellConfig(**base, vocab_size=None, **wrong)).cfg, t.cfg)
    with pytest.raises(ValueError, match="teacher.output must be one of"):
        tiny_teacher(output="poisson")
    with pytest.raises(ValueError, match="needs the target width"):
        tiny_teacher(vocab_size=None, features=FEAT, output="gaussian")
    with pytest.raises(ValueError, match="vocab_size must be set .* token ids"):
        tiny_teacher(vocab_size=None, features=FEAT, output="categorical")


def test_outputs_weighted_losses_against_the_written_out_means():
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(5, V, dtype=torch.float64, generator=g)
    y = torch.tensor([1, -1, 3, 0, 6])
    w = torch.tensor([1.0, 5.0, 0.5, 2.0, 0.0], dtype=torch.float64)
    ce = F.cross_entropy(raw, y.clamp(min=0), reduction="none")
    keep = (y >= 0).double() * w
    torch.testing.assert_close(Categorical(V).loss(raw, y, w), (ce * keep).sum() / keep.sum(), rtol=0, atol=1e-12)
    torch.testing.assert_close(Categorical(V).loss(raw, y), ce[y >= 0].mean(), rtol=0, atol=1e-12)
    out = RealOutput("gaussian", G).double()
    raw = torch.randn(5, G * 2, dtype=torch.float64, generator=g)
    yr = torch.randn(5, G, dtype=torch.float64, generator=g)
    yr[1, 0] = yr[3] = float("nan")
    p = out.params(raw)
    nll = 0.5 * ((yr - p["mu"]) / p["sigma"]) ** 2 + torch.log(p["sigma"]) + 0.5 * torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))
    ok = ~torch.isnan(yr)
    ww = ok.double() * w[:, None]
    torch.testing.assert_close(out.loss(raw, yr, w), torch.where(ok, nll, 0.0).mul(ww).sum() / ww.sum(), rtol=0, atol=1e-12)
    assert out.supervised(yr).tolist() == [True, True, True, False, True]
    assert make_output("quantile", targets=G).dim == G * 9 and make_output("categorical", vocab=V).dim == V
