"""The one-pass encoder equals encoding every prefix/window separately (float64), sees no future,
and the decoder's outputs line up with the future targets."""
import pytest
import torch

from memtrain.models.teacher import encode_reference
from tests.conftest import V, tiny_teacher


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("encoder,window", [("causal", None), ("causal", 3), ("window", 4), ("window", 20)])
def test_one_pass_matches_per_prefix_reference(encoder, window, shift):
    t = tiny_teacher(encoder=encoder, window=window, token_shift=shift).double()
    x = torch.randint(0, V, (3, 11))
    M = t.encode(x)
    assert M.shape == (3, 12, t.cfg.mem_size)
    torch.testing.assert_close(M, encode_reference(t, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("encoder,window,shift", [("causal", None, False), ("causal", 3, True), ("window", 4, True)])
def test_no_future_leakage(encoder, window, shift):
    """M[:, s] (after s inputs) must not change when inputs at positions >= s change."""
    t = tiny_teacher(encoder=encoder, window=window, token_shift=shift).double()
    x = torch.randint(0, V, (2, 10))
    M = t.encode(x)
    for s in range(11):
        x2 = x.clone()
        x2[:, s:] = torch.randint(0, V, x2[:, s:].shape)
        torch.testing.assert_close(t.encode(x2)[:, : s + 1], M[:, : s + 1], rtol=0, atol=1e-12)


def test_window_encoder_forgets_beyond_window():
    t = tiny_teacher(encoder="window", window=3).double()
    x = torch.randint(0, V, (2, 10))
    x2 = x.clone()
    x2[:, :4] = (x2[:, :4] + 1) % V  # change inputs 0..3: memories after 7+ inputs see only 4..
    torch.testing.assert_close(t.encode(x2)[:, 7:], t.encode(x)[:, 7:], rtol=0, atol=1e-12)


def test_memories_are_rms_normalised_and_empty_memory_matches():
    t = tiny_teacher()
    x = torch.randint(0, V, (2, 6))
    M = t.encode(x)
    rms = M.view(2, 7, t.cfg.mem_tokens, -1).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=1e-5)
    torch.testing.assert_close(t.empty_memory(2), M[:, 0], rtol=0, atol=1e-6)


def test_decoder_is_causal_in_future_inputs():
    """The logit for output i must depend only on future inputs before it."""
    t = tiny_teacher().double()
    m = t.encode(torch.randint(0, V, (2, 5)))[:, -1]
    x_fut = torch.randint(0, V, (2, 6))
    logits = t.decode(m, x_fut)  # (2, 7, V)
    assert logits.shape == (2, 7, V)
    torch.testing.assert_close(logits[:, 0], t.readout(m), rtol=0, atol=1e-12)
    for i in range(6):
        x2 = x_fut.clone()
        x2[:, i:] = (x2[:, i:] + 1) % V
        torch.testing.assert_close(t.decode(m, x2)[:, : i + 1], logits[:, : i + 1], rtol=0, atol=1e-12)


def test_bad_teacher_config_is_named():
    with pytest.raises(ValueError, match="teacher.encoder"):
        tiny_teacher(encoder="bidirectional")
    with pytest.raises(ValueError, match="teacher.window"):
        tiny_teacher(encoder="window", window=None)
    with pytest.raises(ValueError, match="n_heads"):
        tiny_teacher(n_heads=3)


@pytest.mark.parametrize("shift", [False, True])
def test_token_shift_flag_gradient(shift):
    """token_shift: the memory after x_0..x_t reads x_{t-1} through the previous-input embedding
    (which gets a gradient); without it there is no such table."""
    t = tiny_teacher(token_shift=shift, encoder_depth=1).double()
    x = torch.randint(0, V, (2, 6))
    t.encode(x)[:, 3:].pow(2).sum().backward()
    if shift:
        g = t.prev_embed.weight.grad
        assert g is not None and float(g[x[:, 1]].abs().sum()) > 0  # x_1 is the previous input of x_2
        assert float(g[V].abs().sum()) > 0  # the "no previous input" row, used by x_0
    else:
        assert t.prev_embed is None
