"""The kernel tier: exact float64 sums of x**2 (or x) per pattern.

``sums`` dispatches; ``native`` loads the C kernel (``native.c``, built into
``_native_kernel.so`` by the root ``hatch_build.py``); ``device`` is the fused
accelerator path. All give the same totals to float64 rounding.
"""
