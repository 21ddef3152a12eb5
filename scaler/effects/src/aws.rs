//! AWS, behind two narrow traits shaped exactly like the calls zerospot makes, and their SDK
//! implementations. SDK error types never leave this module: every failure is classified once into an
//! [`AwsError`] whose [`AwsErrorKind`] says what the caller should do.
//!
//! # IAM actions these calls need
//! `autoscaling:DescribeAutoScalingGroups`, `autoscaling:DescribeScalingActivities`,
//! `autoscaling:SetDesiredCapacity`, `autoscaling:TerminateInstanceInAutoScalingGroup`,
//! `autoscaling:SetInstanceProtection`, `autoscaling:CompleteLifecycleAction`,
//! `autoscaling:RecordLifecycleActionHeartbeat`, `sqs:GetQueueAttributes`. The mutating ones can be
//! limited to the pools' groups by ARN; the describe calls do not support resource-level permissions.

use async_trait::async_trait;
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use aws_smithy_types::error::metadata::ErrorMetadata;
use chrono::{DateTime, Utc};
use thiserror::Error;

use crate::observe::{Group, GroupInstance, QueueDepth};

/// What kind of failure an AWS call met, which decides what happens next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AwsErrorKind {
    /// Rate limited (`Throttling`, `RequestLimitExceeded`, ...): back off and retry.
    Throttled,
    /// The thing acted on no longer exists (an instance already terminated): the action is done.
    NotFound,
    /// Another change is under way (`ScalingActivityInProgress`, `ResourceContention`): retry soon.
    Conflict,
    /// Refused as invalid (`ValidationError`): retrying the same call will not help.
    Invalid,
    /// Not allowed (`AccessDenied`, `UnauthorizedOperation`): fix IAM.
    Denied,
    /// No answer (connection refused, timeout, 5xx): retry.
    Unavailable,
    /// Anything else.
    Other,
}

impl AwsErrorKind {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            AwsErrorKind::Throttled => "throttled",
            AwsErrorKind::NotFound => "not_found",
            AwsErrorKind::Conflict => "conflict",
            AwsErrorKind::Invalid => "invalid",
            AwsErrorKind::Denied => "denied",
            AwsErrorKind::Unavailable => "unavailable",
            AwsErrorKind::Other => "other",
        }
    }
}

/// A failed AWS call, classified.
#[derive(Debug, Clone, Error)]
#[error("{call}: {message} ({kind:?})")]
pub struct AwsError {
    /// The API call, e.g. `SetDesiredCapacity`.
    pub call: &'static str,
    /// What kind of failure.
    pub kind: AwsErrorKind,
    /// AWS's code and message, or the transport error.
    pub message: String,
}

impl AwsError {
    /// An error of `kind` (for fakes and tests).
    pub fn new(call: &'static str, kind: AwsErrorKind, message: impl Into<String>) -> Self {
        AwsError {
            call,
            kind,
            message: message.into(),
        }
    }
}

/// Classifies an AWS error code and message (the one place codes are interpreted).
pub fn classify(code: Option<&str>, message: &str) -> AwsErrorKind {
    let lower = message.to_ascii_lowercase();
    match code.unwrap_or_default() {
        "Throttling"
        | "ThrottlingException"
        | "ThrottledException"
        | "RequestLimitExceeded"
        | "TooManyRequestsException"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "AWS.SimpleQueueService.RequestThrottled"
        | "SlowDown"
        | "PriorRequestNotComplete"
        | "EC2ThrottledException"
        | "ProvisionedThroughputExceededException" => AwsErrorKind::Throttled,
        "ScalingActivityInProgress" | "ResourceContention" | "ResourceInUse" => {
            AwsErrorKind::Conflict
        }
        "AccessDenied"
        | "AccessDeniedException"
        | "UnauthorizedOperation"
        | "InvalidClientTokenId"
        | "ExpiredToken"
        | "ExpiredTokenException"
        | "SignatureDoesNotMatch" => AwsErrorKind::Denied,
        "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" | "NonExistentQueue" => {
            AwsErrorKind::NotFound
        }
        "ValidationError"
        | "ValidationException"
        | "InvalidParameterValue"
        | "InvalidAttributeName" => {
            if lower.contains("not found")
                || lower.contains("does not exist")
                || lower.contains("not part of")
            {
                AwsErrorKind::NotFound
            } else {
                AwsErrorKind::Invalid
            }
        }
        "InternalFailure"
        | "InternalError"
        | "ServiceUnavailable"
        | "ServiceUnavailableException" => AwsErrorKind::Unavailable,
        _ => AwsErrorKind::Other,
    }
}

