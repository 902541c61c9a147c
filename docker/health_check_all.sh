#!/usr/bin/env bash
# Check the health endpoint of every service of the coderag stack, with retries.
# Exit status: 0 when every selected service is healthy, 1 when one is not, 2 on bad usage.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: health_check_all.sh [options]

Checks each service's health endpoint (HTTP services: a 2xx answer; Redis: PING -> PONG),
retrying each a few times, and prints one line per service and a summary.

Options:
  --only LIST       comma-separated services to check (default: the CPU stack; see below)
  --gpu             also check the gpu-profile services (vllm, tabby, worker-gpu)
  --in-network      default URLs use the compose service names (run it inside the stack's
                    network, e.g. docker compose -f docker/compose.yaml exec coderag-api
                    health_check_all.sh --in-network); without it they use 127.0.0.1
  --retries N       attempts per service (default 5)
  --interval S      seconds between attempts (default 2)
  --timeout S       seconds per request (default 5)
  -h, --help        show this help

Services and their URLs (each overridable by the environment variable shown):
  coderag      CODERAG_API_URL      + /readyz            (default port 8080)
  worker       WORKER_METRICS_URL   + /metrics           (9808)
  worker-gpu   WORKER_GPU_METRICS_URL + /metrics         (9808)
  qdrant       QDRANT_URL           + /readyz            (6333)
  redis        REDIS_URL            redis://[:password@]host:port   (6379)
  litellm      LITELLM_URL          + /health/liveliness (4000)
  vllm         VLLM_URL             + /health            (8000)
  tabby        TABBY_URL            + /v1/health         (8080 in-network)
  code-server  CODE_SERVER_URL      + /healthz           (8443)
  prometheus   PROMETHEUS_URL       + /-/healthy         (9090)
  grafana      GRAFANA_URL          + /api/health        (3000)

Default selection: coderag,worker,qdrant,redis,litellm,code-server,prometheus,grafana
(plus vllm,tabby,worker-gpu with --gpu). From the host, compose publishes only coderag,
litellm, code-server and grafana: check those with --only, or everything with --in-network
from inside the stack.

Examples:
  health_check_all.sh --only coderag,qdrant
  CODERAG_API_URL=https://coderag.bank.internal health_check_all.sh --only coderag
EOF
}

ALL_SERVICES="coderag worker worker-gpu qdrant redis litellm vllm tabby code-server prometheus grafana"
CPU_SERVICES="coderag,worker,qdrant,redis,litellm,code-server,prometheus,grafana"
GPU_SERVICES="vllm,tabby,worker-gpu"

only=""
gpu=0
in_network=0
retries=5
interval=2
timeout=5

die_usage() {
  echo "health_check_all.sh: $*" >&2
  echo "Try 'health_check_all.sh --help'." >&2
  exit 2
}

is_number() { [[ "$1" =~ ^[0-9]+([.][0-9]+)?$ ]]; }

while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --only) [ $# -ge 2 ] || die_usage "--only needs a list"; only="$2"; shift 2 ;;
    --only=*) only="${1#*=}"; shift ;;
    --gpu) gpu=1; shift ;;
    --in-network) in_network=1; shift ;;
    --retries) [ $# -ge 2 ] || die_usage "--retries needs a number"; retries="$2"; shift 2 ;;
    --interval) [ $# -ge 2 ] || die_usage "--interval needs a number"; interval="$2"; shift 2 ;;
    --timeout) [ $# -ge 2 ] || die_usage "--timeout needs a number"; timeout="$2"; shift 2 ;;
    *) die_usage "unknown argument: $1" ;;
  esac
done

[[ "$retries" =~ ^[1-9][0-9]*$ ]] || die_usage "--retries must be a positive integer"
is_number "$interval" || die_usage "--interval must be a number of seconds"
is_number "$timeout" || die_usage "--timeout must be a number of seconds"

# host part of the default URL of each service
host_for() {
  if [ "$in_network" = 1 ]; then
    case "$1" in
      coderag) echo "http://coderag-api:8080" ;;
      worker) echo "http://coderag-worker:9808" ;;
      worker-gpu) echo "http://coderag-worker-gpu:9808" ;;
      qdrant) echo "http://qdrant:6333" ;;
      redis) echo "redis://redis:6379" ;;
      litellm) echo "http://litellm:4000" ;;
      vllm) echo "http://vllm:8000" ;;
      tabby) echo "http://tabby:8080" ;;
      code-server) echo "http://code-server:8443" ;;
      prometheus) echo "http://prometheus:9090" ;;
      grafana) echo "http://grafana:3000" ;;
    esac
  else
    case "$1" in
      coderag) echo "http://127.0.0.1:8080" ;;
      worker | worker-gpu) echo "http://127.0.0.1:9808" ;;
      qdrant) echo "http://127.0.0.1:6333" ;;
      redis) echo "redis://127.0.0.1:6379" ;;
      litellm) echo "http://127.0.0.1:4000" ;;
      vllm) echo "http://127.0.0.1:8000" ;;
      tabby) echo "http://127.0.0.1:8081" ;;
      code-server) echo "http://127.0.0.1:8443" ;;
      prometheus) echo "http://127.0.0.1:9090" ;;
      grafana) echo "http://127.0.0.1:3000" ;;
    esac
  fi
}

