"""Contract of every attention variant: decode through its cache equals the training forward, the cache
holds exactly what the spec accounts for, and the analytic FLOPs are what torch counts."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lrkv.kernels import AttentionSpec, build_attention


def fresh(spec, seed=0):
    torch.manual_seed(seed)
    return build_attention(spec).double()


def test_decode_matches_forward(spec):
    """Token-by-token decode through a NaN-poisoned cache reproduces the full causal forward (fp64)."""
    layer = fresh(spec)
    x = torch.randn(3, 11, spec.d_model, dtype=torch.float64)
    full = layer(x)
    cache = layer.allocate_cache(3, 16, fill=float("nan"))
    steps = torch.stack([layer.decode(x[:, t], cache) for t in range(x.size(1))], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-10, atol=1e-10)
    assert cache.lengths.tolist() == [11, 11, 11]


def test_ragged_batch_decode(spec):
    """Sequences of different lengths in one batch each see only their own rows."""
    layer = fresh(spec, seed=1)
    lengths = [5, 9, 2]
    xs = [torch.randn(n, spec.d_model, dtype=torch.float64) for n in lengths]
    cache = layer.allocate_cache(3, 12, fill=float("nan"))
    # Fill each sequence to its length by decoding the batch with a per-sequence cache, then
    # compare the next token's output with each sequence run alone.
    for b, x in enumerate(xs):
        solo = layer.allocate_cache(1, 12, fill=float("nan"))
        for t in range(len(x)):
            layer.decode(x[t:t + 1], solo)
        for name, t in solo.tensors.items():
            cache.tensors[name][b] = t[0]
        cache.lengths[b] = len(x)
    nxt = torch.randn(3, spec.d_model, dtype=torch.float64)
    out = layer.decode(nxt, cache)
    for b, x in enumerate(xs):
        alone = layer(torch.cat([x, nxt[b:b + 1]])[None])[0, -1]
        torch.testing.assert_close(out[b], alone, rtol=1e-10, atol=1e-10)
    assert not out.isnan().any()


@pytest.mark.parametrize("batch,max_len", [(1, 1), (2, 7), (4, 33)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cache_bytes_equal_allocation(spec, batch, max_len, dtype):
    cache = build_attention(spec).allocate_cache(batch, max_len, dtype=dtype)
    assert cache.nbytes == spec.kv_cache_bytes_per_token(dtype) * batch * max_len


def test_params_equal_module(spec):
    layer = build_attention(spec)
    assert sum(p.numel() for p in layer.parameters()) == spec.params()


def test_forward_flops_match_flop_counter(spec):
    """Analytic forward FLOPs equal torch's count (math SDPA backend, whose matmuls the counter sees)."""
    layer = build_attention(spec)
    B, T = 2, 24
    x = torch.randn(B, T, spec.d_model)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        layer(x)
    assert counter.get_total_flops() == pytest.approx(spec.forward_flops_per_token(T) * B * T, rel=0.01)


def test_training_flops_are_three_forwards(spec):
    layer = build_attention(spec)
    B, T = 2, 16
    x = torch.randn(B, T, spec.d_model, requires_grad=True)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        layer(x).sum().backward()
    assert counter.get_total_flops() == pytest.approx(spec.train_flops_per_token(T) * B * T, rel=0.01)


def test_decode_flops_match_flop_counter(spec):
    layer = build_attention(spec)
    T = 19
    x = torch.randn(1, T, spec.d_model)
    cache = layer.allocate_cache(1, T, dtype=torch.float32)
    for t in range(T - 1):
        layer.decode(x[:, t], cache)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        layer.decode(x[:, T - 1], cache)
    assert counter.get_total_flops() == pytest.approx(spec.decode_flops(T), rel=0.01)


def test_append_refuses_a_full_cache():
    spec = AttentionSpec("lrkv", 32, 2, rank=4)
    layer = build_attention(spec)
    cache = layer.allocate_cache(1, 2, dtype=torch.float32)
    x = torch.randn(1, 32)
    layer.decode(x, cache)
    layer.decode(x, cache)
    with pytest.raises(ValueError, match="full"):
        layer.decode(x, cache)


def test_lrkv_rank_zero_is_mqa():
    """r = 0: an MQA built from LRKV's shared weights computes the same function."""
    lrkv = fresh(AttentionSpec("lrkv", 64, 4, rank=0))
    mqa = build_attention(AttentionSpec("mqa", 64, 4)).double()
    with torch.no_grad():
        mqa.q.copy_(lrkv.q)
        mqa.k.copy_(lrkv.k_shared)
        mqa.v.copy_(lrkv.v_shared)
        mqa.o.copy_(lrkv.o)
    x = torch.randn(2, 9, 64, dtype=torch.float64)
    torch.testing.assert_close(lrkv(x), mqa(x), rtol=1e-12, atol=1e-12)


def test_lrkv_full_rank_expresses_mha():
    """r = d_h: W_shared arbitrary, U_h = W_K,h − W_shared, B_h = I reproduces a given MHA layer."""
    mha = fresh(AttentionSpec("mha", 64, 4), seed=3)
    lrkv = fresh(AttentionSpec("lrkv", 64, 4, rank=16), seed=4)
    with torch.no_grad():
        lrkv.q.copy_(mha.q)
        lrkv.o.copy_(mha.o)
        for shared, down, up, full in (("k_shared", "k_down", "k_up", "k"), ("v_shared", "v_down", "v_up", "v")):
            w_shared = getattr(lrkv, shared)
            getattr(lrkv, down).copy_(getattr(mha, full) - w_shared.repeat(4, 1))
            getattr(lrkv, up).copy_(torch.eye(16, dtype=torch.float64).expand(4, 16, 16))
    x = torch.randn(2, 9, 64, dtype=torch.float64)
    torch.testing.assert_close(lrkv(x), mha(x), rtol=1e-12, atol=1e-12)


def test_lrkv_residual_init_is_a_tenth_of_shared():
    spec = AttentionSpec("lrkv", 128, 4, rank=8)
    layer = build_attention(spec)
    for shared, down, up in (("k_shared", "k_down", "k_up"), ("v_shared", "v_down", "v_up")):
        W = getattr(layer, shared)
        U = getattr(layer, down).view(4, 8, -1)
        B = getattr(layer, up)
        for h in range(4):
            ratio = torch.linalg.matrix_norm(U[h].t() @ B[h]) / torch.linalg.matrix_norm(W)
            assert ratio.item() == pytest.approx(0.1, rel=1e-4)


def test_lrkv_cache_holds_shared_rows_and_latents():
    spec = AttentionSpec("lrkv", 64, 4, rank=8)
    cache = build_attention(spec).allocate_cache(2, 5, dtype=torch.bfloat16)
    shapes = {name: tuple(t.shape) for name, t in cache.tensors.items()}
    assert shapes == {"k_shared": (2, 5, 16), "v_shared": (2, 5, 16), "r_k": (2, 5, 4, 8), "r_v": (2, 5, 4, 8)}
