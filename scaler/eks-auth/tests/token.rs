//! Our tokens against vectors made by botocore (`tests/vector/make_vector.py`, which reproduces
//! `aws eks get-token` and cross-checks it against awscli's own code), byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zerospot_eks_auth::{Error, TOKEN_LIFETIME, TOKEN_PREFIX, presigned_url, token};

const ACCESS_KEY: &str = "AKIDEXAMPLE";
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const SESSION_TOKEN: &str = "FwoGZXIvYXdzEXAMPLE//////////wEaDExampleSessionToken+abc/def==";
const CLUSTER: &str = "zerospot";
/// 2024-05-01T12:00:00Z, the clock make_vector.py fixes.
const NOW_UNIX: u64 = 1_714_564_800;

/// make_vector.py, "no session token" (botocore 1.44.8).
const VECTOR_PLAIN: &str = "k8s-aws-v1.aHR0cHM6Ly9zdHMudXMtZWFzdC0xLmFtYXpvbmF3cy5jb20vP0FjdGlvbj1HZXRDYWxsZXJJZGVudGl0eSZWZXJzaW9uPTIwMTEtMDYtMTUmWC1BbXotQWxnb3JpdGhtPUFXUzQtSE1BQy1TSEEyNTYmWC1BbXotQ3JlZGVudGlhbD1BS0lERVhBTVBMRSUyRjIwMjQwNTAxJTJGdXMtZWFzdC0xJTJGc3RzJTJGYXdzNF9yZXF1ZXN0JlgtQW16LURhdGU9MjAyNDA1MDFUMTIwMDAwWiZYLUFtei1FeHBpcmVzPTYwJlgtQW16LVNpZ25lZEhlYWRlcnM9aG9zdCUzQngtazhzLWF3cy1pZCZYLUFtei1TaWduYXR1cmU9YjFhOTljMWVjYjU2NmM3YzI0MWRmM2NhMmZiMDFjMGUzZWM2YjA1NDBmM2NkNGY4YTE5YWE4NDI1Y2Q1OWNlZA";

/// make_vector.py, "session token".
const VECTOR_SESSION: &str = "k8s-aws-v1.aHR0cHM6Ly9zdHMudXMtZWFzdC0xLmFtYXpvbmF3cy5jb20vP0FjdGlvbj1HZXRDYWxsZXJJZGVudGl0eSZWZXJzaW9uPTIwMTEtMDYtMTUmWC1BbXotQWxnb3JpdGhtPUFXUzQtSE1BQy1TSEEyNTYmWC1BbXotQ3JlZGVudGlhbD1BS0lERVhBTVBMRSUyRjIwMjQwNTAxJTJGdXMtZWFzdC0xJTJGc3RzJTJGYXdzNF9yZXF1ZXN0JlgtQW16LURhdGU9MjAyNDA1MDFUMTIwMDAwWiZYLUFtei1FeHBpcmVzPTYwJlgtQW16LVNpZ25lZEhlYWRlcnM9aG9zdCUzQngtazhzLWF3cy1pZCZYLUFtei1TZWN1cml0eS1Ub2tlbj1Gd29HWlhJdllYZHpFWEFNUExFJTJGJTJGJTJGJTJGJTJGJTJGJTJGJTJGJTJGJTJGd0VhREV4YW1wbGVTZXNzaW9uVG9rZW4lMkJhYmMlMkZkZWYlM0QlM0QmWC1BbXotU2lnbmF0dXJlPTEzOTNiOGQ1Mjg2MjU0Y2UyYTMwOTk4ZDM4YjFhM2Y4OTU4OTQyZTk3MDJhZDFhMjZhZDFhZjk5ZTA2NWFhNjk";

/// make_vector.py, "region cn-north-1, no session token".
const VECTOR_CHINA: &str = "k8s-aws-v1.aHR0cHM6Ly9zdHMuY24tbm9ydGgtMS5hbWF6b25hd3MuY29tLmNuLz9BY3Rpb249R2V0Q2FsbGVySWRlbnRpdHkmVmVyc2lvbj0yMDExLTA2LTE1JlgtQW16LUFsZ29yaXRobT1BV1M0LUhNQUMtU0hBMjU2JlgtQW16LUNyZWRlbnRpYWw9QUtJREVYQU1QTEUlMkYyMDI0MDUwMSUyRmNuLW5vcnRoLTElMkZzdHMlMkZhd3M0X3JlcXVlc3QmWC1BbXotRGF0ZT0yMDI0MDUwMVQxMjAwMDBaJlgtQW16LUV4cGlyZXM9NjAmWC1BbXotU2lnbmVkSGVhZGVycz1ob3N0JTNCeC1rOHMtYXdzLWlkJlgtQW16LVNpZ25hdHVyZT0yYTZmOTg2YjIyMjNlYmFjNGY4NjEwYTY4YWIzOGY5NzgzZTNkYmRjYTg1YTcxNmIzNWZhMGMxYjFkZDIzYjlk";

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_UNIX)
}

fn credentials(session_token: Option<&str>) -> Credentials {
    Credentials::new(
        ACCESS_KEY,
        SECRET_KEY,
        session_token.map(str::to_owned),
        None,
        "test",
    )
}

