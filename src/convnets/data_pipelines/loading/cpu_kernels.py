"""The per-pixel steps of the CPU training graph that DALI's CPU operators make slow, as Numba kernels.

Measured on ImageNet photos, 2-core x86_64 VM, DALI 2.4.0 (docs/benchmarks.md, "The data path on 2 CPU cores"):
DALI's CPU `resize` of the random crop to 224 px costs ~1.1-1.5 ms of CPU an image (linear, no
antialiasing; ~2 ms antialiased), and its CPU `color_twist` 1.1-2 ms: each about half the decode of
the whole photo, so a CPU pipeline ran at ~0.5-0.7x the decode-only rate. Both are scalar per-pixel
loops there. Compiled by Numba/LLVM, the colour map costs ~40 us, and the whole train view
~0.3-0.5 ms. GPU graphs keep DALI's operators (cheap on the GPU).

  train_view     the inception and alexnet presets' crop -> network input in one kernel: DALI's
                 linear resize (output pixel centres mapped onto the input, edges clamped), without
                 antialiasing (inception) or with it (alexnet), color_twist, mirror,
                 crop_mirror_normalize's normalization (or its uint8 output), CHW. Within 2 levels
                 of DALI's operators, which round to uint8 between the steps.
  colour_twist   color_twist's uint8 output, for the pad preset; identical pixels.
Both use augment.color_twist_matrix, the torch engine's matrix too. Tests: tests/unit/test_dali_pipeline.py.

They run as DALI's `numba_function` operator (per sample, in DALI's thread pool, without the GIL),
with our own C callbacks compiled once per machine and cached on disk by Numba (`cache=True`):
DALI's Python wrapper would recompile its glue (~2 s) at every pipeline build, in every process and
test. The callbacks follow the C ABI that DALI's NumbaFuncImpl (CPU) calls: pointers arrive as
integers; per sample, the output and input data pointers and shape pointers.
"""

from __future__ import annotations

import functools

import numpy as np
import nvidia.dali.fn as fn
import nvidia.dali.types as types
from numba import carray, cfunc, float32, njit
from numba import types as nb
from numba.core import cgutils
from numba.extending import intrinsic
from nvidia.dali.plugin.numba.experimental import NumbaFunction

from convnets.data_pipelines.loading.augment import color_twist_matrix

# Per-sample run: (out data ptrs, out shape ptrs, outs ndim, n outs, in data ptrs, in shape ptrs, ins ndim, n ins).
_RUN_SIG = nb.void(nb.uint64, nb.uint64, nb.uint64, nb.int32, nb.uint64, nb.uint64, nb.uint64, nb.int32)
# Setup, once per batch: (out shape ptrs, outs ndim, n outs, in shape ptrs, ins ndim, n ins, n samples).
_SETUP_SIG = nb.void(nb.uint64, nb.uint64, nb.int32, nb.uint64, nb.uint64, nb.int32, nb.int32)


@intrinsic
def _pointer(typingctx, address):
    """uint64 address -> void*, so carray can view the buffer DALI passes as an integer."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return nb.voidptr(nb.uint64), codegen


@njit(cache=True)
def _address(ptrs, i):
    """Entry i of a per-sample pointer array DALI passes: input or output i's data (or shape) address."""
    return carray(_pointer(ptrs), i + 1, dtype=np.uint64)[i]


@njit(cache=True)
def _shape3(shape_ptrs, i):
    """The (H, W, C) shape of this sample's 3-D input or output i (only 3-D ones: a shape has ndim entries)."""
    return carray(_pointer(_address(shape_ptrs, i)), 3, dtype=np.int64)


def _op(run, setup, in_types, ins_ndim, out_type=types.UINT8):
    """A numba_function operator (one 3-D output) calling these callbacks instead of compiling its own."""

    class Kernel(NumbaFunction):
        def _get_run_fn_cpu(self, *args, **kwargs):
            return run.address

        def _get_setup_fn_cpu(self, setup_fn):
            return setup.address

    return Kernel(run_fn=None, out_types=[out_type], in_types=in_types, outs_ndim=[3], ins_ndim=ins_ndim, device="cpu")


