# zerospot's Lambda functions (functions/README.md), from the zips of
# `cargo lambda build --release --arm64 --output-format zip` (provided.al2023 on Graviton):
#   spot-interruption  EventBridge rules (modules/events) invoke it asynchronously; 3 minutes, as a drain
#                      may wait out a two-minute Spot notice; failed events go to the dead-letter queue
#   queue-depth        the notification queue (copies of published requests), the schedule and the alarms;
#                      scale-up only, 30 s
# Both read the scaler's configuration from ZEROSPOT_CONFIG and reach the cluster with an EKS token signed
# with their role (ZEROSPOT_EKS_*), mapped to Kubernetes by an access entry (modules/eks).

locals {
  functions = {
    spot-interruption = {
      role        = var.spot_role_arn
      timeout     = 180
      memory      = 256
      concurrency = 10
    }
    queue-depth = {
      role        = var.queue_role_arn
      timeout     = 30
      memory      = 256
      concurrency = 2
    }
  }
}

resource "aws_cloudwatch_log_group" "fn" {
  for_each          = local.functions
  name              = "/aws/lambda/${var.name}-${each.key}"
  retention_in_days = 30
  #checkov:skip=CKV_AWS_158:the functions log only instance ids, node names and decisions; CloudWatch Logs encrypts at rest with its own keys
  #checkov:skip=CKV_AWS_338:30 days of decision logs are enough to debug a scaling event; a year costs storage for nothing
}

resource "aws_lambda_function" "fn" {
  for_each                       = local.functions
  function_name                  = "${var.name}-${each.key}"
  description                    = "zerospot ${each.key}"
  role                           = each.value.role
  filename                       = "${var.lambda_dir}/${each.key}/bootstrap.zip"
  source_code_hash               = filebase64sha256("${var.lambda_dir}/${each.key}/bootstrap.zip")
  runtime                        = "provided.al2023"
  handler                        = "bootstrap"
  architectures                  = ["arm64"]
  timeout                        = each.value.timeout
  memory_size                    = each.value.memory
  reserved_concurrent_executions = each.value.concurrency

  environment {
    variables = {
      ZEROSPOT_CONFIG       = var.config_yaml
      ZEROSPOT_EKS_CLUSTER  = var.cluster_name
      ZEROSPOT_EKS_ENDPOINT = var.cluster_endpoint
      ZEROSPOT_EKS_CA       = var.cluster_ca
      ZEROSPOT_DRY_RUN      = var.dry_run ? "true" : "false"
      RUST_LOG              = "info"
    }
  }

  dead_letter_config {
    target_arn = var.dead_letter_arn
  }

  depends_on = [aws_cloudwatch_log_group.fn]
  #checkov:skip=CKV_AWS_117:outside the VPC on purpose: the functions must scale the GPU groups up when nothing in the cluster or its network works, and a VPC would need a NAT gateway or endpoints that cost money while idle
  #checkov:skip=CKV_AWS_50:X-Ray would add an action no zerospot code calls (xray:PutTraceSegments) to the roles; the functions log their timings
  #checkov:skip=CKV_AWS_173:the variables hold the cluster's public endpoint and CA and the queue URLs, no secret; Lambda encrypts them at rest with its own key
  #checkov:skip=CKV_AWS_272:the zips are built from this repository by cargo lambda; a code-signing profile needs AWS Signer, not available to the build
}

# Copies of published requests: one pass per batch, no batching window (speed matters more than batching).
resource "aws_lambda_event_source_mapping" "notifications" {
  event_source_arn                   = var.notification_queue
  function_name                      = aws_lambda_function.fn["queue-depth"].arn
  batch_size                         = 10
  maximum_batching_window_in_seconds = 0
  function_response_types            = ["ReportBatchItemFailures"]
  scaling_config {
    maximum_concurrency = 2
  }
}

# Asynchronous invocations (EventBridge): two retries, then the dead-letter queue.
resource "aws_lambda_function_event_invoke_config" "fn" {
  for_each                     = local.functions
  function_name                = aws_lambda_function.fn[each.key].function_name
  maximum_retry_attempts       = 2
  maximum_event_age_in_seconds = 3600
}
