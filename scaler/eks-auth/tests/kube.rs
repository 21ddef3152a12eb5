//! The kube helpers: an EKS endpoint, its certificate authority as `DescribeCluster` returns it (base64 of
//! PEM) and a token make a client configuration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zerospot_eks_auth::{Error, kube_client, kube_config, token, token_from_provider};

/// A self-signed test CA (its key was thrown away): `openssl req -x509 -newkey ec
/// -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null -subj /CN=kubernetes -days 36500`.
const CA_PEM: &str = include_str!("vector/ca.pem");
const ENDPOINT: &str = "https://0123456789ABCDEF0123456789ABCDEF.gr7.us-east-1.eks.amazonaws.com";

fn a_token() -> zerospot_eks_auth::Token {
    let credentials = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
    token(
        &credentials,
        "us-east-1",
        "zerospot",
        SystemTime::UNIX_EPOCH,
    )
    .expect("token")
}

fn ca_der() -> Vec<u8> {
    let body: String = CA_PEM
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    STANDARD.decode(body).expect("PEM body")
}

#[test]
fn config_from_eks_describe_cluster_fields() -> Result<(), Error> {
    let token = a_token();
    let ca_data = STANDARD.encode(CA_PEM); // as `cluster.certificateAuthority.data`
    let config = kube_config(ENDPOINT, &ca_data, &token)?;
    assert_eq!(config.cluster_url.to_string(), format!("{ENDPOINT}/"));
    assert_eq!(config.root_cert, Some(vec![ca_der()]));
    let sent = config.auth_info.token.as_ref().map(|t| {
        use secrecy::ExposeSecret as _;
        t.expose_secret().to_owned()
    });
    assert_eq!(sent.as_deref(), Some(token.value.as_str()));
    // Plain PEM works too.
    assert_eq!(
        kube_config(ENDPOINT, CA_PEM, &token)?.root_cert,
        Some(vec![ca_der()])
    );
    Ok(())
}

#[test]
fn config_rejects_bad_inputs() {
    let token = a_token();
    assert!(matches!(
        kube_config("not a url\n", CA_PEM, &token),
        Err(Error::InvalidEndpoint { .. })
    ));
    assert!(matches!(
        kube_config(ENDPOINT, "bm90IGEgY2VydA==", &token),
        Err(Error::InvalidCertificateAuthority(_))
    ));
}

#[tokio::test]
async fn client_builds_with_the_ca() -> Result<(), Error> {
    // rustls parses the CA here, so a broken certificate would fail now.
    let client = kube_client(ENDPOINT, &STANDARD.encode(CA_PEM), &a_token())?;
    assert_eq!(client.default_namespace(), "default");
    Ok(())
}

#[tokio::test]
async fn token_from_a_credentials_provider() -> Result<(), Error> {
    // Static Credentials are a ProvideCredentials; the signing time is now.
    let credentials = Credentials::new("AKIDEXAMPLE", "secret", Some("tok".into()), None, "test");
    let before = SystemTime::now();
    let token = token_from_provider(&credentials, "eu-central-1", "zerospot").await?;
    let lifetime = token
        .expires_at
        .duration_since(before)
        .expect("expiry after now");
    assert!(lifetime >= Duration::from_secs(14 * 60) && lifetime < Duration::from_secs(15 * 60));
    assert!(token.value.starts_with("k8s-aws-v1."));
    Ok(())
}

#[tokio::test]
async fn token_from_an_sdk_config() -> Result<(), Error> {
    use aws_credential_types::provider::SharedCredentialsProvider;
    use aws_types::region::Region;
    let credentials = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
    let config = aws_types::SdkConfig::builder()
        .region(Region::new("ap-southeast-2"))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build();
    let token = zerospot_eks_auth::token_from_sdk_config(&config, "zerospot").await?;
    assert!(token.value.starts_with("k8s-aws-v1."));

    let no_region = aws_types::SdkConfig::builder()
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "a", "b", None, None, "test",
        )))
        .build();
    assert!(matches!(
        zerospot_eks_auth::token_from_sdk_config(&no_region, "zerospot").await,
        Err(Error::NoRegion)
    ));
    let no_credentials = aws_types::SdkConfig::builder()
        .region(Region::new("us-east-1"))
        .build();
    assert!(matches!(
        zerospot_eks_auth::token_from_sdk_config(&no_credentials, "zerospot").await,
        Err(Error::NoCredentialsProvider)
    ));
    Ok(())
}

#[tokio::test]
async fn client_refuses_a_ca_that_is_not_a_certificate() {
    let not_a_certificate = "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        kube_client(ENDPOINT, not_a_certificate, &a_token()),
        Err(Error::Kube(_))
    ));
}
