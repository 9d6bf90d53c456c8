/* Fused CPU kernels for the hot merge methods.
 *
 * Each kernel reproduces torch's elementwise semantics for the compute dtype: every
 * bf16/fp16 operation is done in float32 and rounded to nearest-even, as c10::BFloat16 and
 * c10::Half do, so results are bit-identical to the pure-torch reference in
 * mergesmith/methods (the tests compare them). Build with -ffp-contract=off: a fused
 * multiply-add would round differently.
 *
 * dtype codes: 0 = float32, 1 = bfloat16, 2 = float16.
 *
 * Kernels run on the calling thread: the runner already merges two tensors at once, one per
 * core, and a second level of threads would only compete with it. Each kernel is compiled twice
 * on x86-64 (AVX2 and baseline) and the loader picks the one the CPU runs; the dtype switch sits
 * outside the loops, so every loop is specialised for one dtype and vectorises.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BINS 65536
#define MAX_MODELS 64
#define TILE 512
#define INLINE static inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define KERNEL __attribute__((target_clones("avx2", "default"))) static void
#else
#define KERNEL static void
#endif
/* Call fn with the dtype code as a literal: after inlining, every per-element dtype branch
 * folds away and the loops vectorise. */
#define DISPATCH(fn, dt, ...) switch (dt) { \
    case 1: fn(1, __VA_ARGS__); break; \
    case 2: fn(2, __VA_ARGS__); break; \
    default: fn(0, __VA_ARGS__); }