# full URL to probe: base from the environment (or the default) + the health path
url_for() {
  local svc="$1" base path
  case "$svc" in
    coderag) base="${CODERAG_API_URL:-}"; path="/readyz" ;;
    worker) base="${WORKER_METRICS_URL:-}"; path="/metrics" ;;
    worker-gpu) base="${WORKER_GPU_METRICS_URL:-}"; path="/metrics" ;;
    qdrant) base="${QDRANT_URL:-}"; path="/readyz" ;;
    redis) base="${REDIS_URL:-}"; path="" ;;
    litellm) base="${LITELLM_URL:-}"; path="/health/liveliness" ;;
    vllm) base="${VLLM_URL:-}"; path="/health" ;;
    tabby) base="${TABBY_URL:-}"; path="/v1/health" ;;
    code-server) base="${CODE_SERVER_URL:-}"; path="/healthz" ;;
    prometheus) base="${PROMETHEUS_URL:-}"; path="/-/healthy" ;;
    grafana) base="${GRAFANA_URL:-}"; path="/api/health" ;;
  esac
  [ -n "$base" ] || base="$(host_for "$svc")"
  printf '%s%s\n' "${base%/}" "$path"
}

# GET a URL; prints "<status> <first 200 bytes of body>"; status 000 when unreachable.
http_get() {
  local url="$1"
  if command -v curl >/dev/null 2>&1; then
    local body err status
    body="$(mktemp)"
    err="$(mktemp)"
    status="$(curl -sS -o "$body" -w '%{http_code}' --max-time "$timeout" "$url" 2>"$err")" || true
    [ -n "$status" ] || status="000"
    if [ "$status" = "000" ]; then
      printf '000 %s\n' "$(head -c 200 "$err" | tr '\n\r' '  ')"
    else
      printf '%s %s\n' "$status" "$(head -c 200 "$body" | tr '\n\r' '  ')"
    fi
    rm -f "$body" "$err"
  else
    python3 - "$url" "$timeout" <<'PY'
import sys, urllib.error, urllib.request
url, timeout = sys.argv[1], float(sys.argv[2])
try:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        print(r.status, r.read(200).decode("utf-8", "replace").replace("\n", " "))
except urllib.error.HTTPError as e:
    print(e.code, e.read(200).decode("utf-8", "replace").replace("\n", " "))
except Exception as e:  # unreachable, refused, timed out
    print("000", str(e)[:200])
PY
  fi
}

# PING a Redis URL over bash's /dev/tcp (no redis-cli needed). Prints the reply.
redis_ping() {
  local url="$1" rest auth="" hostport host port
  rest="${url#redis://}"
  rest="${rest%%/*}"
  if [[ "$rest" == *@* ]]; then
    auth="${rest%@*}"
    hostport="${rest##*@}"
    auth="${auth#*:}" # user:password or :password -> password
  else
    hostport="$rest"
  fi
  host="${hostport%:*}"
  port="${hostport##*:}"
  [ "$host" != "$hostport" ] || port=6379
  (
    exec 3<>"/dev/tcp/$host/$port" || exit 1
    if [ -n "$auth" ]; then
      printf 'AUTH %s\r\n' "$auth" >&3
      IFS= read -r -t "$timeout" reply <&3 || exit 1
      case "$reply" in +OK*) ;; *) printf '%s\n' "${reply%$'\r'}"; exit 1 ;; esac
    fi
    printf 'PING\r\n' >&3
    IFS= read -r -t "$timeout" reply <&3 || exit 1
    printf '%s\n' "${reply%$'\r'}"
  ) 2>/dev/null || true
}

check_once() {
  local svc="$1" url="$2" out status
  if [ "$svc" = "redis" ]; then
    out="$(redis_ping "$url")"
    if [ "$out" = "+PONG" ]; then
      LAST_DETAIL="PONG"
      return 0
    fi
    LAST_DETAIL="no PONG (${out:-unreachable})"
    return 1
  fi
  out="$(http_get "$url")"
  status="${out%% *}"
  LAST_DETAIL="HTTP $status: ${out#* }"
  [ "$status" = "000" ] && LAST_DETAIL="unreachable: ${out#* }"
  [[ "$status" =~ ^2[0-9][0-9]$ ]]
}

# the selection
if [ -n "$only" ]; then
  selection="$only"
else
  selection="$CPU_SERVICES"
  [ "$gpu" = 0 ] || selection="$selection,$GPU_SERVICES"
fi
IFS=',' read -r -a services <<<"$selection"
for svc in "${services[@]}"; do
  case " $ALL_SERVICES " in
    *" $svc "*) ;;
    *) die_usage "unknown service '$svc' (known: $ALL_SERVICES)" ;;
  esac
done

failed=()
LAST_DETAIL=""
for svc in "${services[@]}"; do
  url="$(url_for "$svc")"
  shown="$url"
  [ "$svc" != "redis" ] || shown="$(printf '%s' "$url" | sed -E 's#//[^@/]*@#//***@#')"
  ok=0
  for attempt in $(seq 1 "$retries"); do
    if check_once "$svc" "$url"; then
      ok=1
      break
    fi
    if [ "$attempt" -lt "$retries" ]; then
      sleep "$interval"
    fi
  done
  if [ "$ok" = 1 ]; then
    printf 'ok     %-12s %s\n' "$svc" "$shown"
  else
    printf 'FAIL   %-12s %s (%s, after %s attempts)\n' "$svc" "$shown" "$LAST_DETAIL" "$retries"
    failed+=("$svc")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "unhealthy: ${failed[*]}" >&2
  exit 1
fi
echo "all ${#services[@]} services healthy"