/// Classifies an SDK error of any AWS client (the one conversion from SDK errors to [`AwsError`]).
pub fn from_sdk<E, R>(
    call: &'static str,
    err: aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    match &err {
        SdkError::ServiceError(service) => {
            let meta: &ErrorMetadata = service.err().meta();
            let message = format!(
                "{}: {}",
                meta.code().unwrap_or("error"),
                meta.message().unwrap_or_default()
            );
            AwsError {
                call,
                kind: classify(meta.code(), meta.message().unwrap_or_default()),
                message,
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            AwsError {
                call,
                kind: AwsErrorKind::Unavailable,
                message: error_chain(&err),
            }
        }
        _ => AwsError {
            call,
            kind: AwsErrorKind::Other,
            message: error_chain(&err),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// How a termination went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminated {
    /// The group accepted it.
    Started,
    /// The instance was already gone or leaving.
    AlreadyGone,
}

/// The Auto Scaling calls zerospot makes.
#[async_trait]
pub trait AutoScaling: Send + Sync {
    /// `DescribeAutoScalingGroups` for these names (all pages).
    async fn describe_groups(&self, names: &[String]) -> Result<Vec<Group>, AwsError>;
    /// Launches that failed for lack of capacity since `since` (`DescribeScalingActivities`, failed
    /// activities whose message names a capacity shortage).
    async fn capacity_failures(
        &self,
        group: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>, AwsError>;
    /// `SetDesiredCapacity` (`HonorCooldown=false`).
    async fn set_desired_capacity(&self, group: &str, desired: u32) -> Result<(), AwsError>;
    /// `TerminateInstanceInAutoScalingGroup`.
    async fn terminate_instance(
        &self,
        instance_id: &str,
        decrement_desired: bool,
    ) -> Result<Terminated, AwsError>;
    /// `SetInstanceProtection`.
    async fn set_instance_protection(
        &self,
        group: &str,
        instance_ids: &[String],
        protected: bool,
    ) -> Result<(), AwsError>;
    /// `CompleteLifecycleAction` with `CONTINUE` or `ABANDON`.
    async fn complete_lifecycle_action(
        &self,
        action: &LifecycleRef,
        result: LifecycleResult,
    ) -> Result<(), AwsError>;
    /// `RecordLifecycleActionHeartbeat`.
    async fn lifecycle_heartbeat(&self, action: &LifecycleRef) -> Result<(), AwsError>;
}

/// Identifies one lifecycle action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleRef {
    /// The group.
    pub group: String,
    /// The hook.
    pub hook: String,
    /// The action token, when known.
    pub token: Option<String>,
    /// The instance.
    pub instance_id: String,
}

/// The result given to a lifecycle action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleResult {
    /// Go on (launch: into service; terminate: terminate).
    Continue,
    /// Give up (launch: terminate the instance).
    Abandon,
}

/// The SQS calls the scaler and functions make.
#[async_trait]
pub trait Queues: Send + Sync {
    /// `GetQueueAttributes` for the two depth attributes.
    async fn depth(&self, queue_url: &str) -> Result<QueueDepth, AwsError>;
}

/// [`AutoScaling`] over the AWS SDK.
#[derive(Debug, Clone)]
pub struct SdkAutoScaling {
    client: aws_sdk_autoscaling::Client,
}

impl SdkAutoScaling {
    /// From an SDK config.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        SdkAutoScaling {
            client: aws_sdk_autoscaling::Client::new(config),
        }
    }
}

fn u32_of(v: Option<i32>) -> u32 {
    u32::try_from(v.unwrap_or(0)).unwrap_or(0)
}

