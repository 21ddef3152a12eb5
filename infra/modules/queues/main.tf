# Request custody: one request queue per model (SQS counts per queue, so each model's depth is its own
# signal), the replies queue, and the dead-letter queue they redrive to, which is also the dispatcher's
# dead_letter_queue. Plus the first-request path of the queue-depth function: an SNS topic that fans a
# published request out to its model's queue (filtered on the `model` attribute) and to a notification
# queue the function reads (functions/README.md). And the dead-letter queue of the EventBridge targets and
# the functions' failed asynchronous invocations. Every queue is encrypted with SQS-managed keys (SSE-SQS):
# free, and usable by SNS and EventBridge, which the AWS-managed KMS key for SQS is not.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account = data.aws_caller_identity.current.account_id
  # EventBridge rules of this stack (modules/events names them "<name>-...").
  rule_arns = "arn:${data.aws_partition.current.partition}:events:${data.aws_region.current.id}:${local.account}:rule/${var.name}-*"
}

resource "aws_sqs_queue" "requests_dlq" {
  name                      = "${var.name}-requests-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "requests" {
  for_each                  = toset(var.models)
  name                      = "${var.name}-${each.key}"
  message_retention_seconds = var.request_retention_s
  # The dispatcher sets its own visibility on receive (60 s by default) and renews it at half-time.
  visibility_timeout_seconds = 60
  receive_wait_time_seconds  = 1
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.requests_dlq.arn
    maxReceiveCount     = var.request_max_receive_count
  })
}

resource "aws_sqs_queue" "replies" {
  name                      = "${var.name}-replies"
  message_retention_seconds = 3600
  receive_wait_time_seconds = 20
  sqs_managed_sse_enabled   = true
}

# Failed EventBridge deliveries, the functions' failed asynchronous invocations, and notifications that
# failed maxReceiveCount times: an operator reads them here (an alarm fires on it, modules/alarms).
resource "aws_sqs_queue" "events_dlq" {
  name                      = "${var.name}-events-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue_policy" "events_dlq" {
  queue_url = aws_sqs_queue.events_dlq.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "EventBridgeTargetsDeadLetters"
      Effect    = "Allow"
      Principal = { Service = "events.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = aws_sqs_queue.events_dlq.arn
      Condition = { ArnLike = { "aws:SourceArn" = local.rule_arns } }
    }]
  })
}

# Copies of published requests: the queue-depth function's SQS event source. Its visibility timeout is
# six times the function's timeout, as Lambda advises for SQS event sources.
resource "aws_sqs_queue" "notifications" {
  name                       = "${var.name}-notifications"
  message_retention_seconds  = 3600
  visibility_timeout_seconds = 180
  sqs_managed_sse_enabled    = true
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.events_dlq.arn
    maxReceiveCount     = 3
  })
}

resource "aws_sns_topic" "requests" {
  name              = "${var.name}-requests"
  kms_master_key_id = "alias/aws/sns"
}

resource "aws_sns_topic_subscription" "requests" {
  for_each             = aws_sqs_queue.requests
  topic_arn            = aws_sns_topic.requests.arn
  protocol             = "sqs"
  endpoint             = each.value.arn
  raw_message_delivery = true
  filter_policy        = jsonencode({ model = [each.key] })
}

resource "aws_sns_topic_subscription" "notifications" {
  topic_arn            = aws_sns_topic.requests.arn
  protocol             = "sqs"
  endpoint             = aws_sqs_queue.notifications.arn
  raw_message_delivery = true
}

resource "aws_sqs_queue_policy" "from_topic" {
  for_each  = merge({ for m, q in aws_sqs_queue.requests : m => q }, { "_notifications" = aws_sqs_queue.notifications })
  queue_url = each.value.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "RequestsTopic"
      Effect    = "Allow"
      Principal = { Service = "sns.amazonaws.com" }
      Action    = "sqs:SendMessage"
      Resource  = each.value.arn
      Condition = { ArnEquals = { "aws:SourceArn" = aws_sns_topic.requests.arn } }
    }]
  })
}
