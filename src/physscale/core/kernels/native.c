/*
 * physscale's optional native kernel: one fused pass over a dense float array
 * that widens every element to double, squares it (amplitude domain) or not
 * (intensity domain), accumulates in double and tracks the minimum.
 *
 * The eager PyTorch path needs three passes per block (convert into a float64
 * buffer, dot, amin); this does the same arithmetic in one read of the data,
 * which is what brings derive_intensity_scale down to the memory-read floor.
 * It is plain C with no Python or torch headers, loaded with ctypes, so one
 * build serves every Python version. Threads share one task (work items taken
 * from an atomic counter, see physscale_run_task at the end); Python hands it
 * to torch's OpenMP team, or to its own threads (ctypes releases the GIL).
 *
 * Accuracy: squares of float32 are exact in double, so a fused multiply-add
 * acc + v*v rounds once, exactly like the separate multiply and add. Each
 * CHUNK of elements is summed over LANES independent double accumulators,
 * the lanes are added pairwise, and chunk sums are added with Neumaier
 * compensation, so the error does not grow with the input size.
 *
 * Speed: the loop must run well above the memory bandwidth of one core, or it
 * becomes the bottleneck on cores whose bandwidth is high relative to their
 * vector throughput (measured: 1.5x the x.sum() floor on an AVX-512 Xeon with
 * the compiler-vectorized AVX2 loop). On x86-64 there are hand-written AVX2+FMA
 * and AVX-512F loops, chosen at run time (__builtin_cpu_supports): a converting
 * load (vcvtps2pd from memory, no shuffle), one FMA and a vminps per vector,
 * which is about half the instructions per element of the compiler's loop.
 * Every other CPU, and any x86-64 build where the compiler lacks those
 * intrinsics (the build hook then retries without PHYSSCALE_X86_SIMD), uses
 * the portable loop, which the compiler vectorizes for the baseline ISA.
 */
#include <math.h>
#include <stdint.h>

#ifndef PHYSSCALE_NATIVE_ABI
#define PHYSSCALE_NATIVE_ABI 3
#endif
#define LANES 32
#define CHUNK 4096 /* a multiple of LANES */

/* Kernel ids: bit k of physscale_native_kernels() says kernel k is usable. */
#define KERNEL_PORTABLE 0
#define KERNEL_AVX2 1
#define KERNEL_AVX512 2

#if defined(PHYSSCALE_X86_SIMD) && (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__GNUC__) || defined(__clang__))
#define HAVE_X86_SIMD 1
#include <immintrin.h>
#else
#define HAVE_X86_SIMD 0
#endif

#if defined(_WIN32)
#define PHYSSCALE_EXPORT __declspec(dllexport)
#else
#define PHYSSCALE_EXPORT __attribute__((visibility("default")))
#endif

PHYSSCALE_EXPORT int physscale_native_abi(void) { return PHYSSCALE_NATIVE_ABI; }

/* A Neumaier-compensated running sum: total + comp is the sum. */
typedef struct {
    double total, comp;
} csum;

static inline void csum_add(csum *s, double v) {
    double t = s->total + v;
    if (fabs(s->total) >= fabs(v))
        s->comp += (s->total - t) + v;
    else
        s->comp += (v - t) + s->total;
    s->total = t;
}

/* out[0]: running total, out[1]: its Neumaier compensation (total + comp is
 * the sum), out[2]: the minimum element (NaN is never selected: the total
 * carries it). Every kernel below fills out the same way. */

/* ------------------------------------------------------------ portable */
#define PHYSSCALE_PORTABLE(NAME, T)                                                \
    static void NAME(const T *x, int64_t n, int square, double *out) {             \
        csum s = {0.0, 0.0};                                                       \
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
            csum_add(&s, acc[0]);                                                  \
        }                                                                          \
        T m = mins[0];                                                             \
        for (int j = 1; j < LANES; ++j) m = mins[j] < m ? mins[j] : m;             \
        out[0] = s.total;                                                          \
        out[1] = s.comp;                                                           \
        out[2] = (double)m;                                                        \
    }

PHYSSCALE_PORTABLE(reduce_f32_portable, float)
PHYSSCALE_PORTABLE(reduce_f64_portable, double)

