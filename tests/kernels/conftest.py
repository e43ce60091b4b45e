import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter (read when a kernel is defined).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lrkv.kernels import AttentionSpec

# One contract suite runs over every variant (and the LRKV rank extremes).
SPECS = {
    "mha": AttentionSpec("mha", 64, 4),
    "gqa": AttentionSpec("gqa", 64, 4, n_kv_heads=2),
    "mqa": AttentionSpec("mqa", 64, 4),
    "mla": AttentionSpec("mla", 64, 4, kv_latent_dim=24, rope_dim=8),
    "lrkv0": AttentionSpec("lrkv", 64, 4, rank=0),
    "lrkv4": AttentionSpec("lrkv", 64, 4, rank=4),
    "lrkv16": AttentionSpec("lrkv", 64, 4, rank=16),
    "lrkv16_scales": AttentionSpec("lrkv", 64, 4, rank=16, key_scales=True),
    "lrkv_nonorm": AttentionSpec("lrkv", 48, 3, head_dim=20, rank=6, qk_norm=False),
}


@pytest.fixture(params=list(SPECS), ids=list(SPECS))
def spec(request) -> AttentionSpec:
    return SPECS[request.param]


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
