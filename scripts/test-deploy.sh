#!/usr/bin/env bash
# Checks the container deployment end to end with podman, from nothing:
# installs podman, podman-compose, runc, netavark, aardvark-dns, iptables
# (netavark's firewall), nginx and debootstrap (Debian's packages; runc because crun fails on this kind of
# host's rlimits and cgroups), makes a Debian bookworm base image with
# debootstrap (Debian's archive, no registry), builds deploy/Containerfile
# on it with the bulkhead binary, then:
#
#   1. deploy/compose.yaml (one host, as the article runs it): a tenant file
#      from ./tenants, a key, a chat through port 18789, the console on 8080;
#   2. deploy/compose.cluster.yaml: NATS, three control-plane nodes, a
#      worker and two gateways with their own credentials; a chat through
#      each gateway; deploy/nginx.conf in front of both gateways (TLS
#      terminated, a streamed answer arriving as it is generated); the
#      leader's container killed, and a chat answered again after failover;
#
# and tears everything down. Run as root. BULKHEAD_BIN names the binary
# (default target/release/bulkhead, built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

say() { echo "test-deploy: $*"; }
fail() { echo "test-deploy: FAILED: $*" >&2; exit 1; }

need=()
for cmd in podman podman-compose runc debootstrap iptables nginx curl openssl; do
  command -v "$cmd" >/dev/null || need+=("$cmd")
done
[ -x /usr/lib/podman/netavark ] || need+=(netavark)
[ -x /usr/lib/podman/aardvark-dns ] || need+=(aardvark-dns)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# runc, not crun; rlimits podman can set here; netavark with DNS between containers.
mkdir -p /etc/containers
if ! grep -q 'bulkhead test-deploy' /etc/containers/containers.conf 2>/dev/null; then
  cat >> /etc/containers/containers.conf <<'EOF'
# bulkhead test-deploy
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
[network]
network_backend = "netavark"
EOF
fi

bin="${BULKHEAD_BIN:-target/release/bulkhead}"
if [ ! -x "$bin" ]; then
  say "building $bin"
  cargo build --release --locked -p bulkhead
fi
model_dir="${BULKHEAD_MODEL_DIR:-$HOME/.cache/bulkhead/models}"
model="SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$model_dir/$model" ] || fail "the demo model is missing from $model_dir: run scripts/setup.sh"