/// The URL inside a token, and its query decoded into a map (and the parameter names in order).
fn decode(token: &str) -> (url::Url, BTreeMap<String, String>, Vec<String>) {
    let body = token.strip_prefix(TOKEN_PREFIX).expect("token prefix");
    assert!(!body.contains('='), "base64 must be unpadded");
    let bytes = URL_SAFE_NO_PAD.decode(body).expect("base64url");
    let url = url::Url::parse(std::str::from_utf8(&bytes).expect("utf-8")).expect("URL");
    let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    let names = pairs.iter().map(|(k, _)| k.clone()).collect();
    (url, pairs.into_iter().collect(), names)
}

#[test]
fn matches_botocore_without_session_token() -> Result<(), Error> {
    let token = token(&credentials(None), "us-east-1", CLUSTER, now())?;
    assert_eq!(token.value, VECTOR_PLAIN);
    assert_eq!(token.expires_at, now() + TOKEN_LIFETIME);
    assert_eq!(token.expires_at, now() + Duration::from_secs(14 * 60));
    Ok(())
}

#[test]
fn matches_botocore_with_session_token() -> Result<(), Error> {
    let token = token(
        &credentials(Some(SESSION_TOKEN)),
        "us-east-1",
        CLUSTER,
        now(),
    )?;
    assert_eq!(token.value, VECTOR_SESSION);
    Ok(())
}

#[test]
fn matches_botocore_in_china_partition() -> Result<(), Error> {
    let token = token(&credentials(None), "cn-north-1", CLUSTER, now())?;
    assert_eq!(token.value, VECTOR_CHINA);
    Ok(())
}

#[test]
fn the_url_is_a_presigned_get_caller_identity() -> Result<(), Error> {
    let token = token(&credentials(None), "eu-west-3", CLUSTER, now())?;
    let (url, query, names) = decode(&token.value);
    assert_eq!(url.scheme(), "https");
    assert_eq!(url.host_str(), Some("sts.eu-west-3.amazonaws.com"));
    assert_eq!(url.path(), "/");
    assert_eq!(query["Action"], "GetCallerIdentity");
    assert_eq!(query["Version"], "2011-06-15");
    assert_eq!(query["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
    assert_eq!(
        query["X-Amz-Credential"],
        "AKIDEXAMPLE/20240501/eu-west-3/sts/aws4_request"
    );
    assert_eq!(query["X-Amz-Date"], "20240501T120000Z");
    assert_eq!(query["X-Amz-Expires"], "60");
    assert_eq!(query["X-Amz-SignedHeaders"], "host;x-k8s-aws-id");
    assert_eq!(query["X-Amz-Signature"].len(), 64);
    assert!(!query.contains_key("X-Amz-Security-Token"));
    assert_eq!(
        names,
        [
            "Action",
            "Version",
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Date",
            "X-Amz-Expires",
            "X-Amz-SignedHeaders",
            "X-Amz-Signature",
        ]
    );
    // The raw URL encodes ';' as botocore does.
    let raw = presigned_url(&credentials(None), "eu-west-3", CLUSTER, now())?;
    assert!(
        raw.contains("&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id&"),
        "{raw}"
    );
    Ok(())
}

#[test]
fn the_session_token_is_included_when_present() -> Result<(), Error> {
    let token = token(
        &credentials(Some(SESSION_TOKEN)),
        "us-east-1",
        CLUSTER,
        now(),
    )?;
    let (url, query, names) = decode(&token.value);
    assert_eq!(url.host_str(), Some("sts.us-east-1.amazonaws.com"));
    assert_eq!(query["X-Amz-Security-Token"], SESSION_TOKEN);
    assert_eq!(query["X-Amz-SignedHeaders"], "host;x-k8s-aws-id");
    // After the signed headers, before the signature, as botocore lays it out.
    let at = |name: &str| names.iter().position(|n| n == name).expect(name);
    assert_eq!(at("X-Amz-Security-Token"), at("X-Amz-SignedHeaders") + 1);
    assert_eq!(at("X-Amz-Signature"), names.len() - 1);
    Ok(())
}

#[test]
fn the_signature_binds_cluster_time_and_keys() -> Result<(), Error> {
    let base = token(&credentials(None), "us-east-1", CLUSTER, now())?.value;
    let other_cluster = token(&credentials(None), "us-east-1", "other", now())?.value;
    let later = token(
        &credentials(None),
        "us-east-1",
        CLUSTER,
        now() + Duration::from_secs(1),
    )?
    .value;
    let other_secret = Credentials::new(ACCESS_KEY, "another-secret", None, None, "test");
    let other_secret = token(&other_secret, "us-east-1", CLUSTER, now())?.value;
    let signature = |t: &str| decode(t).1["X-Amz-Signature"].clone();
    let s = signature(&base);
    assert_ne!(s, signature(&other_cluster));
    assert_ne!(s, signature(&later));
    assert_ne!(s, signature(&other_secret));
    // The cluster name is signed, not sent: the API server supplies the header when it calls STS.
    assert!(!decode(&other_cluster).1.values().any(|v| v == "other"));
    Ok(())
}

#[test]
fn rejects_bad_region_and_cluster() {
    let c = credentials(None);
    assert!(matches!(
        token(&c, "us-east-1.example.com/x", CLUSTER, now()),
        Err(Error::InvalidRegion(_))
    ));
    assert!(matches!(
        token(&c, "", CLUSTER, now()),
        Err(Error::InvalidRegion(_))
    ));
    assert!(matches!(
        token(&c, "us-east-1", "", now()),
        Err(Error::InvalidCluster(_))
    ));
    assert!(matches!(
        token(&c, "us-east-1", "a\nb", now()),
        Err(Error::InvalidCluster(_))
    ));
}
