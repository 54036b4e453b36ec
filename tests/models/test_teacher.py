"""The one-pass encoder equals encoding every prefix/window separately (float64), sees no future,
and the decoder's outputs line up with the future targets."""
import pytest
import torch
import torch.nn.functional as F

from memtrain.models.layers import band_attention
from memtrain.models.teacher import encode_reference
from tests.conftest import V, tiny_teacher


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("encoder,window", [("causal", None), ("causal", 1), ("causal", 3), ("window", 4), ("window", 20)])
def test_one_pass_matches_per_prefix_reference(encoder, window, shift):
    t = tiny_teacher(encoder=encoder, window=window, token_shift=shift).double()
    x = torch.randint(0, V, (3, 11))
    M = t.encode(x)
    assert M.shape == (3, 12, t.cfg.mem_size)
    torch.testing.assert_close(M, encode_reference(t, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("encoder,window", [("causal", None), ("causal", 1), ("causal", 3), ("causal", 11), ("window", 4)])
def test_memories_at_chosen_positions_equal_the_full_encoder(encoder, window, shift):
    """encode(x, at) computes register groups only at `at`: the same values as encoding everything
    (and as the per-prefix reference), per sequence, repeated positions and 0 (m_empty) included."""
    t = tiny_teacher(encoder=encoder, window=window, token_shift=shift).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (3, 11), generator=g)
    at = torch.randint(0, 12, (3, 5), generator=g)
    at[0, 0], at[1, 1], at[2, 2] = 0, 11, at[2, 3]
    M = encode_reference(t, x)
    got = t.encode(x, at)
    assert got.shape == (3, 5, t.cfg.mem_size)
    torch.testing.assert_close(got, torch.gather(M, 1, at[..., None].expand(-1, -1, M.shape[-1])), rtol=0, atol=1e-12)


@pytest.mark.parametrize("window", [1, 4])  # (a window of at most T/8 reads a gathered band)
def test_memories_at_positions_have_the_full_encoders_gradients(window):
    t = tiny_teacher(window=window, token_shift=True).double()
    x = torch.randint(0, V, (2, 9))
    at = torch.tensor([[3, 9, 0], [5, 5, 2]])
    w = torch.randn(2, 3, t.cfg.mem_size, dtype=torch.float64)
    full = (torch.gather(t.encode(x), 1, at[..., None].expand(-1, -1, w.shape[-1])) * w).sum()
    sparse = (t.encode(x, at) * w).sum()
    for a, b in zip(torch.autograd.grad(full, list(t.parameters()), allow_unused=True),
                    torch.autograd.grad(sparse, list(t.parameters()), allow_unused=True)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("T,window", [(1, 1), (7, 1), (7, 3), (12, 4), (13, 5), (9, 9), (9, 20), (6, None)])
def test_band_attention_equals_masked_attention(T, window):
    g = torch.Generator().manual_seed(T)
    q, k, v = (torch.randn(2, 3, T, 4, generator=g, dtype=torch.float64) for _ in range(3))
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    mask = (j <= i) & (j > i - (window or T))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(band_attention(q, k, v, window), ref, rtol=0, atol=1e-12)


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
    x = torch.randint(0, V, (2, 10))
    x2 = x.clone()
    x2[:, :4] = (x2[:, :4] + 1) % V  # change inputs 0..3
    t = tiny_teacher(encoder="window", window=3, token_shift=False).double()
    torch.testing.assert_close(t.encode(x2)[:, 7:], t.encode(x)[:, 7:], rtol=0, atol=1e-12)  # memories after 7+ see 4..
    # with token shift (the default) each token also embeds the input before it: one further back
    t = tiny_teacher(encoder="window", window=3).double()
    assert t.cfg.token_shift
    torch.testing.assert_close(t.encode(x2)[:, 8:], t.encode(x)[:, 8:], rtol=0, atol=1e-12)
    assert not torch.allclose(t.encode(x2)[:, 7], t.encode(x)[:, 7])


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


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, None])
def test_register_attention_in_chunks_equals_one_call(chunk):
    """Chunked register attention (padding included: 5 groups in chunks of 2 or 3) gives the one-call
    values and gradients in float64; a group with no readable token reads its own registers only."""
    from memtrain.models.teacher import register_attention
    g = torch.Generator().manual_seed(0)
    B, H, Q, K, T, Dh = 2, 2, 5, 3, 7, 4
    leaf = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
            for s in [(B, H, Q * K, Dh)] * 3 + [(B, H, T, Dh)] * 2]
    pos = torch.randint(0, T + 1, (B, Q), generator=g)
    pos[0, 0] = 0
    allowed = torch.arange(T) < pos[..., None]
    w = torch.randn(B, H, Q * K, Dh, generator=g, dtype=torch.float64)
    outs, grads = [], []
    for c in (Q, chunk):
        o = register_attention(*leaf, allowed, K, chunk=c)
        outs.append(o)
        grads.append(torch.autograd.grad((o * w).sum(), leaf))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-12)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # the one-call result is plain softmax attention over [allowed tokens, own registers]
    q, k_r, v_r, k_t, v_t = (a.detach() for a in leaf)
    b, h, grp = 1, 1, 2
    rows = slice(grp * K, grp * K + K)
    keys = torch.cat([k_t[b, h][allowed[b, grp]], k_r[b, h, rows]])
    vals = torch.cat([v_t[b, h][allowed[b, grp]], v_r[b, h, rows]])
    ref = ((q[b, h, rows] @ keys.T) / Dh ** 0.5).softmax(-1) @ vals
    torch.testing.assert_close(outs[0][b, h, rows].detach(), ref, rtol=0, atol=1e-12)


