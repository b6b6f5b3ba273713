/* emd_backoff.c: see emd_backoff.h. */
#include "emd_backoff.h"

#include <stdbool.h>
#include <string.h>

#include "emd_err.h"

#define RNG_DEFAULT_SEED UINT64_C(0x9e3779b97f4a7c15)

void emd_rng_seed(struct emd_rng *rng, uint64_t seed)
{
  rng->s = seed != 0 ? seed : RNG_DEFAULT_SEED;
}

uint64_t emd_rng_next(struct emd_rng *rng)
{
  uint64_t x = rng->s != 0 ? rng->s : RNG_DEFAULT_SEED;

  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  rng->s = x;
  return x * UINT64_C(0x2545f4914f6cdd1d);
}

uint64_t emd_backoff_ceiling(unsigned attempt, uint64_t initial_ms,
                             uint64_t max_ms)
{
  if (initial_ms >= max_ms)
    return max_ms;
  /* initial << attempt would pass max_ms (or overflow) */
  if (attempt >= 64 || initial_ms > (max_ms >> attempt))
    return max_ms;
  return initial_ms << attempt;
}

uint64_t emd_backoff_next(unsigned attempt, uint64_t initial_ms,
                          uint64_t max_ms, struct emd_rng *rng)
{
  uint64_t ceiling = emd_backoff_ceiling(attempt, initial_ms, max_ms);

  if (ceiling == UINT64_MAX)
    return emd_rng_next(rng);
  /* the modulo bias is below 2^-40 for any ceiling we will see */
  return emd_rng_next(rng) % (ceiling + 1);
}

uint64_t emd_backoff_failed(struct emd_backoff *b, uint64_t initial_ms,
                            uint64_t max_ms, struct emd_rng *rng)
{
  uint64_t delay = emd_backoff_next(b->attempt, initial_ms, max_ms, rng);

  if (b->attempt < 64)
    b->attempt++;
  return delay;
}

void emd_backoff_reset(struct emd_backoff *b)
{
  b->attempt = 0;
}

/* A cursor over the date text. */
struct scan {
  const char *p;
  const char *end;
};

static bool is_space(char c)
{
  return c == ' ' || c == '\t';
}

static bool is_digit(char c)
{
  return c >= '0' && c <= '9';
}