# -- colour twist --------------------------------------------------------------------------------
_matrix = njit(cache=True)(color_twist_matrix)


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


@cfunc(_RUN_SIG, nopython=True, cache=True)
def _twist_run(out_ptrs, out_shapes, outs_ndim, num_outs, in_ptrs, in_shapes, ins_ndim, num_ins):
    image, shape = _address(in_ptrs, 0), _shape3(in_shapes, 0)
    factors = _address(in_ptrs, 1)  # brightness, contrast, saturation, hue (degrees)
    out = _address(out_ptrs, 0)
    size = shape[0] * shape[1] * shape[2]
    f = carray(_pointer(factors), 4, dtype=np.float32)
    _twist(
        carray(_pointer(out), size, dtype=np.uint8),
        carray(_pointer(image), size, dtype=np.uint8),
        _matrix(f[0], f[1], f[2], f[3]),
    )


@cfunc(_SETUP_SIG, nopython=True, cache=True)
def _same_shape_setup(out_shapes, outs_ndim, num_outs, in_shapes, ins_ndim, num_ins, num_samples):
    """The output takes each image's shape (input 0)."""
    outs = carray(_pointer(out_shapes), num_samples, dtype=np.uint64)
    ins = carray(_pointer(in_shapes), num_samples, dtype=np.uint64)
    for i in range(num_samples):
        dst = carray(_pointer(outs[i]), 3, dtype=np.int64)
        src = carray(_pointer(ins[i]), 3, dtype=np.int64)
        for d in range(3):
            dst[d] = src[d]


def colour_twist(images, factors: dict):
    """uint8 HWC RGB images -> the same, twisted by color_twist's factors (absent ones are neutral)."""
    op = _op(_twist_run, _same_shape_setup, in_types=[types.UINT8, types.FLOAT], ins_ndim=[3, 1])
    return op(images, fn.stack(*_factor_nodes(factors)))


