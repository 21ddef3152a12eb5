//! Builders for scenarios: GPU Auto Scaling groups in moto, GPU pods, and readiness predicates.

use std::collections::BTreeMap;

use aws_config::SdkConfig;
use aws_sdk_autoscaling::types::Tag;
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Client;
use kube::api::{Api, ListParams, ObjectMeta};

use crate::bridge::{LABEL_NODEGROUP, NodeGroupSpec, RESOURCE_GPU};
use crate::{Error, Result};

/// An AMI id moto knows.
pub const MOTO_AMI: &str = "ami-12c6146b";
/// Zones the bed's groups span.
pub const ZONES: [&str; 2] = ["us-east-1a", "us-east-1b"];
/// The image of test pods (kwok never pulls it).
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// Creates an Auto Scaling group `name` of `instance_type` with min 0, desired 0 and `max`, tagged with
/// `spec` for the bridge (and a launch configuration of the same name: moto launches from it).
pub async fn create_gpu_group(
    aws: &SdkConfig,
    name: &str,
    instance_type: &str,
    spec: &NodeGroupSpec,
    max: i32,
) -> Result<()> {
    let autoscaling = aws_sdk_autoscaling::Client::new(aws);
    autoscaling
        .create_launch_configuration()
        .launch_configuration_name(name)
        .image_id(MOTO_AMI)
        .instance_type(instance_type)
        .send()
        .await
        .map_err(Error::aws("CreateLaunchConfiguration"))?;
    let tags = spec
        .tags()
        .into_iter()
        .map(|(key, value)| {
            Tag::builder()
                .resource_id(name)
                .resource_type("auto-scaling-group")
                .key(key)
                .value(value)
                .propagate_at_launch(true)
                .build()
        })
        .collect();
    autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_configuration_name(name)
        .min_size(0)
        .max_size(max)
        .desired_capacity(0)
        .set_availability_zones(Some(ZONES.iter().map(|z| (*z).to_owned()).collect()))
        .set_tags(Some(tags))
        .send()
        .await
        .map_err(Error::aws("CreateAutoScalingGroup"))?;
    Ok(())
}

/// A new SQS queue named `<prefix>-<unique suffix>` ([`crate::unique_name`]); returns its URL.
pub async fn create_queue(aws: &SdkConfig, prefix: &str) -> Result<String> {
    let out = aws_sdk_sqs::Client::new(aws)
        .create_queue()
        .queue_name(crate::unique_name(prefix))
        .send()
        .await
        .map_err(Error::aws("CreateQueue"))?;
    Ok(out.queue_url().unwrap_or_default().to_owned())
}

/// SetDesiredCapacity on a group.
pub async fn set_desired_capacity(aws: &SdkConfig, group: &str, desired: i32) -> Result<()> {
    aws_sdk_autoscaling::Client::new(aws)
        .set_desired_capacity()
        .auto_scaling_group_name(group)
        .desired_capacity(desired)
        .send()
        .await
        .map_err(Error::aws("SetDesiredCapacity"))?;
    Ok(())
}

/// `(instance id, zone)` of a group's instances.
pub async fn group_instances(aws: &SdkConfig, group: &str) -> Result<Vec<(String, String)>> {
    let out = aws_sdk_autoscaling::Client::new(aws)
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(group)
        .send()
        .await
        .map_err(Error::aws("DescribeAutoScalingGroups"))?;
    Ok(out
        .auto_scaling_groups()
        .iter()
        .flat_map(|g| g.instances())
        .map(|i| {
            (
                i.instance_id().unwrap_or_default().to_owned(),
                i.availability_zone().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// Whether a node's Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether a pod is in phase Running.
pub fn is_running(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// The nodes of a group (Ready or not).
pub async fn group_nodes(client: &Client, group: &str) -> Result<Vec<Node>> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{LABEL_NODEGROUP}={group}")))
        .await?;
    Ok(nodes.items)
}

/// A pause pod asking for `gpus` `nvidia.com/gpu`, pinned to `group`'s nodes (so that tests running side by
/// side never land on each other's nodes), labelled `app=<name>`.
pub fn gpu_pod(name: &str, group: &str, gpus: u32) -> Pod {
    pod_requesting(name, group, RESOURCE_GPU, gpus)
}

/// Like [`gpu_pod`] for any extended resource, such as `nvidia.com/mig-1g.10gb`.
pub fn pod_requesting(name: &str, group: &str, resource: &str, count: u32) -> Pod {
    let gpus = BTreeMap::from([(resource.to_owned(), Quantity(count.to_string()))]);
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([("app".to_owned(), name.to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_selector: Some(BTreeMap::from([(
                LABEL_NODEGROUP.to_owned(),
                group.to_owned(),
            )])),
            containers: vec![Container {
                name: "model".into(),
                image: Some(PAUSE_IMAGE.into()),
                resources: Some(ResourceRequirements {
                    limits: Some(gpus.clone()),
                    requests: Some(gpus),
                    ..ResourceRequirements::default()
                }),
                ..Container::default()
            }],
            termination_grace_period_seconds: Some(0),
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// An EventBridge bus of its own whose one rule delivers matching events to a new SQS queue: what
/// zerospot's Terraform sets up, with a bus per test so that other tests' rules never see its events.
#[derive(Debug, Clone)]
pub struct EventRoute {
    /// The bus name.
    pub bus: String,
    /// The rule name.
    pub rule: String,
    /// The queue URL the rule delivers to.
    pub queue_url: String,
}

/// Creates a bus, a queue, and a rule with `pattern` on the bus targeting the queue; names are unique.
pub async fn event_route(aws: &SdkConfig, pattern: &serde_json::Value) -> Result<EventRoute> {
    use aws_sdk_eventbridge::types::Target;
    use aws_sdk_sqs::types::QueueAttributeName;
    let sqs = aws_sdk_sqs::Client::new(aws);
    let events = aws_sdk_eventbridge::Client::new(aws);
    let bus = crate::unique_name("bus");
    events
        .create_event_bus()
        .name(&bus)
        .send()
        .await
        .map_err(Error::aws("CreateEventBus"))?;
    let queue_url = sqs
        .create_queue()
        .queue_name(crate::unique_name("events"))
        .send()
        .await
        .map_err(Error::aws("CreateQueue"))?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(Error::aws("GetQueueAttributes"))?
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .cloned()
        .unwrap_or_default();
    let rule = crate::unique_name("rule");
    events
        .put_rule()
        .name(&rule)
        .event_bus_name(&bus)
        .event_pattern(pattern.to_string())
        .send()
        .await
        .map_err(Error::aws("PutRule"))?;
    let target = Target::builder()
        .id("queue")
        .arn(queue_arn)
        .build()
        .map_err(Error::aws("Target"))?;
    events
        .put_targets()
        .rule(&rule)
        .event_bus_name(&bus)
        .targets(target)
        .send()
        .await
        .map_err(Error::aws("PutTargets"))?;
    Ok(EventRoute {
        bus,
        rule,
        queue_url,
    })
}
