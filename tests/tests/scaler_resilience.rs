//! The scaler keeps working through AWS throttling and a kube-apiserver restart. Its own test binary:
//! restarting the apiserver of the shared bed would disturb every other test of a binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scaler_common;

use std::time::Duration;

use scaler_common::{Scenario, start_scaler};
use zerospot_testbed::{GpuSharing, ThrottlingProxy};

#[tokio::test]
async fn keeps_working_through_aws_throttling_and_an_apiserver_restart() {
    // One GPU per node, not shared: each pod is a node, so each new demand shows in the capacity.
    let s = Scenario::with_sharing(&["llama", "mistral"], GpuSharing::None, |o| o).await;
    let pa = s.create_autoscaler("mistral").await;
    let proxy = ThrottlingProxy::start(&s.bed.info().moto_endpoint)
        .await
        .unwrap();
    let via_proxy = s.bed.aws_config_with_endpoint(proxy.endpoint_url()).await;
    let _scaler = start_scaler(s.bed, &via_proxy, &s.config(60, 600)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // AWS throttles every call for 5 s while a request arrives.
    proxy.throttle_for(Duration::from_secs(5));
    s.send("llama").await;
    s.wait_desired(1, Duration::from_secs(40)).await;
    assert!(proxy.throttled_count() > 0, "the scaler met the throttling");
    eprintln!("throttled answers: {}", proxy.throttled_count());

    // kube-apiserver restarts; the watches resume and a PodAutoscaler change still moves the group.
    s.bed.restart_apiserver().await.unwrap();
    s.set_desired_scale(&pa, 2).await;
    s.wait_desired(3, Duration::from_secs(40)).await;
}