#if HAVE_X86_SIMD
/*
 * The SIMD kernels share one shape: CHUNK-element chunks, each summed into
 * LANES = 32 double lanes (8 AVX2 or 4 AVX-512 registers, enough independent
 * FMA chains to hide the FMA latency), lanes added pairwise, chunk sums
 * compensated. The elements of a chunk beyond the last whole 32 (only in the
 * final chunk) are added by scalar code into the same chunk sum. The running
 * minimum is updated as min(v, m), which returns m when v is NaN (vminp*
 * returns its second operand then), so a NaN never becomes the minimum, as in
 * the portable loop. Where two loaded vectors are combined first (float64), a
 * NaN can hide the other's value in that lane; that does not matter, since the
 * NaN makes the total NaN and the caller reports it before any minimum.
 * Loads are unaligned: a tensor may start at any element offset.
 */
#define SIMD_TAIL(T)                                                      \
    for (; i < end; ++i) {                                                \
        T v = x[i];                                                       \
        tail += square ? (double)v * (double)v : (double)v;               \
        m = v < m ? v : m;                                                \
    }

/* ---------------------------------------------------------------- AVX2 */
#define AVX2_TARGET __attribute__((target("avx2,fma")))

AVX2_TARGET static inline double avx2_hsum4(__m256d a, __m256d b, __m256d c, __m256d d) {
    __m256d s = _mm256_add_pd(_mm256_add_pd(a, b), _mm256_add_pd(c, d));
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

/* One step of 32 float32 elements: 8 converting loads (4 floats -> 4
 * doubles each), 8 FMAs (or adds), 4 vminps reading the same lines. */
#define AVX2_F32_STEP(OP)                                               \
    do {                                                                \
        const float *p = x + i;                                         \
        /* Two halves, so the 8 accumulators and the temporaries fit in \
         * the 16 ymm registers (no accumulator spilled to the stack). */ \
        __m256d d0 = _mm256_cvtps_pd(_mm_loadu_ps(p + 0));              \
        __m256d d1 = _mm256_cvtps_pd(_mm_loadu_ps(p + 4));              \
        __m256d d2 = _mm256_cvtps_pd(_mm_loadu_ps(p + 8));              \
        __m256d d3 = _mm256_cvtps_pd(_mm_loadu_ps(p + 12));             \
        a0 = OP(d0, a0);                                                \
        a1 = OP(d1, a1);                                                \
        a2 = OP(d2, a2);                                                \
        a3 = OP(d3, a3);                                                \
        m0 = _mm256_min_ps(_mm256_loadu_ps(p + 0), m0);                 \
        m1 = _mm256_min_ps(_mm256_loadu_ps(p + 8), m1);                 \
        d0 = _mm256_cvtps_pd(_mm_loadu_ps(p + 16));                     \
        d1 = _mm256_cvtps_pd(_mm_loadu_ps(p + 20));                     \
        d2 = _mm256_cvtps_pd(_mm_loadu_ps(p + 24));                     \
        d3 = _mm256_cvtps_pd(_mm_loadu_ps(p + 28));                     \
        a4 = OP(d0, a4);                                                \
        a5 = OP(d1, a5);                                                \
        a6 = OP(d2, a6);                                                \
        a7 = OP(d3, a7);                                                \
        m0 = _mm256_min_ps(_mm256_loadu_ps(p + 16), m0);                \
        m1 = _mm256_min_ps(_mm256_loadu_ps(p + 24), m1);                \
    } while (0)

#define AVX2_F64_STEP(OP)                                               \
    do {                                                                \
        const double *p = x + i;                                        \
        /* Halves again; each half's minimum is a tree, so one vminpd   \
         * per half waits on the previous iteration. */                \
        __m256d d0 = _mm256_loadu_pd(p + 0), d1 = _mm256_loadu_pd(p + 4);   \
        __m256d d2 = _mm256_loadu_pd(p + 8), d3 = _mm256_loadu_pd(p + 12); \
        a0 = OP(d0, a0);                                                \
        a1 = OP(d1, a1);                                                \
        a2 = OP(d2, a2);                                                \
        a3 = OP(d3, a3);                                                \
        m0 = _mm256_min_pd(_mm256_min_pd(_mm256_min_pd(d0, d1), _mm256_min_pd(d2, d3)), m0); \
        d0 = _mm256_loadu_pd(p + 16), d1 = _mm256_loadu_pd(p + 20);     \
        d2 = _mm256_loadu_pd(p + 24), d3 = _mm256_loadu_pd(p + 28);     \
        a4 = OP(d0, a4);                                                \
        a5 = OP(d1, a5);                                                \
        a6 = OP(d2, a6);                                                \
        a7 = OP(d3, a7);                                                \
        m1 = _mm256_min_pd(_mm256_min_pd(_mm256_min_pd(d0, d1), _mm256_min_pd(d2, d3)), m1); \
    } while (0)

#define AVX2_SQ(d, a) _mm256_fmadd_pd(d, d, a)
#define AVX2_ID(d, a) _mm256_add_pd(d, a)

#define AVX2_KERNEL(NAME, T, VMIN, SETMIN, MIN_TO_SCALAR, STEP)                          \
    AVX2_TARGET static void NAME(const T *x, int64_t n, int square, double *out) { \
        csum s = {0.0, 0.0};                                                       \
        VMIN m0 = SETMIN((T)INFINITY), m1 = m0;                                    \
        T m = (T)INFINITY;                                                         \
        int64_t i = 0;                                                             \
        while (i < n) {                                                            \
            int64_t end = (n - i > CHUNK) ? i + CHUNK : n;                         \
            int64_t vend = i + ((end - i) / LANES) * LANES;                        \
            __m256d a0 = _mm256_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;           \
            __m256d a4 = a0, a5 = a0, a6 = a0, a7 = a0;                            \
            double tail = 0.0;                                                     \
            if (square)                                                            \
                for (; i < vend; i += LANES) STEP(AVX2_SQ);                        \
            else                                                                   \
                for (; i < vend; i += LANES) STEP(AVX2_ID);                        \
            SIMD_TAIL(T)                                                           \
            /* pairwise: lanes j and j + 16, j + 8, ... as in the portable loop */ \
            double chunk = avx2_hsum4(_mm256_add_pd(a0, a4), _mm256_add_pd(a1, a5), \
                                      _mm256_add_pd(a2, a6), _mm256_add_pd(a3, a7)); \
            csum_add(&s, chunk + tail);                                            \
        }                                                                          \
        T vm = MIN_TO_SCALAR(m0, m1);                                              \
        m = vm < m ? vm : m;                                                       \
        out[0] = s.total;                                                          \
        out[1] = s.comp;                                                           \
        out[2] = (double)m;                                                        \
    }

AVX2_TARGET static inline float avx2_min_f32(__m256 a, __m256 b) {
    __m256 v = _mm256_min_ps(a, b);
    __m128 h = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_min_ps(h, _mm_movehl_ps(h, h));
    h = _mm_min_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}

AVX2_TARGET static inline double avx2_min_f64(__m256d a, __m256d b) {
    __m256d v = _mm256_min_pd(a, b);
    __m128d h = _mm_min_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_min_sd(h, _mm_unpackhi_pd(h, h)));
}

