"""The GPT's accounting equals what its real tensors hold and what torch counts."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lrkv.kernels import AttentionSpec
from lrkv.workers.diversity import effective_rank, head_diversity
from lrkv.workers.model import GPT, ModelConfig

SPECS = [AttentionSpec("mha", 64, 4), AttentionSpec("gqa", 64, 4, n_kv_heads=2), AttentionSpec("mqa", 64, 4),
         AttentionSpec("mla", 64, 4), AttentionSpec("lrkv", 64, 4, rank=8)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.label)
def test_params_and_training_flops(spec):
    cfg = ModelConfig(spec, n_layers=2)
    model = GPT(cfg, vocab_size=97)
    assert sum(p.numel() for p in model.parameters()) == cfg.params(97)
    B, T = 2, 32
    idx = torch.randint(97, (B, T + 1))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx[:, :-1], idx[:, 1:]).backward()
    assert counter.get_total_flops() == pytest.approx(cfg.train_flops_per_token(97, T) * B * T, rel=0.01)


def test_model_cache_bytes_are_layers_times_layer():
    spec = AttentionSpec("lrkv", 64, 4, rank=8)
    cfg = ModelConfig(spec, n_layers=3)
    model = GPT(cfg, 50)
    caches = [layer.allocate_cache(2, 10, dtype=torch.bfloat16) for layer in model.attention_layers()]
    assert sum(c.nbytes for c in caches) == cfg.kv_cache_bytes_per_token() * 2 * 10


def test_effective_rank_extremes():
    torch.manual_seed(0)
    w = torch.randn(1, 8, 32)
    same = effective_rank(w.expand(6, -1, -1), w.expand(6, -1, -1))
    assert same == pytest.approx(0.0, abs=1e-6)  # identical heads: no spread at all
    # Heads in orthogonal subspaces with equal norms spread evenly: the maximum H − 1.
    basis = torch.eye(48).view(6, 8, 48)
    assert effective_rank(basis, basis) == pytest.approx(5.0, rel=1e-6)


def test_effective_rank_is_gauge_invariant():
    torch.manual_seed(0)
    w_q, w_k = torch.randn(4, 8, 32, dtype=torch.float64), torch.randn(4, 8, 32, dtype=torch.float64)
    rot = torch.linalg.qr(torch.randn(4, 8, 8, dtype=torch.float64)).Q  # a different rotation per head
    rotated = effective_rank(rot @ w_q, rot @ w_k)
    assert rotated == pytest.approx(effective_rank(w_q, w_k), rel=1e-9)


def test_head_diversity_of_mqa_rank0_and_lrkv():
    """Same queries, one shared key map (r = 0) versus per-head keys: LRKV's forms are no less diverse."""
    torch.manual_seed(0)
    mqa = GPT(ModelConfig(AttentionSpec("lrkv", 64, 4, rank=0), 1), 10).attention_layers()
    lrkv = GPT(ModelConfig(AttentionSpec("lrkv", 64, 4, rank=16), 1), 10).attention_layers()
    d_mqa, d_lrkv = head_diversity(mqa), head_diversity(lrkv)
    assert 0 < d_mqa["head_eff_rank_frac"] <= 1 and 0 < d_lrkv["head_eff_rank_frac"] <= 1


def test_variants_share_the_weights_they_have_in_common():
    """Under one seed, LRKV at two ranks and MHA start with equal embeddings, MLPs, head and query
    projections (common random numbers), LRKV's shared K/V start as MQA's K/V, and a variant's own
    weights still differ from the others'."""
    def build(**spec):
        torch.manual_seed(7)
        return dict(GPT(ModelConfig(AttentionSpec(d_model=64, n_heads=4, **spec), n_layers=2), 100).named_parameters())

    lrkv4, lrkv6, mha, mqa = build(kind="lrkv", rank=4), build(kind="lrkv", rank=6), build(kind="mha"), build(kind="mqa")
    shared = ["embed.weight", "head.weight", "blocks.1.mlp.fc.weight", "blocks.0.attn.q", "blocks.1.attn.q"]
    for name in shared:
        assert torch.equal(lrkv4[name], lrkv6[name]) and torch.equal(lrkv4[name], mha[name]), name
    for i in range(2):
        for which in "kv":
            assert torch.equal(lrkv4[f"blocks.{i}.attn.{which}_shared"], mqa[f"blocks.{i}.attn.{which}"])
    assert not torch.equal(lrkv4["blocks.0.attn.q"], lrkv4["blocks.1.attn.q"])  # each name its own draw
    assert not torch.equal(lrkv4["blocks.0.attn.k_shared"], lrkv4["blocks.0.attn.v_shared"])
    assert not torch.equal(lrkv4["blocks.0.attn.k_down"][:16], lrkv4["blocks.0.attn.k_shared"])
    torch.manual_seed(8)
    other = dict(GPT(ModelConfig(AttentionSpec(d_model=64, n_heads=4, kind="lrkv", rank=4), n_layers=2), 100)
                 .named_parameters())
    assert not torch.equal(other["embed.weight"], lrkv4["embed.weight"])  # and the seed still matters