def test_register_chunk_splits_only_where_it_pays():
    from memtrain.models.teacher import register_chunk
    assert register_chunk(5, 2, 11) == 5  # tiny: one call
    assert register_chunk(112, 4, 256) == 28  # the retrieval-256 loss: 4 chunks
    assert register_chunk(257, 4, 256) < 257  # every memory of T=256
    assert register_chunk(112, 4, 4096) == 112


FEAT = 3


def _sums_teacher(real: bool, **kw):
    kw = {"running_sums": 4.0, **kw}
    if real:
        return tiny_teacher(vocab_size=None, features=FEAT, output="gaussian", targets=1, **kw).double()
    return tiny_teacher(**kw).double()


def _inputs(real: bool, B: int = 3, T: int = 9):
    g = torch.Generator().manual_seed(1)
    if real:
        x = torch.randn(B, T, FEAT, generator=g, dtype=torch.float64)
        x[0, 2, 1] = float("nan")  # a missing value adds nothing to the sum
        return x
    return torch.randint(0, V, (B, T), generator=g)


@pytest.mark.parametrize("real", [False, True])
def test_running_sums_equal_a_written_out_count(real):
    """running_sums: step t embeds (sum of x_0..x_t) / c, token ids counted as one-hots, NaN as 0: the
    embedded inputs equal a loop that adds up each prefix by hand (float64)."""
    t = _sums_teacher(real, token_shift=False)
    x = _inputs(real)
    B, T = x.shape[:2]
    W = t.sum_embed.weight  # (D, V or F)
    ref = torch.zeros(B, T, W.shape[0], dtype=torch.float64)
    for b in range(B):
        total = torch.zeros(W.shape[1], dtype=torch.float64)
        for s in range(T):
            if real:
                total = total + torch.nan_to_num(x[b, s], nan=0.0)
            else:
                total[x[b, s]] += 1.0
            ref[b, s] = W @ (total / 4.0)
    torch.testing.assert_close(t.embed_inputs(x) - t.embed(x), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(t.embed_inputs(x, 4), t.embed_inputs(x)[:, 4:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("real", [False, True])
def test_running_sums_one_pass_matches_per_prefix_reference_and_sees_no_future(real):
    t = _sums_teacher(real)
    x = _inputs(real)
    M = t.encode(x)
    torch.testing.assert_close(M, encode_reference(t, x), rtol=0, atol=1e-12)
    at = torch.tensor([[0, 5, 9], [3, 3, 1], [9, 2, 7]])
    torch.testing.assert_close(t.encode(x, at), torch.gather(M, 1, at[..., None].expand(-1, -1, M.shape[-1])),
                               rtol=0, atol=1e-12)
    x2 = x.clone()
    x2[:, 5:] = _inputs(real)[:, :4] if not real else x2[:, 5:] + 1.0
    torch.testing.assert_close(t.encode(x2)[:, :6], M[:, :6], rtol=0, atol=1e-12)


@pytest.mark.parametrize("on", [False, True])
def test_running_sums_flag_gradient(on):
    """running_sums: the memory reads the counts through `sum_embed`, whose column for a token id gets a
    gradient once that id has been seen, and an id never seen gets none; through the decoder, a future
    input's id gets one too. Off: no such weights."""
    t = tiny_teacher(running_sums=4.0 if on else None, encoder_depth=1).double()
    x = torch.tensor([[1, 2, 1, 2, 1, 3, 3, 3]])
    t.encode(x)[:, -1].pow(2).sum().backward()
    if not on:
        assert t.sum_embed is None
        return
    g = t.sum_embed.weight.grad  # (D, V)
    seen = torch.zeros(V, dtype=torch.bool)
    seen[[1, 2, 3]] = True
    assert all(float(g[:, i].abs().sum()) > 0 for i in (1, 2, 3))
    assert float(g[:, ~seen].abs().sum()) == 0
    t.zero_grad()
    t.decode(t.encode(x)[:, -1].detach(), torch.tensor([[5, 6]]))[:, 1].pow(2).sum().backward()
    g = t.sum_embed.weight.grad
    assert float(g[:, 5].abs().sum()) > 0 and float(g[:, [1, 2, 3, 6]].abs().sum()) == 0  # output 1 reads x_fut[0] alone


def test_running_sums_settings_are_checked():
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="teacher.running_sums"):
            tiny_teacher(running_sums=bad)
    with pytest.raises(ValueError, match="teacher.running_sums.*teacher.window"):
        tiny_teacher(running_sums=4.0, window=3)
    with pytest.raises(ValueError, match="teacher.running_sums.*teacher.window"):
        tiny_teacher(running_sums=4.0, encoder="window", window=3)


@pytest.mark.parametrize("real", [False, True])
def test_running_sums_in_the_decoder_count_the_future_inputs_only(real):
    """With running_sums the decoder's future inputs embed the sum of the future inputs up to each
    (not the past's: the memory holds that), written out here by hand (float64); the decoder stays
    causal in its future inputs."""
    t = _sums_teacher(real)
    x = _inputs(real, B=2, T=5)
    m = t.encode(x)[:, -1]
    x_fut = _inputs(real, B=2, T=6)
    W = t.sum_embed.weight
    total = torch.zeros(2, W.shape[1], dtype=torch.float64)
    e = t.embed(x_fut).clone()
    for s in range(6):
        total = total + (torch.nan_to_num(x_fut[:, s], nan=0.0) if real else F.one_hot(x_fut[:, s], V).double())
        e[:, s] = e[:, s] + (total / 4.0) @ W.T
    K = t.cfg.mem_tokens
    ref = t.decoder(torch.cat([m.view(2, K, -1), e], dim=1))[:, K - 1:]
    out = t.decode(m, x_fut)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(out[:, 0], t.readout(m), rtol=0, atol=1e-12)
    x2 = x_fut.clone()
    x2[:, 3:] = x2[:, 3:] + 1.0 if real else (x2[:, 3:] + 1) % V
    torch.testing.assert_close(t.decode(m, x2)[:, :4], out[:, :4], rtol=0, atol=1e-12)
