/* The metrics tests' view of a scrape (tests/unit/scrape.h). */
#include "tests/unit/scrape.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- reading the text ------------------------------------------------------------------------ */

/* The line that starts with `series` followed by a space, or NULL. */
const char *scrape_find(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *line = text; line && *line;) {
        if (!strncmp(line, series, n) && line[n] == ' ')
            return line;
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return NULL;
}

bool scrape_has(const char *text, const char *series)
{
    return scrape_find(text, series) != NULL;
}

/* The value of the sample whose name and labels are exactly `series`; fails when absent. */
double scrape_sample(const char *text, const char *series)
{
    const char *line = scrape_find(text, series);
    if (!line)
        fail_msg("no sample \"%s\" in:\n%s", series, text);
    const char *v = line + strlen(series) + 1;
    char *end;
    double d = strtod(v, &end);
    assert_true(end > v);
    assert_true(*end == '\n' || *end == '\0');
    return d;
}

/* Whether any line starts with `prefix`. */
bool scrape_has_line(const char *text, const char *prefix)
{
    size_t n = strlen(prefix);
    for (const char *line = text; line && *line;) {
        if (!strncmp(line, prefix, n))
            return true;
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return false;
}

size_t scrape_count(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p++)
        n++;
    return n;
}

/* Checks that `text` is well-formed text exposition (format 0.0.4) as Tollgate writes it:
 * "# HELP name text" and "# TYPE name type" comments, each family typed once and before its
 * samples; every other line `name{labels} value` (or `name value`), names starting tollgate_
 * or gen_ai_, label values with only \\, \" and \n escapes, no duplicate label, histograms'
 * buckets carrying le. Returns NULL, or a description of the first problem (static). */
