"""benchmarks/decode_resources.py: the decode kernels the launcher picks, compiled for sm_90 on a machine
without a GPU, and the programs a multiprocessor holds."""
import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
# Run apart from the test process, whose kernels may be interpreted (interpreted kernels do not compile).
PROBE = """
import json
import decode_resources as d
from lrkv.kernels.fused.decode import default_tiling
cells = []
for r in (16, 64):
    name, kernel, args, constants = d.launch(8, 32768, 16, 128, r, True)
    cells.append(dict(kernel=name, tiling=[constants[k] for k in ("BLOCK_T", "num_warps", "num_stages")],
                      default=list(default_tiling("folded", r, True, 8 * 32768)[:3]),
                      **d.resources(d.compiled(kernel, args, constants))))
print(json.dumps(cells))
"""


def test_the_launchers_kernels_compile_for_hopper_and_report_their_room(tmp_path):
    """B = 8, T = 32K with key scales: folded at its default tilings. The 8-warp, 128-token program (r = 16)
    fills a multiprocessor alone and the 4-warp, 64-token one (r = 64) leaves room for two, as the profiler
    showed on an H100."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"TRITON_CACHE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-c", PROBE], cwd=BENCHMARKS, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    r16, r64 = json.loads(run.stdout.splitlines()[-1])
    for cell in (r16, r64):
        assert cell["kernel"] == "_split_folded_kernel" and cell["tiling"] == cell["default"]
        assert 0 < cell["registers"] <= 255 and cell["shared_bytes"] > 0
        assert "registers" in cell["limited_by"]  # 255 registers a thread: 64K hold 8 warps
    assert (r16["num_warps"], r16["programs_per_sm"]) == (8, 1)
    assert (r64["num_warps"], r64["programs_per_sm"]) == (4, 2)
