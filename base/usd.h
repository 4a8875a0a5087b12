/* USD amounts as text, the same everywhere: the x-tollgate-cost-usd header, JSON bodies and
 * stream chunks, the admin API, logs and ledger records.
 *
 * A cost is a product of token counts and prices per million tokens, so its double carries
 * float noise in the last digits (6.0000000000000002e-06); jansson writes reals with %.17g,
 * which shows it. Amounts are printed as plain decimals with at most 10 decimals, trailing
 * zeros dropped ("0.0000063", "0.03", "3.0"), never in exponent form. Thread-safe: pure. */
#ifndef TOLLGATE_USD_H
#define TOLLGATE_USD_H

#include <jansson.h>
#include <stddef.h>

/* Enough for any double usd_format() writes. */
#define USD_TEXT_MAX 48

/* Writes `usd` into out (n >= USD_TEXT_MAX for every value; shorter buffers truncate): at most
 * 10 decimals and at most 15 significant digits, so no float noise; "0.0" for 0, -0 and
 * amounts under half of 1e-10; non-finite values as "0.0". */
void usd_format(char *out, size_t n, double usd);

/* json_dumps(doc, flags) with the real value of every member that holds an amount in USD
 * ("cost", or a name with "usd" in it: cost_usd, budget_usd, input_usd_per_mtok) written by
 * usd_format(); still a JSON number. Every other number and string is as jansson writes it,
 * so a node's own numbers (logprobs, temperature) keep their digits. malloc'd; NULL on OOM. */
char *usd_json_dumps(const json_t *doc, size_t flags);

#endif
