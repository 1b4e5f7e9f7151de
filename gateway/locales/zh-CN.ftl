# 网关面向用户的消息，简体中文。与 en.ftl 的条目一一对应（单元测试检查）。
raw = { $text }

no-api-key = 缺少 API 密钥：请以 `Authorization: Bearer <key>` 发送租户的密钥
invalid-api-key = API 密钥无效（不存在或已吊销）
tenant-gone = 租户 { $tenant } 已不存在
tenant-mismatch = X-Tenant-ID 指定的租户为“{ $claimed }”，但该 API 密钥属于另一个租户
user-mismatch = 该 API 密钥属于用户“{ $own }”，不能以用户“{ $other }”的身份请求
tool-not-allowed = 您的租户（套餐 `{ $plan }`）不允许使用服务端工具 `{ $tool }`；请联系运维人员开通
burst-not-in-plan = 您的套餐 `{ $plan }` 不包含突发配额申请（企业版包含）；请联系运维人员更换套餐
request-too-large = 请求体超过 { $limit } 字节的上限
too-many-calls = 租户 `{ $tenant }` 的{ $what }调用过于频繁（每秒最多 { $rate } 次，同时最多 { $burst } 次）；请稍后重试
concurrency-limit = 已达并发上限：您的租户最多同时运行 { $max } 个请求，目前均在使用中；请等待其中一个完成后重试，或请管理员提高 max_concurrent
quota-reserved = 本次请求需要 { $need } 个 token，而今日剩余配额已被进行中的请求预留；请几秒后重试
quota-exceeded = 已超出每日 token 配额：本次请求最多需要 { $need } 个 token，但今日配额 { $quota } 个 token 仅剩 { $remaining } 个；配额将在 { $reset_in } 后（UTC { $reset_at }）重置。请在重置后重试、调低 max_tokens，或请管理员批准突发配额
