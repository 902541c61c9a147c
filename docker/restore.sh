#!/usr/bin/env bash
# Restore a backup made by backup.sh: verify every checksum first, then recover the Qdrant
# collection from its snapshot (server mode) and/or put the coderag data dir back (embedded
# mode). Nothing is touched unless the whole backup verifies.
# Exit status: 0 on success, 1 on failure or a backup that does not verify, 2 on bad usage.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: restore.sh BACKUP_DIR [options]

Verifies BACKUP_DIR (SHA256SUMS, and the manifest's checksums against it), then restores
what it holds:
  qdrant-<collection>.snapshot  uploaded to Qdrant, which recovers the collection from it
  data.tar.gz                   unpacked into the coderag data dir; an existing data dir is
                                kept as DIR.pre-restore-<timestamp>, and its mirrors/ and
                                cache/ (not in backups) are carried over

Options:
  --verify-only       check the backup and stop
  --data-dir DIR      coderag data dir to restore into (default: $CODERAG_DATA_DIR)
  --qdrant-url URL    Qdrant server (default: $QDRANT_URL, else $CODERAG_QDRANT_URL)
  --collection NAME   collection to recover into (default: the one in the manifest)
  --no-qdrant         do not restore the Qdrant snapshot
  --no-data           do not restore the data dir
  --force             replace a data dir that is not empty
  --timeout S         seconds allowed for the snapshot upload (default 3600)
  -h, --help          show this help

The Qdrant API key is read from $QDRANT_API_KEY or $CODERAG_QDRANT_API_KEY. Stop coderag
(and its workers) before restoring, and start it again afterwards.

Examples:
  restore.sh /backups/coderag-backup-20250101T000000Z --verify-only
  CODERAG_DATA_DIR=/srv/coderag restore.sh /backups/coderag-backup-20250101T000000Z --force
EOF
}

die_usage() {
  echo "restore.sh: $*" >&2
  echo "Try 'restore.sh --help'." >&2
  exit 2
}
die() {
  echo "restore.sh: error: $*" >&2
  exit 1
}
log() { echo "restore.sh: $*" >&2; }

backup_dir=""
verify_only=0
data_dir="${CODERAG_DATA_DIR:-}"
qdrant_url="${QDRANT_URL:-${CODERAG_QDRANT_URL:-}}"
collection=""
do_qdrant=1
do_data=1
force=0
http_timeout=3600

while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --verify-only) verify_only=1; shift ;;
    --data-dir) [ $# -ge 2 ] || die_usage "--data-dir needs a directory"; data_dir="$2"; shift 2 ;;
    --qdrant-url) [ $# -ge 2 ] || die_usage "--qdrant-url needs a URL"; qdrant_url="$2"; shift 2 ;;
    --collection) [ $# -ge 2 ] || die_usage "--collection needs a name"; collection="$2"; shift 2 ;;
    --no-qdrant) do_qdrant=0; shift ;;
    --no-data) do_data=0; shift ;;
    --force) force=1; shift ;;
    --timeout) [ $# -ge 2 ] || die_usage "--timeout needs seconds"; http_timeout="$2"; shift 2 ;;
    -*) die_usage "unknown option: $1" ;;
    *)
      [ -z "$backup_dir" ] || die_usage "only one BACKUP_DIR"
      backup_dir="$1"
      shift
      ;;
  esac
done
[ -n "$backup_dir" ] || die_usage "BACKUP_DIR is required"
[[ "$http_timeout" =~ ^[0-9]+$ ]] || die_usage "--timeout must be a whole number of seconds"
for tool in python3 sha256sum tar; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done

# --- verify -------------------------------------------------------------------------------------
[ -d "$backup_dir" ] || die "$backup_dir is not a directory"
backup_dir="$(cd "$backup_dir" && pwd)"
[ -f "$backup_dir/manifest.json" ] || die "$backup_dir has no manifest.json: not a coderag backup"
[ -f "$backup_dir/SHA256SUMS" ] || die "$backup_dir has no SHA256SUMS: refusing an unverifiable backup"

if ! sums_out="$(cd "$backup_dir" && sha256sum --check --strict SHA256SUMS 2>&1)"; then
  printf '%s\n' "$sums_out" | grep -v ': OK$' >&2 || true
  die "checksum verification failed: the backup is corrupt or incomplete; nothing was restored"
fi

# The manifest must agree with SHA256SUMS, list only plain file names, and its tarball must
# not write outside the target. Prints: snapshot-file collection data-file
if ! plan="$(python3 - "$backup_dir" <<'PY'
import json, os, re, sys, tarfile

root = sys.argv[1]
def fail(msg):
    sys.exit(msg)

with open(os.path.join(root, "manifest.json"), encoding="utf-8") as f:
    try:
        manifest = json.load(f)
    except ValueError as exc:
        fail(f"manifest.json is not JSON: {exc}")
if manifest.get("format") != "coderag-backup/1":
    fail(f"unknown backup format {manifest.get('format')!r}")
sums = {}
with open(os.path.join(root, "SHA256SUMS"), encoding="utf-8") as f:
    for line in f:
        digest, _, fn = line.rstrip("\n").partition("  ")
        sums[fn.lstrip("*")] = digest
files = manifest.get("files") or {}
if not files:
    fail("the manifest lists no files")
for fn, meta in files.items():
    if not re.fullmatch(r"[A-Za-z0-9._-]+", fn) or fn in (".", ".."):
        fail(f"bad file name in manifest: {fn!r}")
    if sums.get(fn) != meta.get("sha256"):
        fail(f"{fn}: manifest checksum does not match SHA256SUMS")
    if os.path.getsize(os.path.join(root, fn)) != meta.get("bytes"):
        fail(f"{fn}: size differs from the manifest")
