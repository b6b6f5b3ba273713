/* prom_check.h: for the tests of lib/emd_metrics.c and lib/emd_control.c,
 * a checker of the Prometheus text format (0.0.4) that a scraper applies.
 * Include after cmocka.h. */
#ifndef PROM_CHECK_H
#define PROM_CHECK_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The 0.0.4 text grammar, line by line: "# HELP name text", "# TYPE name
 * type", other "#" comments, or "name{l="v",...} value". Also checks that
 * each family's TYPE comes once and before its samples, and that a
 * family's samples are not interleaved with another's. */
static bool is_name(const char **p, bool colon)
{
  const char *s = *p;

  if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
        *s == '_' || (colon && *s == ':')))
    return false;
  while ((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
         (*s >= '0' && *s <= '9') || *s == '_' || (colon && *s == ':'))
    s++;
  *p = s;
  return true;
}

static void check_sample(const char *line, char *family, size_t flen)
{
  const char *p = line, *name = line;
  char *end;

  assert_true(is_name(&p, true));
  snprintf(family, flen, "%.*s", (int)(p - name), name);
  if (*p == '{') {
    p++;
    while (*p != '}') {
      assert_true(is_name(&p, false));
      assert_true(*p++ == '=');
      assert_true(*p++ == '"');
      while (*p != '"') {
        assert_true(*p != '\0' && *p != '\n');
        if (*p == '\\') {
          p++;
          assert_true(*p == '\\' || *p == '"' || *p == 'n');
        }
        p++;
      }
      p++;
      if (*p == ',')
        p++;
    }
    p++;
  }
  assert_true(*p++ == ' ');
  if (strcmp(p, "+Inf") != 0 && strcmp(p, "-Inf") != 0 &&
      strcmp(p, "NaN") != 0) {
    strtod(p, &end);
    assert_true(end != p && *end == '\0');
  }
}

static void strip_suffix(char *family, const char *typed)
{
  static const char *const sfx[] = { "_bucket", "_sum", "_count" };
  size_t n = strlen(family), tn = strlen(typed);

  for (size_t i = 0; i < 3; i++) {
    size_t sn = strlen(sfx[i]);

    if (n == tn + sn && strncmp(family, typed, tn) == 0 &&
        strcmp(family + tn, sfx[i]) == 0)
      family[tn] = '\0';
  }
}

static void check_exposition(const char *text)
{
  char seen[64][96];
  size_t nseen = 0;
  char typed[96] = "", line[4096];
  const char *p = text, *nl;
  bool eof_seen = false;

  assert_true(strlen(text) >= 6);
  assert_string_equal(text + strlen(text) - 6, "# EOF\n");
  while ((nl = strchr(p, '\n')) != NULL) {
    snprintf(line, sizeof(line), "%.*s", (int)(nl - p), p);
    p = nl + 1;
    assert_false(eof_seen);
    if (strcmp(line, "# EOF") == 0) {
      eof_seen = true;
    } else if (strncmp(line, "# TYPE ", 7) == 0) {
      char *name = line + 7, *sp = strchr(name, ' ');

      assert_non_null(sp);
      *sp = '\0';
      assert_true(strcmp(sp + 1, "counter") == 0 ||
                  strcmp(sp + 1, "gauge") == 0 ||
                  strcmp(sp + 1, "histogram") == 0);
      for (size_t i = 0; i < nseen; i++)
        assert_string_not_equal(seen[i], name);
      assert_true(nseen < 64);
      snprintf(seen[nseen++], sizeof(seen[0]), "%s", name);
      snprintf(typed, sizeof(typed), "%s", name);
    } else if (strncmp(line, "# HELP ", 7) == 0) {
      assert_null(strchr(line, '\n'));
    } else {
      char family[96];

      assert_true(line[0] != '#' && line[0] != '\0');
      check_sample(line, family, sizeof(family));
      strip_suffix(family, typed);
      /* A sample belongs to the family typed just before it. */
      assert_string_equal(family, typed);
    }
  }
  assert_true(eof_seen);
  assert_true(*p == '\0');
}

#endif
