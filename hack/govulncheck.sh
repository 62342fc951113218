#!/usr/bin/env bash
# Runs govulncheck without network access to vuln.go.dev: the Go
# vulnerability database's OSV files come from the golang.org/x/vulndb
# module (served by the Go module proxy), are indexed into a local v1
# database with the module's own indexdb command, and govulncheck reads it
# with -db file://. The database is as fresh as the pinned vulndb version.
set -euo pipefail
cd "$(dirname "$0")/.."

VULNDB_VERSION=${VULNDB_VERSION:-v0.0.0-20261105234957-e22db6528018}
GOVULNCHECK_VERSION=${GOVULNCHECK_VERSION:-v1.9.0}
cache="${PODGATE_CACHE:-$HOME/.cache/podgate}/vulndb/$VULNDB_VERSION"

if [ ! -f "$cache/index/db.json" ]; then
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && go mod init vulndb-fetch >/dev/null 2>&1 && go mod download -json "golang.org/x/vulndb@$VULNDB_VERSION" >"$tmp/dl.json")
	src=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' "$tmp/dl.json")
	rm -rf "$cache.partial"
	go run "golang.org/x/vulndb/cmd/indexdb@$VULNDB_VERSION" -vulns "$src/data/osv" -out "$cache.partial"
	rm -rf "$cache"
	mv "$cache.partial" "$cache"
fi
echo "vulnerability database: golang.org/x/vulndb@$VULNDB_VERSION ($cache)"
exec go run "golang.org/x/vuln/cmd/govulncheck@$GOVULNCHECK_VERSION" -db "file://$cache" "$@" ./...
