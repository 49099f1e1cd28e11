"""The kernel tier: float64 sums of x**2 (or x) per dataset and per pattern.

One file per path, all giving the same totals to float64 rounding (every
square exact, partial sums added with ``math.fsum``):

- ``sums``: the dispatch. `sums.intensity_sum` picks the first path
  that can read the data, validates the result (NaN, infinities, negative
  values) and samples it for the units guard.
- ``native``: the C kernel, one fused threaded pass at the memory-read floor
  over dense CPU float32/float64 data. Its source ``native.c`` sits beside
  it; the root ``hatch_build.py`` compiles it into ``_native_kernel.so`` at
  install time and `ctypes` loads it.
- ``device``: one ``torch.compile``d pass over large dense inputs on CUDA.
- ``blas``: numpy's BLAS over cached float64 blocks, for dense CPU
  float32/float64 data when the native kernel is absent.
- ``eager``: blocks of PyTorch ops for everything else (masks, float16,
  bfloat16, strided views, small or masked accelerator inputs).

Only ``sums`` is imported from outside the folder (and ``native`` by the
doctor and the file reader, for its status and thread cap).
"""
