"""What the fused kernels' launchers share: tile sides the tensor cores accept, and whether Triton is
interpreting a kernel (decided when it was defined, by TRITON_INTERPRET)."""
import triton

MIN_DOT = 16  # smallest tile side tl.dot accepts on the GPU (the interpreter takes any)


def dot_tile(n: int) -> int:
    """A tile side for n: a power of two, and at least MIN_DOT."""
    return max(MIN_DOT, triton.next_power_of_2(max(n, 1)))


def interpreted(kernel) -> bool:
    # The interpreter multiplies raw bf16 bit patterns in tl.dot; the kernels widen first when this holds.
    return not isinstance(kernel, triton.runtime.jit.JITFunction)
