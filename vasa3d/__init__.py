"""vasa3d: one portrait and a speech clip to an animatable 3D Gaussian head."""

import os

# Bit-for-bit reproducible BLAS. MKL picks its GEMM kernels by the CPU and by the memory alignment
# of the operands, so a resumed fit (whose tensors are allocated anew) drifted from an
# uninterrupted one by an ulp, and Adam amplified that to 1e-4 in parameters whose gradient is
# near zero. The compatible code path costs nothing measurable at our matrix sizes. It must be set
# before MKL's first call; export MKL_CBWR=AUTO to trade reproducibility for speed.
os.environ.setdefault("MKL_CBWR", "COMPATIBLE")

__version__ = "0.1.0"