const char *scrape_problem(const char *text, const char **where)
{
    static char why[400];
    char family[256] = "", type[32] = "";
    static char typed[512][256];
    size_t n_typed = 0;
    *where = text;
    if (!*text)
        return "empty";
    if (text[strlen(text) - 1] != '\n')
        return "no final newline";
    for (const char *line = text; *line;) {
        *where = line;
        const char *nl = strchr(line, '\n');
        size_t len = (size_t)(nl - line);
        if (*line == '#') {
            char name[256], rest[32];
            if (len >= 7 && !strncmp(line, "# HELP ", 7)) {
                if (sscanf(line + 7, "%255[a-zA-Z0-9_:] ", name) != 1)
                    return "HELP without a name";
            } else if (len >= 7 && !strncmp(line, "# TYPE ", 7)) {
                if (sscanf(line + 7, "%255[a-zA-Z0-9_:] %31[a-z]", name, rest) != 2)
                    return "TYPE without name and type";
                if (strcmp(rest, "counter") && strcmp(rest, "gauge") && strcmp(rest, "histogram"))
                    return "unexpected TYPE";
                const char *after = line + 7 + strlen(name) + 1 + strlen(rest);
                if (after != nl)
                    return "junk after TYPE";
                for (size_t i = 0; i < n_typed; i++)
                    if (!strcmp(typed[i], name))
                        return "family typed twice";
                if (n_typed < 512)
                    snprintf(typed[n_typed++], sizeof typed[0], "%s", name);
                snprintf(family, sizeof family, "%s", name);
                snprintf(type, sizeof type, "%s", rest);
            } else {
                return "comment neither HELP nor TYPE";
            }
            line = nl + 1;
            continue;
        }
        /* Metric name. */
        const char *p = line;
        if (strncmp(p, "tollgate_", 9) && strncmp(p, "gen_ai_", 7))
            return "name not tollgate_ or gen_ai_";
        const char *name_start = p;
        while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
               *p == '_' || *p == ':')
            p++;
        size_t name_len = (size_t)(p - name_start);
        if (!*family)
            return "sample before any TYPE";
        size_t fl = strlen(family);
        bool belongs = name_len == fl && !strncmp(name_start, family, fl);
        bool is_bucket = false;
        if (!belongs && !strcmp(type, "histogram") && name_len > fl &&
            !strncmp(name_start, family, fl)) {
            const char *suffix = name_start + fl;
            size_t sl = name_len - fl;
            is_bucket = sl == 7 && !strncmp(suffix, "_bucket", 7);
            belongs = is_bucket || (sl == 4 && !strncmp(suffix, "_sum", 4)) ||
                      (sl == 6 && !strncmp(suffix, "_count", 6));
        } else if (belongs && !strcmp(type, "histogram")) {
            belongs = false; /* a histogram has no bare sample */
        }
        if (!belongs) {
            snprintf(why, sizeof why, "sample outside its family %s (%s)", family, type);
            return why;
        }
        /* Labels. */
        char seen[16][64];
        size_t n_seen = 0;
        bool has_le = false;
        if (*p == '{') {
            p++;
            for (;;) {
                const char *ln = p;
                if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_'))
                    return "bad label name";
                while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                       (*p >= '0' && *p <= '9') || *p == '_')
                    p++;
                size_t lnl = (size_t)(p - ln);
                if (lnl >= sizeof seen[0] || n_seen >= sizeof seen / sizeof seen[0])
                    return "label name too long or too many labels";
                for (size_t i = 0; i < n_seen; i++)
                    if (strlen(seen[i]) == lnl && !strncmp(seen[i], ln, lnl))
                        return "duplicate label";
                memcpy(seen[n_seen], ln, lnl);
                seen[n_seen++][lnl] = '\0';
                if (lnl == 2 && !strncmp(ln, "le", 2))
                    has_le = true;
                if (p[0] != '=' || p[1] != '"')
                    return "label without =\"";
                p += 2;
                while (*p != '"') {
                    if (*p == '\n' || !*p)
                        return "unterminated label value";
                    if (*p == '\\') {
                        if (p[1] != '\\' && p[1] != '"' && p[1] != 'n')
                            return "bad escape in label value";
                        p++;
                    }
                    p++;
                }
                p++;
                if (*p == ',') {
                    p++;
                    continue;
                }
                if (*p == '}') {
                    p++;
                    break;
                }
                return "label set not closed";
            }
        }
        if (is_bucket != has_le)
            return is_bucket ? "bucket without le" : "le outside a bucket";
        if (*p != ' ')
            return "no single space before the value";
        p++;
        char *end;
        if (!strncmp(p, "+Inf", 4) || !strncmp(p, "-Inf", 4) || !strncmp(p, "NaN", 3))
            return "non-finite value";
        strtod(p, &end);
        if (end == p || end != nl)
            return "value not a number alone";
        line = nl + 1;
    }
    return NULL;
}

void scrape_assert_valid(const char *text)
{
    const char *where;
    const char *why = scrape_problem(text, &where);
    if (why) {
        const char *nl = strchr(where, '\n');
        int len = nl ? (int)(nl - where) : (int)strlen(where);
        fail_msg("malformed exposition (%s) at line: %.*s", why, len, where);
    }
}

/* Runs `promtool check metrics` on the text when promtool is installed; 1 when it ran. */
int scrape_promtool(const char *text)
{
    if (system("command -v promtool >/dev/null 2>&1") != 0)
        return 0;
    char path[] = "/tmp/tollgate-metrics-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "promtool check metrics < %s 2>&1", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char report[4096];
    size_t got = fread(report, 1, sizeof report - 1, p);
    report[got] = '\0';
    int status = pclose(p);
    unlink(path);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        fail_msg("promtool check metrics failed:\n%s", report);
    return 1;
}

/* ---- histograms --------------------------------------------------------------------------------
 */

