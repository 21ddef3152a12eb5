#!/usr/bin/env bash
# checkov over deploy/: each overlay as `kubectl kustomize` renders it (the objects that are applied,
# with their in-place suppressions: checkov.io/skipN annotations) and the Dockerfile (# checkov:skip
# comments). Fails on any failed check: there is no severity offline (BC_SKIP_MAPPING=TRUE), so every
# finding is either fixed or suppressed in place with its reason.
# Needs kubectl from tests/bed/setup.sh and checkov from tests/bed/setup-infra.sh (both cached by version).
# Measured on 2 cores: about 6 s (checkov's start-up included).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${ZEROSPOT_CACHE:-$HOME/.cache/zerospot}"
# shellcheck source=../tests/bed/versions.env
source "$HERE/../tests/bed/versions.env"
die() { echo "deploy/checkov.sh: $*" >&2; exit 1; }

kubectl="$CACHE/kubectl/$KUBERNETES_VERSION/kubectl"
[[ -x $kubectl ]] || die "no kubectl at $kubectl: run bash tests/bed/setup.sh"
[[ -f $CACHE/infra.env ]] || die "no $CACHE/infra.env: run bash tests/bed/setup-infra.sh (it installs checkov)"
# shellcheck disable=SC1091
source "$CACHE/infra.env"
[[ -n ${ZEROSPOT_CHECKOV:-} ]] || die "$CACHE/infra.env sets no ZEROSPOT_CHECKOV"
export BC_SKIP_MAPPING=TRUE

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for overlay in "$HERE"/overlays/*/; do
    name="$(basename "$overlay")"
    "$kubectl" kustomize "$overlay" >"$tmp/$name.yaml" || die "kubectl kustomize $overlay failed"
    echo "rendered overlays/$name: $(grep -c '^kind:' "$tmp/$name.yaml") objects"
done
# shellcheck disable=SC2086 # ZEROSPOT_CHECKOV is a command line
$ZEROSPOT_CHECKOV --skip-download --compact --quiet --framework kubernetes -d "$tmp"
# shellcheck disable=SC2086
$ZEROSPOT_CHECKOV --skip-download --compact --quiet --framework dockerfile -f "$HERE/Dockerfile"
echo "checkov: no failed check in deploy/ (suppressions, each with its reason: grep -rn checkov deploy/)"
