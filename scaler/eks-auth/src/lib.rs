//! EKS bearer tokens, made exactly as `aws eks get-token` makes them.
//!
//! An EKS cluster's API server accepts, as a bearer token, a *presigned* STS `GetCallerIdentity`
//! request: the API server (through aws-iam-authenticator) sends that request to STS, and STS answers with
//! the ARN of whoever signed it, which EKS then maps to Kubernetes users and groups (access entries or the
//! `aws-auth` ConfigMap). Nothing secret leaves the caller: only a SigV4 signature.
//!
//! # The algorithm (awscli `customizations/eks/get_token.py`)
//!
//! 1. Take the request `GET https://sts.<region>.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15`
//!    (`sts.<region>.amazonaws.com.cn` in the China partition) and add the header
//!    `x-k8s-aws-id: <cluster name>`. The header is what binds a token to one cluster: the API server
//!    checks that it was signed and that it names its own cluster, so a token for cluster A is useless on B.
//! 2. Presign it with SigV4 in the query string (service `sts`, the caller's region), valid for
//!    `X-Amz-Expires=60` seconds. The signed headers are `host;x-k8s-aws-id`. The query then carries, in this
//!    order, the operation's parameters (`Action`, `Version`), then `X-Amz-Algorithm`, `X-Amz-Credential`,
//!    `X-Amz-Date`, `X-Amz-Expires`, `X-Amz-SignedHeaders`, `X-Amz-Security-Token` (only with temporary
//!    credentials; it is part of the signed canonical query, as botocore signs it), and last
//!    `X-Amz-Signature`. Values are percent-encoded with only `A-Z a-z 0-9 - _ . ~` left as they are
//!    (so `/` is `%2F`, `;` is `%3B`), which is what botocore's `percent_encode_sequence` writes.
//! 3. The token is `k8s-aws-v1.` followed by the URL, base64url-encoded (`-` and `_`) without `=` padding.
//!
//! The signature itself comes from the `aws-sigv4` crate (the AWS Rust SDK's signer); this crate only builds
//! the request, picks the settings and lays out the URL in botocore's parameter order, so that the token is
//! the AWS CLI's byte for byte (the tests compare against vectors made by botocore, see
//! `tests/vector/make_vector.py`).
//!
//! # Lifetime
//!
//! Although the URL says 60 seconds, EKS accepts the token for 15 minutes after its `X-Amz-Date`. The AWS
//! CLI reports an expiry of *now + 14 minutes* so clients refresh a minute early; [`Token::expires_at`] is
//! the same. A [`kube::Client`] built by [`kube_client`] carries a fixed token, so build a fresh one per
//! Lambda invocation (or whenever [`Token::expires_at`] has passed): it is cheap, it is one signature.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningError, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// Every EKS token starts with this.
pub const TOKEN_PREFIX: &str = "k8s-aws-v1.";

/// The signed header that names the cluster.
pub const CLUSTER_ID_HEADER: &str = "x-k8s-aws-id";

/// `X-Amz-Expires` of the presigned URL, as the AWS CLI sets it.
pub const URL_EXPIRES: Duration = Duration::from_secs(60);

/// How long after signing the AWS CLI says a token expires (EKS itself accepts it for 15 minutes).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(14 * 60);