def _factor_nodes(factors: dict) -> list:
    """color_twist's four factors in the kernels' order, a neutral constant for each one not drawn."""
    return [
        factors.get(name, types.Constant(np.float32(neutral)))
        for name, neutral in (("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0), ("hue", 0.0))
    ]


# -- the train view (inception and alexnet presets), fused -----------------------------------------
# params per image (float32): brightness, contrast, saturation, hue (degrees), mirror (0/1),
# mean (3, 0..255 units, PCA lighting's offset already subtracted), 1 / std (3, 0..255 units),
# antialias (0/1).
_PARAMS = 12


@njit(cache=True, fastmath=True)
def _filter(out_size, in_size, antialias, reverse):
    """Per output index: the input indices (edges clamped) and normalized weights of a triangle
    filter on pixel centres: radius one input pixel (linear interpolation), or, antialiased, the
    scale when it shrinks (DALI's linear resize with antialias). reverse: mirrored output."""
    scale = in_size / out_size
    radius = max(scale, 1.0) if antialias else 1.0
    taps = int(np.ceil(2.0 * radius))  # the most input centres strictly inside (c - radius, c + radius)
    index = np.empty((out_size, taps), np.int64)
    weight = np.empty((out_size, taps), np.float32)
    for o in range(out_size):
        row = out_size - 1 - o if reverse else o
        centre = (o + 0.5) * scale - 0.5
        first = int(np.floor(centre - radius)) + 1
        total = 0.0
        for t in range(taps):
            k = first + t
            w = max(0.0, 1.0 - abs(k - centre) / radius)
            index[row, t], weight[row, t] = min(max(k, 0), in_size - 1), w
            total += w
        for t in range(taps):
            weight[row, t] /= total
    return index, weight


@njit(cache=True, fastmath=True)
def _rows(src, width, index, weight):
    """Vertical pass over interleaved RGB rows: each output row a weighted sum of whole input rows
    (contiguous, so LLVM vectorizes it: ~0.1 ms for a 328 px square to 224 rows)."""
    row = width * 3
    out = np.empty((index.shape[0], row), np.float32)
    for i in range(index.shape[0]):
        for k in range(row):
            out[i, k] = 0.0
        for t in range(index.shape[1]):
            w, base = weight[i, t], index[i, t] * row
            line = src[base : base + row]
            for k in range(row):
                out[i, k] += w * line[k]
    return out


@njit(cache=True, fastmath=True)
def _columns(rows, index, weight):
    """Horizontal pass: interleaved rows -> three planes (R, G, B) of size x size, scalar gathers."""
    size = rows.shape[0]
    planes = np.empty((3, size * size), np.float32)
    red, green, blue = planes[0], planes[1], planes[2]  # 1-D views: indexing them is cheaper than planes[c, k]
    for y in range(size):
        line, at = rows[y], y * size
        for x in range(size):
            r, g, b = float32(0.0), float32(0.0), float32(0.0)
            for t in range(index.shape[1]):
                w, p = weight[x, t], index[x, t] * 3
                r += w * line[p]
                g += w * line[p + 1]
                b += w * line[p + 2]
            red[at + x], green[at + x], blue[at + x] = r, g, b
    return planes


@njit(cache=True, fastmath=True)
def _finish(dst, planes, m, p, to_uint8):
    """color_twist (clamped to 0..255), normalize, CHW, plane by plane: one branch-free loop, so LLVM
    vectorizes it (~0.05 ms; a uint8/float branch inside the loop made it 0.25)."""
    m00, m01, m02, o0 = float32(m[0, 0]), float32(m[0, 1]), float32(m[0, 2]), float32(m[0, 3])
    m10, m11, m12, o1 = float32(m[1, 0]), float32(m[1, 1]), float32(m[1, 2]), float32(m[1, 3])
    m20, m21, m22, o2 = float32(m[2, 0]), float32(m[2, 1]), float32(m[2, 2]), float32(m[2, 3])
    mean0, mean1, mean2 = float32(p[5]), float32(p[6]), float32(p[7])
    scale0, scale1, scale2 = float32(p[8]), float32(p[9]), float32(p[10])
    lo, hi = float32(0.0), float32(255.0)
    # The output's rounding and bounds: uint8 as crop_mirror_normalize's (+ 0.5, truncated on the
    # store, saturated); float32 as computed (bounds no float32 value reaches; finite, as fastmath wants).
    if to_uint8:
        half, out_lo, out_hi = float32(0.5), lo, hi
    else:
        half, out_lo, out_hi = float32(0.0), float32(-3.0e38), float32(3.0e38)
    plane = planes.shape[1]
    red, green, blue = planes[0], planes[1], planes[2]
    d0, d1, d2 = dst[:plane], dst[plane : 2 * plane], dst[2 * plane :]
    for k in range(plane):
        r, g, b = red[k], green[k], blue[k]
        d0[k] = min(max((min(max(m00 * r + m01 * g + m02 * b + o0, lo), hi) - mean0) * scale0 + half, out_lo), out_hi)
        d1[k] = min(max((min(max(m10 * r + m11 * g + m12 * b + o1, lo), hi) - mean1) * scale1 + half, out_lo), out_hi)
        d2[k] = min(max((min(max(m20 * r + m21 * g + m22 * b + o2, lo), hi) - mean2) * scale2 + half, out_lo), out_hi)


@njit(cache=True, fastmath=True)
def _view(dst, size, src, h, w, p, to_uint8):
    """Resize the RGB crop to size x size (separable triangle filter: linear, or antialiased as
    DALI's resize), twist its colours, mirror, normalize, write CHW. ~0.35 ms for a 300 x 250 crop
    (linear), ~0.5 ms for a 328 px square antialiased (2-core Xeon VM, one thread)."""
    antialias = p[11] > 0.5
    y_index, y_weight = _filter(size, h, antialias, False)
    x_index, x_weight = _filter(size, w, antialias, p[4] > 0.5)
    planes = _columns(_rows(src, w, y_index, y_weight), x_index, x_weight)
    _finish(dst, planes, _matrix(p[0], p[1], p[2], p[3]), p, to_uint8)


@njit(cache=True)
def _view_sample(out_ptrs, out_shapes, in_ptrs, in_shapes, dtype, to_uint8):
    image, shape = _address(in_ptrs, 0), _shape3(in_shapes, 0)
    params = _address(in_ptrs, 1)
    out, out_shape = _address(out_ptrs, 0), _shape3(out_shapes, 0)
    h, w, size = shape[0], shape[1], out_shape[1]
    _view(
        carray(_pointer(out), 3 * size * size, dtype=dtype),
        size,
        carray(_pointer(image), h * w * 3, dtype=np.uint8),
        h,
        w,
        carray(_pointer(params), _PARAMS, dtype=np.float32),
        to_uint8,
    )


@cfunc(_RUN_SIG, nopython=True, cache=True)
def _view_float_run(out_ptrs, out_shapes, outs_ndim, num_outs, in_ptrs, in_shapes, ins_ndim, num_ins):
    _view_sample(out_ptrs, out_shapes, in_ptrs, in_shapes, np.float32, False)


@cfunc(_RUN_SIG, nopython=True, cache=True)
def _view_uint8_run(out_ptrs, out_shapes, outs_ndim, num_outs, in_ptrs, in_shapes, ins_ndim, num_ins):
    _view_sample(out_ptrs, out_shapes, in_ptrs, in_shapes, np.uint8, True)


@functools.cache
def _chw_setup(size: int):
    """Setup callback giving every output (3, size, size): compiled per size (tiny; a closure is not cached)."""

    @cfunc(_SETUP_SIG, nopython=True)
    def setup(out_shapes, outs_ndim, num_outs, in_shapes, ins_ndim, num_ins, num_samples):
        outs = carray(_pointer(out_shapes), num_samples, dtype=np.uint64)
        for i in range(num_samples):
            dst = carray(_pointer(outs[i]), 3, dtype=np.int64)
            dst[0], dst[1], dst[2] = 3, size, size

    return setup


def train_view(
    images, size: int, factors: dict, *, mirror, mean, std: list[float], uint8: bool, antialias: bool = False
):
    """uint8 HWC RGB random crops -> the network's CHW input in one kernel: what fn.resize(antialias=
    antialias) + color_twist + crop_mirror_normalize give (within 2 levels; tests/unit/test_dali_pipeline.py).

    factors: color_twist's (absent ones neutral); mirror: a per-image 0/1 node or 0; mean: per-image
    (3,) node or constant list (0..255 units, lighting offset subtracted); std: 0..255 units.
    uint8: output uint8 pixels (mean 0, std 1 then), else float32.
    """
    jitter = _factor_nodes(factors)
    flip = fn.cast(mirror, dtype=types.FLOAT) if not isinstance(mirror, int) else types.Constant(np.float32(mirror))
    mean = mean if not isinstance(mean, list) else types.Constant(np.array(mean, dtype=np.float32))
    scale = types.Constant(np.array([1.0 / s for s in std], dtype=np.float32))
    params = fn.cat(fn.stack(*jitter, flip), mean, scale, types.Constant(np.array([antialias], dtype=np.float32)))
    run, dtype = (_view_uint8_run, types.UINT8) if uint8 else (_view_float_run, types.FLOAT)
    op = _op(run, _chw_setup(size), in_types=[types.UINT8, types.FLOAT], ins_ndim=[3, 1], out_type=dtype)
    return op(images, params)
