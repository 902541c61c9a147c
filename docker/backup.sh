#!/usr/bin/env bash
# Back up coderag: a Qdrant collection snapshot (server mode) and/or the coderag data dir
# (embedded mode: the Edge shard and the indexing state), with a manifest of checksums.
# Exit status: 0 on success, 1 on failure (no complete backup is left behind), 2 on bad usage.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: backup.sh [options]

Writes OUT/NAME/ with:
  qdrant-<collection>.snapshot   Qdrant snapshot of the collection (server mode)
  data.tar.gz                    the coderag data dir without mirrors/ and cache/ (embedded
                                 mode: the Edge shard, exported models, indexing state)
  manifest.json                  what was backed up, from where, sizes and SHA-256 of each file
  SHA256SUMS                     sha256sum -c format, covering every file above
The directory is first written as NAME.partial and renamed only when complete.

Options:
  --out DIR           parent directory of the backup (default: ./backups)
  --name NAME         backup directory name (default: coderag-backup-<UTC timestamp>)
  --qdrant-url URL    Qdrant server (default: $QDRANT_URL, else $CODERAG_QDRANT_URL)
  --collection NAME   collection (default: $CODERAG_COLLECTION, else coderag)
  --data-dir DIR      coderag data dir (default: $CODERAG_DATA_DIR)
  --no-qdrant         skip the Qdrant snapshot
  --no-data           skip the data dir
  --keep-remote-snapshot   leave the snapshot on the Qdrant server after downloading it
  --timeout S         seconds allowed for each HTTP call (default 3600)
  -h, --help          show this help

The Qdrant API key is read from $QDRANT_API_KEY or $CODERAG_QDRANT_API_KEY (never from the
command line, where other users could see it).

Embedded mode: the Edge shard belongs to the one running coderag process. For a consistent
copy stop it first (docker compose stop coderag-api, or systemctl stop coderag), back up,
then start it again. A Qdrant cluster keeps each shard on some of its nodes: run backup.sh
once per node (--qdrant-url http://qdrant-N.qdrant-headless:6333) to capture every shard.

Examples:
  CODERAG_DATA_DIR=/srv/coderag backup.sh --out /backups --no-qdrant
  QDRANT_URL=http://127.0.0.1:6333 QDRANT_API_KEY=... backup.sh --out /backups --no-data
EOF
}

die_usage() {
  echo "backup.sh: $*" >&2
  echo "Try 'backup.sh --help'." >&2
  exit 2
}
die() {
  echo "backup.sh: error: $*" >&2
  exit 1
}
log() { echo "backup.sh: $*" >&2; }

out_dir="./backups"
name="coderag-backup-$(date -u +%Y%m%dT%H%M%SZ)"
qdrant_url="${QDRANT_URL:-${CODERAG_QDRANT_URL:-}}"
collection="${CODERAG_COLLECTION:-coderag}"
data_dir="${CODERAG_DATA_DIR:-}"
do_qdrant=1
do_data=1
keep_remote=0
http_timeout=3600

while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --out) [ $# -ge 2 ] || die_usage "--out needs a directory"; out_dir="$2"; shift 2 ;;
    --name) [ $# -ge 2 ] || die_usage "--name needs a name"; name="$2"; shift 2 ;;
    --qdrant-url) [ $# -ge 2 ] || die_usage "--qdrant-url needs a URL"; qdrant_url="$2"; shift 2 ;;
    --collection) [ $# -ge 2 ] || die_usage "--collection needs a name"; collection="$2"; shift 2 ;;
    --data-dir) [ $# -ge 2 ] || die_usage "--data-dir needs a directory"; data_dir="$2"; shift 2 ;;
    --no-qdrant) do_qdrant=0; shift ;;
    --no-data) do_data=0; shift ;;
    --keep-remote-snapshot) keep_remote=1; shift ;;
    --timeout) [ $# -ge 2 ] || die_usage "--timeout needs seconds"; http_timeout="$2"; shift 2 ;;
    *) die_usage "unknown argument: $1" ;;
  esac
done

