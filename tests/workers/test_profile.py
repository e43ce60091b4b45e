"""The decode profiler: every variant's attention over full caches, timed at each context."""
import pytest
import torch

from lrkv.kernels import AttentionSpec, build_attention
from lrkv.workers.profile import profile_decode
from lrkv.workers.train import train

from .conftest import tiny_trial

SPECS = [AttentionSpec("mha", 64, 4), AttentionSpec("gqa", 64, 4, n_kv_heads=2), AttentionSpec("mqa", 64, 4),
         AttentionSpec("mla", 64, 4, kv_latent_dim=24, rope_dim=8), AttentionSpec("lrkv", 64, 4, rank=8),
         AttentionSpec("lrkv", 64, 4, rank=8, key_scales=True)]


@pytest.mark.parametrize("spec", SPECS, ids=[s.kind for s in SPECS])
def test_full_promise_changes_nothing(spec):
    """attend(full=True), which skips the mask work and host syncs, equals attend() on a full cache."""
    torch.manual_seed(0)
    layer = build_attention(spec).double()
    cache = layer.allocate_cache(3, 10)
    for t in cache.tensors.values():
        t.normal_()
    cache.lengths.fill_(10)
    args = layer.attend_args(3, torch.float64)
    torch.testing.assert_close(cache.attend(*args, full=True), cache.attend(*args), rtol=0, atol=0)


@pytest.mark.parametrize("spec", SPECS, ids=[s.kind for s in SPECS])
def test_profile_times_each_context(spec):
    layers = [build_attention(spec) for _ in range(2)]
    record = profile_decode(layers, [32, 16], batch=2, device=torch.device("cpu"))
    assert set(record) == {"decode_ms", "decode_ms_at_16", "decode_ms_at_32",
                           "decode_floor_fraction_at_16", "decode_floor_fraction_at_32"}
    assert record["decode_ms"] == record["decode_ms_at_32"] > 0
    assert all(record[f"decode_floor_fraction_at_{T}"] > 0 for T in (16, 32))


def test_trial_record_carries_decode_ms(tmp_path):
    record = train(tiny_trial(tmp_path, profile_contexts=(32,), profile_batch=2))
    assert record["decode_ms"] == record["decode_ms_at_32"] > 0
    assert "decode_ms" not in train(tiny_trial(tmp_path))  # nothing profiled unless asked
