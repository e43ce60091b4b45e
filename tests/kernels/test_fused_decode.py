"""The fused LRKV decode kernel (Triton; interpreted on the CPU) against the fp64 reference."""
import pytest
import torch
import triton

from lrkv.kernels import AttentionSpec, build_attention
from lrkv.kernels.fused import decode as fused_decode
from lrkv.kernels.fused.decode import SHORT_REBUILT, TILINGS, decode, default_tiling, logit_method, split_count
from lrkv.kernels.fused.tiles import dot_tile
from lrkv.kernels.lrkv import attend_compressed, key_scales

THETA = 10000.0
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # on the CPU the kernel runs interpreted


def compressed_cache(B, T, H, dh, r, lengths, seed, dtype=torch.float32):
    """Random rows, with every slot at or past a sequence's length poisoned with NaN."""
    g = torch.Generator().manual_seed(seed)
    rows = {"k_shared": torch.randn(B, T, dh, generator=g), "v_shared": torch.randn(B, T, dh, generator=g),
            "r_k": torch.randn(B, T, H, r, generator=g), "r_v": torch.randn(B, T, H, r, generator=g)}
    lengths = torch.tensor(lengths)
    dead = torch.arange(T)[None, :] >= lengths[:, None]
    for t in rows.values():
        t[dead] = float("nan")
    up = [torch.randn(H, r, dh, generator=g) * max(r, 1) ** -0.5 for _ in range(2)]
    q = torch.randn(B, H, dh, generator=g)
    return (q.to(DEVICE, dtype), {k: v.to(DEVICE, dtype) for k, v in rows.items()}, up[0].to(DEVICE, dtype),
            up[1].to(DEVICE, dtype), lengths.to(DEVICE))


def reference(q, rows, k_up, v_up, lengths, norm, rope_theta):
    T = rows["k_shared"].size(1)
    mask = torch.arange(T, device=DEVICE)[None, :] < lengths[:, None]
    clean = {k: torch.where(mask.view(*mask.shape, *[1] * (v.dim() - 2)), v, 0).double() for k, v in rows.items()}
    return attend_compressed(q.double(), clean, mask, k_up.double(), v_up.double(), norm=norm, rope_theta=rope_theta)


def run(q, rows, k_up, v_up, lengths, norm, rope_theta, **tiles):
    out = torch.full_like(q, float("nan"))  # every element must be written
    if tiles.get("method") == "grouped" and norm:  # it takes the norm from cached key scales only
        tiles["k_scale"] = cached_key_scales(rows, k_up)
    decode(q, rows["k_shared"], rows["v_shared"], rows["r_k"], rows["r_v"], k_up, v_up, lengths,
           norm=norm, rope_theta=rope_theta, out=out, **tiles)
    return out


def cached_key_scales(rows, k_up):
    """Each key's 1/rms as a key_scales cache holds it (NaN past a length, like the rest of the rows)."""
    return key_scales(rows["k_shared"], rows["r_k"], k_up).to(rows["r_k"].dtype)


