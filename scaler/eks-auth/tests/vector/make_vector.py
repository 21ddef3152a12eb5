#!/usr/bin/env python3
"""Test vectors for zerospot-eks-auth, made by botocore, independently of our Rust code.

This reproduces what `aws eks get-token` does (awscli `customizations/eks/get_token.py`,
`STSClientFactory` + `TokenGenerator`): an STS client whose `provide-client-params` handler moves the
`x-k8s-aws-id` parameter into the request context and whose `before-sign` handler puts it back as a
header, so that header is signed; then `generate_presigned_url('get_caller_identity', ExpiresIn=60,
HttpMethod='GET')`, base64url without padding, prefixed `k8s-aws-v1.`. Credentials and the clock are
fixed, so the output is the same on every run; `scaler/eks-auth/tests/token.rs` pastes it.

Rerun (any recent botocore; made with botocore 1.44.8, awscli 1.46.3 for the cross-check):

    python3 -m venv /tmp/botovenv && /tmp/botovenv/bin/pip install botocore  # awscli optional
    /tmp/botovenv/bin/python scaler/eks-auth/tests/vector/make_vector.py

If awscli is importable too, the script also runs awscli's own `STSClientFactory`/`TokenGenerator`
under the same fixed clock and checks that it gives the same tokens.
"""

import base64
import datetime
import os
from unittest import mock

# Nothing from the environment or ~/.aws may change the result.
for name in list(os.environ):
    if name.startswith("AWS_"):
        del os.environ[name]
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
# `aws eks get-token` signs for the regional endpoint sts.<region>.amazonaws.com (the default of current
# botocore; older botocore used the global sts.amazonaws.com for us-east-1 unless told this).
os.environ["AWS_STS_REGIONAL_ENDPOINTS"] = "regional"

import botocore  # noqa: E402
import botocore.auth  # noqa: E402
import botocore.session  # noqa: E402

ACCESS_KEY = "AKIDEXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
# A made-up session token with the characters real ones have (+, / and =) so encoding is exercised.
SESSION_TOKEN = "FwoGZXIvYXdzEXAMPLE//////////wEaDExampleSessionToken+abc/def=="
REGION = "us-east-1"
# A third vector checks the China partition's host (sts.cn-north-1.amazonaws.com.cn).
CHINA_REGION = "cn-north-1"
CLUSTER = "zerospot"
# 2024-05-01T12:00:00Z, Unix time 1714564800.
NOW = datetime.datetime(2024, 5, 1, 12, 0, 0)

K8S_AWS_ID_HEADER = "x-k8s-aws-id"
TOKEN_PREFIX = "k8s-aws-v1."


def fixed_now(remove_tzinfo=True):
    if remove_tzinfo:
        return NOW
    return NOW.replace(tzinfo=datetime.timezone.utc)


def sts_client(session_token, region):
    session = botocore.session.Session()
    client = session.create_client(
        "sts",
        region_name=region,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        aws_session_token=session_token,
    )

    # The two handlers of awscli's STSClientFactory._register_k8s_aws_id_handlers.
    def retrieve_k8s_aws_id(params, context, **kwargs):
        if K8S_AWS_ID_HEADER in params:
            context[K8S_AWS_ID_HEADER] = params.pop(K8S_AWS_ID_HEADER)

    def inject_k8s_aws_id_header(request, **kwargs):
        if K8S_AWS_ID_HEADER in request.context:
            request.headers[K8S_AWS_ID_HEADER] = request.context[K8S_AWS_ID_HEADER]

    client.meta.events.register("provide-client-params.sts.GetCallerIdentity", retrieve_k8s_aws_id)
    client.meta.events.register("before-sign.sts.GetCallerIdentity", inject_k8s_aws_id_header)
    return client


def token(session_token, region):
    url = sts_client(session_token, region).generate_presigned_url(
        "get_caller_identity",
        Params={K8S_AWS_ID_HEADER: CLUSTER},
        ExpiresIn=60,
        HttpMethod="GET",
    )
    encoded = base64.urlsafe_b64encode(url.encode("utf-8")).decode("utf-8").rstrip("=")
    return url, TOKEN_PREFIX + encoded


def awscli_token(session_token, region):
    """The same through awscli's own classes, if awscli is installed; None otherwise."""
    try:
        from awscli.customizations.eks.get_token import STSClientFactory, TokenGenerator
    except ImportError:
        return None
    session = botocore.session.Session()
    session.set_credentials(ACCESS_KEY, SECRET_KEY, session_token)
    client = STSClientFactory(session).get_sts_client(region_name=region)
    return TokenGenerator(client).get_token(CLUSTER)


def main():
    # botocore's SigV4 signers read the clock through botocore.auth.get_current_datetime
    # (older releases called datetime.datetime.utcnow() there instead).
    if hasattr(botocore.auth, "get_current_datetime"):
        patch = mock.patch.object(botocore.auth, "get_current_datetime", fixed_now)
    else:
        fake = mock.MagicMock(wraps=datetime.datetime)
        fake.utcnow.return_value = NOW
        patch = mock.patch.object(botocore.auth.datetime, "datetime", fake)
    print(f"# botocore {botocore.__version__}, region {REGION} unless said, cluster {CLUSTER}, time {NOW.isoformat()}Z")
    print(f"# access key {ACCESS_KEY}, secret key {SECRET_KEY}")
    with patch:
        cases = (
            ("no session token", None, REGION),
            ("session token", SESSION_TOKEN, REGION),
            (f"region {CHINA_REGION}, no session token", None, CHINA_REGION),
        )
        for label, session_token, region in cases:
            url, tok = token(session_token, region)
            cli = awscli_token(session_token, region)
            if cli is not None:
                assert cli == tok, f"awscli disagrees ({label}):\n{cli}\n{tok}"
            print(f"\n# {label}" + (f": {session_token}" if session_token else ""))
            print(f"# awscli cross-check: {'same token' if cli is not None else 'awscli not installed, skipped'}")
            print(f"url:   {url}")
            print(f"token: {tok}")


if __name__ == "__main__":
    main()
