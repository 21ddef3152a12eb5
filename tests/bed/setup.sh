#!/usr/bin/env bash
# Installs the test bed's servers into a cache folder outside the repository, keyed by version:
#   moto[server] in a virtualenv, kube-apiserver/kube-scheduler/kube-controller-manager, etcd and kwok built
#   from the Go module proxy, kubectl (from the same Kubernetes release), kwok's stage files and the Knative Serving CRD YAMLs.
# Idempotent: what is already in the cache is skipped (and said so), so a warm machine does nothing.
# Cache folder: ${ZEROSPOT_CACHE:-$HOME/.cache/zerospot}.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${ZEROSPOT_CACHE:-$HOME/.cache/zerospot}"
# shellcheck source=versions.env
source "$HERE/versions.env"
mkdir -p "$CACHE/logs"

log() { printf '[setup %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }
elapsed() { echo "$((SECONDS - $1))s"; }

command -v go >/dev/null || die "go is not on PATH (Go >= 1.26 is needed to build the control plane)"
command -v python3 >/dev/null || die "python3 is not on PATH (needed for the moto virtualenv)"
command -v openssl >/dev/null || die "openssl is not on PATH (the bed makes its own CA with it)"

# The pinned versions in versions.env and the tool modules must agree.
require_version() { # module-dir module version
    grep -qE "^(require )?[[:space:]]*$2 $3( // indirect)?\$" "$HERE/go/$1/go.mod" \
        || die "go/$1/go.mod does not require $2 $3 (versions.env says so)"
}
require_version kube k8s.io/kubernetes "$KUBERNETES_VERSION"
require_version etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
require_version kwok sigs.k8s.io/kwok "$KWOK_VERSION"
require_version kubectl k8s.io/kubernetes "$KUBERNETES_VERSION"

# Go builds: static, trimmed binaries; the Go build and module caches (GOCACHE, GOMODCACHE) persist.
export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"
go_build() { # name module-dir dest-dir out-name ldflags packages...  (out-name "" keeps package names)
    local name=$1 dir=$2 dest=$3 out=$4 ldflags=$5; shift 5
    local stamp="$dest/.complete"
    if [[ -f $stamp ]]; then log "skip $name: already built in $dest"; return; fi
    local t=$SECONDS tmp="$dest.tmp.$$"
    log "building $name into $dest (cold: minutes; log in $CACHE/logs/$name-build.log)"
    rm -rf "$tmp"; mkdir -p "$tmp"
    if ! (cd "$HERE/go/$dir" && go build -trimpath -ldflags="$ldflags" -o "$tmp/$out" "$@") \
        >"$CACHE/logs/$name-build.log" 2>&1; then
        tail -n 30 "$CACHE/logs/$name-build.log" >&2
        rm -rf "$tmp"
        die "building $name failed (full log: $CACHE/logs/$name-build.log)"
    fi
    date -u +%FT%TZ >"$tmp/.complete"
    rm -rf "$dest"; mkdir -p "$(dirname "$dest")"; mv "$tmp" "$dest"
    log "built $name in $(elapsed "$t")"
}

kube_minor="${KUBERNETES_VERSION#v1.}"; kube_minor="${kube_minor%%.*}"
go_build kubernetes kube "$CACHE/kubernetes/$KUBERNETES_VERSION" "" \
    "-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$kube_minor -X k8s.io/component-base/version.gitTreeState=clean" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-controller-manager
# kubectl (kustomize built in) for the deploy/ checks (tests/tests/deploy.rs): its own tool module, so the
# control plane's module and build stay as they are; seconds on a warm Go cache.
go_build kubectl kubectl "$CACHE/kubectl/$KUBERNETES_VERSION" kubectl \
    "-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$kube_minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION" \
    k8s.io/kubernetes/cmd/kubectl
go_build etcd etcd "$CACHE/etcd/$ETCD_VERSION" etcd "-s -w" go.etcd.io/etcd/server/v3
go_build kwok kwok "$CACHE/kwok/$KWOK_VERSION" "" "-s -w" sigs.k8s.io/kwok/cmd/kwok

# kwok's stage files (fast node start with lease heartbeats, fast pod start) ship in its module.
stages="$CACHE/kwok/$KWOK_VERSION/stages.yaml"
if [[ -s $stages ]]; then
    log "skip kwok stages: $stages exists"
else
    kwok_dir="$(cd "$HERE/go/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
    [[ -d $kwok_dir ]] || (cd "$HERE/go/kwok" && go mod download sigs.k8s.io/kwok)
    kwok_dir="$(cd "$HERE/go/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
    {
        for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
            pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
            echo "---"; cat "$kwok_dir/kustomize/stage/$f"
        done
    } >"$stages.tmp"
    mv "$stages.tmp" "$stages"
    log "wrote kwok stages to $stages"
fi

# moto in server mode, pinned, in its own virtualenv.
venv="$CACHE/moto/$MOTO_VERSION"
if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c "import moto, flask; assert moto.__version__ == '$MOTO_VERSION'" 2>/dev/null; then
    log "skip moto: $MOTO_VERSION already in $venv"
else
    t=$SECONDS
    log "installing moto[server]==$MOTO_VERSION into $venv"
    # Built aside and moved into place, so an interrupted install never looks complete. The harness runs
    # `bin/python -m moto.server`, which works from the moved folder (only pip's shebangs would not).
    tmp="$venv.tmp.$$"
    rm -rf "$tmp"
    python3 -m venv "$tmp" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    "$tmp/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" \
        || { rm -rf "$tmp"; die "pip install moto[server]==$MOTO_VERSION failed"; }
    rm -rf "$venv"; mv "$tmp" "$venv"
    "$venv/bin/python" -c "import moto, flask" || die "the moved moto virtualenv does not import moto"
    log "installed moto in $(elapsed "$t")"
fi

# Knative Serving CRDs (PodAutoscaler, Revision, Service, Configuration, Route, ...), checked against the
# checksum database by `go mod download`, converted to JSON (with moto's PyYAML) for the Rust harness.
crds="$CACHE/knative-serving/$KNATIVE_SERVING_VERSION/crds"
if [[ -f $crds/.complete ]]; then
    log "skip Knative Serving CRDs: $crds exists"
else
    dir="$(cd "$CACHE" && GOFLAGS= go mod download -json "knative.dev/serving@$KNATIVE_SERVING_VERSION" \
        | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [[ -d $dir/config/core/300-resources ]] || die "knative.dev/serving@$KNATIVE_SERVING_VERSION has no config/core/300-resources"
    rm -rf "$crds"; mkdir -p "$crds"
    "$venv/bin/python" - "$dir/config/core/300-resources" "$crds" <<'PY'
import json, pathlib, sys, yaml
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for f in sorted(src.glob("*.yaml")):
    for doc in yaml.safe_load_all(f.read_text()):
        if doc and doc.get("kind") == "CustomResourceDefinition":
            (dst / (doc["metadata"]["name"] + ".json")).write_text(json.dumps(doc))
PY
    touch "$crds/.complete"
    log "wrote $(ls "$crds"/*.json | wc -l) Knative Serving CRDs to $crds"
fi

log "ready: cache $CACHE"