[[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] || die_usage "--name may only contain letters, digits, . _ -"
[[ "$collection" =~ ^[A-Za-z0-9._-]+$ ]] || die_usage "--collection may only contain letters, digits, . _ -"
[[ "$http_timeout" =~ ^[0-9]+$ ]] || die_usage "--timeout must be a whole number of seconds"
[ -n "$qdrant_url" ] || do_qdrant=0
if [ "$do_data" = 1 ] && [ -z "$data_dir" ]; then
  do_data=0
fi
if [ "$do_qdrant" = 0 ] && [ "$do_data" = 0 ]; then
  die_usage "nothing to back up: give --qdrant-url (or QDRANT_URL) and/or --data-dir (or CODERAG_DATA_DIR)"
fi
if [ "$do_data" = 1 ] && [ ! -d "$data_dir" ]; then
  die "data dir $data_dir does not exist"
fi
for tool in python3 sha256sum tar; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
if [ "$do_qdrant" = 1 ]; then
  command -v curl >/dev/null 2>&1 || die "curl is required for the Qdrant snapshot"
fi

mkdir -p "$out_dir"
final="$out_dir/$name"
partial="$final.partial"
[ ! -e "$final" ] || die "$final already exists"
rm -rf "$partial"
mkdir -p "$partial"

headers_file=""
cleanup() {
  local rc=$?
  [ -z "$headers_file" ] || rm -f "$headers_file"
  if [ "$rc" -ne 0 ]; then
    rm -rf "$partial"
    log "failed; no backup written"
  fi
}
trap cleanup EXIT

snapshot_file=""
snapshot_name=""
if [ "$do_qdrant" = 1 ]; then
  qdrant_url="${qdrant_url%/}"
  # the API key goes to curl through a private header file, never through argv
  headers_file="$(mktemp)"
  chmod 600 "$headers_file"
  api_key="${QDRANT_API_KEY:-${CODERAG_QDRANT_API_KEY:-}}"
  [ -z "$api_key" ] || printf 'api-key: %s\n' "$api_key" >"$headers_file"

  log "creating a snapshot of collection '$collection' on $qdrant_url"
  response="$(curl -sS --fail-with-body --max-time "$http_timeout" -H "@$headers_file" \
    -X POST "$qdrant_url/collections/$collection/snapshots?wait=true")" ||
    die "Qdrant did not create the snapshot: ${response:-no answer}"
  read -r snapshot_name remote_checksum < <(printf '%s' "$response" | python3 -c '
import json, sys
result = json.load(sys.stdin).get("result") or {}
print(result.get("name", ""), result.get("checksum") or "-")
') || die "unexpected answer from Qdrant: $response"
  [[ "$snapshot_name" =~ ^[A-Za-z0-9._-]+$ ]] || die "unexpected snapshot name in: $response"

  snapshot_file="qdrant-$collection.snapshot"
  log "downloading $snapshot_name"
  curl -sS --fail --max-time "$http_timeout" -H "@$headers_file" \
    -o "$partial/$snapshot_file" \
    "$qdrant_url/collections/$collection/snapshots/$snapshot_name" ||
    die "could not download snapshot $snapshot_name"
  if [ "$remote_checksum" != "-" ]; then
    local_checksum="$(sha256sum "$partial/$snapshot_file" | cut -d' ' -f1)"
    [ "$local_checksum" = "$remote_checksum" ] ||
      die "downloaded snapshot does not match Qdrant's checksum ($local_checksum != $remote_checksum)"
  fi
  if [ "$keep_remote" = 0 ]; then
    curl -sS --fail --max-time 60 -H "@$headers_file" -o /dev/null \
      -X DELETE "$qdrant_url/collections/$collection/snapshots/$snapshot_name" ||
      log "warning: could not delete snapshot $snapshot_name on the server"
  fi
fi

data_file=""
if [ "$do_data" = 1 ]; then
  data_file="data.tar.gz"
  log "archiving $data_dir (without mirrors/ and cache/)"
  tar -C "$data_dir" --exclude=./mirrors --exclude=./cache -czf "$partial/$data_file" .
fi

python3 - "$partial" "$name" "$collection" "$qdrant_url" "$snapshot_name" "$snapshot_file" \
  "$data_dir" "$data_file" <<'PY'
import datetime, hashlib, json, os, re, socket, sys

out, name, collection, qdrant_url, snap_name, snap_file, data_dir, data_file = sys.argv[1:9]

def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()

files = {}
for fn in (snap_file, data_file):
    if fn:
        p = os.path.join(out, fn)
        files[fn] = {"sha256": sha256(p), "bytes": os.path.getsize(p)}
parts = {}
if snap_file:
    parts["qdrant"] = {
        "url": re.sub(r"//[^@/]*@", "//", qdrant_url),
        "collection": collection,
        "snapshot": snap_name,
        "file": snap_file,
    }
if data_file:
    parts["data"] = {
        "data_dir": os.path.abspath(data_dir),
        "file": data_file,
        "excluded": ["mirrors", "cache"],
    }
manifest = {
    "format": "coderag-backup/1",
    "name": name,
    "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "host": socket.gethostname(),
    "parts": parts,
    "files": files,
}
with open(os.path.join(out, "manifest.json"), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
    f.write("\n")
PY

(
  cd "$partial"
  files=(manifest.json)
  [ -z "$snapshot_file" ] || files+=("$snapshot_file")
  [ -z "$data_file" ] || files+=("$data_file")
  sha256sum "${files[@]}" >SHA256SUMS
)

mv "$partial" "$final"
log "backup complete: $final"
printf '%s\n' "$final"
