"""The fused LRKV key/value reconstruction (Triton; interpreted on the CPU) against the fp64 composition
rope(rms_norm(shared + latent @ up)) built from the reference ops."""
import importlib
import os

import pytest
import torch

from lrkv.kernels.lrkv import reconstruct as unfused
from lrkv.kernels.ops import rms_norm, rope

# These tests drive the kernels interpreted, on CPU tensors. On a GPU machine the module would then stay
# interpreted for every later test of the process (the LRKV layer's CUDA path included), so there it runs
# only in a process that interprets everything (TRITON_INTERPRET=1); benchmarks/reconstruct.py checks the
# compiled kernels against fp64 at training shapes.
if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("interpreter tests: on a GPU machine run them with TRITON_INTERPRET=1; the GPU check is "
                "benchmarks/reconstruct.py", allow_module_level=True)

# TRITON_INTERPRET is read when a kernel is defined, so it is set only around this import and then restored
# for the modules collected later.
_previous = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    fused = importlib.import_module("lrkv.kernels.fused.reconstruct")
finally:
    if _previous is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _previous

pytestmark = pytest.mark.skipif(
    not fused._INTERPRETED, reason="lrkv.kernels.fused.reconstruct was imported for the GPU before this module; "
                                   "run these CPU tests in their own process or with TRITON_INTERPRET=1")

THETA = 10000.0
B, T, H = 2, 20, 3  # B*T = 40 rows: several 16-row blocks, one partial, blocks straddling sequences
BLOCK = 16
# (dh, r): every rank path (none, FMA below the dot tile, dot at and above it, padded dot), and a
# head dim whose half (10) is not a power of two.
SHAPES = [(32, 0), (32, 8), (32, 16), (32, 32), (20, 6), (20, 20)]
MODES = [(False, None), (True, None), (False, THETA), (True, THETA)]
CASES = [pytest.param(dh, r, norm, theta,
                      id=f"dh{dh}-r{r}-{'norm' if norm else 'plain'}-{'rope' if theta else 'norope'}")
         for dh, r in SHAPES for norm, theta in MODES]