METHODS = ["folded", "grouped", "rebuilt"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dh,r", [(32, 0), (32, 4), (32, 16), (32, 32), (64, 64), (20, 6)])
@pytest.mark.parametrize("norm,rope_theta", [(True, THETA), (False, None)])
def test_matches_fp64_reference(dh, r, norm, rope_theta, method):
    H = 4 if dh != 20 else 3
    lengths = [37, 5, 64, 1]
    q, rows, k_up, v_up, lengths = compressed_cache(4, 64, H, dh, r, lengths, seed=dh + r)
    out = run(q, rows, k_up, v_up, lengths, norm, rope_theta, method=method, block_t=16, splits=3)
    torch.testing.assert_close(out.double(), reference(q, rows, k_up, v_up, lengths, norm, rope_theta),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("block_t,splits", [(16, 1), (16, None), (32, 2), (16, 100)])
def test_tilings_agree(block_t, splits, method):
    """Every tile size and split count gives the same answer (more splits than tiles included)."""
    q, rows, k_up, v_up, lengths = compressed_cache(2, 70, 4, 32, 16, [70, 33], seed=7)
    out = run(q, rows, k_up, v_up, lengths, True, THETA, method=method, block_t=block_t, splits=splits)
    torch.testing.assert_close(out.double(), reference(q, rows, k_up, v_up, lengths, True, THETA),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("heads_per_program,block_t", [(1, 16), (2, 32), (3, 16), (4, 16), (16, 32)])
@pytest.mark.parametrize("r", [0, 16])
def test_head_groups_agree(heads_per_program, block_t, r, method):
    """Any number of heads per program (3 rounds down to a divisor of H = 4) gives the reference answer."""
    q, rows, k_up, v_up, lengths = compressed_cache(2, 40, 4, 32, r, [40, 17], seed=11)
    out = run(q, rows, k_up, v_up, lengths, True, THETA, method=method, block_t=block_t, splits=2,
              heads_per_program=heads_per_program)
    torch.testing.assert_close(out.double(), reference(q, rows, k_up, v_up, lengths, True, THETA),
                               rtol=1e-4, atol=1e-4)


def record_launches(monkeypatch, name: str) -> list:
    """The constants of every launch of the kernel `name` in fused_decode, which still runs."""
    kernel, calls = getattr(fused_decode, name), []

    class Recorder:
        def __getitem__(self, grid):
            def launch(*args, **constants):
                calls.append(constants)
                return kernel[grid](*args, **constants)
            return launch

    monkeypatch.setattr(fused_decode, name, Recorder())
    return calls


@pytest.mark.parametrize("dh,r,H", [(32, 4, 4), (32, 16, 4), (20, 6, 3), (64, 64, 2), (32, 16, 1)])
@pytest.mark.parametrize("cap", [0, 64])
@pytest.mark.parametrize("scaled", [False, True])
def test_folded_values_of_the_whole_group_at_once(monkeypatch, dh, r, H, cap, scaled):
    """Folded's p·R_v for every head of a group as one product (padded heads and ranks masked), up to the
    rank cap and for groups of more than one head, gives the reference; so does the loop over heads."""
    monkeypatch.setattr(fused_decode, "VALUES_AT_ONCE_MAX_RANK", cap)
    launches = record_launches(monkeypatch, "_split_folded_kernel")
    q, rows, k_up, v_up, lengths = compressed_cache(3, 50, H, dh, r, [50, 9, 31], seed=r + H)
    k_scale = cached_key_scales(rows, k_up) if scaled else None
    out = run(q, rows, k_up, v_up, lengths, True, THETA, method="folded", block_t=16, splits=2, k_scale=k_scale)
    torch.testing.assert_close(out.double(), reference(q, rows, k_up, v_up, lengths, True, THETA),
                               rtol=1e-4, atol=1e-4)
    at_once = cap > 0 and H > 1
    assert launches[0]["VALUE_COLS"] == dot_tile(r) * (triton.next_power_of_2(H) if at_once else 1)


@pytest.mark.parametrize("dh,r,H,group,per_chunk", [
    (32, 16, 4, None, [1, 2, 4, 4]), (32, 4, 6, None, [1, 2, 4, 8]), (20, 6, 3, None, [1, 2, 4, 4]),
    (32, 32, 4, None, [1, 1, 2, 4]), (32, 16, 1, None, [1, 1, 1, 1]), (64, 64, 2, None, [1, 1, 1, 2]),
    (32, 16, 4, 2, [1, 2, 2, 2]), (32, 16, 6, 3, [1, 2, 4, 4])])  # heads a chunk at LOGIT_COLS 0, 32, 64, 128
@pytest.mark.parametrize("i", range(4))
@pytest.mark.parametrize("rope", [THETA, None])
def test_folded_logit_of_several_heads_at_once(monkeypatch, dh, r, H, group, per_chunk, i, rope):
    """With cached key scales, folded's logit terms for a chunk of heads side by side in one product (heads past
    the group and padded ranks masked; several groups a sequence) give the reference; so does one head at a time."""
    cols = [0, 32, 64, 128][i]
    monkeypatch.setattr(fused_decode, "LOGIT_COLS", cols)
    launches = record_launches(monkeypatch, "_split_folded_kernel")
    q, rows, k_up, v_up, lengths = compressed_cache(2, 40, H, dh, r, [40, 13], seed=r + H + cols)
    out = run(q, rows, k_up, v_up, lengths, True, rope, method="folded", block_t=16, splits=2,
              heads_per_program=group, k_scale=cached_key_scales(rows, k_up))
    torch.testing.assert_close(out.double(), reference(q, rows, k_up, v_up, lengths, True, rope),
                               rtol=1e-4, atol=1e-4)
    assert launches[0]["LOGIT_COLS"] == max(16, r) * per_chunk[i]


@pytest.mark.parametrize("early", [False, True])
@pytest.mark.parametrize("r,scaled,rope", [(16, True, THETA), (4, False, THETA), (32, True, None), (0, False, None)])
def test_folded_load_orders_agree(monkeypatch, early, r, scaled, rope):
    """Folded gives the reference whether a tile's V_shared and key-scale rows load with its K_shared rows or
    where they are used (splits of several tiles, one and none, ragged ends included); the launcher issues them
    early up to EARLY_LOADS_MAX_RANK."""
    monkeypatch.setattr(fused_decode, "EARLY_LOADS_MAX_RANK", 32 if early else 0)
    launches = record_launches(monkeypatch, "_split_folded_kernel")
    q, rows, k_up, v_up, lengths = compressed_cache(3, 45, 4, 32, r, [45, 3, 30], seed=r + early)
    k_scale = cached_key_scales(rows, k_up) if scaled else None
    out = run(q, rows, k_up, v_up, lengths, True, rope, method="folded", block_t=16, splits=2, k_scale=k_scale)
    torch.testing.assert_close(out.double(), reference(q, rows, k_up, v_up, lengths, True, rope),
                               rtol=1e-4, atol=1e-4)
    assert launches[0]["EARLY_LOADS"] is early


def test_folded_takes_wide_tiles_where_its_chunks_hold_four_heads():
    """With key scales, folded's 128-token tiling at r <= 16 (four heads a logit product) and over r = 64."""
    assert default_tiling("folded", 16, True) == default_tiling("folded", 128, True) == TILINGS["folded-wide"]
    assert default_tiling("folded", 64, True) == default_tiling("folded", 32, True) == TILINGS["folded"]
    assert default_tiling("folded", 0, True) == TILINGS["folded"]  # no latent: no logit chunks


def test_folded_keeps_narrow_tiles_where_no_chunk_holds_four_heads(monkeypatch):
    monkeypatch.setattr(fused_decode, "LOGIT_COLS", 32)
    assert default_tiling("folded", 16, True) == TILINGS["folded"]
    monkeypatch.setattr(fused_decode, "LOGIT_COLS", 0)
    assert default_tiling("folded", 16, True) == TILINGS["folded"]


def test_folded_logit_chunks_only_with_cached_key_scales(monkeypatch):
    """Chunks of heads as wide as LOGIT_COLS allows, with key scales only (the norm is computed per head)."""
    monkeypatch.setattr(fused_decode, "LOGIT_COLS", 64)
    assert fused_decode.logit_cols(16, 16, True) == 64 and fused_decode.logit_cols(16, 32, True) == 64
    assert fused_decode.logit_cols(2, 16, True) == 32  # a group of two heads fills two heads' columns
    assert fused_decode.logit_cols(16, 16, False) == 16
    assert fused_decode.logit_cols(16, 64, True) == 64 and fused_decode.logit_cols(16, 128, True) == 128
    monkeypatch.setattr(fused_decode, "LOGIT_COLS", 128)
    assert fused_decode.logit_cols(16, 64, True) == 128
    assert fused_decode.sums_by_dot(16, 64, True)  # two heads a chunk: their sums by product
    assert not fused_decode.sums_by_dot(16, 32, False)
    monkeypatch.setattr(fused_decode, "LOGIT_COLS", 64)
    assert fused_decode.sums_by_dot(1, 32, True) and not fused_decode.sums_by_dot(16, 64, True)
    monkeypatch.setattr(fused_decode, "LOGIT_COLS", 96)  # chunks of whole powers of two: three heads' room holds two
    assert fused_decode.logit_cols(16, 32, True) == 64 and fused_decode.logit_cols(16, 16, True) == 64


def test_short_contexts_launch_the_short_tiling(monkeypatch):
    """decode() sizes its default tiling by the cache it is given: two heads and one tile per program at 1K slots."""
    launches = record_launches(monkeypatch, "_split_rebuilt_kernel")
    q, rows, k_up, v_up, lengths = compressed_cache(1, 64, 4, 32, 16, [64], seed=5)
    out = run(q, rows, k_up, v_up, lengths, True, THETA)
    torch.testing.assert_close(out.double(), reference(q, rows, k_up, v_up, lengths, True, THETA),
                               rtol=1e-4, atol=1e-4)
    assert (launches[0]["HEADS"], launches[0]["BLOCK_T"]) == (SHORT_REBUILT[-1], SHORT_REBUILT[0])


@pytest.mark.parametrize("method", METHODS)
def test_bf16_within_tolerance(method):
    q, rows, k_up, v_up, lengths = compressed_cache(2, 48, 4, 32, 16, [48, 20], seed=3, dtype=torch.bfloat16)
    out = run(q, rows, k_up, v_up, lengths, True, THETA, method=method, block_t=16)
    expected = reference(q, rows, k_up, v_up, lengths, True, THETA)
    assert ((out.double() - expected).norm() / expected.norm()) < 1e-2


@pytest.mark.parametrize("method,scaled", [("folded", False), ("folded", True), ("grouped", True),
                                           ("rebuilt", False), ("rebuilt", True)])
def test_large_pre_norm_keys_stay_within_tolerance(method, scaled):
    """Keys whose latents are 10⁴ times larger than usual (the norm divides it out again): on the GPU the
    per-head sums run as bf16 parts, which must neither overflow nor lose the answer."""
    q, rows, k_up, v_up, lengths = compressed_cache(2, 48, 4, 32, 16, [48, 20], seed=5, dtype=torch.bfloat16)
    rows["k_shared"], rows["r_k"] = rows["k_shared"] * 1e4, rows["r_k"] * 1e4
    k_scale = cached_key_scales(rows, k_up) if scaled else None
    out = run(q, rows, k_up, v_up, lengths, True, THETA, method=method, block_t=16, k_scale=k_scale)
    expected = reference(q, rows, k_up, v_up, lengths, True, THETA)
    assert ((out.double() - expected).norm() / expected.norm()) < 1e-2


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dh,r,dtype", [(32, 4, torch.float32), (32, 16, torch.float32), (64, 64, torch.float32),
                                        (32, 16, torch.bfloat16)])
def test_cached_key_scales_stand_in_for_the_norm(dh, r, dtype, method):
    """Scaling logits by the cached 1/rms gives the answer of computing each key's norm (fp64 reference,
    which computes the norm itself); the cache's NaN slots stay unread."""
    q, rows, k_up, v_up, lengths = compressed_cache(3, 48, 4, dh, r, [48, 7, 30], seed=r + 1, dtype=dtype)
    out = torch.full_like(q, float("nan"))
    decode(q, rows["k_shared"], rows["v_shared"], rows["r_k"], rows["r_v"], k_up, v_up, lengths, norm=True,
           rope_theta=THETA, method=method, block_t=16, splits=2, k_scale=cached_key_scales(rows, k_up), out=out)
    expected = reference(q, rows, k_up, v_up, lengths, True, THETA)
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    else:
        assert ((out.double() - expected).norm() / expected.norm()) < 1e-2


def test_grouped_without_key_scales_is_refused_where_a_norm_is_due():
    q, rows, k_up, v_up, lengths = compressed_cache(2, 8, 4, 32, 16, [8, 8], seed=0)
    with pytest.raises(ValueError, match="method: 'grouped' computes no norm, so it needs k_scale or norm=False"):
        decode(q, rows["k_shared"], rows["v_shared"], rows["r_k"], rows["r_v"], k_up, v_up, lengths,
               norm=True, rope_theta=THETA, method="grouped")


def test_key_scales_without_norm_are_refused():
    q, rows, k_up, v_up, lengths = compressed_cache(2, 8, 4, 32, 16, [8, 8], seed=0)
    with pytest.raises(ValueError, match="k_scale: expected None when norm is False"):
        decode(q, rows["k_shared"], rows["v_shared"], rows["r_k"], rows["r_v"], k_up, v_up, lengths,
               norm=False, rope_theta=THETA, k_scale=cached_key_scales(rows, k_up))


@pytest.mark.parametrize("key_scales", [False, True], ids=["norms", "key-scales"])
def test_layer_decode_through_kernel_matches_forward(monkeypatch, key_scales):
    """An LRKV layer decoding token by token through the kernel reproduces its training forward."""
    spec = AttentionSpec("lrkv", 64, 4, rank=16, key_scales=key_scales)
    torch.manual_seed(0)
    layer = build_attention(spec).to(DEVICE)
    x = torch.randn(2, 9, 64, device=DEVICE)
    full = layer(x)
    cache = layer.allocate_cache(2, 12, fill=float("nan"))
    monkeypatch.setattr(type(cache), "attend_reference", lambda self, *a: pytest.fail("reference used"))
    if DEVICE == "cpu":  # take the CUDA branch with CPU tensors, for the interpreter
        monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    steps = torch.stack([layer.decode(x[:, t], cache) for t in range(x.size(1))], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)


def test_method_follows_the_measured_crossover():
    """Folded logits for r ≤ 64 over batches of at least 32K tokens (16K at r ≤ 32), and with key scales from 8K
    tokens; keys rebuilt otherwise."""
    assert logit_method(8, 32768, 64) == logit_method(1, 32768, 16) == logit_method(32, 2048, 32) == "folded"
    assert logit_method(8, 2048, 16) == logit_method(8, 2048, 32) == "folded"
    assert logit_method(8, 2048, 64) == logit_method(1, 8192, 16) == logit_method(8, 32768, 128) == "rebuilt"
    # With cached key scales folded streams one matrix per head, and wins from 8K tokens at every rank (H100 grid).
    assert logit_method(8, 2048, 64, scaled=True) == logit_method(8, 32768, 128, scaled=True) == "folded"
    assert logit_method(1, 32768, 128, scaled=True) == logit_method(1, 8192, 64, scaled=True) == "folded"
    assert logit_method(1, 2048, 32, scaled=True) == logit_method(1, 4096, 128, scaled=True) == "rebuilt"
    # Grouped heads only below 8K tokens at r ≤ 16: over more, folded with pipelined head loops beat them (H100 grid).
    assert logit_method(1, 2048, 16, scaled=True) == logit_method(1, 4096, 8, scaled=True) == "grouped"
    assert logit_method(8, 32768, 16, scaled=True) == logit_method(32, 8192, 4, scaled=True) == "folded"
    assert logit_method(8, 8192, 16, scaled=True) == logit_method(8, 32768, 32, scaled=True) == "folded"
    assert logit_method(8, 32768, 16) == "folded"


def test_short_contexts_take_more_shorter_programs_at_small_ranks():
    """Up to 2K cached tokens rebuilt at r ≤ 32 runs two heads per program and one tile per split (H100 grid)."""
    assert default_tiling("rebuilt", 16, True, 2048) == default_tiling("rebuilt", 32, False, 1024) == SHORT_REBUILT
    assert default_tiling("rebuilt", 64, True, 2048) == default_tiling("rebuilt", 16, True, 4096) == TILINGS["rebuilt"]
    assert default_tiling("folded", 32, True, 2048) == default_tiling("folded", 16, False) == TILINGS["folded"]
    assert default_tiling("rebuilt", 16) == TILINGS["rebuilt"]  # shape unknown


def test_short_contexts_still_fill_the_card():
    """Chunks of at least min_tiles tiles, unless that leaves under two programs per multiprocessor."""
    assert split_count(rows=8, n_tiles=32, waves=8, min_tiles=2, sms=132) == 32   # B=8, T=2K: 256 programs
    assert split_count(rows=32, n_tiles=32, waves=8, min_tiles=2, sms=132) == 16  # 512 programs already
    assert split_count(rows=8, n_tiles=512, waves=8, min_tiles=2, sms=132) == 132  # long contexts: by waves
    assert split_count(rows=1, n_tiles=3, waves=8, min_tiles=2, sms=132) == 3     # never more than the tiles


@pytest.mark.parametrize("whole,splits", [(False, 9), (True, 8)])
def test_whole_waves_round_each_rows_share_down(monkeypatch, whole, splits):
    """B = 32 rows sharing two programs a multiprocessor: 264 places take 8 chunks a row (256 programs) under
    WHOLE_WAVES, else 9 (288, a second wave barely begun); a row gets at least one."""
    monkeypatch.setattr(fused_decode, "WHOLE_WAVES", whole)
    assert split_count(rows=32, n_tiles=512, waves=2, min_tiles=8, sms=132) == splits
    assert split_count(rows=200, n_tiles=512, waves=2, min_tiles=8, sms=132) == (1 if whole else 2)


def test_shape_mismatch_names_the_argument():
    q, rows, k_up, v_up, lengths = compressed_cache(2, 8, 4, 32, 16, [8, 8], seed=0)
    with pytest.raises(ValueError, match="r_v: expected shape"):
        decode(q, rows["k_shared"], rows["v_shared"], rows["r_k"], rows["r_v"][:, :, :2], k_up, v_up, lengths,
               norm=True, rope_theta=THETA)


def test_unknown_method_names_the_argument():
    q, rows, k_up, v_up, lengths = compressed_cache(2, 8, 4, 32, 16, [8, 8], seed=0)
    with pytest.raises(ValueError, match="method: expected one of 'folded', 'grouped', 'rebuilt'"):
        decode(q, rows["k_shared"], rows["v_shared"], rows["r_k"], rows["r_v"], k_up, v_up, lengths,
               norm=True, rope_theta=THETA, method="fast")