/// Whether a failed scaling activity's message says the launch found no capacity.
pub fn is_capacity_failure(status_message: &str) -> bool {
    let m = status_message.to_ascii_lowercase();
    m.contains("insufficientinstancecapacity")
        || m.contains("insufficient capacity")
        || m.contains("there is no spot capacity")
        || m.contains("spot capacity not available")
        || m.contains("maxspotinstancecountexceeded")
        || m.contains("spotmaxpricetoolow")
        || m.contains("unfulfillablecapacity")
}

#[async_trait]
impl AutoScaling for SdkAutoScaling {
    async fn describe_groups(&self, names: &[String]) -> Result<Vec<Group>, AwsError> {
        let mut groups = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .client
                .describe_auto_scaling_groups()
                .set_auto_scaling_group_names(Some(names.to_vec()))
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| from_sdk("DescribeAutoScalingGroups", e))?;
            for g in out.auto_scaling_groups() {
                groups.push(Group {
                    name: g.auto_scaling_group_name().unwrap_or_default().to_owned(),
                    min: u32_of(g.min_size()),
                    max: u32_of(g.max_size()),
                    desired: u32_of(g.desired_capacity()),
                    instances: g
                        .instances()
                        .iter()
                        .map(|i| GroupInstance {
                            id: i.instance_id().unwrap_or_default().to_owned(),
                            lifecycle_state: i
                                .lifecycle_state()
                                .map(|s| s.as_str().to_owned())
                                .unwrap_or_default(),
                            protected: i.protected_from_scale_in().unwrap_or(false),
                        })
                        .collect(),
                    tags: g
                        .tags()
                        .iter()
                        .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                        .collect(),
                });
            }
            token = out.next_token().map(ToOwned::to_owned);
            if token.is_none() {
                return Ok(groups);
            }
        }
    }

    async fn capacity_failures(
        &self,
        group: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>, AwsError> {
        let out = self
            .client
            .describe_scaling_activities()
            .auto_scaling_group_name(group)
            .max_records(50)
            .send()
            .await
            .map_err(|e| from_sdk("DescribeScalingActivities", e))?;
        Ok(out
            .activities()
            .iter()
            .filter(|a| a.status_code().is_some_and(|s| s.as_str() == "Failed"))
            .filter(|a| is_capacity_failure(a.status_message().unwrap_or_default()))
            .filter_map(|a| {
                let t = a.start_time()?;
                DateTime::<Utc>::from_timestamp(t.secs(), t.subsec_nanos())
            })
            .filter(|t| *t >= since)
            .collect())
    }

    async fn set_desired_capacity(&self, group: &str, desired: u32) -> Result<(), AwsError> {
        self.client
            .set_desired_capacity()
            .auto_scaling_group_name(group)
            .desired_capacity(i32::try_from(desired).unwrap_or(i32::MAX))
            .honor_cooldown(false)
            .send()
            .await
            .map_err(|e| from_sdk("SetDesiredCapacity", e))?;
        Ok(())
    }

    async fn terminate_instance(
        &self,
        instance_id: &str,
        decrement_desired: bool,
    ) -> Result<Terminated, AwsError> {
        match self
            .client
            .terminate_instance_in_auto_scaling_group()
            .instance_id(instance_id)
            .should_decrement_desired_capacity(decrement_desired)
            .send()
            .await
        {
            Ok(_) => Ok(Terminated::Started),
            Err(e) => {
                let e = from_sdk("TerminateInstanceInAutoScalingGroup", e);
                if e.kind == AwsErrorKind::NotFound {
                    Ok(Terminated::AlreadyGone)
                } else {
                    Err(e)
                }
            }
        }
    }

    async fn set_instance_protection(
        &self,
        group: &str,
        instance_ids: &[String],
        protected: bool,
    ) -> Result<(), AwsError> {
        if instance_ids.is_empty() {
            return Ok(());
        }
        self.client
            .set_instance_protection()
            .auto_scaling_group_name(group)
            .set_instance_ids(Some(instance_ids.to_vec()))
            .protected_from_scale_in(protected)
            .send()
            .await
            .map_err(|e| from_sdk("SetInstanceProtection", e))?;
        Ok(())
    }

    async fn complete_lifecycle_action(
        &self,
        action: &LifecycleRef,
        result: LifecycleResult,
    ) -> Result<(), AwsError> {
        self.client
            .complete_lifecycle_action()
            .auto_scaling_group_name(&action.group)
            .lifecycle_hook_name(&action.hook)
            .set_lifecycle_action_token(action.token.clone())
            .instance_id(&action.instance_id)
            .lifecycle_action_result(match result {
                LifecycleResult::Continue => "CONTINUE",
                LifecycleResult::Abandon => "ABANDON",
            })
            .send()
            .await
            .map_err(|e| from_sdk("CompleteLifecycleAction", e))?;
        Ok(())
    }

    async fn lifecycle_heartbeat(&self, action: &LifecycleRef) -> Result<(), AwsError> {
        self.client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(&action.group)
            .lifecycle_hook_name(&action.hook)
            .set_lifecycle_action_token(action.token.clone())
            .instance_id(&action.instance_id)
            .send()
            .await
            .map_err(|e| from_sdk("RecordLifecycleActionHeartbeat", e))?;
        Ok(())
    }
}