INLINE float f_of_bits(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
INLINE uint32_t bits_of_f(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

INLINE float bf16_to_f(uint16_t h) { return f_of_bits((uint32_t)h << 16); }
INLINE uint16_t f_to_bf16(float f) {
    uint32_t u = bits_of_f(f);
    uint16_t r = (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    return (u & 0x7FFFFFFFu) > 0x7F800000u ? (uint16_t)0x7FC0 : r;
}
INLINE float h_to_f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
    if (exp == 0) return mant ? copysignf((float)mant * (1.0f / 16777216.0f), sign ? -1.0f : 1.0f) : f_of_bits(sign);
    if (exp == 31) return f_of_bits(sign | 0x7F800000u | (mant << 13));
    return f_of_bits(sign | ((exp + 112u) << 23) | (mant << 13));
}
INLINE uint16_t f_to_h(float f) {
    uint32_t x = bits_of_f(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);
    if (ax >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);          /* rounds to infinity */
    if (ax < 0x38800000u) return (uint16_t)(sign | (uint32_t)lrintf(f_of_bits(ax) * 16777216.0f));
    return (uint16_t)(sign | ((ax + 0xFFFu + ((ax >> 13) & 1u) - 0x38000000u) >> 13));
}

/* load element i as float; round a float to the dtype (returned as float); store. */
INLINE float load(int dt, const void *p, int64_t i) {
    if (dt == 0) return ((const float *)p)[i];
    if (dt == 1) return bf16_to_f(((const uint16_t *)p)[i]);
    return h_to_f(((const uint16_t *)p)[i]);
}
INLINE float rnd(int dt, float f) {
    if (dt == 0) return f;
    if (dt == 1) return bf16_to_f(f_to_bf16(f));
    return h_to_f(f_to_h(f));
}
INLINE void store(int dt, void *p, int64_t i, float f) {
    if (dt == 0) ((float *)p)[i] = f;
    else if (dt == 1) ((uint16_t *)p)[i] = f_to_bf16(f);
    else ((uint16_t *)p)[i] = f_to_h(f);
}
/* Magnitude key: the bits of |v| in the dtype's own format; orders like |v| (NaN largest). */
INLINE int64_t key_of(int dt, float v) {
    if (dt == 0) return (int64_t)(bits_of_f(v) & 0x7FFFFFFFu);
    if (dt == 1) return (int64_t)(f_to_bf16(v) & 0x7FFFu);
    return (int64_t)(f_to_h(v) & 0x7FFFu);
}
/* delta = x - base in the dtype (base may be NULL: delta = x). */
INLINE float delta_at(int dt, const void *base, const void *x, int64_t i) {
    float v = load(dt, x, i);
    return base ? rnd(dt, v - load(dt, base, i)) : v;
}

/* hist_delta(dt, base, x, n, nblocks, shift, prefix_shift, prefix, hist):
 * per-block histograms of the 16-bit digit (key >> shift) & 0xFFFF of |x - base|, counting
 * only keys whose (key >> prefix_shift) == prefix when prefix >= 0. hist: int64[nblocks][BINS]. */
/* keys[j] = magnitude key of element lo + j (int32: keys fit in 31 bits); one straight loop, so
 * it vectorises, apart from the scalar histogram and scan loops that use it. */
INLINE void keys_tile(const int DT, const void *base, const void *x, int64_t lo, int len, int32_t *keys) {
    if (base) for (int j = 0; j < len; j++) keys[j] = (int32_t)key_of(DT, delta_at(DT, base, x, lo + j));
    else for (int j = 0; j < len; j++) keys[j] = (int32_t)key_of(DT, delta_at(DT, NULL, x, lo + j));
}

INLINE void hist_run(const int DT, const void *base, const void *x, int64_t n, int nblocks, int shift,
                     int pshift, int64_t prefix, int64_t *hist) {
    int32_t keys[TILE];
    for (int b = 0; b < nblocks; b++) {
        int64_t lo = n * b / nblocks, hi = n * (b + 1) / nblocks, *h = hist + (int64_t)b * BINS;
        for (int64_t t = lo; t < hi; t += TILE) {
            int len = (int)(hi - t < TILE ? hi - t : TILE);
            keys_tile(DT, base, x, t, len, keys);
            if (prefix < 0) {
                for (int j = 0; j < len; j++) h[(keys[j] >> shift) & 0xFFFF]++;
            } else {
                for (int j = 0; j < len; j++)
                    if ((keys[j] >> pshift) == prefix) h[(keys[j] >> shift) & 0xFFFF]++;
            }
        }
    }
}
KERNEL hist_kernel(int dt, const void *base, const void *x, int64_t n, int nblocks, int shift, int pshift,
                   int64_t prefix, int64_t *hist) {
    DISPATCH(hist_run, dt, base, x, n, nblocks, shift, pshift, prefix, hist);
}

static PyObject *hist_delta(PyObject *self, PyObject *args) {
    int dt, nblocks, shift, pshift; unsigned long long pb, px, ph; long long n, prefix;
    if (!PyArg_ParseTuple(args, "iKKLiiiLK", &dt, &pb, &px, &n, &nblocks, &shift, &pshift, &prefix, &ph)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    hist_kernel(dt, (const void *)pb, (const void *)px, n, nblocks, shift, pshift, prefix, (int64_t *)ph);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* nth_equal(dt, base, x, start, end, key, m) -> (index, seen): the index of the m-th (1-based)
 * entry in [start, end) whose magnitude key equals `key` (-1 if there is none), and how many
 * such entries the scan saw. */
INLINE void nth_run(const int DT, const void *base, const void *x, int64_t start, int64_t end, int64_t key,
                    int64_t m, int64_t *found, int64_t *seen) {
    int32_t keys[TILE];
    *found = -1; *seen = 0;
    for (int64_t t = start; t < end; t += TILE) {
        int len = (int)(end - t < TILE ? end - t : TILE);
        keys_tile(DT, base, x, t, len, keys);
        int32_t count = 0;
        for (int j = 0; j < len; j++) count += keys[j] == key;   /* vectorises; the scan below rarely runs */
        if (*seen + count < m) { *seen += count; continue; }
        for (int j = 0; j < len; j++)
            if (keys[j] == key && ++*seen == m) { *found = t + j; return; }
    }
}

KERNEL nth_kernel(int dt, const void *base, const void *x, int64_t start, int64_t end, int64_t key, int64_t m,
                  int64_t *found, int64_t *seen) {
    DISPATCH(nth_run, dt, base, x, start, end, key, m, found, seen);
}

static PyObject *nth_equal(PyObject *self, PyObject *args) {
    int dt; unsigned long long pb, px; long long start, end, key, m; int64_t found, seen;
    if (!PyArg_ParseTuple(args, "iKKLLLL", &dt, &pb, &px, &start, &end, &key, &m)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    nth_kernel(dt, (const void *)pb, (const void *)px, start, end, key, m, &found, &seen);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("LL", (long long)found, (long long)seen);
}

/* One tile [lo, hi) of generalised task arithmetic. Keys are compared as int32 (they fit in
 * 31 bits) and the tie cutoff relative to the tile, so the mask loop vectorises. */
INLINE void gta_tile(const int DT, const void *base, const void **xs, int k, int64_t lo, int64_t hi,
                     const int64_t *thr, const int64_t *cut, const float *w, int consensus, int normalize,
                     float lam, int use_lam, float divc, void *out) {
    float fb[TILE], t[MAX_MODELS][TILE], votes[TILE], mixed[TILE], sdiv[TILE];
    int len = (int)(hi - lo);
    for (int j = 0; j < len; j++) { fb[j] = load(DT, base, lo + j); votes[j] = 0.0f; mixed[j] = 0.0f; sdiv[j] = 0.0f; }
    for (int m = 0; m < k; m++) {
        const void *x = xs[m];
        float wm = w[m];
        if (thr[m] < 0) {
            for (int j = 0; j < len; j++) {
                t[m][j] = rnd(DT, rnd(DT, load(DT, x, lo + j) - fb[j]) * wm);
                votes[j] += t[m][j];
            }
            continue;
        }
        int32_t key_thr = thr[m] > INT32_MAX ? INT32_MAX : (int32_t)thr[m];
        int64_t rel = cut[m] - lo;
        int32_t cut_rel = rel < -1 ? -1 : (rel > TILE ? TILE : (int32_t)rel);
        int never = thr[m] > INT32_MAX;
        for (int j = 0; j < len; j++) {
            float d = rnd(DT, load(DT, x, lo + j) - fb[j]);
            int32_t key = (int32_t)key_of(DT, d);
            /* bitwise, not short-circuit, so the loop stays branch-free; d * mask as in mergekit */
            int keep = ((key > key_thr) | ((key == key_thr) & (j <= cut_rel))) & !never;
            d = d * (float)keep;
            t[m][j] = rnd(DT, d * wm);
            votes[j] += t[m][j];
        }
    }
    if (consensus) {
        /* elected sign first, then one select-only loop per model: no branches, so both vectorise */
        float elected[TILE];
        for (int j = 0; j < len; j++) elected[j] = rnd(DT, votes[j]) >= 0.0f ? 1.0f : -1.0f;
        for (int m = 0; m < k; m++) {
            float wm = w[m];
            for (int j = 0; j < len; j++) {
                float v = t[m][j];
                float sign = v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f);
                float agree = sign == elected[j] ? 1.0f : 0.0f;
                mixed[j] += v * agree;          /* (deltas * mask).sum(0) */
                sdiv[j] += wm * agree;          /* (weights * mask).sum(0) */
            }
        }
    } else {
        for (int m = 0; m < k; m++)
            for (int j = 0; j < len; j++) mixed[j] += t[m][j];
    }
    /* the tail in separate straight loops (a branch per element kept the fused loop scalar) */
    for (int j = 0; j < len; j++) mixed[j] = rnd(DT, mixed[j]);
    if (normalize) {
        if (consensus) {
            for (int j = 0; j < len; j++) {
                float div = rnd(DT, sdiv[j]);
                mixed[j] = rnd(DT, mixed[j] / (div == 0.0f ? 1.0f : div));
            }
        } else {
            for (int j = 0; j < len; j++) mixed[j] = rnd(DT, mixed[j] / divc);
        }
    }
    if (use_lam)
        for (int j = 0; j < len; j++) mixed[j] = rnd(DT, mixed[j] * lam);
    for (int j = 0; j < len; j++) store(DT, out, lo + j, fb[j] + mixed[j]);
}

INLINE void gta_run(const int DT, const void *base, const void **xs, int k, int64_t n, const int64_t *thr,
                    const int64_t *cut, const float *w, int consensus, int normalize, float lam, int use_lam,
                    float divc, void *out) {
    for (int64_t lo = 0; lo < n; lo += TILE) {
        int64_t hi = lo + TILE < n ? lo + TILE : n;
        gta_tile(DT, base, xs, k, lo, hi, thr, cut, w, consensus, normalize, lam, use_lam, divc, out);
    }
}
KERNEL gta_kernel(int dt, const void *base, const void **xs, int k, int64_t n, const int64_t *thr, const int64_t *cut,
                  const float *w, int consensus, int normalize, float lam, int use_lam, float divc, void *out) {
    DISPATCH(gta_run, dt, base, xs, k, n, thr, cut, w, consensus, normalize, lam, use_lam, divc, out);
}

/* gta(dt, base, xs, k, n, thr, cutoff, weights, consensus, normalize, lam, use_lam, divisor, out)
 * Generalised task arithmetic with optional magnitude masks and TIES sign consensus; see
 * mergesmith/methods/task_arithmetic.py for the formula. xs/thr/cutoff: int64[k] arrays
 * (thr < 0: no mask; an entry equal to thr is kept when its index <= cutoff); weights:
 * float32[k], already rounded to the dtype; divisor: the constant divisor without consensus.
 * Sums over models run in model order in float32, rounded once, as torch's reductions do. */
static PyObject *gta(PyObject *self, PyObject *args) {
    int dt, k, consensus, normalize, use_lam; unsigned long long pb, pxs, pthr, pcut, pw, pout; long long n; float lam, divc;
    if (!PyArg_ParseTuple(args, "iKKiLKKKiifif" "K", &dt, &pb, &pxs, &k, &n, &pthr, &pcut, &pw, &consensus,
                          &normalize, &lam, &use_lam, &divc, &pout)) return NULL;
    if (k < 1 || k > MAX_MODELS) { PyErr_SetString(PyExc_ValueError, "gta: 1..64 models"); return NULL; }
    Py_BEGIN_ALLOW_THREADS
    gta_kernel(dt, (const void *)pb, (const void **)pxs, k, n, (const int64_t *)pthr, (const int64_t *)pcut,
               (const float *)pw, consensus, normalize, lam, use_lam, divc, (void *)pout);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* dot3(dt, a, b, n) -> (sum a*a, sum b*b, sum a*b) in double. */
INLINE void dot3_run(const int DT, const void *a, const void *b, int64_t n, double *res) {
    double aa = 0, bb = 0, ab = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = load(DT, a, i), y = load(DT, b, i);
        aa += x * x; bb += y * y; ab += x * y;
    }
    res[0] = aa; res[1] = bb; res[2] = ab;
}

KERNEL dot3_kernel(int dt, const void *a, const void *b, int64_t n, double *res) {
    DISPATCH(dot3_run, dt, a, b, n, res);
}

static PyObject *dot3(PyObject *self, PyObject *args) {
    int dt; unsigned long long pa, pb; long long n; double res[3];
    if (!PyArg_ParseTuple(args, "iKKL", &dt, &pa, &pb, &n)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    dot3_kernel(dt, (const void *)pa, (const void *)pb, n, res);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("ddd", res[0], res[1], res[2]);
}

/* lerp2(dt, a, b, n, ca, cb, out): out = ca * a + cb * b, float32 arithmetic, rounded to dt. */
INLINE void lerp2_run(const int DT, const void *a, const void *b, int64_t n, float ca, float cb, void *out) {
    for (int64_t i = 0; i < n; i++) {
        float x = ca * load(DT, a, i), y = cb * load(DT, b, i);
        store(DT, out, i, x + y);
    }
}

KERNEL lerp2_kernel(int dt, const void *a, const void *b, int64_t n, float ca, float cb, void *out) {
    DISPATCH(lerp2_run, dt, a, b, n, ca, cb, out);
}

static PyObject *lerp2(PyObject *self, PyObject *args) {
    int dt; unsigned long long pa, pb, po; long long n; float ca, cb;
    if (!PyArg_ParseTuple(args, "iKKLffK", &dt, &pa, &pb, &n, &ca, &cb, &po)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    lerp2_kernel(dt, (const void *)pa, (const void *)pb, n, ca, cb, (void *)po);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* widen(dt, src, n, dst): dst = float32(src), exactly (every bf16/fp16 value is a float32). */
INLINE void widen_run(const int DT, const void *src, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; i++) dst[i] = load(DT, src, i);
}
KERNEL widen_kernel(int dt, const void *src, int64_t n, float *dst) { DISPATCH(widen_run, dt, src, n, dst); }

static PyObject *widen(PyObject *self, PyObject *args) {
    int dt; unsigned long long ps, pd; long long n;
    if (!PyArg_ParseTuple(args, "iKLK", &dt, &ps, &n, &pd)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    widen_kernel(dt, (const void *)ps, n, (float *)pd);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* norm2(dt, src, n, lanes): |src| in float32, summed in the order of torch's vectorised float32
 * norm over one contiguous row (its reduce-last-dim path): `lanes` running sums, element i into
 * sum i % lanes, over the whole vectors; then the sums added in order; then the tail one by one;
 * then sqrt. The square of a bf16 or fp16 value is exact in float32, so that order alone decides
 * the bits (float32 inputs are not taken: there a fused multiply-add would matter). `lanes` is
 * torch's float vector width on this CPU (8 or 16), found by mergesmith.native against torch
 * itself. Saves slerp widening each chunk into a float32 buffer and reading it back. */
INLINE float norm2_lanes(const int DT, const void *src, int64_t n, const int L) {
    float acc[16] = {0};
    int64_t i = 0, body = n - n % L;
    for (; i < body; i += L)
        for (int j = 0; j < L; j++) { float v = load(DT, src, i + j); acc[j] = acc[j] + v * v; }
    float s = acc[0];
    for (int j = 1; j < L; j++) s = s + acc[j];
    for (; i < n; i++) { float v = load(DT, src, i); s = s + v * v; }
    return sqrtf(s);
}
INLINE void norm2_run(const int DT, const void *src, int64_t n, int lanes, float *res) {
    *res = lanes == 16 ? norm2_lanes(DT, src, n, 16) : norm2_lanes(DT, src, n, 8);
}
KERNEL norm2_kernel(int dt, const void *src, int64_t n, int lanes, float *res) {
    DISPATCH(norm2_run, dt, src, n, lanes, res);
}

static PyObject *norm2(PyObject *self, PyObject *args) {
    int dt, lanes; unsigned long long ps; long long n; float res;
    if (!PyArg_ParseTuple(args, "iKLi", &dt, &ps, &n, &lanes)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    norm2_kernel(dt, (const void *)ps, n, lanes, &res);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble((double)res);
}

/* scaled_product(dt, a, b, n, na, nb, dst): dst = (a / na) * (b / nb) in float32, as torch's
 * (x / norm_a) * (y / norm_b) on float32 tensors: three correctly rounded operations. */
INLINE void scaled_product_run(const int DT, const void *a, const void *b, int64_t n, float na, float nb, float *dst) {
    for (int64_t i = 0; i < n; i++) dst[i] = (load(DT, a, i) / na) * (load(DT, b, i) / nb);
}
KERNEL scaled_product_kernel(int dt, const void *a, const void *b, int64_t n, float na, float nb, float *dst) {
    DISPATCH(scaled_product_run, dt, a, b, n, na, nb, dst);
}

static PyObject *scaled_product(PyObject *self, PyObject *args) {
    int dt; unsigned long long pa, pb, pd; long long n; float na, nb;
    if (!PyArg_ParseTuple(args, "iKKLffK", &dt, &pa, &pb, &n, &na, &nb, &pd)) return NULL;
    Py_BEGIN_ALLOW_THREADS
    scaled_product_kernel(dt, (const void *)pa, (const void *)pb, n, na, nb, (float *)pd);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* scaled_dot(dt, a, b, n, na, nb, lanes, threads): sum((a / na) * (b / nb)) in float32, each
 * product rounded as scaled_product makes it and summed in exactly torch's order for a full sum
 * of one contiguous float32 row, so slerp's cosine needs no float32 product buffer and no second
 * read of it. torch's order (ATen's cascade sum, `lanes` = its float vector width):
 * - one part: `lanes`-wide vectors taken four at a time (a row of 4 * lanes floats) into four
 *   levels of partial sums, a level carried up every 2^p rows (p = max(4, ceil(log2(rows)) / 4));
 *   then the levels added, leftover vectors into the first, the four vectors into the first, and
 *   a scalar sum of the leftover elements plus the lanes in order, added to a zero;
 * - with T > 1 threads and n >= 32768 the row is cut into min(T, ceil(n / 32768)) parts of
 *   ceil(n / parts) elements, each part summed as above into slot t of a zeroed buffer of T
 *   floats, and the buffer summed again: as one part when T >= lanes, else four running sums.
 * `lanes` is checked against torch itself at first use (mergesmith.native.dot_lanes). */
#define GRAIN 32768
#define MAX_THREADS 1024
/* Element i of a cascade's row: the scaled product (modes 0-2, a dtype code) or a float (mode 3). */
INLINE float elem(const int MODE, const void *a, const void *b, int64_t i, float na, float nb) {
    if (MODE == 3) return ((const float *)a)[i];
    return (load(MODE, a, i) / na) * (load(MODE, b, i) / nb);
}
INLINE int64_t ceil_log2(int64_t x) {
    if (x <= 2) return 1;
    int64_t bits = 0;
    for (uint64_t v = (uint64_t)(x - 1); v; v >>= 1) bits++;
    return bits;
}
INLINE float cascade_part(const int MODE, const void *a, const void *b, int64_t n, float na, float nb, const int L) {
    enum { LEVELS = 4, ILP = 4 };
    float acc[LEVELS][ILP * 16];
    const int W = ILP * L;
    memset(acc, 0, sizeof acc);
    const int64_t nvec = n / L, rows = nvec / ILP;
    int64_t power = ceil_log2(rows) / LEVELS;
    if (power < 4) power = 4;
    const int64_t step = (int64_t)1 << power, mask = step - 1;
    int64_t i = 0;
    while (i + step <= rows) {
        for (int64_t j = 0; j < step; j++, i++)
            for (int k = 0; k < W; k++) acc[0][k] = acc[0][k] + elem(MODE, a, b, i * W + k, na, nb);
        for (int level = 1; level < LEVELS; level++) {
            for (int k = 0; k < W; k++) { acc[level][k] = acc[level][k] + acc[level - 1][k]; acc[level - 1][k] = 0.0f; }
            if ((i & (mask << (level * power))) != 0) break;
        }
    }
    for (; i < rows; i++)
        for (int k = 0; k < W; k++) acc[0][k] = acc[0][k] + elem(MODE, a, b, i * W + k, na, nb);
    for (int level = 1; level < LEVELS; level++)
        for (int k = 0; k < W; k++) acc[0][k] = acc[0][k] + acc[level][k];
    for (int64_t v = rows * ILP; v < nvec; v++)
        for (int l = 0; l < L; l++) acc[0][l] = acc[0][l] + elem(MODE, a, b, v * L + l, na, nb);
    for (int r = 1; r < ILP; r++)
        for (int l = 0; l < L; l++) acc[0][l] = acc[0][l] + acc[0][r * L + l];
    float s = 0.0f;
    for (int64_t k = nvec * L; k < n; k++) s = s + elem(MODE, a, b, k, na, nb);
    for (int l = 0; l < L; l++) s = s + acc[0][l];
    return 0.0f + s;              /* accumulated into a zeroed output */
}
/* The per-thread buffer's own sum: T floats, shorter than a vector or not. */
INLINE float combine(const float *slots, int64_t T, const int L) {
    if (T >= L) return cascade_part(3, slots, NULL, T, 1.0f, 1.0f, L);
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int64_t i = 0;
    for (; i + 4 <= T; i += 4)
        for (int k = 0; k < 4; k++) acc[k] = acc[k] + slots[i + k];
    for (; i < T; i++) acc[0] = acc[0] + slots[i];
    return 0.0f + (((acc[0] + acc[1]) + acc[2]) + acc[3]);
}
INLINE float scaled_dot_lanes(const int DT, const void *a, const void *b, int64_t n, float na, float nb,
                              int64_t threads, const int L) {
    if (threads <= 1 || n < GRAIN) return cascade_part(DT, a, b, n, na, nb, L);
    int64_t parts = (n + GRAIN - 1) / GRAIN;
    if (parts > threads) parts = threads;
    const int64_t size = (n + parts - 1) / parts, elt = DT == 0 ? 4 : 2;
    float slots[MAX_THREADS] = {0.0f};
    for (int64_t p = 0; p < parts && p * size < n; p++) {
        const int64_t lo = p * size, len = n - lo < size ? n - lo : size;
        slots[p] = cascade_part(DT, (const char *)a + lo * elt, (const char *)b + lo * elt, len, na, nb, L);
    }
    return combine(slots, threads, L);
}
INLINE void scaled_dot_run(const int DT, const void *a, const void *b, int64_t n, float na, float nb,
                           int lanes, int64_t threads, float *res) {
    *res = lanes == 16 ? scaled_dot_lanes(DT, a, b, n, na, nb, threads, 16)
                       : scaled_dot_lanes(DT, a, b, n, na, nb, threads, 8);
}
KERNEL scaled_dot_kernel(int dt, const void *a, const void *b, int64_t n, float na, float nb, int lanes,
                         int64_t threads, float *res) {
    DISPATCH(scaled_dot_run, dt, a, b, n, na, nb, lanes, threads, res);
}

static PyObject *scaled_dot(PyObject *self, PyObject *args) {
    int dt, lanes, threads; unsigned long long pa, pb; long long n; float na, nb, res;
    if (!PyArg_ParseTuple(args, "iKKLffii", &dt, &pa, &pb, &n, &na, &nb, &lanes, &threads)) return NULL;
    /* Shorter than four vectors (torch's scalar paths) or more threads than the buffer: not modelled. */
    if (n < 4 * lanes || threads > MAX_THREADS) {
        PyErr_SetString(PyExc_ValueError, "scaled_dot: fewer than four vectors of elements, or too many threads");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    scaled_dot_kernel(dt, (const void *)pa, (const void *)pb, n, na, nb, lanes, threads, &res);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble((double)res);
}

static PyMethodDef methods[] = {
    {"widen", widen, METH_VARARGS, "float32 copy"},
    {"norm2", norm2, METH_VARARGS, "float32 norm of bf16/fp16 in torch's summation order"},
    {"scaled_product", scaled_product, METH_VARARGS, "(a / na) * (b / nb) in float32"},
    {"hist_delta", hist_delta, METH_VARARGS, "per-block digit histograms of |x - base|"},
    {"nth_equal", nth_equal, METH_VARARGS, "index of the m-th entry with a given magnitude key"},
    {"gta", gta, METH_VARARGS, "fused generalised task arithmetic"},
    {"scaled_dot", scaled_dot, METH_VARARGS, "sum((a / na) * (b / nb)) in torch's summation order"},
    {"dot3", dot3, METH_VARARGS, "a.a, b.b, a.b in double"},
    {"lerp2", lerp2, METH_VARARGS, "ca * a + cb * b"},
    {NULL, NULL, 0, NULL},
};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "mergesmith fused CPU kernels", -1, methods};
PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
