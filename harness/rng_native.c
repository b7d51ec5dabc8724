/* The CPU noise draw of harness/rng.py in one pass: Philox4x32-10 blocks, then the normal
 * transform, with no intermediate tensors. Built on first use by harness/rng_native.py for the
 * CPU it runs on (-O3 -march=native -ffp-contract=off) and checked bit for bit against the
 * numpy form of the same arithmetic before it is used.
 *
 * Only integer operations, IEEE float +, -, *, / and sqrt, and correctly rounded conversions:
 * no libm call and no contracted multiply-add, so any vector width gives the bits of the numpy
 * form (which does the same operations in the same order, one ufunc each). Keep the two in step:
 * harness/rng.py's _np_box_muller and the tests' bit-for-bit comparisons. */
#include <stdint.h>
#include <string.h>

#define M0 0xD2511F53u
#define M1 0xCD9E8D57u
#define W0 0x9E3779B9u
#define W1 0xBB67AE85u
#define TILE 128

static const float TWO_PI_F = 6.28318548202514648438f;      /* float32(2 pi) */
static const double LN2 = 0.69314718055994530942;
static const double PIO2 = 1.57079632679489661923;
static const double TWO_OVER_PI = 0.63661977236758134308;
static const double ROUNDER = 6755399441055744.0;          /* 1.5 * 2^52: round to an integer */

/* words[v][j] of Philox blocks n[j] under keys (k0[j], k1[j]) */
static void philox_tile(const uint32_t *k0, const uint32_t *k1, const uint64_t *ns, int nb,
                        uint32_t w[4][TILE]) {
  for (int j = 0; j < nb; j++) {
    uint64_t n = ns[j];
    uint32_t c0 = (uint32_t)n, c1 = (uint32_t)(n >> 32), c2 = 0, c3 = 0, a0 = k0[j], a1 = k1[j];
    for (int i = 0; i < 10; i++) {
      uint64_t p0 = (uint64_t)c0 * M0, p1 = (uint64_t)c2 * M1;
      uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ a0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ a1;
      c1 = (uint32_t)p1; c3 = (uint32_t)p0; c0 = n0; c2 = n2; a0 += W0; a1 += W1;
    }
    w[0][j] = c0; w[1][j] = c1; w[2][j] = c2; w[3][j] = c3;
  }
}

/* the flat block range g0 .. g0 + nb - 1 of rows of `blocks` blocks: each block's key and counter */
static void tile_blocks(const int64_t *key, const int64_t *start, int64_t blocks, int64_t g0, int nb,
                        uint32_t *k0, uint32_t *k1, uint64_t *ns) {
  int64_t r = g0 / blocks, b = g0 - r * blocks;
  for (int j = 0; j < nb; j++) {
    k0[j] = (uint32_t)key[2 * r]; k1[j] = (uint32_t)key[2 * r + 1];
    ns[j] = (uint64_t)start[r] + (uint64_t)b;
    if (++b == blocks) { b = 0; r++; }
  }
}

/* (u1, theta) -> (r cos theta, r sin theta), r = sqrt(-2 ln u1), in float64:
 * ln u1 = e ln 2 + 2 atanh((m - 1) / (m + 1)) with u1 = m 2^e, m in [sqrt 1/2, sqrt 2), the
 * series to s^11 (relative error < 1e-10); theta = q pi/2 + a, |a| <= pi/4, Taylor to a^11 and
 * a^12 (errors < 1e-11): all far below float32's half ulp (3e-8). */
