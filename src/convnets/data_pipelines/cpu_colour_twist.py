"""Colour jitter on the CPU at the cost of one pass over the pixels: a Numba kernel in the DALI graph.

DALI's CPU `color_twist` (like `saturation`, `hsv` and `coord_transform`) is a scalar per-pixel
loop: 1.1-2 ms per 224 px image, about half the decode of an ImageNet photo, which held a CPU
pipeline with saturation jitter at ~0.5x the decode-only rate (README, "The data path on 2 CPU
cores"). The same per-image affine map (augment.color_twist_matrix, so the torch engine's
matrix), compiled by Numba/LLVM into a vectorized loop, costs ~40 us an image.

It runs as DALI's `numba_function` operator (per sample, in DALI's thread pool, no GIL), but with
our own two C callbacks, compiled once per machine and cached on disk by Numba (`cache=True`):
DALI's Python wrapper would recompile its glue (~2 s) at every pipeline build, in every process
and every test. The callbacks follow the C ABI that DALI's NumbaFuncImpl (CPU) calls: pointers
arrive as integers; per sample, the output and input data pointers and shape pointers.

Output: uint8 HWC, rounded and clamped as color_twist's uint8 output is (within 1 level of it:
float32 arithmetic; tests/unit/test_dali_pipeline.py).
"""
from __future__ import annotations

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
from numba import carray, cfunc, float32, njit, types as nb
from numba.core import cgutils
from numba.extending import intrinsic
from nvidia.dali.plugin.numba.experimental import NumbaFunction

from convnets.data_pipelines.augment import color_twist_matrix

_matrix = njit(cache=True)(color_twist_matrix)


@intrinsic
def _pointer(typingctx, address):
    """uint64 address -> void*, so carray can view the buffer DALI passes as an integer."""
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return nb.voidptr(nb.uint64), codegen


@njit(cache=True, fastmath=True)
def _twist(dst, src, m):
    """dst = clamp(round(M src + offset)) over interleaved RGB uint8; fastmath lets LLVM vectorize."""
    m00, m01, m02, o0 = float32(m[0, 0]), float32(m[0, 1]), float32(m[0, 2]), float32(m[0, 3] + 0.5)
    m10, m11, m12, o1 = float32(m[1, 0]), float32(m[1, 1]), float32(m[1, 2]), float32(m[1, 3] + 0.5)
    m20, m21, m22, o2 = float32(m[2, 0]), float32(m[2, 1]), float32(m[2, 2]), float32(m[2, 3] + 0.5)
    lo, hi = float32(0.0), float32(255.0)
    for p in range(src.shape[0] // 3):  # + 0.5 in the offsets, then truncation: round to nearest
        r, g, b = float32(src[3 * p]), float32(src[3 * p + 1]), float32(src[3 * p + 2])
        dst[3 * p] = np.uint8(min(max(m00 * r + m01 * g + m02 * b + o0, lo), hi))
        dst[3 * p + 1] = np.uint8(min(max(m10 * r + m11 * g + m12 * b + o1, lo), hi))
        dst[3 * p + 2] = np.uint8(min(max(m20 * r + m21 * g + m22 * b + o2, lo), hi))


# Per-sample run: (out data ptrs, out shape ptrs, outs ndim, n outs, in data ptrs, in shape ptrs, ins ndim, n ins).
_RUN_SIG = nb.void(nb.uint64, nb.uint64, nb.uint64, nb.int32, nb.uint64, nb.uint64, nb.uint64, nb.int32)
# Setup, once per batch: (out shape ptrs, outs ndim, n outs, in shape ptrs, ins ndim, n ins, n samples).
_SETUP_SIG = nb.void(nb.uint64, nb.uint64, nb.int32, nb.uint64, nb.uint64, nb.int32, nb.int32)


@cfunc(_RUN_SIG, nopython=True, cache=True)
def _run(out_ptrs, out_shapes, outs_ndim, num_outs, in_ptrs, in_shapes, ins_ndim, num_ins):
    outputs = carray(_pointer(out_ptrs), 1, dtype=np.uint64)
    inputs = carray(_pointer(in_ptrs), 2, dtype=np.uint64)  # image (H, W, 3) uint8, factors (4,) float32
    shape = carray(_pointer(carray(_pointer(in_shapes), 2, dtype=np.uint64)[0]), 3, dtype=np.int64)
    size = shape[0] * shape[1] * shape[2]
    f = carray(_pointer(inputs[1]), 4, dtype=np.float32)  # brightness, contrast, saturation, hue (degrees)
    _twist(carray(_pointer(outputs[0]), size, dtype=np.uint8), carray(_pointer(inputs[0]), size, dtype=np.uint8),
           _matrix(f[0], f[1], f[2], f[3]))


@cfunc(_SETUP_SIG, nopython=True, cache=True)
def _setup(out_shapes, outs_ndim, num_outs, in_shapes, ins_ndim, num_ins, num_samples):
    """The output takes each image's shape (input 0; the factors are input 1)."""
    outs = carray(_pointer(out_shapes), num_samples, dtype=np.uint64)
    ins = carray(_pointer(in_shapes), num_samples, dtype=np.uint64)
    for i in range(num_samples):
        dst = carray(_pointer(outs[i]), 3, dtype=np.int64)
        src = carray(_pointer(ins[i]), 3, dtype=np.int64)
        for d in range(3):
            dst[d] = src[d]


class _ColourTwist(NumbaFunction):
    """numba_function with the cached callbacks above instead of a per-build compilation."""

    def _get_run_fn_cpu(self, *args, **kwargs):
        return _run.address

    def _get_setup_fn_cpu(self, setup_fn):
        return _setup.address


def colour_twist(images, factors: dict):
    """uint8 HWC RGB images -> the same, twisted by color_twist's factors (absent ones are neutral)."""
    f = [factors.get(name, types.Constant(np.float32(neutral)))
         for name, neutral in (("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0), ("hue", 0.0))]
    op = _ColourTwist(run_fn=None, out_types=[types.UINT8], in_types=[types.UINT8, types.FLOAT],
                      outs_ndim=[3], ins_ndim=[3, 1], device="cpu")
    return op(images, fn.stack(*f))
