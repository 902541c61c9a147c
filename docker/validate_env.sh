#!/usr/bin/env bash
# Pre-flight checks for the coderag stack on this host: tools and versions, the env file's
# secrets, free ports, model files, disk space. Prints every check, then the list of
# failures; exits 1 if any check failed, 2 on bad usage, 0 when all passed.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
  cat <<'EOF'
Usage: validate_env.sh [options]

Run before `docker compose --env-file docker/.env -f docker/compose.yaml up -d`
(the ports it checks must be free, so run it before the stack is up).

Options:
  --env-file FILE     the stack's env file (default: docker/.env next to this script)
  --gpu               also check the gpu profile: nvidia-smi and driver >= 580 (CUDA 13),
                      Docker's NVIDIA runtime, the vLLM and Tabby model directories
  --skip-docker       do not check Docker (e.g. on a host that only prepares files)
  --min-disk-gb N     free space required where Docker keeps images and volumes (default 50)
  --disk-path PATH    check free space at PATH instead (repeatable)
  --ports LIST        comma-separated [address:]port pairs that must be free
                      (default: the published ports from the env file)
  -h, --help          show this help

Checks:
  tools     docker >= 24 with compose >= 2.20 and a reachable daemon, python3 >= 3.9,
            curl, tar, sha256sum
  env file  present; every required variable set; no placeholder secret (changeme, ...);
            API tokens >= 16 characters; CODERAG_GATEWAY_TOKEN (the gateway's delegation
            token) >= 16 characters, JSON-safe and not a key of CODERAG_API_TOKENS;
            REDIS_PASSWORD usable inside a redis:// URL; CODERAG_FULL_INDEX_QUEUE=embed
            only with --gpu (nothing else consumes that queue)
  ports     the published ports are free on their bind addresses
  models    Continue's VSIX is a file (always); with --gpu the vLLM model directory
            (config.json + weights) and the Tabby model directory (tabby.json + ggml/*.gguf)
  disk      --min-disk-gb free at Docker's root directory (or each --disk-path)

Relative paths in the env file are relative to docker/ (the compose file's directory).
EOF
}

env_file="$SCRIPT_DIR/.env"
gpu=0
skip_docker=0
min_disk_gb=50
disk_paths=()
ports_arg=""

die_usage() {
  echo "validate_env.sh: $*" >&2
  echo "Try 'validate_env.sh --help'." >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --env-file) [ $# -ge 2 ] || die_usage "--env-file needs a path"; env_file="$2"; shift 2 ;;
    --gpu) gpu=1; shift ;;
    --skip-docker) skip_docker=1; shift ;;
    --min-disk-gb) [ $# -ge 2 ] || die_usage "--min-disk-gb needs a number"; min_disk_gb="$2"; shift 2 ;;
    --disk-path) [ $# -ge 2 ] || die_usage "--disk-path needs a path"; disk_paths+=("$2"); shift 2 ;;
    --ports) [ $# -ge 2 ] || die_usage "--ports needs a list"; ports_arg="$2"; shift 2 ;;
    *) die_usage "unknown argument: $1" ;;
  esac
done
[[ "$min_disk_gb" =~ ^[0-9]+$ ]] || die_usage "--min-disk-gb must be a whole number"

failures=()
pass() { printf 'ok    %s\n' "$1"; }
fail() {
  printf 'FAIL  %s\n' "$1"
  failures+=("$1")
}

# version_ge A B: A >= B (dotted versions)
version_ge() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$2" ]; }

first_version() { grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -n 1; }

# --- tools --------------------------------------------------------------------------------------
have_python=0
if command -v python3 >/dev/null 2>&1; then
  pyv="$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
  if version_ge "$pyv" "3.9"; then
    pass "python3 $pyv (>= 3.9)"
    have_python=1
  else
    fail "python3 $pyv is older than 3.9"
  fi
else
  fail "python3 not found (the ops scripts need it)"
fi

for tool in curl tar sha256sum; do
  if command -v "$tool" >/dev/null 2>&1; then
    pass "$tool present"
  else
    fail "$tool not found (backup.sh/restore.sh need it)"
  fi
done

docker_root=""
if [ "$skip_docker" = 0 ]; then
  if command -v docker >/dev/null 2>&1; then
    dv="$(docker --version 2>/dev/null | first_version || true)"
    if [ -n "$dv" ] && version_ge "$dv" "24.0"; then
      pass "docker $dv (>= 24.0)"
    else
      fail "docker ${dv:-unknown version} is older than 24.0"
    fi
    cv="$(docker compose version 2>/dev/null | first_version || true)"
    if [ -z "$cv" ]; then
      fail "docker compose plugin not found (install docker-compose-plugin >= 2.20)"
    elif version_ge "$cv" "2.20"; then
      pass "docker compose $cv (>= 2.20)"
    else
      fail "docker compose $cv is older than 2.20 (needed for depends_on.required)"
    fi
    if docker info >/dev/null 2>&1; then
      pass "docker daemon reachable"
      docker_root="$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || true)"
      if [ "$gpu" = 1 ]; then
        if docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia ||
          [ -d /etc/cdi ] || [ -d /var/run/cdi ]; then
          pass "docker has the NVIDIA runtime (or CDI specs)"
        else
          fail "docker has no NVIDIA runtime: install nvidia-container-toolkit and run nvidia-ctk runtime configure"
        fi
      fi
    else
      fail "docker daemon not reachable (is dockerd running, and may this user use it?)"
    fi
  else
    fail "docker not found"
  fi
fi

if [ "$gpu" = 1 ]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    drv="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 | first_version || true)"
    if [ -n "$drv" ] && version_ge "$drv" "580"; then
      pass "NVIDIA driver $drv (>= 580 for CUDA 13)"
    else
      fail "NVIDIA driver ${drv:-not answering} is older than 580 (CUDA 13 images)"
    fi
  else
    fail "nvidia-smi not found (no NVIDIA driver) but --gpu was given"
  fi
fi

# --- env file -----------------------------------------------------------------------------------
declare -A ENV=()
if [ ! -f "$env_file" ]; then
  fail "env file $env_file not found (cp docker/.env.example docker/.env, then fill it in)"
elif [ "$have_python" = 1 ]; then
  pass "env file $env_file present"
  # Parse KEY=VALUE lines the way compose does for simple files (no sourcing: no code runs).
  while IFS=$'\t' read -r key value; do
    ENV["$key"]="$value"
  done < <(python3 - "$env_file" <<'PY'
import re, sys
for raw in open(sys.argv[1], encoding="utf-8"):
    line = raw.strip()
    if not line or line.startswith("#"):
        continue
    if line.startswith("export "):
        line = line[7:].lstrip()
    key, sep, value = line.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        continue
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    else:
        value = re.split(r"\s+#", value, maxsplit=1)[0].rstrip()
    print(f"{key}\t{value.replace(chr(9), ' ')}")
PY
  )

  # every ${VAR:?} of compose.yaml
  required=(CODERAG_API_TOKENS CODERAG_GATEWAY_TOKEN CODERAG_GITLAB_URL CODERAG_GITLAB_TOKEN
    CODERAG_PUBLIC_URL CODERAG_QDRANT_API_KEY REDIS_PASSWORD LITELLM_MASTER_KEY VLLM_API_KEY
    GRAFANA_ADMIN_PASSWORD CODE_SERVER_PASSWORD KEYCLOAK_HOSTNAME KEYCLOAK_BOOTSTRAP_ADMIN_USER
    KEYCLOAK_BOOTSTRAP_ADMIN_PASSWORD KEYCLOAK_DB_PASSWORD)
  missing=()
  for key in "${required[@]}"; do
    [ -n "${ENV[$key]:-}" ] || missing+=("$key")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    fail "env file: required variables not set: ${missing[*]}"
  else
    pass "env file: all required variables set"
  fi

  placeholder_re='^(changeme|change-me|change_me|secret|password|token|default|admin|example|xxx+|todo)$'
  placeholders=()
  for key in "${!ENV[@]}"; do
    case "$key" in
      *TOKEN* | *PASSWORD* | *SECRET* | *_KEY) ;;
      *) continue ;;
    esac
    value="${ENV[$key]}"
    lower="$(printf '%s' "$value" | tr '[:upper:]' '[:lower:]')"
    if [[ "$lower" =~ $placeholder_re ]] || [[ "$lower" == *changeme* ]]; then
      placeholders+=("$key")
    fi
  done
  if [ "${#placeholders[@]}" -gt 0 ]; then
    mapfile -t placeholders < <(printf '%s\n' "${placeholders[@]}" | sort)
    fail "env file: placeholder secrets left (replace them): ${placeholders[*]}"
  else
    pass "env file: no placeholder secrets"
  fi

  if [ -n "${ENV[CODERAG_API_TOKENS]:-}" ]; then
    if tokens_report="$(python3 - "${ENV[CODERAG_API_TOKENS]}" 2>&1 <<'PY'
import json, sys
try:
    tokens = json.loads(sys.argv[1])
except ValueError as exc:
    sys.exit(f"CODERAG_API_TOKENS is not JSON: {exc}")
if not isinstance(tokens, dict) or not all(
    isinstance(v, list) and all(isinstance(r, str) for r in v) for v in tokens.values()
):
    sys.exit('CODERAG_API_TOKENS must be a JSON object {"token": ["group/project", ...]}')
short = [t for t in tokens if len(t) < 16]
if short:
    sys.exit(f"{len(short)} API token(s) shorter than 16 characters")
print(f"{len(tokens)} token(s)")
PY
    )"; then
      pass "env file: CODERAG_API_TOKENS valid ($tokens_report)"
    else
      fail "env file: ${tokens_report:-CODERAG_API_TOKENS invalid}"
    fi
  fi

  # The gateway's delegation token: compose puts it into CODERAG_DELEGATION_TOKENS='["..."]'.
  if [ -n "${ENV[CODERAG_GATEWAY_TOKEN]:-}" ]; then
    if gateway_report="$(python3 - "${ENV[CODERAG_GATEWAY_TOKEN]}" "${ENV[CODERAG_API_TOKENS]:-}" 2>&1 <<'PY'
import json, sys
gateway = sys.argv[1]
if len(gateway) < 16:
    sys.exit("CODERAG_GATEWAY_TOKEN is shorter than 16 characters")
if any(c in '"\\' or c.isspace() or not c.isprintable() for c in gateway):
    sys.exit("CODERAG_GATEWAY_TOKEN has a quote, backslash or blank (it is put into JSON)")
try:
    tokens = json.loads(sys.argv[2] or "{}")
except ValueError:
    tokens = {}
if isinstance(tokens, dict) and gateway in tokens:
    sys.exit(
        "CODERAG_GATEWAY_TOKEN is also a key of CODERAG_API_TOKENS: a delegation token must "
        "not be a service token (coderag refuses to start)"
    )
PY
    )"; then
      pass "env file: CODERAG_GATEWAY_TOKEN valid (a delegation token, not a service token)"
    else
      fail "env file: ${gateway_report:-CODERAG_GATEWAY_TOKEN invalid}"
    fi
  fi

  full_queue="${ENV[CODERAG_FULL_INDEX_QUEUE]:-index}"
  if [ "$full_queue" = "embed" ] && [ "$gpu" = 0 ]; then
    fail "env file: CODERAG_FULL_INDEX_QUEUE=embed but no --gpu: only the GPU worker consumes the embed queue"
  elif [ "$full_queue" != "embed" ] && [ "$full_queue" != "index" ]; then
    fail "env file: CODERAG_FULL_INDEX_QUEUE must be index or embed, not '$full_queue'"
  fi

  redis_pw="${ENV[REDIS_PASSWORD]:-}"
  if [ -n "$redis_pw" ] && ! [[ "$redis_pw" =~ ^[A-Za-z0-9._~-]+$ ]]; then
    fail "env file: REDIS_PASSWORD has characters that break redis:// URLs (use letters, digits, . _ ~ -)"
  fi
else
  fail "env file not checked (needs python3)"
fi

# --- ports ----------------------------------------------------------------------------------------
if [ -n "$ports_arg" ]; then
  IFS=',' read -r -a port_specs <<<"$ports_arg"
else
  port_specs=(
    "${ENV[API_BIND]:-127.0.0.1}:${ENV[API_HOST_PORT]:-8080}"
    "${ENV[GATEWAY_BIND]:-0.0.0.0}:${ENV[LITELLM_HOST_PORT]:-4000}"
    "${ENV[IDE_BIND]:-0.0.0.0}:${ENV[CODE_SERVER_HOST_PORT]:-8443}"
    "${ENV[GRAFANA_BIND]:-127.0.0.1}:${ENV[GRAFANA_HOST_PORT]:-3000}"
  )
fi
if [ "$have_python" = 1 ]; then
  for spec in "${port_specs[@]}"; do
    spec="${spec// /}"
    [ -n "$spec" ] || continue
    if [[ "$spec" == *:* ]]; then
      addr="${spec%:*}"
      port="${spec##*:}"
    else
      addr="0.0.0.0"
      port="$spec"
    fi
    if ! [[ "$port" =~ ^[0-9]+$ ]]; then
      fail "port '$spec' is not a number"
      continue
    fi
    if bind_err="$(python3 - "$addr" "$port" <<'PY' 2>&1
import socket, sys
addr, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
with socket.socket(family, socket.SOCK_STREAM) as s:
    try:
        s.bind((addr, port))
    except OSError as exc:
        sys.exit(str(exc))
PY
    )"; then
      pass "port $addr:$port free"
    else
      fail "port $addr:$port not free ($bind_err)"
    fi
  done
fi

# --- model files ----------------------------------------------------------------------------------
resolve() { # a path from the env file, relative to docker/
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$SCRIPT_DIR" "${1#./}" ;;
  esac
}

vsix="$(resolve "${ENV[CONTINUE_VSIX]:-./vsix/continue.vsix}")"
if [ -f "$vsix" ] && [ "$(head -c 2 "$vsix")" = "PK" ]; then
  pass "Continue VSIX $vsix"
else
  fail "Continue VSIX missing or not a .vsix (zip) file: $vsix (CONTINUE_VSIX)"
fi

if [ "$gpu" = 1 ]; then
  chat_dir="$(resolve "${ENV[CHAT_MODEL_DIR]:-./models/chat}")"
  if [ -f "$chat_dir/config.json" ] &&
    compgen -G "$chat_dir/*.safetensors" >/dev/null; then
    pass "vLLM model $chat_dir"
  else
    fail "vLLM model directory incomplete: $chat_dir needs config.json and *.safetensors (CHAT_MODEL_DIR)"
  fi
  tabby_dir="$(resolve "${ENV[TABBY_MODEL_DIR]:-./models/tabby}")"
  if [ -f "$tabby_dir/tabby.json" ] && compgen -G "$tabby_dir/ggml/*.gguf" >/dev/null; then
    pass "Tabby model $tabby_dir"
  else
    fail "Tabby model directory incomplete: $tabby_dir needs tabby.json and ggml/*.gguf (TABBY_MODEL_DIR)"
  fi
fi

# --- disk -----------------------------------------------------------------------------------------
if [ "${#disk_paths[@]}" -eq 0 ]; then
  if [ -n "$docker_root" ] && [ -d "$docker_root" ]; then
    disk_paths=("$docker_root")
  elif [ -d /var/lib/docker ]; then
    disk_paths=(/var/lib/docker)
  else
    disk_paths=("$SCRIPT_DIR")
  fi
fi
for path in "${disk_paths[@]}"; do
  if [ ! -e "$path" ]; then
    fail "disk: $path does not exist"
    continue
  fi
  avail_kb="$(df -Pk "$path" | awk 'NR == 2 { print $4 }')"
  avail_gb=$((avail_kb / 1024 / 1024))
  if [ "$avail_gb" -ge "$min_disk_gb" ]; then
    pass "disk: ${avail_gb} GB free at $path (>= $min_disk_gb)"
  else
    fail "disk: only ${avail_gb} GB free at $path (need $min_disk_gb)"
  fi
done

# --- summary --------------------------------------------------------------------------------------
if [ "${#failures[@]}" -gt 0 ]; then
  echo
  echo "${#failures[@]} check(s) failed:" >&2
  printf '  - %s\n' "${failures[@]}" >&2
  exit 1
fi
echo
echo "all checks passed"