/// [`Queues`] over the AWS SDK.
#[derive(Debug, Clone)]
pub struct SdkQueues {
    client: aws_sdk_sqs::Client,
}

impl SdkQueues {
    /// From an SDK config.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        SdkQueues {
            client: aws_sdk_sqs::Client::new(config),
        }
    }
}

#[async_trait]
impl Queues for SdkQueues {
    async fn depth(&self, queue_url: &str) -> Result<QueueDepth, AwsError> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(queue_url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| from_sdk("GetQueueAttributes", e))?;
        let read = |name: &A| {
            out.attributes()
                .and_then(|a| a.get(name))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            visible: read(&A::ApproximateNumberOfMessages),
            in_flight: read(&A::ApproximateNumberOfMessagesNotVisible),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_codes_of_every_service_we_call_are_throttled() {
        for code in [
            "Throttling",
            "ThrottlingException",
            "RequestLimitExceeded",
            "AWS.SimpleQueueService.RequestThrottled",
            "RequestThrottled",
        ] {
            assert_eq!(
                classify(Some(code), "Rate exceeded"),
                AwsErrorKind::Throttled,
                "{code}"
            );
        }
    }

    #[test]
    fn a_validation_error_about_a_missing_instance_is_not_found() {
        // Real AWS answer to TerminateInstanceInAutoScalingGroup for a gone instance.
        assert_eq!(
            classify(
                Some("ValidationError"),
                "Instance Id not found - No managed instance found for instance ID: i-0abc"
            ),
            AwsErrorKind::NotFound
        );
        assert_eq!(
            classify(
                Some("ValidationError"),
                "New SetDesiredCapacity value 5 is above max value 4 for the AutoScalingGroup."
            ),
            AwsErrorKind::Invalid
        );
    }

    #[test]
    fn contention_denial_outage_and_the_unknown_are_told_apart() {
        assert_eq!(
            classify(Some("ScalingActivityInProgress"), ""),
            AwsErrorKind::Conflict
        );
        assert_eq!(classify(Some("AccessDenied"), ""), AwsErrorKind::Denied);
        assert_eq!(
            classify(Some("InternalFailure"), ""),
            AwsErrorKind::Unavailable
        );
        assert_eq!(classify(Some("SomethingNew"), ""), AwsErrorKind::Other);
        assert_eq!(classify(None, ""), AwsErrorKind::Other);
        assert_eq!(
            classify(Some("AWS.SimpleQueueService.NonExistentQueue"), ""),
            AwsErrorKind::NotFound
        );
    }

    #[test]
    fn spot_capacity_failures_are_recognised_in_activity_messages() {
        // Status messages of failed launches as the Auto Scaling console and API show them.
        assert!(is_capacity_failure(
            "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity available that matches your request. Launching EC2 instance failed."
        ));
        assert!(is_capacity_failure(
            "We currently do not have sufficient g5.xlarge capacity in the Availability Zone you requested (us-east-1a). Our system will be working on provisioning additional capacity. Launching EC2 instance failed. InsufficientInstanceCapacity"
        ));
        assert!(!is_capacity_failure(
            "The requested configuration is currently not supported. Launching EC2 instance failed."
        ));
        assert!(!is_capacity_failure(
            "You are not authorized to perform this operation."
        ));
    }
}
