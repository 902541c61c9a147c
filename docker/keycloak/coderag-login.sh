#!/usr/bin/env bash
set -euo pipefail
# coderag-login: get the developer's own coderag token and hand it to Continue.
#
# Runs the OAuth 2.0 device authorization grant (RFC 8628) against Keycloak's client
# `coderag-ide`: prints a URL and a code, the developer signs in there with a browser, and the
# access token (audience `coderag`) is written as CODERAG_TOKEN to ~/.continue/.env, where
# Continue resolves ${{ secrets.CODERAG_TOKEN }}. Then reload the IDE window. Needs only bash
# and curl (the code-server image has no jq or python).
#
#   bash /opt/coderag/coderag-login.sh
#
# Environment:
#   KEYCLOAK_REALM_URL    realm URL reachable from here (compose: http://keycloak:8080/realms/coderag)
#   OIDC_CLIENT_ID        default coderag-ide
#   OIDC_SCOPE            default openid
#   OIDC_DEVICE_ENDPOINT  another provider's device authorization endpoint (default: Keycloak's)
#   OIDC_TOKEN_ENDPOINT   another provider's token endpoint (default: Keycloak's)
#   CONTINUE_ENV_FILE     default ~/.continue/.env

realm="${KEYCLOAK_REALM_URL:-http://keycloak:8080/realms/coderag}"
client="${OIDC_CLIENT_ID:-coderag-ide}"
scope="${OIDC_SCOPE:-openid}"
device_endpoint="${OIDC_DEVICE_ENDPOINT:-$realm/protocol/openid-connect/auth/device}"
token_endpoint="${OIDC_TOKEN_ENDPOINT:-$realm/protocol/openid-connect/token}"
env_file="${CONTINUE_ENV_FILE:-$HOME/.continue/.env}"

# field NAME: the value of a top-level string or number field of the JSON object on stdin.
# Enough for these flat responses (codes, URLs, JWTs and numbers hold no quote or comma).
field() {
  sed -n 's/.*"'"$1"'"[[:space:]]*:[[:space:]]*"\{0,1\}\([^",}]*\).*/\1/p' | head -n 1
}

fail() {
  echo "coderag-login: $*" >&2
  exit 1
}

device=$(curl -sS --max-time 15 -X POST "$device_endpoint" \
  --data-urlencode "client_id=$client" --data-urlencode "scope=$scope")
device_code=$(field device_code <<<"$device")
[ -n "$device_code" ] || fail "no device code from $device_endpoint: $device"
user_code=$(field user_code <<<"$device")
verify=$(field verification_uri_complete <<<"$device")
[ -n "$verify" ] || verify=$(field verification_uri <<<"$device")
interval=$(field interval <<<"$device")
expires_in=$(field expires_in <<<"$device")
[[ "$interval" =~ ^[0-9]+$ ]] || interval=5
[[ "$expires_in" =~ ^[0-9]+$ ]] || expires_in=600

echo "Open $verify in your browser, sign in and confirm the code $user_code."
deadline=$((SECONDS + expires_in))
while :; do
  sleep "$interval"
  [ "$SECONDS" -lt "$deadline" ] || fail "the code expired before it was confirmed; run me again"
  reply=$(curl -sS --max-time 15 -X POST "$token_endpoint" \
    --data-urlencode "grant_type=urn:ietf:params:oauth:grant-type:device_code" \
    --data-urlencode "device_code=$device_code" --data-urlencode "client_id=$client")
  token=$(field access_token <<<"$reply")
  [ -z "$token" ] || break
  case "$(field error <<<"$reply")" in
    authorization_pending) ;;
    slow_down) interval=$((interval + 5)) ;;
    access_denied) fail "the sign-in was denied" ;;
    expired_token) fail "the code expired before it was confirmed; run me again" ;;
    *) fail "unexpected answer from $token_endpoint: $reply" ;;
  esac
done

# Replace the CODERAG_TOKEN line, keep every other line (the stack's other secrets).
mkdir -p "$(dirname "$env_file")"
(
  umask 077
  tmp=$(mktemp "$env_file.XXXXXX")
  if [ -f "$env_file" ]; then
    grep -v '^CODERAG_TOKEN=' "$env_file" >"$tmp" || true
  fi
  printf 'CODERAG_TOKEN=%s\n' "$token" >>"$tmp"
  mv -f "$tmp" "$env_file"
)
lifetime=$(field expires_in <<<"$reply")
echo "Token written to $env_file (valid ${lifetime:-?} s). Reload the window (Developer: Reload Window) so Continue reads it."
