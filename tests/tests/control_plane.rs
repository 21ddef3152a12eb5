//! The control plane is a real one: RBAC refuses what was not granted, service-account tokens are issued
//! and honoured, and the Knative Serving CRDs are Established and store objects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use zerospot_testbed::{TestBed, eventually};

#[tokio::test]
async fn knative_serving_crds_are_established_and_store_a_pod_autoscaler() {
    let bed = TestBed::shared().await.unwrap();
    let client = bed.kube_client().await.unwrap();
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    for name in [
        "podautoscalers.autoscaling.internal.knative.dev",
        "revisions.serving.knative.dev",
        "services.serving.knative.dev",
    ] {
        let crd = crds.get(name).await.unwrap();
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"),
            "{name}: {conditions:?}"
        );
    }

    let namespace = bed.namespace(&client, "knative").await.unwrap();
    let gvk = GroupVersionKind::gvk(
        "autoscaling.internal.knative.dev",
        "v1alpha1",
        "PodAutoscaler",
    );
    let resource = ApiResource::from_gvk(&gvk);
    let pas = Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &resource);
    let mut pa = DynamicObject::new("model-00001", &resource);
    pa.data = serde_json::json!({"spec": {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "model-00001-deployment"},
        "protocolType": "http1",
    }});
    pas.create(&PostParams::default(), &pa).await.unwrap();
    let stored = pas.get("model-00001").await.unwrap();
    assert_eq!(
        stored.data["spec"]["scaleTargetRef"]["name"],
        "model-00001-deployment"
    );
}

#[tokio::test]
async fn rbac_refuses_a_service_account_until_a_role_binding_grants_it() {
    let bed = TestBed::shared().await.unwrap();
    let admin = bed.kube_client().await.unwrap();
    let namespace = bed.namespace(&admin, "rbac").await.unwrap();
    let sas = Api::<ServiceAccount>::namespaced(admin.clone(), &namespace);
    sas.create(
        &PostParams::default(),
        &ServiceAccount {
            metadata: ObjectMeta {
                name: Some("reader".into()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        },
    )
    .await
    .unwrap();

    // TokenRequest (the subresource the kubelet uses): the apiserver signs it with the bed's SA key.
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec!["https://kubernetes.default.svc.cluster.local".into()],
            expiration_seconds: Some(600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let http = http::Request::post(format!(
        "/api/v1/namespaces/{namespace}/serviceaccounts/reader/token"
    ))
    .header("content-type", "application/json")
    .body(serde_json::to_vec(&request).unwrap())
    .unwrap();
    let issued: TokenRequest = admin.request(http).await.unwrap();
    let token = issued.status.unwrap().token;

    // A kubeconfig with the token instead of the admin certificate.
    let mut kubeconfig = Kubeconfig::read_from(&bed.info().kubeconfig).unwrap();
    let json = serde_json::json!({"token": token});
    kubeconfig.auth_infos[0].auth_info = Some(serde_json::from_value(json).unwrap());
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    let reader = kube::Client::try_from(config).unwrap();

    match Api::<Node>::all(reader.clone())
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("a service account with no binding must be refused, got {other:?}"),
    }

    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("reader-view".into()),
            ..ObjectMeta::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "view".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "reader".into(),
            namespace: Some(namespace.clone()),
            ..Subject::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), &namespace)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(reader.clone(), &namespace);
    eventually(
        "the binding to let the reader list pods",
        Duration::from_secs(30),
        || async { pods.list(&ListParams::default()).await.map(drop) },
    )
    .await
    .unwrap();
    assert!(
        Api::<Node>::all(reader)
            .list(&ListParams::default())
            .await
            .is_err(),
        "a namespaced view binding grants nothing cluster-wide"
    );
}