/* Every line of histogram `name` with exactly the labels `labels` (no braces; "" for none). */
bool scrape_read_hist(const char *text, const char *name, const char *labels, struct scrape_hist *h)
{
    memset(h, 0, sizeof *h);
    char prefix[1024];
    snprintf(prefix, sizeof prefix, "%s_bucket{%s%sle=\"", name, labels, *labels ? "," : "");
    size_t pl = strlen(prefix);
    for (const char *line = text; line && *line;) {
        if (!strncmp(line, prefix, pl)) {
            assert_true(h->n < sizeof h->le / sizeof h->le[0]);
            const char *le = line + pl;
            char *end;
            if (!strncmp(le, "+Inf\"", 5)) {
                h->le[h->n] = INFINITY;
                end = (char *)le + 4;
            } else {
                h->le[h->n] = strtod(le, &end);
                assert_true(end > le);
            }
            assert_true(end[0] == '"' && end[1] == '}' && end[2] == ' ');
            h->cum[h->n] = strtod(end + 3, NULL);
            h->n++;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    if (!h->n)
        return false;
    char series[1024];
    if (*labels)
        snprintf(series, sizeof series, "%s_sum{%s}", name, labels);
    else
        snprintf(series, sizeof series, "%s_sum", name);
    h->sum = scrape_sample(text, series);
    if (*labels)
        snprintf(series, sizeof series, "%s_count{%s}", name, labels);
    else
        snprintf(series, sizeof series, "%s_count", name);
    h->count = scrape_sample(text, series);
    return true;
}

/* The histogram has exactly `bounds` then +Inf, buckets cumulative and monotonic, +Inf equal
 * to the count, and matches the observations `obs` (le = less than or equal). */
void scrape_check_hist(const char *text, const char *name, const char *labels, const double *bounds,
                       size_t n_bounds, const double *obs, size_t n_obs)
{
    struct scrape_hist h;
    if (!scrape_read_hist(text, name, labels, &h))
        fail_msg("no histogram %s{%s} in:\n%s", name, labels, text);
    if (h.n != n_bounds + 1)
        fail_msg("%s{%s}: %zu buckets, want %zu", name, labels, h.n, n_bounds + 1);
    double prev = 0, sum = 0;
    for (size_t i = 0; i < n_obs; i++)
        sum += obs[i];
    for (size_t b = 0; b <= n_bounds; b++) {
        /* Close enough here; test_le_labels_exact() wants them exact. */
        if (b < n_bounds && fabs(h.le[b] - bounds[b]) > 5e-6 * bounds[b])
            fail_msg("%s{%s}: bucket %zu has le=%.17g, want %.17g", name, labels, b, h.le[b],
                     bounds[b]);
        if (b == n_bounds && !isinf(h.le[b]))
            fail_msg("%s{%s}: last bucket is not +Inf", name, labels);
        size_t want = 0;
        for (size_t i = 0; i < n_obs; i++)
            if (b == n_bounds || obs[i] <= bounds[b])
                want++;
        if (h.cum[b] != (double)want)
            fail_msg("%s{%s}: le=%g holds %g, want %zu", name, labels, h.le[b], h.cum[b], want);
        assert_true(h.cum[b] >= prev);
        prev = h.cum[b];
    }
    assert_true(h.cum[n_bounds] == h.count);
    assert_true(h.count == (double)n_obs);
    assert_float_equal(h.sum, sum, 1e-9 * (1 + fabs(sum)));
}

/* ---- rendering ---------------------------------------------------------------------------------
 */

char *scrape_render(struct metrics_shard *const *shards, size_t n)
{
    struct buf out;
    buf_init(&out, 16 << 20);
    assert_int_equal(metrics_render(&out, shards, n), 0);
    assert_non_null(out.data);
    assert_true(out.len > 0);
    assert_int_equal(out.data[out.len - 1], '\n');
    assert_int_equal(strlen(out.data), out.len);
    char *text = buf_steal(&out, NULL);
    scrape_assert_valid(text);
    return text;
}

struct metrics_shard *scrape_shard(void)
{
    struct metrics_shard *s = metrics_shard_new();
    assert_non_null(s);
    return s;
}

unsigned scrape_label(enum metrics_label_kind kind, const char *name, const char *name2)
{
    unsigned i = metrics_label(kind, name, name2);
    if (i == 0)
        fail_msg("label %s/%s got index 0 (table full?)", name, name2 ? name2 : "");
    return i;
}
