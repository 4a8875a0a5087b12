/* Every Redis key, key prefix and pub/sub channel Tollgate uses, each named once here (the
 * README's "Keys in Redis" tells operators the same). All start with "tg:". A prefix is
 * followed by the part named in its comment; nothing else builds a name by hand.
 *
 * Changing a value here changes what existing deployments hold in Redis: treat these strings
 * as part of the product's contract, like its HTTP answers. */
#ifndef TOLLGATE_REDIS_KEYSPACE_H
#define TOLLGATE_REDIS_KEYSPACE_H

/* ---- API keys (tenancy/keys.c writes them, tenancy/keyauth.c reads them) ------------------- */

/* HASH tg:key:<sha256 hex of the key>: name, models (JSON array; absent = every model), rpm,
 * tpm, budget_usd, expires_at, created_at. Only the digest is stored, never the key. */
#define REDIS_KEY_KEY_PREFIX "tg:key:"

/* STRING tg:keyname:<name> = <sha256 hex>: set NX at creation, so names are unique. */
#define REDIS_KEY_KEYNAME_PREFIX "tg:keyname:"

/* SET tg:keys = { key names }: what `keys list` and GET /admin/keys enumerate. */
#define REDIS_KEY_KEYS "tg:keys"

/* Channel tg:keys:revoked: a revocation publishes the key's sha256 hex; every worker that
 * subscribed evicts it from its key cache. */
#define REDIS_CHANNEL_KEYS_REVOKED "tg:keys:revoked"

/* ---- the usage ledger (tenancy/ledger.c) ---------------------------------------------------- */

/* STREAM tg:usage: one entry per request (XADD MAXLEN ~ LEDGER_STREAM_MAXLEN) with uid, id,
 * key, model, backend, cache, status, prompt_tokens, completion_tokens, cost_usd, latency_ms,
 * ts_ms, saved_usd, cached_tokens. */
#define REDIS_KEY_USAGE "tg:usage"

/* STRING tg:usage:seen:<record uid> = "1", expiring after LEDGER_SEEN_TTL_S: the record is
 * already counted (a replayed duplicate is not counted again). */
#define REDIS_KEY_USAGE_SEEN_PREFIX "tg:usage:seen:"

/* HASH tg:usage:sum:<key name>: "<model>:requests", "<model>:prompt_tokens",
 * "<model>:completion_tokens", "<model>:cost_usd" (decimal), "<model>:saved_usd",
 * "<model>:cached_tokens" (the last two once non-zero). */
#define REDIS_KEY_USAGE_SUM_PREFIX "tg:usage:sum:"

/* SET tg:usage:keys = { key names that have a tg:usage:sum: hash }. */
#define REDIS_KEY_USAGE_KEYS "tg:usage:keys"

/* ---- limits (tenancy/budget.c, tenancy/ratelimit.c) ----------------------------------------- */

/* HASH tg:budget:<key name>: spent, reserved (USD, decimal strings). No expiry. */
#define REDIS_KEY_BUDGET_PREFIX "tg:budget:"

/* HASH tg:rl:<key name>:<minute since the epoch>: r (requests), t (tokens) leased to
 * replicas in that minute; expires after two minutes. */
#define REDIS_KEY_RATELIMIT_PREFIX "tg:rl:"

/* ---- the shared response cache (gateway/) ------------------------------------------------- */

/* HASH tg:cache:<sha256 hex of the request>: body, backend, cost, stored_at (wall ms);
 * expires after cache.ttl_s. */
#define REDIS_KEY_CACHE_PREFIX "tg:cache:"

/* ---- the Responses API (routing/affinity.c) ------------------------------------------------- */

/* STRING tg:resp:<response id> = "<backend name>\n<model>": the node that answered the
 * response, so follow-ups (previous_response_id, GET and DELETE by id) reach the node that
 * holds it from any replica; expires after AFFINITY_TTL_S, deleted with the response. */
#define REDIS_KEY_RESPONSE_PREFIX "tg:resp:"

#endif