work="$(mktemp -d)"
cleanup() {
  set +e
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null
  # Containers first, with their anonymous volumes (the image's VOLUME).
  for project in bhone bhcluster; do
    podman ps -aq --filter "label=io.podman.compose.project=$project" | xargs -r podman rm -f -v >/dev/null 2>&1
  done
  (cd "$work" && podman-compose -p bhone -f "$repo/deploy/compose.yaml" down -v >/dev/null 2>&1)
  (cd "$work" && podman-compose -p bhcluster -f "$repo/deploy/compose.cluster.yaml" down -v >/dev/null 2>&1)
  podman network rm -f bhone_default bhcluster_default >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
# A network an earlier run left behind keeps stale name records.
podman network rm -f bhone_default bhcluster_default >/dev/null 2>&1 || true

base=localhost/debian-minbase:bookworm
if ! podman image exists "$base"; then
  say "making the base image with debootstrap"
  started=$SECONDS
  debootstrap --variant=minbase bookworm "$work/rootfs" http://deb.debian.org/debian >/dev/null
  tar -C "$work/rootfs" -c . | podman import - "$base" >/dev/null
  rm -rf "$work/rootfs"
  say "base image in $((SECONDS - started)) s"
fi
say "building localhost/bulkhead:latest from $bin"
mkdir -p "$work/context"
cp "$bin" "$work/context/bulkhead"
started=$SECONDS
podman build -q --build-arg BASE="$base" -f deploy/Containerfile -t localhost/bulkhead:latest "$work/context" >/dev/null
say "image built in $((SECONDS - started)) s: $(podman image inspect localhost/bulkhead:latest --format '{{.Size}}') bytes"

# Polls a command until it succeeds (at most $1 seconds).
until_ok() {
  local limit=$1; shift
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 1
  done
}

# Asks one question through a gateway; prints the answer's text.
chat() {
  local port=$1 key=$2
  curl -sf --max-time 60 "http://127.0.0.1:$port/v1/chat/completions" \
    -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d '{"model":"smollm2","max_tokens":8,"temperature":0,"messages":[{"role":"user","content":"Say hello."}]}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])'
}

export BULKHEAD_IMAGE=localhost/bulkhead:latest BULKHEAD_MODELS="$model_dir"

# 1. One host.
say "one host: deploy/compose.yaml"
mkdir -p "$work/tenants/sales"
cat > "$work/tenants/sales/config.yaml" <<'EOF'
tenant_id: "sales"
model: smollm2
daily_quota: 600000
max_concurrent: 5
plan_tier: pro
system_prompt: "You answer for the sales team."
EOF
cp deploy/compose.yaml "$work/compose.yaml"
(cd "$work" && podman-compose -p bhone -f compose.yaml up -d >/dev/null 2>&1) || fail "compose up (one host)"
one=$(podman ps --filter label=io.podman.compose.project=bhone --format '{{.Names}}' | head -1)
until_ok 120 curl -sf http://127.0.0.1:18789/health || { podman logs "$one" | tail -20; fail "the one-host gateway never became healthy"; }
admin() { podman exec -e BULKHEAD_ADMIN_TOKEN="$(podman exec "$one" cat /var/lib/bulkhead/admin.token)" "$one" bulkhead "$@"; }
admin tenant list | grep -q sales || fail "the tenant file in ./tenants was not loaded"
key=$(admin key create --tenant sales | tail -1)
answer=$(chat 18789 "$key") || fail "no chat answer from the one-host compose"
say "one host: sales asked through :18789 and got: $answer"
curl -sf http://127.0.0.1:8080/ >/dev/null || fail "no console on :8080"
say "one host: the console answers on :8080"
podman rm -f -v "$one" >/dev/null
(cd "$work" && podman-compose -p bhone -f compose.yaml down -v >/dev/null 2>&1)

# 2. A small cluster.
say "cluster: deploy/compose.cluster.yaml"
secrets="$work/secrets"
mkdir -p "$secrets"
openssl rand -hex 32 > "$secrets/cluster.secret"
export BULKHEAD_SECRETS="$secrets"
cp deploy/compose.cluster.yaml "$work/compose.cluster.yaml"
compose() { (cd "$work" && podman-compose -p bhcluster -f compose.cluster.yaml "$@" >/dev/null 2>&1); }
# The credentials the worker and gateways mount exist before they start.
for n in wk1 gw1 gw2; do : > "$secrets/$n.credential"; done
chown -R 10001 "$secrets"; chmod 0400 "$secrets"/*
compose up -d nats cp1 cp2 cp3 || fail "compose up (control plane)"
until_ok 60 sh -c "podman logs cp1 2>/dev/null | grep -q 'admin token:'" || { podman logs cp1 | tail -20; fail "cp1 printed no admin token"; }
token=$(podman logs cp1 2>/dev/null | sed -n 's/^admin token: //p' | head -1)
export BULKHEAD_CONTROL_PLANE=cp1:7100,cp2:7100,cp3:7100
cadmin() { podman exec -e BULKHEAD_ADMIN_TOKEN="$token" -e BULKHEAD_CONTROL_PLANE="$BULKHEAD_CONTROL_PLANE" "${CADMIN_ON:-cp2}" bulkhead "$@"; }
until_ok 30 cadmin cluster status || fail "the control plane formed no cluster"
# Issues ROLE's credential NAME into the secrets directory. Retried: a
# container's name may not resolve yet just after the containers start.
credential() {
  cadmin credential create --role "$1" --name "$2" > "$work/credential.out" \
    && tail -1 "$work/credential.out" > "$secrets/$2.credential"
}
for n in gw1 gw2; do
  until_ok 30 credential gateway "$n" || fail "no credential for $n"
done
until_ok 30 credential worker wk1 || fail "no credential for wk1"
compose up -d || fail "compose up (cluster)"
until_ok 120 curl -sf http://127.0.0.1:18789/health || { podman logs wk1 | tail -20; podman logs gw1 | tail -20; fail "gw1 never became healthy"; }
until_ok 60 curl -sf http://127.0.0.1:18790/health || fail "gw2 never became healthy"
until_ok 30 cadmin tenant create hr --plan pro --daily-tokens 600000 --model smollm2 || fail "no tenant hr"
until_ok 30 sh -c "podman exec -e BULKHEAD_ADMIN_TOKEN=$token -e BULKHEAD_CONTROL_PLANE=$BULKHEAD_CONTROL_PLANE cp2 bulkhead key create --tenant hr > $work/key.out" \
  || fail "no key for hr"
key=$(tail -1 "$work/key.out")
until_ok 30 chat 18789 "$key" || fail "no answer through gw1"
say "cluster: hr asked through gw1 (:18789): $(chat 18789 "$key")"
until_ok 30 chat 18790 "$key" || fail "no answer through gw2"
say "cluster: hr asked through gw2 (:18790): $(chat 18790 "$key")"

# nginx in front of both gateways, as deploy/nginx.conf has it: TLS here,
# and Server-Sent Events not buffered.
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$work/nginx.key" -out "$work/nginx.pem" 2>/dev/null
sed -e 's/10\.0\.0\.21:18789/127.0.0.1:18789/; s/10\.0\.0\.22:18789/127.0.0.1:18790/' \
    -e 's/10\.0\.0\.21:8080/127.0.0.1:8080/; /10\.0\.0\.22:8080/d' \
    -e 's/listen 443 ssl;/listen 127.0.0.1:8443 ssl;/' \
    -e "s#/etc/nginx/tls/llm.example.com.pem#$work/nginx.pem#; s#/etc/nginx/tls/llm.example.com.key#$work/nginx.key#" \
    deploy/nginx.conf > "$work/bulkhead.conf"
# `http2 on;` needs nginx 1.25.1; Debian bookworm has 1.22.
nginx -v 2>&1 | grep -qE 'nginx/1\.(2[5-9]|[3-9][0-9])' \
  || sed -i 's/listen 127.0.0.1:8443 ssl;/listen 127.0.0.1:8443 ssl http2;/; /http2 on;/d' "$work/bulkhead.conf"
cat > "$work/nginx-main.conf" <<EOF
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events {}
http {
    access_log off;
    include $work/bulkhead.conf;
}
EOF
nginx -p "$work" -c "$work/nginx-main.conf" || fail "nginx did not start with deploy/nginx.conf"
# The time to the first token's chunk, not to the headers: a buffering
# proxy sends those at once and holds the body.
seen=$(python3 - "$work/nginx.pem" "$key" <<'PY'
import json, ssl, sys, time, urllib.request
ca, key = sys.argv[1:]
body = {"model": "smollm2", "stream": True, "max_tokens": 96, "ignore_eos": True,
        "temperature": 0, "messages": [{"role": "user", "content": "Tell a story."}]}
req = urllib.request.Request("https://127.0.0.1:8443/v1/chat/completions",
                             data=json.dumps(body).encode(),
                             headers={"Authorization": f"Bearer {key}",
                                      "Content-Type": "application/json"})
start, first, chunks, done = time.monotonic(), None, 0, False
with urllib.request.urlopen(req, context=ssl.create_default_context(cafile=ca), timeout=60) as r:
    for line in r:
        if line.startswith(b"data: {"):
            chunks += 1
            first = first if first is not None else time.monotonic() - start
        done = done or line.startswith(b"data: [DONE]")
total = time.monotonic() - start
print(f"{chunks} chunks, the first after {first:.2f} s of {total:.2f} s")
sys.exit(0 if done and chunks > 1 and first < total / 2 else 1)
PY
) || fail "the stream through nginx came whole or not at all: $seen"
say "cluster: a stream through nginx (TLS, SSE unbuffered): $seen"
kill "$(cat "$work/nginx.pid")"; rm -f "$work/nginx.pid"

leader_id=$(cadmin cluster status | sed -n 's/^leader: *\([0-9]*\) at.*/\1/p')
[ -n "$leader_id" ] || fail "no node knows a leader"
leader=cp$leader_id
for n in cp1 cp2 cp3; do [ "$n" = "$leader" ] || survivor=$n; done
say "cluster: killing the leader, $leader"
podman kill "$leader" >/dev/null
killed=$SECONDS
export BULKHEAD_CONTROL_PLANE="$(echo cp1:7100,cp2:7100,cp3:7100 | sed "s/$leader:7100,\\?//; s/,\$//")"
CADMIN_ON=$survivor until_ok 30 sh -c "podman exec -e BULKHEAD_ADMIN_TOKEN=$token -e BULKHEAD_CONTROL_PLANE=$BULKHEAD_CONTROL_PLANE $survivor bulkhead tenant create after-failover --plan basic" \
  || fail "no write committed after the leader died"
say "cluster: a write committed $((SECONDS - killed)) s after the leader died"
until_ok 30 chat 18789 "$key" || fail "no answer after the leader died"
say "cluster: hr asked through gw1 after failover: $(chat 18789 "$key")"
say "passed"