extra = set(sums) - set(files) - {"manifest.json"}
if extra:
    fail(f"SHA256SUMS lists files the manifest does not: {sorted(extra)}")
if "manifest.json" not in sums:
    fail("SHA256SUMS does not cover manifest.json")

parts = manifest.get("parts") or {}
snap = parts.get("qdrant", {})
data = parts.get("data", {})
for part in (snap, data):
    if part and part.get("file") not in files:
        fail(f"part file {part.get('file')!r} is not in the manifest's files")
if data:
    with tarfile.open(os.path.join(root, data["file"]), "r:gz") as tar:
        for m in tar:
            name = m.name
            parts_ = [p for p in name.split("/") if p not in ("", ".")]
            if name.startswith("/") or ".." in parts_:
                fail(f"unsafe path in data archive: {name!r}")
            if (m.issym() or m.islnk()) and (
                m.linkname.startswith("/") or ".." in m.linkname.split("/")
            ):
                fail(f"unsafe link in data archive: {name!r} -> {m.linkname!r}")
            if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                fail(f"unsupported member in data archive: {name!r}")
print(snap.get("file") or "-", snap.get("collection") or "-", data.get("file") or "-")
PY
)"; then
  die "backup does not verify (${plan:-see above}); nothing was restored"
fi
read -r snapshot_file manifest_collection data_file <<<"$plan"
log "verified $backup_dir"
if [ "$verify_only" = 1 ]; then
  echo "backup verified: $backup_dir"
  exit 0
fi

[ "$snapshot_file" != "-" ] || do_qdrant=0
[ "$data_file" != "-" ] || do_data=0
[ -n "$collection" ] || collection="$manifest_collection"
if [ "$do_qdrant" = 1 ]; then
  [ -n "$qdrant_url" ] || die "the backup has a Qdrant snapshot: give --qdrant-url (or QDRANT_URL), or --no-qdrant"
  [[ "$collection" =~ ^[A-Za-z0-9._-]+$ ]] || die "bad collection name '$collection'"
  command -v curl >/dev/null 2>&1 || die "curl is required to upload the snapshot"
fi
if [ "$do_data" = 1 ]; then
  [ -n "$data_dir" ] || die "the backup has a data dir archive: give --data-dir (or CODERAG_DATA_DIR), or --no-data"
  data_dir="${data_dir%/}"
  if [ -d "$data_dir" ] && [ -n "$(ls -A "$data_dir")" ] && [ "$force" = 0 ]; then
    die "$data_dir is not empty: use --force to replace it (it is kept as $data_dir.pre-restore-<timestamp>)"
  fi
fi
[ "$do_qdrant" = 1 ] || [ "$do_data" = 1 ] || die_usage "nothing to restore"

headers_file=""
staging=""
cleanup() {
  [ -z "$headers_file" ] || rm -f "$headers_file"
  [ -z "$staging" ] || rm -rf "$staging"
}
trap cleanup EXIT

# --- Qdrant -------------------------------------------------------------------------------------
if [ "$do_qdrant" = 1 ]; then
  qdrant_url="${qdrant_url%/}"
  headers_file="$(mktemp)"
  chmod 600 "$headers_file"
  api_key="${QDRANT_API_KEY:-${CODERAG_QDRANT_API_KEY:-}}"
  [ -z "$api_key" ] || printf 'api-key: %s\n' "$api_key" >"$headers_file"
  checksum="$(sha256sum "$backup_dir/$snapshot_file" | cut -d' ' -f1)"
  log "uploading $snapshot_file to $qdrant_url (collection '$collection')"
  # priority=snapshot: the snapshot's data wins over whatever the collection holds now;
  # checksum: Qdrant verifies the upload before recovering from it.
  response="$(curl -sS --fail-with-body --max-time "$http_timeout" -H "@$headers_file" \
    -X POST -F "snapshot=@$backup_dir/$snapshot_file" \
    "$qdrant_url/collections/$collection/snapshots/upload?wait=true&priority=snapshot&checksum=$checksum")" ||
    die "Qdrant did not recover the collection: ${response:-no answer}"
  printf '%s' "$response" | python3 -c '
import json, sys
answer = json.load(sys.stdin)
sys.exit(0 if answer.get("result") not in (None, False) else 1)
' || die "unexpected answer from Qdrant: $response"
  log "collection '$collection' recovered"
fi

# --- data dir -----------------------------------------------------------------------------------
if [ "$do_data" = 1 ]; then
  parent="$(dirname "$data_dir")"
  mkdir -p "$parent"
  staging="$(mktemp -d "$parent/.coderag-restore.XXXXXX")"
  tar -C "$staging" --no-same-owner -xzf "$backup_dir/$data_file"
  if [ -d "$data_dir" ]; then
    for keep in mirrors cache; do
      if [ -e "$data_dir/$keep" ] && [ ! -e "$staging/$keep" ]; then
        mv "$data_dir/$keep" "$staging/$keep"
      fi
    done
    old="$data_dir.pre-restore-$(date -u +%Y%m%dT%H%M%SZ)"
    mv "$data_dir" "$old"
    log "previous data dir kept as $old"
  fi
  chmod 0750 "$staging"
  mv "$staging" "$data_dir"
  staging=""
  log "data dir restored into $data_dir"
fi

echo "restore complete: $backup_dir"