static void transform(int n, const float *u1, const float *th, float *z0, float *z1) {
  for (int j = 0; j < n; j++) {
    uint32_t b; memcpy(&b, &u1[j], 4);
    int32_t e = (int32_t)(b >> 23) - 127;
    uint32_t mant = b & 0x7FFFFFu;
    int32_t big = mant > 0x3504F3u;                            /* m > sqrt 2 */
    uint32_t mb = mant | ((uint32_t)(127 - big) << 23);
    e += big;
    float mf; memcpy(&mf, &mb, 4);
    double m = (double)mf;
    double s = (m - 1.0) / (m + 1.0), s2 = s * s;
    double p = 1.0 / 11;
    p = p * s2 + 1.0 / 9; p = p * s2 + 1.0 / 7; p = p * s2 + 1.0 / 5; p = p * s2 + 1.0 / 3;
    p = p * s2 + 1.0;
    double lnu = (double)e * LN2 + 2.0 * s * p;
    double rad = __builtin_sqrt(-2.0 * lnu);
    double t = (double)th[j];
    double qd = t * TWO_OVER_PI + ROUNDER;
    uint64_t qb; memcpy(&qb, &qd, 8);
    qd -= ROUNDER;
    double a = t - qd * PIO2, a2 = a * a;
    double sn = -1.0 / 39916800.0;
    sn = sn * a2 + 1.0 / 362880.0; sn = sn * a2 - 1.0 / 5040.0; sn = sn * a2 + 1.0 / 120.0;
    sn = sn * a2 - 1.0 / 6.0; sn = sn * a2 * a + a;
    double cs = 1.0 / 479001600.0;
    cs = cs * a2 - 1.0 / 3628800.0; cs = cs * a2 + 1.0 / 40320.0; cs = cs * a2 - 1.0 / 720.0;
    cs = cs * a2 + 1.0 / 24.0; cs = cs * a2 - 0.5; cs = cs * a2 + 1.0;
    int32_t q = (int32_t)(qb & 3u);                            /* quadrant: rotate (cs, sn) */
    int32_t odd = q & 1, neg_c = ((q + 1) >> 1) & 1, neg_s = (q >> 1) & 1;
    double c = odd ? sn : cs, sv = odd ? cs : sn;
    c = neg_c ? -c : c;
    sv = neg_s ? -sv : sv;
    z0[j] = (float)(rad * c);
    z1[j] = (float)(rad * sv);
  }
}

/* the transform alone, exported for the checks: z0, z1 float32 [n] from u1, theta float32 [n] */
void harness_normal_transform(int64_t n, const float *u1, const float *th, float *z0, float *z1) {
  for (int64_t i = 0; i < n; i += TILE) {
    int m = n - i < TILE ? (int)(n - i) : TILE;
    transform(m, u1 + i, th + i, z0 + i, z1 + i);
  }
}

/* out float32 [rows, 4 * blocks]: normals from blocks start[r] .. under key[r] = (k0, k1), in
 * tiles of TILE blocks across rows (full vectors however short the rows); with advance,
 * start[r] += blocks afterwards (start is then the rows' counters). */
void harness_philox_normal(const int64_t *key, int64_t *start, int64_t rows, int64_t blocks,
                           float *out, int32_t advance) {
  uint32_t w[4][TILE], k0[TILE], k1[TILE];
  uint64_t ns[TILE];
  float u[2][TILE], th[2][TILE], z[4][TILE];
  int64_t total = rows * blocks;
  for (int64_t g0 = 0; g0 < total; g0 += TILE) {
    int nb = total - g0 < TILE ? (int)(total - g0) : TILE;
    tile_blocks(key, start, blocks, g0, nb, k0, k1, ns);
    philox_tile(k0, k1, ns, nb, w);
    for (int h = 0; h < 2; h++)
      for (int j = 0; j < nb; j++) {
        u[h][j] = (float)((double)w[2 * h][j] * 0x1p-32 + 0x1p-32);   /* (w + 1) 2^-32 */
        th[h][j] = ((float)(w[2 * h + 1][j] >> 8) * 0x1p-24f) * TWO_PI_F;
      }
    transform(nb, u[0], th[0], z[0], z[1]);
    transform(nb, u[1], th[1], z[2], z[3]);
    float *po = out + 4 * g0;
    for (int j = 0; j < nb; j++)
      for (int v = 0; v < 4; v++) po[4 * j + v] = z[v][j];
  }
  if (advance)
    for (int64_t r = 0; r < rows; r++) start[r] += blocks;
}

/* out float32 [rows, 4 * blocks]: uniforms (w >> 8) 2^-24; advance as above */
void harness_philox_uniform(const int64_t *key, int64_t *start, int64_t rows, int64_t blocks,
                            float *out, int32_t advance) {
  uint32_t w[4][TILE], k0[TILE], k1[TILE];
  uint64_t ns[TILE];
  int64_t total = rows * blocks;
  for (int64_t g0 = 0; g0 < total; g0 += TILE) {
    int nb = total - g0 < TILE ? (int)(total - g0) : TILE;
    tile_blocks(key, start, blocks, g0, nb, k0, k1, ns);
    philox_tile(k0, k1, ns, nb, w);
    float *po = out + 4 * g0;
    for (int j = 0; j < nb; j++)
      for (int v = 0; v < 4; v++) po[4 * j + v] = (float)(w[v][j] >> 8) * 0x1p-24f;
  }
  if (advance)
    for (int64_t r = 0; r < rows; r++) start[r] += blocks;
}