def inputs(dh, r, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(B, T, dh, generator=g)
    latent = torch.randn(B, T, H, r, generator=g)
    up = torch.randn(H, r, dh, generator=g) * max(r, 1) ** -0.5
    return shared.to(dtype), latent.to(dtype), up.to(dtype)


def reference(shared, latent, up, norm, rope_theta):
    k = unfused(shared, latent, up)
    if norm:
        k = rms_norm(k)
    if rope_theta is not None:
        k = rope(k, torch.arange(k.size(1)), rope_theta)
    return k


def reference_grads(shared, latent, up, grad, norm, rope_theta):
    """Value and gradients of the fp64 composition for upstream gradient `grad`."""
    leaves = [t.detach().double().requires_grad_() for t in (shared, latent, up)]
    out = reference(*leaves, norm, rope_theta)
    out.backward(grad.double())
    return out.detach(), [t.grad for t in leaves]


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dh, r, norm, theta", CASES)
def test_forward_matches_reference(dh, r, norm, theta):
    """The kernel writes every output element (the buffer starts as NaN) and equals the fp64 composition."""
    shared, latent, up = inputs(dh, r)
    out = torch.full((B, T, H, dh), float("nan"))
    fused._forward_into(out, shared, latent, up, norm, theta, BLOCK, 4)
    close(out, reference(shared.double(), latent.double(), up.double(), norm, theta))


@pytest.mark.parametrize("dh, r, norm, theta", CASES)
def test_gradients_match_autograd(dh, r, norm, theta):
    """Through the registered op: value and gradients of shared, latent and up against fp64 autograd."""
    shared, latent, up = inputs(dh, r, seed=1)
    grad = torch.randn(B, T, H, dh, generator=torch.Generator().manual_seed(2))
    expected, expected_grads = reference_grads(shared, latent, up, grad, norm, theta)
    leaves = [t.clone().requires_grad_() for t in (shared, latent, up)]
    out = fused.reconstruct(*leaves, norm=norm, rope_theta=theta, block_t=BLOCK, bwd_block_t=BLOCK)
    assert out.shape == (B, T, H, dh) and out.is_contiguous()
    out.backward(grad)
    close(out.detach(), expected)
    for leaf, want in zip(leaves, expected_grads):
        assert leaf.grad.dtype == leaf.dtype
        close(leaf.grad, want)


@pytest.mark.parametrize("norm, theta", [(True, THETA), (False, None)], ids=["norm-rope", "plain-norope"])
@pytest.mark.parametrize("dh, r", SHAPES)
def test_backward_writes_every_gradient(dh, r, norm, theta):
    """The backward kernels fill d_shared, d_latent and every d_up partial (buffers start as NaN), here with
    two blocks per d_up chunk, the last block wholly past the rows."""
    shared, latent, up = inputs(dh, r, seed=3)
    grad = torch.randn(B, T, H, dh, generator=torch.Generator().manual_seed(4))
    _, (want_shared, want_latent, want_up) = reference_grads(shared, latent, up, grad, norm, theta)
    n_chunks, per_chunk = fused._up_chunks(B * T, H, BLOCK, programs=2 * H)
    assert (n_chunks, per_chunk) == (2, 2)
    d_shared, d_latent = torch.full_like(shared, float("nan")), torch.full_like(latent, float("nan"))
    partial = torch.full((n_chunks, H, r, dh), float("nan"))
    fused._backward_into(d_shared, d_latent, partial, per_chunk, grad, shared, latent, up, norm, theta, BLOCK, 4)
    close(d_shared, want_shared)
    close(d_latent, want_latent)
    close(partial.sum(0), want_up)


def test_default_tiles_and_strided_inputs():
    """Default block sizes (one partial block) and non-contiguous inputs and upstream gradient."""
    shared, latent, up = inputs(32, 16, seed=5)
    latent = latent.transpose(0, 1).contiguous().transpose(0, 1)
    grad = torch.randn(B, H, T, 32, generator=torch.Generator().manual_seed(6)).transpose(1, 2)
    expected, expected_grads = reference_grads(shared, latent, up, grad, True, THETA)
    leaves = [t.clone().requires_grad_() for t in (shared, latent, up)]
    out = fused.reconstruct(*leaves, norm=True, rope_theta=THETA)
    out.backward(grad)
    close(out.detach(), expected)
    for leaf, want in zip(leaves, expected_grads):
        close(leaf.grad, want)


@pytest.mark.parametrize("r", [8, 16])
def test_bfloat16(r):
    """bf16 inputs accumulate in fp32 and store bf16: within bf16 rounding of the fp64 composition."""
    shared, latent, up = inputs(32, r, seed=7, dtype=torch.bfloat16)
    grad = torch.randn(B, T, H, 32, generator=torch.Generator().manual_seed(8)).bfloat16()
    expected, expected_grads = reference_grads(shared, latent, up, grad, True, THETA)
    leaves = [t.clone().requires_grad_() for t in (shared, latent, up)]
    out = fused.reconstruct(*leaves, norm=True, rope_theta=THETA, block_t=BLOCK, bwd_block_t=BLOCK)
    out.backward(grad)
    assert out.dtype == torch.bfloat16
    close(out.detach(), expected, tol=2e-2)
    for leaf, want in zip(leaves, expected_grads):
        assert leaf.grad.dtype == torch.bfloat16
        torch.testing.assert_close(leaf.grad.double(), want, rtol=2e-2, atol=2e-2 * want.abs().max().item())


def test_torch_compile_traces_the_op():
    """The op and its backward trace under torch.compile (AOT autograd) and give eager's values and gradients."""
    shared, latent, up = inputs(32, 8, seed=9)

    def keys_and_values(shared, latent, up):
        k = fused.reconstruct(shared, latent, up, norm=True, rope_theta=THETA, block_t=BLOCK, bwd_block_t=BLOCK)
        v = fused.reconstruct(shared * 2, latent, up, norm=False, rope_theta=None, block_t=BLOCK, bwd_block_t=BLOCK)
        return (k.sin() * v).sum(dim=(1, 3))

    torch._dynamo.reset()
    compiled = torch.compile(keys_and_values, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (keys_and_values, compiled):
        leaves = [t.clone().requires_grad_() for t in (shared, latent, up)]
        out = fn(*leaves)
        out.backward(torch.ones_like(out))
        results.append((out.detach(), [t.grad for t in leaves]))
    (want, want_grads), (got, got_grads) = results
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("shapes, name", [
    (((2, 20, 32), (2, 19, 3, 8), (3, 8, 32)), "latent"),
    (((2, 20, 32), (2, 20, 3, 8), (3, 8, 16)), "up"),
    (((2, 20, 32), (2, 20, 3, 8), (4, 8, 32)), "up"),
    (((40, 32), (2, 20, 3, 8), (3, 8, 32)), "shared"),
    (((2, 20, 31), (2, 20, 3, 8), (3, 8, 31)), "shared"),
])
def test_bad_shapes_name_the_argument(shapes, name):
    shared, latent, up = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=name):
        fused.reconstruct(shared, latent, up, norm=True, rope_theta=THETA)


def test_bad_dtype_and_block_are_rejected():
    shared, latent, up = inputs(32, 8)
    with pytest.raises(ValueError, match="up"):
        fused.reconstruct(shared, latent, up.double(), norm=False, rope_theta=None)
    with pytest.raises(ValueError, match="block_t"):
        fused.reconstruct(shared, latent, up, norm=False, rope_theta=None, block_t=24)


def test_layer_trains_through_the_fused_op(monkeypatch):
    """An LRKV layer on the fused path (taken on CUDA) gives the unfused forward and the same gradients."""
    from lrkv.kernels import AttentionSpec, build_attention

    torch.manual_seed(0)
    layer = build_attention(AttentionSpec("lrkv", 64, 4, rank=16))
    x = torch.randn(2, 12, 64)
    expected = layer(x)
    expected.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))  # the CUDA branch, interpreted
    real, calls = fused.reconstruct, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fused, "reconstruct", counted)
    out = layer(x)
    out.square().sum().backward()
    assert len(calls) == 2  # keys and values
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    for name, p in layer.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-3, atol=1e-4)
