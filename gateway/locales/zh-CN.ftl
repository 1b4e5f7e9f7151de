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
request-token-limit = 本次请求最多需要 { $need } 个 token（提示词与上下文 { $prompt } 个，生成 { $max_tokens } 个），超过了租户每次请求 { $limit } 个 token 的上限；请缩短消息或调低 max_tokens
model-not-found = 您的租户不能使用模型 `{ $asked }`；GET /v1/models 列出可用模型（`{ $model }`）
adapter-not-found = 您的租户不能使用适配器 `{ $adapter }`
only-n-1 = 仅支持 n = 1
max-tokens-zero = max_tokens 至少为 1
session-not-found = 您的租户中没有会话“{ $id }”；请先用 POST /v1/sessions 创建
header-not-ascii = 请求头 { $name } 必须是 ASCII 字符
invalid-session-body = 请求体不是有效的会话：{ $detail }
invalid-burst-body = 请求体不是有效的突发配额申请（{"{"}"reason": "今天为何需要更多 token"{"}"}）：{ $detail }
no-route = 没有这个路由
file-not-found = 您的租户中没有文件 "{ $id }"；GET /v1/files 可列出您的文件
file-missing = 请以 multipart/form-data 发送文件，包含 `file` 部分（以及 `purpose`）
file-too-large = 单个文件最大 { $limit } MiB
