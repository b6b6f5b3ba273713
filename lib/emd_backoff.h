/* emd_backoff.h: retry timing for the forwarder (SPEC 4), kept pure so it
 * can be tested without a clock: exponential backoff with full jitter, and
 * the parser of a Retry-After header (delay-seconds or an HTTP date).
 * Randomness and the current time come in as arguments. No state of its
 * own: any thread. */
#ifndef EMD_BACKOFF_H
#define EMD_BACKOFF_H

#include <stddef.h>
#include <stdint.h>

/* A xorshift64* generator: fast, small, good enough for jitter (not for
 * secrets). Zero-initialised it is valid too (it then uses a fixed seed). */
struct emd_rng {
  uint64_t s;  /* never 0 once seeded */
};

/* Seeds rng; a seed of 0 is replaced by a fixed non-zero constant. */
void emd_rng_seed(struct emd_rng *rng, uint64_t seed);

/* The next 64 random bits. */
uint64_t emd_rng_next(struct emd_rng *rng);

/* The ceiling for a retry after `attempt` earlier failures (0 for the
 * first retry): min(max_ms, initial_ms * 2^attempt), without overflow.
 * max_ms below initial_ms caps at max_ms. */
uint64_t emd_backoff_ceiling(unsigned attempt, uint64_t initial_ms,
                             uint64_t max_ms);

/* Full jitter: a delay drawn uniformly from [0, emd_backoff_ceiling()].
 * Spreads many agents that failed together over the whole window, so
 * they do not return in step. */
uint64_t emd_backoff_next(unsigned attempt, uint64_t initial_ms,
                          uint64_t max_ms, struct emd_rng *rng);

/* Consecutive failures, for callers that keep one counter: _failed()
 * returns the delay for this failure and counts it; _reset() after a
 * success starts over from initial_ms. */
struct emd_backoff {
  unsigned attempt;  /* failures since the last success */
};
uint64_t emd_backoff_failed(struct emd_backoff *b, uint64_t initial_ms,
                            uint64_t max_ms, struct emd_rng *rng);
void emd_backoff_reset(struct emd_backoff *b);

/* Parses an HTTP date (RFC 9110 5.6.7) of any of its three forms:
 *   IMF-fixdate  "Sun, 06 Nov 1994 08:49:37 GMT"
 *   RFC 850      "Sunday, 06-Nov-94 08:49:37 GMT" (two-digit years
 *                 below 70 are 20xx)
 *   asctime      "Sun Nov  6 08:49:37 1994"
 * s need not be NUL-terminated; surrounding white space is allowed.
 * Returns 0 with *epoch_s set, or EMD_EINVALID. */
int emd_backoff_http_date(const char *s, size_t len, int64_t *epoch_s);

/* Parses a Retry-After value: delay-seconds ("120") or an HTTP date,
 * which is turned into a delay from now_ms (ms since the epoch); a date
 * in the past is a delay of 0. Seconds beyond EMD_RETRY_AFTER_MAX_S are
 * cut to it (only to keep the arithmetic safe). Returns 0 with *delay_ms
 * set, or EMD_EINVALID (empty, negative, garbage). */
#define EMD_RETRY_AFTER_MAX_S (UINT64_C(1) << 32)
int emd_backoff_retry_after(const char *s, size_t len, uint64_t now_ms,
                            uint64_t *delay_ms);

#endif