/// The operation's own query parameters, before the SigV4 ones.
const OPERATION_QUERY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// What can go wrong while making a token or a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The region is empty or has characters no AWS region has.
    #[error("invalid AWS region {0:?}: expected lowercase letters, digits and '-'")]
    InvalidRegion(String),
    /// The cluster name is empty or cannot be an HTTP header value.
    #[error("invalid EKS cluster name {0:?}: expected 1 to 100 visible ASCII characters")]
    InvalidCluster(String),
    /// The SigV4 signing parameters could not be built.
    #[error("building SigV4 signing parameters: {0}")]
    SigningParams(#[from] v4::signing_params::BuildError),
    /// The SigV4 signer refused the request.
    #[error("SigV4 signing: {0}")]
    Signing(#[from] SigningError),
    /// The signer's output lacked a query parameter it always produces.
    #[error("SigV4 signer returned no {0} parameter")]
    MissingSigningParam(&'static str),
    /// The credentials provider failed.
    #[error("loading AWS credentials: {0}")]
    Credentials(#[from] CredentialsError),
    /// The SDK configuration has no credentials provider.
    #[error("the AWS SDK configuration has no credentials provider")]
    NoCredentialsProvider,
    /// The SDK configuration has no region.
    #[error("the AWS SDK configuration has no region")]
    NoRegion,
    /// The cluster endpoint is not a URL.
    #[error("invalid EKS endpoint {endpoint:?}: {source}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it did not parse.
        source: http::uri::InvalidUri,
    },
    /// The certificate authority data holds no usable certificate.
    #[error("invalid EKS certificate authority data: {0}")]
    InvalidCertificateAuthority(String),
    /// kube could not build a client from the configuration.
    #[error("building the Kubernetes client: {0}")]
    Kube(#[from] kube::Error),
}

/// An EKS bearer token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// `k8s-aws-v1.<base64url of the presigned URL>`, to send as `Authorization: Bearer <value>`.
    pub value: String,
    /// When the AWS CLI would say it expires: signing time plus [`TOKEN_LIFETIME`].
    pub expires_at: SystemTime,
}

impl fmt::Debug for Token {
    // The value is a credential (good for 15 minutes): keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"** redacted **")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The STS host the AWS CLI signs for in `region`: `sts.<region>.amazonaws.com`, or
/// `sts.<region>.amazonaws.com.cn` for the China regions (`cn-*`).
pub fn sts_host(region: &str) -> Result<String, Error> {
    let valid = !region.is_empty()
        && region.len() <= 64
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(Error::InvalidRegion(region.to_owned()));
    }
    let suffix = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    Ok(format!("sts.{region}.{suffix}"))
}

/// The presigned `GetCallerIdentity` URL inside a token (see the [crate docs](crate) for its layout).
pub fn presigned_url(
    credentials: &Credentials,
    region: &str,
    cluster: &str,
    now: SystemTime,
) -> Result<String, Error> {
    let host = sts_host(region)?;
    let valid_cluster = !cluster.is_empty()
        && cluster.len() <= 100
        && cluster.bytes().all(|b| b.is_ascii_graphic());
    if !valid_cluster {
        return Err(Error::InvalidCluster(cluster.to_owned()));
    }

    let base = format!("https://{host}/?{OPERATION_QUERY}");
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(URL_EXPIRES);
    // Default settings already include X-Amz-Security-Token in the canonical request, as botocore does.

    let identity: Identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(now)
        .settings(settings)
        .build()?
        .into();
    let request = SignableRequest::new(
        "GET",
        base.as_str(),
        std::iter::once((CLUSTER_ID_HEADER, cluster)),
        SignableBody::Bytes(&[]),
    )?;
    let (instructions, _signature) = sign(request, &params)?.into_parts();
    let (_headers, signed) = instructions.into_parts();

    let find = |name: &'static str| {
        signed
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_ref())
    };
    let required = |name: &'static str| find(name).ok_or(Error::MissingSigningParam(name));

    // botocore's order: operation parameters, the auth parameters, the session token, the signature last.
    let mut url = base;
    for name in [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
    ] {
        push_param(&mut url, name, required(name)?);
    }
    if let Some(session_token) = find("X-Amz-Security-Token") {
        push_param(&mut url, "X-Amz-Security-Token", session_token);
    }
    push_param(&mut url, "X-Amz-Signature", required("X-Amz-Signature")?);
    Ok(url)
}

/// An EKS token for `cluster`, signed with `credentials` for `region` at time `now`; the same string
/// `aws eks get-token --cluster-name <cluster> --region <region>` prints for the same credentials and clock.
pub fn token(
    credentials: &Credentials,
    region: &str,
    cluster: &str,
    now: SystemTime,
) -> Result<Token, Error> {
    let url = presigned_url(credentials, region, cluster, now)?;
    Ok(Token {
        value: format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(url)),
        expires_at: now + TOKEN_LIFETIME,
    })
}

/// A token signed now with credentials from `provider` (for instance the Lambda execution role's, from
/// `aws_config::load_defaults(..).await.credentials_provider()`).
pub async fn token_from_provider<P>(
    provider: &P,
    region: &str,
    cluster: &str,
) -> Result<Token, Error>
where
    P: ProvideCredentials + ?Sized,
{
    let credentials = provider.provide_credentials().await?;
    token(&credentials, region, cluster, SystemTime::now())
}

/// A token signed now with the credentials provider and region of an AWS SDK configuration.
pub async fn token_from_sdk_config(
    config: &aws_types::SdkConfig,
    cluster: &str,
) -> Result<Token, Error> {
    let provider = config
        .credentials_provider()
        .ok_or(Error::NoCredentialsProvider)?;
    let region = config.region().ok_or(Error::NoRegion)?;
    token_from_provider(&provider, region.as_ref(), cluster).await
}

/// A [`kube::Config`] for an EKS cluster: its API endpoint (`cluster.endpoint` of `DescribeCluster`,
/// `https://<id>.<zone>.<region>.eks.amazonaws.com`), its certificate authority
/// (`cluster.certificateAuthority.data`: base64 of PEM, as EKS returns it; plain PEM is accepted too), and a
/// bearer token from [`token`].
pub fn kube_config(
    endpoint: &str,
    certificate_authority: &str,
    token: &Token,
) -> Result<kube::Config, Error> {
    let cluster_url = endpoint
        .parse::<http::Uri>()
        .map_err(|source| Error::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            source,
        })?;
    let mut config = kube::Config::new(cluster_url);
    config.root_cert = Some(certificates_der(certificate_authority)?);
    config.auth_info.token = Some(token.value.clone().into());
    Ok(config)
}