AVX2_KERNEL(reduce_f32_avx2, float, __m256, _mm256_set1_ps, avx2_min_f32, AVX2_F32_STEP)
AVX2_KERNEL(reduce_f64_avx2, double, __m256d, _mm256_set1_pd, avx2_min_f64, AVX2_F64_STEP)

/* -------------------------------------------------------------- AVX-512 */
#define AVX512_TARGET __attribute__((target("avx512f")))

AVX512_TARGET static inline double avx512_hsum4(__m512d a, __m512d b, __m512d c, __m512d d) {
    __m512d s = _mm512_add_pd(_mm512_add_pd(a, b), _mm512_add_pd(c, d));
    __m256d q = _mm256_add_pd(_mm512_castpd512_pd256(s), _mm512_extractf64x4_pd(s, 1));
    __m128d h = _mm_add_pd(_mm256_castpd256_pd128(q), _mm256_extractf128_pd(q, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

/* 32 float32 elements: 4 converting loads (8 floats -> 8 doubles each),
 * 4 FMAs (or adds), 2 vminps reading the same two cache lines. */
#define AVX512_F32_STEP(OP)                                             \
    do {                                                                \
        const float *p = x + i;                                         \
        __m512d d0 = _mm512_cvtps_pd(_mm256_loadu_ps(p + 0));           \
        __m512d d1 = _mm512_cvtps_pd(_mm256_loadu_ps(p + 8));           \
        __m512d d2 = _mm512_cvtps_pd(_mm256_loadu_ps(p + 16));          \
        __m512d d3 = _mm512_cvtps_pd(_mm256_loadu_ps(p + 24));          \
        a0 = OP(d0, a0);                                                \
        a1 = OP(d1, a1);                                                \
        a2 = OP(d2, a2);                                                \
        a3 = OP(d3, a3);                                                \
        m0 = _mm512_min_ps(_mm512_loadu_ps(p + 0), m0);                 \
        m1 = _mm512_min_ps(_mm512_loadu_ps(p + 16), m1);                \
    } while (0)

#define AVX512_F64_STEP(OP)                                             \
    do {                                                                \
        const double *p = x + i;                                        \
        __m512d d0 = _mm512_loadu_pd(p + 0), d1 = _mm512_loadu_pd(p + 8);   \
        __m512d d2 = _mm512_loadu_pd(p + 16), d3 = _mm512_loadu_pd(p + 24); \
        a0 = OP(d0, a0);                                                \
        a1 = OP(d1, a1);                                                \
        a2 = OP(d2, a2);                                                \
        a3 = OP(d3, a3);                                                \
        m0 = _mm512_min_pd(_mm512_min_pd(d0, d1), m0);                  \
        m1 = _mm512_min_pd(_mm512_min_pd(d2, d3), m1);                  \
    } while (0)

#define AVX512_SQ(d, a) _mm512_fmadd_pd(d, d, a)
#define AVX512_ID(d, a) _mm512_fmadd_pd(d, _mm512_set1_pd(1.0), a)

#define AVX512_KERNEL(NAME, T, VMIN, SETMIN, MIN_TO_SCALAR, STEP)                    \
    AVX512_TARGET static void NAME(const T *x, int64_t n, int square, double *out) { \
        csum s = {0.0, 0.0};                                                         \
        VMIN m0 = SETMIN((T)INFINITY), m1 = m0;                                      \
        T m = (T)INFINITY;                                                           \
        int64_t i = 0;                                                               \
        while (i < n) {                                                              \
            int64_t end = (n - i > CHUNK) ? i + CHUNK : n;                           \
            int64_t vend = i + ((end - i) / LANES) * LANES;                          \
            __m512d a0 = _mm512_setzero_pd(), a1 = a0, a2 = a0, a3 = a0;             \
            double tail = 0.0;                                                       \
            if (square)                                                              \
                for (; i < vend; i += LANES) STEP(AVX512_SQ);                        \
            else                                                                     \
                for (; i < vend; i += LANES) STEP(AVX512_ID);                        \
            SIMD_TAIL(T)                                                             \
            csum_add(&s, avx512_hsum4(a0, a1, a2, a3) + tail);                       \
        }                                                                            \
        T vm = MIN_TO_SCALAR(m0, m1);                                                \
        m = vm < m ? vm : m;                                                         \
        out[0] = s.total;                                                            \
        out[1] = s.comp;                                                             \
        out[2] = (double)m;                                                          \
    }

/* _mm512_reduce_min_* would also do, but min() of a NaN lane is unspecified
 * there; NaN never reaches these lanes anyway (min(v, m) keeps m). */
AVX512_TARGET static inline float avx512_min_f32(__m512 a, __m512 b) {
    __m512 v = _mm512_min_ps(a, b);
    __m256 q = _mm256_min_ps(_mm512_castps512_ps256(v),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
    __m128 h = _mm_min_ps(_mm256_castps256_ps128(q), _mm256_extractf128_ps(q, 1));
    h = _mm_min_ps(h, _mm_movehl_ps(h, h));
    h = _mm_min_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}

AVX512_TARGET static inline double avx512_min_f64(__m512d a, __m512d b) {
    __m512d v = _mm512_min_pd(a, b);
    __m256d q = _mm256_min_pd(_mm512_castpd512_pd256(v), _mm512_extractf64x4_pd(v, 1));
    __m128d h = _mm_min_pd(_mm256_castpd256_pd128(q), _mm256_extractf128_pd(q, 1));
    return _mm_cvtsd_f64(_mm_min_sd(h, _mm_unpackhi_pd(h, h)));
}

AVX512_KERNEL(reduce_f32_avx512, float, __m512, _mm512_set1_ps, avx512_min_f32, AVX512_F32_STEP)
AVX512_KERNEL(reduce_f64_avx512, double, __m512d, _mm512_set1_pd, avx512_min_f64,
              AVX512_F64_STEP)
#endif /* HAVE_X86_SIMD */

/* ------------------------------------------------------------ dispatch */
static int usable_kernels(void) {
    static int cached = -1; /* a benign race: every thread computes the same value */
    if (cached < 0) {
        int mask = 1 << KERNEL_PORTABLE;
#if HAVE_X86_SIMD
        __builtin_cpu_init(); /* checks the OS saves the wide registers, too */
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            mask |= 1 << KERNEL_AVX2;
        if (__builtin_cpu_supports("avx512f")) mask |= 1 << KERNEL_AVX512;
#endif
        cached = mask;
    }
    return cached;
}

/* Bit k set: kernel k is compiled in and this CPU (and its OS) can run it. */
PHYSSCALE_EXPORT int physscale_native_kernels(void) { return usable_kernels(); }

static int best_kernel(void) {
    static int best = -1; /* a benign race, as above */
    if (best < 0) {
        int mask = usable_kernels(), k = KERNEL_AVX512;
        while (k > KERNEL_PORTABLE && !(mask & (1 << k))) --k;
        best = k;
    }
    return best;
}

#if HAVE_X86_SIMD
#define SIMD_CASES(SUFFIX)                                   \
    case KERNEL_AVX512:                                      \
        reduce_##SUFFIX##_avx512(x, n, square, out);         \
        return 0;                                            \
    case KERNEL_AVX2:                                        \
        reduce_##SUFFIX##_avx2(x, n, square, out);           \
        return 0;
#else
#define SIMD_CASES(SUFFIX)
#endif

/* physscale_reduce_{f32,f64}_kernel: the sum and minimum of x[0:n] with the
 * given kernel; returns 0, or -1 (out untouched) when that kernel is not
 * usable here. physscale_reduce_{f32,f64}: the same with the best kernel. */
#define PHYSSCALE_ENTRY(SUFFIX, T)                                                         \
    static int reduce_##SUFFIX(const T *x, int64_t n, int square, int kernel,             \
                               double *out) {                                              \
        if (kernel < 0 || kernel > KERNEL_AVX512 || !(usable_kernels() & (1 << kernel)))  \
            return -1;                                                                     \
        switch (kernel) {                                                                  \
            SIMD_CASES(SUFFIX)                                                             \
            default:                                                                       \
                reduce_##SUFFIX##_portable(x, n, square, out);                             \
                return 0;                                                                  \
        }                                                                                  \
    }                                                                                      \
    PHYSSCALE_EXPORT int physscale_reduce_##SUFFIX##_kernel(const T *x, int64_t n,         \
                                                            int square, int kernel,        \
                                                            double *out) {                 \
        return reduce_##SUFFIX(x, n, square, kernel, out);                                 \
    }                                                                                      \
    PHYSSCALE_EXPORT void physscale_reduce_##SUFFIX(const T *x, int64_t n, int square,     \
                                                    double *out) {                         \
        reduce_##SUFFIX(x, n, square, best_kernel(), out);                                 \
    }

PHYSSCALE_ENTRY(f32, float)
PHYSSCALE_ENTRY(f64, double)

/* ------------------------------------------------------------ threads
 * One reduction shared by a team of threads: the array is cut into work items
 * of `piece` elements, taken in turn from an atomic counter, each reduced into
 * its own out[3 * item ...]. Any number of threads may run
 * physscale_run_task on the same task at once: Python threads, or, better,
 * the OpenMP team PyTorch already runs (GOMP_parallel from Python). Its idle
 * workers spin for milliseconds after every parallel torch op; a thread of
 * ours started next to them would share a core with the spinner, while the
 * team's own workers pick the task up at once. The item boundaries do not
 * depend on which thread takes which item, so neither does the result. */
typedef struct {
    const void *x;  /* the first element */
    int64_t n;      /* number of elements */
    int64_t piece;  /* elements per work item, > 0 */
    int32_t itemsize; /* 4: float32, 8: float64 */
    int32_t square;
    int32_t kernel; /* a usable kernel id (checked by the caller) */
    int32_t status; /* set to -1 if a work item was refused */
    int64_t next;   /* the next work item (atomic) */
    double *out;    /* 3 doubles per work item */
} physscale_task;

PHYSSCALE_EXPORT int64_t physscale_task_size(void) { return (int64_t)sizeof(physscale_task); }

PHYSSCALE_EXPORT void physscale_run_task(void *arg) {
    physscale_task *t = (physscale_task *)arg;
    int64_t items = (t->n + t->piece - 1) / t->piece;
    for (;;) {
        int64_t k = __atomic_fetch_add(&t->next, 1, __ATOMIC_RELAXED);
        if (k >= items) return;
        int64_t start = k * t->piece;
        int64_t len = t->n - start < t->piece ? t->n - start : t->piece;
        int rc = t->itemsize == 4
                     ? reduce_f32((const float *)t->x + start, len, t->square, t->kernel,
                                  t->out + 3 * k)
                     : reduce_f64((const double *)t->x + start, len, t->square, t->kernel,
                                  t->out + 3 * k);
        if (rc != 0) __atomic_store_n(&t->status, -1, __ATOMIC_RELAXED);
    }
}

/* ------------------------------------------------------------ per-pattern sums
 * The same reduction, row by row: x holds `rows` consecutive rows of `row_len`
 * elements each (the patterns of a C-contiguous stack whose spatial axes are
 * the last ones), and row_out[r] gets row r's float64 sum (its compensated
 * total, rounded once). Each row is one call of the kernel above (so every
 * square is exact and each row's chunk sums are compensated), and a work item's
 * rows are added, total and compensation both, into its own compensated sum in
 * out[3 * item ...] (total, compensation, minimum), as physscale_run_task
 * fills it. Work items are whole rows, `piece_rows` at a time, taken from an
 * atomic counter; the result does not depend on which thread takes which. */
typedef struct {
    const void *x;      /* the first element */
    int64_t rows;       /* number of rows */
    int64_t row_len;    /* elements per row, > 0 */
    int64_t piece_rows; /* rows per work item, > 0 */
    int32_t itemsize;   /* 4: float32, 8: float64 */
    int32_t square;
    int32_t kernel;     /* a usable kernel id (checked by the caller) */
    int32_t status;     /* set to -1 if a row was refused */
    int64_t next;       /* the next work item (atomic) */
    double *row_out;    /* one double per row */
    double *out;        /* 3 doubles per work item */
} physscale_rows_task;

PHYSSCALE_EXPORT int64_t physscale_rows_task_size(void) {
    return (int64_t)sizeof(physscale_rows_task);
}

PHYSSCALE_EXPORT void physscale_run_rows_task(void *arg) {
    physscale_rows_task *t = (physscale_rows_task *)arg;
    int64_t items = (t->rows + t->piece_rows - 1) / t->piece_rows;
    for (;;) {
        int64_t k = __atomic_fetch_add(&t->next, 1, __ATOMIC_RELAXED);
        if (k >= items) return;
        int64_t first = k * t->piece_rows;
        int64_t last = first + t->piece_rows < t->rows ? first + t->piece_rows : t->rows;
        csum s = {0.0, 0.0};
        double m = INFINITY;
        for (int64_t r = first; r < last; ++r) {
            double row[3];
            int64_t start = r * t->row_len;
            int rc = t->itemsize == 4
                         ? reduce_f32((const float *)t->x + start, t->row_len, t->square,
                                      t->kernel, row)
                         : reduce_f64((const double *)t->x + start, t->row_len, t->square,
                                      t->kernel, row);
            if (rc != 0) {
                __atomic_store_n(&t->status, -1, __ATOMIC_RELAXED);
                return;
            }
            t->row_out[r] = row[0] + row[1];
            csum_add(&s, row[0]);
            csum_add(&s, row[1]);
            m = row[2] < m ? row[2] : m; /* a row's minimum is never NaN (see above) */
        }
        t->out[3 * k] = s.total;
        t->out[3 * k + 1] = s.comp;
        t->out[3 * k + 2] = m;
    }
}
