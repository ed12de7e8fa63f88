/* A check of the float32 quotient proof in _adafactor_source.update_block, apart from torch:
   random (x, scale) pairs (special significands, subnormal x, near-overflow quotients); every
   quotient the residual test accepts must equal x / scale. Mirrors update_block's lines.
   cc -O2 -march=native -ffp-contract=off -fno-math-errno adafactor_quotient_check.c -lm
   ./a.out 300000000   (prints n, proven, wrong; exits 1 if any proven one is wrong) */
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <stdlib.h>
typedef float T; typedef unsigned int UNSIGNED;
#define FMA fmaf
#define FABS fabsf
static uint64_t s = 88172645463325252ull;
static inline uint64_t rnd(void) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s; }
static inline T randf(int lo, int hi) { /* random sign-positive float with exponent in [lo,hi] and random mantissa */
  uint32_t e = (uint32_t)(lo + (int)(rnd() % (uint64_t)(hi - lo + 1)) + 127);
  uint32_t m = (uint32_t)rnd() & 0x7fffff;
  if (rnd() % 16 == 0) m = 0;             /* powers of two */
  if (rnd() % 16 == 0) m = 0x7fffff;      /* all ones */
  uint32_t b = (e << 23) | m; T f; memcpy(&f, &b, 4); return f;
}
int main(int argc, char** argv) {
  long long n = atoll(argv[1]), proven_n = 0, wrong = 0;
  for (long long k = 0; k < n; ++k) {
    T x, scale;
    int mode = rnd() % 4;
    if (mode == 0) { x = randf(-149+23, 127); scale = randf(-126, 127); }
    else if (mode == 1) { x = randf(-30, 30); scale = randf(-30, 30); }
    else if (mode == 2) { x = randf(-126, -100); scale = randf(-10, 10); }  /* near underflow */
    else { x = randf(100, 127); scale = randf(-10, 10); }                   /* near overflow */
    if (rnd() % 64 == 0) { uint32_t b = (uint32_t)rnd() & 0x7fffff; memcpy(&x, &b, 4); }  /* subnormal x */
    const T y = (T)1 / scale;
    const T q0 = x * y;
    const T q = FMA(FMA(-scale, q0, x), y, q0);
    const T r = FMA(-scale, q, x);
    UNSIGNED bits; T power;
    memcpy(&bits, &q, sizeof bits); bits &= 0x7f800000u; memcpy(&power, &bits, sizeof power);
    const T h = ((FABS(q) == power ? (T)0.5 * power : power) * scale) * 0x1p-24f;
    UNSIGNED zero; memcpy(&zero, &x, sizeof zero);
    const int finite = scale > (T)0 && scale <= 0x1.fffffep127f;
    int proven = ((zero == 0) & finite) | ((FABS(r) < h) & (h >= 0x1p-126f) & (h <= 0x1.fffffep127f));
    if (proven) { ++proven_n; T t = x / scale; if (memcmp(&t, &q, 4) != 0) { if (wrong < 10) printf("WRONG x=%a s=%a q=%a t=%a\n", x, scale, q, t); ++wrong; } }
  }
  printf("n=%lld proven=%lld wrong=%lld\n", n, proven_n, wrong);
  return wrong != 0;
}