static bool is_alpha(char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static void skip_spaces(struct scan *sc)
{
  while (sc->p < sc->end && is_space(*sc->p))
    sc->p++;
}

static bool take_char(struct scan *sc, char c)
{
  if (sc->p >= sc->end || *sc->p != c)
    return false;
  sc->p++;
  return true;
}

/* Reads between min and max digits as a number. */
static bool take_number(struct scan *sc, int min, int max, int *out)
{
  int n = 0, v = 0;

  while (sc->p < sc->end && is_digit(*sc->p) && n < max) {
    v = v * 10 + (*sc->p - '0');
    sc->p++;
    n++;
  }
  if (n < min || (sc->p < sc->end && is_digit(*sc->p)))
    return false;
  *out = v;
  return true;
}

/* Reads a run of letters (a day or month name) into name[0..n). */
static size_t take_word(struct scan *sc, char *name, size_t cap)
{
  size_t n = 0;

  while (sc->p < sc->end && is_alpha(*sc->p)) {
    if (n < cap)
      name[n] = *sc->p;
    n++;
    sc->p++;
  }
  return n;
}

static bool take_month(struct scan *sc, int *month)
{
  static const char names[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
  char w[3];
  int i;

  if (take_word(sc, w, sizeof(w)) != 3)
    return false;
  for (i = 0; i < 12; i++) {
    if (memcmp(w, names + 3 * i, 3) == 0) {
      *month = i + 1;
      return true;
    }
  }
  return false;
}

static bool take_time(struct scan *sc, int *h, int *m, int *s)
{
  return take_number(sc, 2, 2, h) && take_char(sc, ':') &&
         take_number(sc, 2, 2, m) && take_char(sc, ':') &&
         take_number(sc, 2, 2, s);
}

static bool take_gmt(struct scan *sc)
{
  char w[3];

  return take_word(sc, w, sizeof(w)) == 3 && memcmp(w, "GMT", 3) == 0;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar
 * (Howard Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
  int64_t era, yoe, doy, doe;

  y -= m <= 2;
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = y - era * 400;
  doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m)
{
  static const int days[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

  return m == 2 && leap ? 29 : days[m - 1];
}

int emd_backoff_http_date(const char *s, size_t len, int64_t *epoch_s)
{
  struct scan sc = { s, s + len };
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, se = 0;
  char day[9];
  size_t n;

  skip_spaces(&sc);
  n = take_word(&sc, day, sizeof(day));
  if (n < 3 || n > 9)
    return EMD_EINVALID;
  if (take_char(&sc, ',')) {
    skip_spaces(&sc);
    if (!take_number(&sc, 1, 2, &d))
      return EMD_EINVALID;
    if (take_char(&sc, '-')) {                     /* RFC 850 */
      if (!take_month(&sc, &mo) || !take_char(&sc, '-') ||
          !take_number(&sc, 2, 2, &y))
        return EMD_EINVALID;
      y += y < 70 ? 2000 : 1900;
    } else {                                       /* IMF-fixdate */
      skip_spaces(&sc);
      if (!take_month(&sc, &mo))
        return EMD_EINVALID;
      skip_spaces(&sc);
      if (!take_number(&sc, 4, 4, &y))
        return EMD_EINVALID;
    }
    skip_spaces(&sc);
    if (!take_time(&sc, &h, &mi, &se))
      return EMD_EINVALID;
    skip_spaces(&sc);
    if (!take_gmt(&sc))
      return EMD_EINVALID;
  } else {                                         /* asctime */
    skip_spaces(&sc);
    if (!take_month(&sc, &mo))
      return EMD_EINVALID;
    skip_spaces(&sc);
    if (!take_number(&sc, 1, 2, &d))
      return EMD_EINVALID;
    skip_spaces(&sc);
    if (!take_time(&sc, &h, &mi, &se))
      return EMD_EINVALID;
    skip_spaces(&sc);
    if (!take_number(&sc, 4, 4, &y))
      return EMD_EINVALID;
  }
  skip_spaces(&sc);
  if (sc.p != sc.end)
    return EMD_EINVALID;
  /* 60 for a leap second, as RFC 5322 allows */
  if (d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || se > 60)
    return EMD_EINVALID;
  *epoch_s = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
  return 0;
}

int emd_backoff_retry_after(const char *s, size_t len, uint64_t now_ms,
                            uint64_t *delay_ms)
{
  struct scan sc = { s, s + len };
  uint64_t secs = 0;
  int64_t when_s;

  skip_spaces(&sc);
  while (sc.end > sc.p && is_space(sc.end[-1]))
    sc.end--;
  if (sc.p == sc.end)
    return EMD_EINVALID;
  if (is_digit(*sc.p)) {
    for (; sc.p < sc.end; sc.p++) {
      if (!is_digit(*sc.p))
        return EMD_EINVALID;
      if (secs < EMD_RETRY_AFTER_MAX_S)
        secs = secs * 10 + (uint64_t)(*sc.p - '0');
    }
    if (secs > EMD_RETRY_AFTER_MAX_S)
      secs = EMD_RETRY_AFTER_MAX_S;
    *delay_ms = secs * 1000;
    return 0;
  }
  if (emd_backoff_http_date(sc.p, (size_t)(sc.end - sc.p), &when_s) != 0)
    return EMD_EINVALID;
  if (when_s <= 0 || (uint64_t)when_s * 1000 <= now_ms)
    *delay_ms = 0;
  else
    *delay_ms = (uint64_t)when_s * 1000 - now_ms;
  return 0;
}