/// A [`kube::Client`] from [`kube_config`]. Call it inside a Tokio runtime (the client spawns a task). The
/// token is not refreshed: make a new client once [`Token::expires_at`] has passed.
pub fn kube_client(
    endpoint: &str,
    certificate_authority: &str,
    token: &Token,
) -> Result<kube::Client, Error> {
    Ok(kube::Client::try_from(kube_config(
        endpoint,
        certificate_authority,
        token,
    )?)?)
}

/// The DER bytes of every `CERTIFICATE` block of a PEM bundle, given as PEM or as base64 of PEM.
fn certificates_der(data: &str) -> Result<Vec<Vec<u8>>, Error> {
    let invalid = |why: String| Error::InvalidCertificateAuthority(why);
    let trimmed = data.trim();
    let decoded;
    let pem = if trimmed.starts_with("-----BEGIN") {
        trimmed
    } else {
        let compact: String = trimmed.split_whitespace().collect();
        decoded = STANDARD
            .decode(compact)
            .map_err(|e| invalid(format!("not PEM and not base64 ({e})")))?;
        std::str::from_utf8(&decoded).map_err(|e| invalid(format!("base64 of non-UTF-8 ({e})")))?
    };

    let mut certificates = Vec::new();
    let mut current: Option<String> = None;
    for line in pem.lines().map(str::trim) {
        if line == "-----BEGIN CERTIFICATE-----" {
            current = Some(String::new());
        } else if line == "-----END CERTIFICATE-----" {
            if let Some(body) = current.take() {
                let der = STANDARD
                    .decode(body)
                    .map_err(|e| invalid(format!("certificate body is not base64 ({e})")))?;
                certificates.push(der);
            }
        } else if let Some(body) = current.as_mut() {
            body.push_str(line);
        }
    }
    if current.is_some() {
        return Err(invalid("unterminated CERTIFICATE block".to_owned()));
    }
    if certificates.is_empty() {
        return Err(invalid("no CERTIFICATE block".to_owned()));
    }
    Ok(certificates)
}

/// Appends `&name=value`, percent-encoding the value as botocore does (`urllib.parse.quote` with
/// `safe='-_.~'`).
fn push_param(url: &mut String, name: &str, value: &str) {
    url.push('&');
    url.push_str(name);
    url.push('=');
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            url.push(char::from(byte));
        } else {
            url.push('%');
            url.push(char::from(HEX[usize::from(byte >> 4)]));
            url.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_matches_python_quote() {
        let mut url = String::new();
        push_param(&mut url, "k", "a/b;c+d=e f~g_h.i-j%");
        assert_eq!(url, "&k=a%2Fb%3Bc%2Bd%3De%20f~g_h.i-j%25");
    }

    #[test]
    fn sts_hosts() -> Result<(), Error> {
        assert_eq!(sts_host("us-east-1")?, "sts.us-east-1.amazonaws.com");
        assert_eq!(sts_host("eu-west-3")?, "sts.eu-west-3.amazonaws.com");
        assert_eq!(sts_host("cn-north-1")?, "sts.cn-north-1.amazonaws.com.cn");
        for bad in ["", "US-EAST-1", "us-east-1.evil.com/", "us east"] {
            assert!(
                matches!(sts_host(bad), Err(Error::InvalidRegion(_))),
                "{bad}"
            );
        }
        Ok(())
    }

    #[test]
    fn token_debug_is_redacted() -> Result<(), Error> {
        let credentials = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let token = token(&credentials, "us-east-1", "c", SystemTime::UNIX_EPOCH)?;
        let shown = format!("{token:?}");
        assert!(!shown.contains(TOKEN_PREFIX), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
        Ok(())
    }

    #[test]
    fn pem_parsing() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n\
                   -----BEGIN CERTIFICATE-----\nBAU=\n-----END CERTIFICATE-----\n";
        assert_eq!(
            certificates_der(pem).ok(),
            Some(vec![vec![0, 1, 2, 3], vec![4, 5]])
        );
        assert_eq!(
            certificates_der(&STANDARD.encode(pem)).ok(),
            Some(vec![vec![0, 1, 2, 3], vec![4, 5]])
        );
        assert!(certificates_der("").is_err());
        assert!(certificates_der("-----BEGIN CERTIFICATE-----\nAAEC\n").is_err());
        assert!(certificates_der("!!!").is_err());
        assert!(certificates_der(&STANDARD.encode("hello")).is_err());
    }
}
