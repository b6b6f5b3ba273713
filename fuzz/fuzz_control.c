/* fuzz_control.c: emd_control_parse (SPEC 6's control commands) on the
 * input as one command line, and emd_control_parse_duration on it.
 *
 * Checked beyond "no crash, no leak, no undefined behaviour": a command
 * that parses is within the header's bounds (flush timeout, list limits,
 * a dead retry target of "all" or 1 to 64 ASCII letters and digits), and
 * only the fields of its verb are set; a refused one gets EMD_EBADCMD and
 * one line of printable ASCII (untrusted bytes shown as '.'). The
 * duration parser takes exactly the header's grammar. */
#include <ctype.h>

#include "emd_control.h"
#include "emd_err.h"
#include "fuzz.h"

static bool target_ok(const char *t)
{
  size_t n = strnlen(t, EMD_CONTROL_TARGET_MAX + 1);

  if (n == 0 || n > EMD_CONTROL_TARGET_MAX)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)t[i]) || (unsigned char)t[i] >= 0x80)
      return false;
  return true;
}

static void check_cmd(const struct emd_control_cmd *c)
{
  bool timeout = false, limit = false, target = false;

  switch (c->verb) {
  case EMD_CTL_FLUSH:
    timeout = true;
    FUZZ_CHECK(c->timeout_ms <= EMD_CONTROL_FLUSH_MAX_MS,
               "flush timeout %llu ms", (unsigned long long)c->timeout_ms);
    break;
  case EMD_CTL_DEAD_LIST:
  case EMD_CTL_PENDING:
    limit = true;
    FUZZ_CHECK(c->limit >= 1 && c->limit <= EMD_CONTROL_LIST_MAX,
               "limit %llu", (unsigned long long)c->limit);
    break;
  case EMD_CTL_DEAD_RETRY:
    target = true;
    FUZZ_CHECK(target_ok(c->target), "dead retry target \"%.*s\"",
               EMD_CONTROL_TARGET_MAX, c->target);
    break;
  case EMD_CTL_STATUS:
  case EMD_CTL_METRICS:
  case EMD_CTL_RELOAD:
  case EMD_CTL_DEAD_PURGE:
  case EMD_CTL_HELP:
    break;
  default:
    FUZZ_CHECK(false, "verb %d", (int)c->verb);
  }
  FUZZ_CHECK(timeout || c->timeout_ms == 0, "timeout set for verb %d",
             (int)c->verb);
  FUZZ_CHECK(limit || c->limit == 0, "limit set for verb %d", (int)c->verb);
  FUZZ_CHECK(target || c->target[0] == '\0', "target set for verb %d",
             (int)c->verb);
}

/* The header's duration, read plainly: a whole number, then ms, s, m, h
 * or nothing (seconds); the milliseconds must fit. */
static int duration(const char *s, size_t len, uint64_t *out)
{
  static const struct {
    const char *unit;
    uint64_t ms;
  } units[] = { { "", 1000 }, { "ms", 1 }, { "s", 1000 }, { "m", 60000 },
                { "h", 3600000 } };
  uint64_t v = 0;
  size_t i = 0;

  for (; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
    /* As emitd does: it refuses 18446744073709551610 to ...615 too,
     * harmless as nothing near that is a valid timeout. */
    if (v > (UINT64_MAX - 9) / 10)
      return -1;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  if (i == 0)
    return -1;
  for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
    if (strlen(units[u].unit) != len - i ||
        memcmp(units[u].unit, s + i, len - i) != 0)
      continue;
    if (v > UINT64_MAX / units[u].ms)
      return -1;
    *out = v * units[u].ms;
    return 0;
  }
  return -1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  const char *line = (const char *)data;
  struct emd_control_cmd cmd;
  char err[512];
  uint64_t ms, want;
  int rc;

  memset(&cmd, 0xa5, sizeof(cmd));
  memset(err, 'x', sizeof(err));
  rc = emd_control_parse(line, size, &cmd, err, sizeof(err));
  if (rc == 0) {
    check_cmd(&cmd);
  } else {
    FUZZ_CHECK(rc == EMD_EBADCMD, "emd_control_parse returned %d", rc);
    FUZZ_CHECK(fuzz_printable_line(err, sizeof(err)),
               "refused without one line of ASCII: \"%.*s\"",
               (int)sizeof(err), err);
  }
  rc = emd_control_parse_duration(line, size, &ms);
  FUZZ_CHECK(rc == 0 || rc == EMD_EBADCMD, "parse_duration returned %d", rc);
  FUZZ_CHECK((rc == 0) == (duration(line, size, &want) == 0),
             "parse_duration %s \"%.*s\"", rc == 0 ? "took" : "refused",
             (int)size, line);
  FUZZ_CHECK(rc != 0 || ms == want, "\"%.*s\" is %llu ms, not %llu",
             (int)size, line, (unsigned long long)ms,
             (unsigned long long)want);
  return 0;
}
