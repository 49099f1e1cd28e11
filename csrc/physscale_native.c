/*
 * physscale's optional native kernel: one fused pass over a dense float array
 * that widens every element to double, squares it (amplitude domain) or not
 * (intensity domain), accumulates in double and tracks the minimum.
 *
 * The eager PyTorch path needs three passes per block (convert into a float64
 * buffer, dot, amin); this does the same arithmetic in one read of the data,
 * which is what brings derive_intensity_scale down to the memory-read floor.
 * It is plain C with no Python or torch headers, loaded with ctypes, so one
 * build serves every Python version. Threads are driven from Python (ctypes
 * releases the GIL), each thread calling this on its own slice.
 *
 * Accuracy: squares of float32 are exact in double. Each CHUNK of elements is
 * summed over LANES independent double accumulators (32 lanes let the
 * compiler keep several SIMD registers in flight), and chunk sums are added
 * with Neumaier compensation, so the error does not grow with the input size.
 */
#include <math.h>
#include <stdint.h>

#ifndef PHYSSCALE_NATIVE_ABI
#define PHYSSCALE_NATIVE_ABI 1
#endif
#define LANES 32
#define CHUNK 4096 /* a multiple of LANES */

/* Runtime dispatch to an AVX2 clone where the toolchain supports it (GCC on
 * x86-64 with ifunc); the build retries without it otherwise. */
#if defined(PHYSSCALE_TARGET_CLONES)
#define PHYSSCALE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define PHYSSCALE_CLONES
#endif

#if defined(_WIN32)
#define PHYSSCALE_EXPORT __declspec(dllexport)
#else
#define PHYSSCALE_EXPORT __attribute__((visibility("default")))
#endif

PHYSSCALE_EXPORT int physscale_native_abi(void) { return PHYSSCALE_NATIVE_ABI; }

/* out[0]: running total, out[1]: its Neumaier compensation (total + comp is
 * the sum), out[2]: the minimum element (NaN is never selected: the total
 * carries it). */
#define PHYSSCALE_REDUCE(NAME, T)                                                  \
    PHYSSCALE_EXPORT PHYSSCALE_CLONES void NAME(const T *x, int64_t n, int square, \
                                                double *out) {                     \
        double total = 0.0, comp = 0.0;                                            \
        T mins[LANES];                                                             \
        for (int j = 0; j < LANES; ++j) mins[j] = (T)INFINITY;                     \
        int64_t i = 0;                                                             \
        while (i < n) {                                                            \
            int64_t end = (n - i > CHUNK) ? i + CHUNK : n;                         \
            int64_t vend = i + ((end - i) / LANES) * LANES;                        \
            double acc[LANES] = {0.0};                                             \
            if (square) {                                                          \
                for (; i < vend; i += LANES)                                       \
                    for (int j = 0; j < LANES; ++j) {                              \
                        T v = x[i + j];                                            \
                        acc[j] += (double)v * (double)v;                           \
                        mins[j] = v < mins[j] ? v : mins[j];                       \
                    }                                                              \
            } else {                                                               \
                for (; i < vend; i += LANES)                                       \
                    for (int j = 0; j < LANES; ++j) {                              \
                        T v = x[i + j];                                            \
                        acc[j] += (double)v;                                       \
                        mins[j] = v < mins[j] ? v : mins[j];                       \
                    }                                                              \
            }                                                                      \
            for (; i < end; ++i) {                                                 \
                T v = x[i];                                                        \
                acc[0] += square ? (double)v * (double)v : (double)v;              \
                mins[0] = v < mins[0] ? v : mins[0];                               \
            }                                                                      \
            /* Pairwise over the lanes, then compensated into the total. */        \
            for (int width = LANES / 2; width > 0; width /= 2)                     \
                for (int j = 0; j < width; ++j) acc[j] += acc[j + width];          \
            double s = acc[0], t = total + s;                                      \
            if (fabs(total) >= fabs(s))                                            \
                comp += (total - t) + s;                                           \
            else                                                                   \
                comp += (s - t) + total;                                           \
            total = t;                                                             \
        }                                                                          \
        T m = mins[0];                                                             \
        for (int j = 1; j < LANES; ++j) m = mins[j] < m ? mins[j] : m;             \
        out[0] = total;                                                            \
        out[1] = comp;                                                             \
        out[2] = (double)m;                                                        \
    }

PHYSSCALE_REDUCE(physscale_reduce_f32, float)
PHYSSCALE_REDUCE(physscale_reduce_f64, double)
