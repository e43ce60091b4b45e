"""AttentionSpec validation and the accounting formulas against the paper's numbers."""
import pytest
import torch

from lrkv.kernels import AttentionSpec, ConfigError


def test_paper_cache_formula():
    """2·L·(d_h + H·r) values per token: 24 layers, 16 heads of 128, r = 64, bf16."""
    spec = AttentionSpec("lrkv", 2048, 16, head_dim=128, rank=64)
    assert spec.kv_cache_bytes_per_token(torch.bfloat16, n_layers=24) == 2 * 24 * (128 + 16 * 64) * 2 == 110592
    assert spec.cache_ratio_vs_mha() == 0.5625


@pytest.mark.parametrize("kind,extra,values", [
    ("mha", {}, 2 * 8 * 64),
    ("gqa", {"n_kv_heads": 2}, 2 * 2 * 64),
    ("mqa", {}, 2 * 64),
    ("mla", {}, 4 * 64 + 32),
    ("lrkv", {"rank": 0}, 2 * 64),
    ("lrkv", {"rank": 64}, 2 * (64 + 8 * 64)),
])
def test_cache_values_per_token(kind, extra, values):
    assert AttentionSpec(kind, 512, 8, **extra).cache_values_per_token() == values


def test_rank_extremes_bracket_mqa_and_mha():
    mqa, mha = AttentionSpec("mqa", 512, 8), AttentionSpec("mha", 512, 8)
    assert AttentionSpec("lrkv", 512, 8, rank=0).cache_values_per_token() == mqa.cache_values_per_token()
    # r = d_h stores the shared row on top of H full heads: MHA's cache plus 2·d_h.
    full = AttentionSpec("lrkv", 512, 8, rank=64).cache_values_per_token()
    assert full == mha.cache_values_per_token() + 2 * 64


@pytest.mark.parametrize("kwargs,field", [
    ({"kind": "mhq", "d_model": 64, "n_heads": 4}, "kind"),
    ({"kind": "mha", "d_model": 64, "n_heads": 5}, "n_heads"),
    ({"kind": "mha", "d_model": 0, "n_heads": 4}, "d_model"),
    ({"kind": "lrkv", "d_model": 64, "n_heads": 4, "rank": 17}, "rank"),
    ({"kind": "lrkv", "d_model": 64, "n_heads": 4, "rank": -1}, "rank"),
    ({"kind": "mha", "d_model": 64, "n_heads": 4, "rank": 4}, "rank"),
    ({"kind": "gqa", "d_model": 64, "n_heads": 4}, "n_kv_heads"),
    ({"kind": "gqa", "d_model": 64, "n_heads": 4, "n_kv_heads": 3}, "n_kv_heads"),
    ({"kind": "mqa", "d_model": 64, "n_heads": 4, "n_kv_heads": 2}, "n_kv_heads"),
    ({"kind": "mha", "d_model": 60, "n_heads": 4, "head_dim": 15}, "head_dim"),
    ({"kind": "mla", "d_model": 64, "n_heads": 4, "rope_dim": 3}, "rope_dim"),
    ({"kind": "lrkv", "d_model": 64, "n_heads": 4, "kv_latent_dim": 8}, "kv_latent_dim"),
])
def test_invalid_specs_name_their_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        AttentionSpec(**kwargs)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: expected ")
    assert "\n" not in str(info.value)
