# The gateway's user-facing messages, English. Every id here is also in
# zh-CN.ftl (a unit test checks). `raw` passes a message through as it is:
# texts that come from elsewhere (the control plane, a worker).
raw = { $text }

no-api-key = no API key: send your tenant's key as `Authorization: Bearer <key>`
invalid-api-key = the API key is not valid (unknown or revoked)
tenant-gone = tenant { $tenant } no longer exists
tenant-mismatch = X-Tenant-ID names tenant "{ $claimed }" but the API key belongs to another tenant
user-mismatch = this API key belongs to user "{ $own }" and cannot act as user "{ $other }"
tool-not-allowed = the server-side tool `{ $tool }` is not allowed to your tenant (plan `{ $plan }`); ask your operator to allow it
burst-not-in-plan = your plan `{ $plan }` does not include burst requests (enterprise does); ask your operator to change the plan
request-too-large = the request body is larger than the limit of { $limit } bytes
too-many-calls = too many { $what } calls for tenant `{ $tenant }` (at most { $rate } a second, { $burst } at once); retry in a moment
concurrency-limit = concurrency limit reached: your tenant may run { $max } requests at once and all are in use; retry when one finishes, or ask your administrator to raise max_concurrent
quota-reserved = this request needs { $need } tokens and the rest of today's quota is reserved by requests in flight; retry in a few seconds
quota-exceeded = daily token quota exceeded: this request needs up to { $need } tokens but only { $remaining } of today's { $quota } remain; the quota resets in { $reset_in } (at { $reset_at } UTC). Retry after the reset, lower max_tokens, or ask your administrator to approve a burst
request-token-limit = this request needs up to { $need } tokens ({ $prompt } in the prompt and context, { $max_tokens } for the completion), more than your tenant's limit of { $limit } tokens per request; shorten the messages or lower max_tokens
model-not-found = the model `{ $asked }` is not available to your tenant; GET /v1/models lists yours (`{ $model }`)
adapter-not-found = the adapter `{ $adapter }` is not available to your tenant
only-n-1 = only n = 1 is supported
max-tokens-zero = max_tokens must be at least 1
session-not-found = no session "{ $id }" in your tenant; create one with POST /v1/sessions
header-not-ascii = header { $name } must be ASCII
invalid-session-body = the request body is not a valid session: { $detail }
invalid-burst-body = the request body is not a burst request ({"{"}"reason": "why you need more tokens today"{"}"}): { $detail }
no-route = no such route
file-not-found = no file "{ $id }" in your tenant; GET /v1/files lists yours
file-missing = send the file as multipart/form-data with a `file` part (and a `purpose`)
file-too-large = a file holds at most { $limit } MiB
