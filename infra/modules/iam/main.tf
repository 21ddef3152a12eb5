# zerospot's own roles, each granted exactly the AWS actions its Rust code calls (the structure test,
# tests/infra/check.py, compares them with the calls in scaler/effects/src/aws.rs and
# scaler/custody/src/queue.rs and fails on any difference):
#   scaler (IRSA, zerospot/zerospot-scaler)         the Auto Scaling calls and the queues' depth (aws.rs)
#   dispatcher (IRSA, zerospot/zerospot-dispatcher) receive, renew, delete requests; send replies and
#                                                   dead letters (queue.rs)
#   spot-interruption function                     every call of aws.rs (it runs the scaler's Responder)
#   queue-depth function                           the describe calls, the depth and SetDesiredCapacity
#                                                   only (Scope::ScaleUpOnly keeps no other action)
# plus, for the functions, what the Lambda service itself does with the function's role: write its logs,
# send failed asynchronous events to the dead-letter queue, and (queue-depth) poll its SQS event source.
# Mutating Auto Scaling actions are limited to the pools' groups; the describe calls support no
# resource-level permission.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  partition = data.aws_partition.current.partition
  log_group = "arn:${local.partition}:logs:${data.aws_region.current.id}:${data.aws_caller_identity.current.account_id}:log-group:/aws/lambda"

  describe_groups = {
    Sid      = "DescribeGroups"
    Effect   = "Allow"
    Action   = ["autoscaling:DescribeAutoScalingGroups", "autoscaling:DescribeScalingActivities"]
    Resource = "*"
  }
  queue_depth = {
    Sid      = "QueueDepth"
    Effect   = "Allow"
    Action   = ["sqs:GetQueueAttributes"]
    Resource = var.request_queue_arns
  }
  act_on_groups = {
    Sid    = "ActOnPoolGroups"
    Effect = "Allow"
    Action = [
      "autoscaling:SetDesiredCapacity",
      "autoscaling:TerminateInstanceInAutoScalingGroup",
      "autoscaling:SetInstanceProtection",
      "autoscaling:CompleteLifecycleAction",
      "autoscaling:RecordLifecycleActionHeartbeat",
    ]
    Resource = var.group_arns
  }
}

# --- IRSA: the scaler and the dispatcher -------------------------------------------------------------------

data "aws_iam_policy_document" "irsa" {
  for_each = toset(["scaler", "dispatcher"])
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.namespace}:zerospot-${each.key}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "scaler" {
  name               = "${var.name}-scaler"
  description        = "zerospot companion scaler (ServiceAccount ${var.namespace}/zerospot-scaler)"
  assume_role_policy = data.aws_iam_policy_document.irsa["scaler"].json
}

resource "aws_iam_role_policy" "scaler" {
  name = "zerospot-scaler"
  role = aws_iam_role.scaler.id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [local.describe_groups, local.act_on_groups, local.queue_depth]
  })
}

resource "aws_iam_role" "dispatcher" {
  name               = "${var.name}-dispatcher"
  description        = "zerospot dispatcher (ServiceAccount ${var.namespace}/zerospot-dispatcher)"
  assume_role_policy = data.aws_iam_policy_document.irsa["dispatcher"].json
}

resource "aws_iam_role_policy" "dispatcher" {
  name = "zerospot-dispatcher"
  role = aws_iam_role.dispatcher.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "ServeRequests"
        Effect   = "Allow"
        Action   = ["sqs:ReceiveMessage", "sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]
        Resource = var.request_queue_arns
      },
      {
        Sid      = "RepliesAndDeadLetters"
        Effect   = "Allow"
        Action   = ["sqs:SendMessage"]
        Resource = concat(var.reply_queue_arns, [var.dead_letter_queue])
      },
    ]
  })
}

# --- the Lambda functions -------------------------------------------------------------------------------

data "aws_iam_policy_document" "lambda" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "spot_interruption" {
  name               = "${var.name}-spot-interruption"
  description        = "zerospot spot-interruption Lambda function"
  assume_role_policy = data.aws_iam_policy_document.lambda.json
}

resource "aws_iam_role_policy" "spot_interruption" {
  name = "zerospot-spot-interruption"
  role = aws_iam_role.spot_interruption.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      local.describe_groups, local.act_on_groups, local.queue_depth,
      {
        Sid      = "LambdaLogs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = "${local.log_group}/${var.name}-spot-interruption:*"
      },
      {
        Sid      = "LambdaDeadLetters"
        Effect   = "Allow"
        Action   = ["sqs:SendMessage"]
        Resource = var.events_dlq_arn
      },
    ]
  })
}

resource "aws_iam_role" "queue_depth" {
  name               = "${var.name}-queue-depth"
  description        = "zerospot queue-depth Lambda function"
  assume_role_policy = data.aws_iam_policy_document.lambda.json
}

resource "aws_iam_role_policy" "queue_depth" {
  name = "zerospot-queue-depth"
  role = aws_iam_role.queue_depth.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      local.describe_groups, local.queue_depth,
      {
        Sid      = "ScaleUpPoolGroups"
        Effect   = "Allow"
        Action   = ["autoscaling:SetDesiredCapacity"]
        Resource = var.group_arns
      },
      {
        Sid      = "LambdaLogs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = "${local.log_group}/${var.name}-queue-depth:*"
      },
      {
        Sid      = "LambdaDeadLetters"
        Effect   = "Allow"
        Action   = ["sqs:SendMessage"]
        Resource = var.events_dlq_arn
      },
      {
        Sid      = "LambdaEventSource"
        Effect   = "Allow"
        Action   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"]
        Resource = var.notification_queue
      },
    ]
  })
}
