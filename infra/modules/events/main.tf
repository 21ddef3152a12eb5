# One EventBridge rule per event kind the functions handle (zerospot_core::event, the `explain-event`
# table in the top-level README), each target with a retry policy and the dead-letter queue. The
# structure test (tests/infra/check.py) fails when the parser learns a kind no rule routes here.

locals {
  spot     = { arn = var.spot_function_arn, name = var.spot_function_name }
  scale_up = { arn = var.queue_function_arn, name = var.queue_function_name }

  rules = {
    spot-interruption-warning = {
      description = "Spot interruption warnings: cordon, taint and drain within the two minutes"
      target      = local.spot
      pattern     = { source = ["aws.ec2"], "detail-type" = ["EC2 Spot Instance Interruption Warning"] }
    }
    rebalance-recommendation = {
      description = "Rebalance recommendations: cordon and pre-launch a replacement"
      target      = local.spot
      pattern     = { source = ["aws.ec2"], "detail-type" = ["EC2 Instance Rebalance Recommendation"] }
    }
    instance-state-change = {
      description = "Instances stopping or terminated: drain, or remove the Node and its pods"
      target      = local.spot
      pattern = {
        source        = ["aws.ec2"]
        "detail-type" = ["EC2 Instance State-change Notification"]
        detail        = { state = ["stopping", "shutting-down", "stopped", "terminated"] }
      }
    }
    lifecycle-actions = {
      description = "The pools' launch and terminate lifecycle hooks and failed launches"
      target      = local.spot
      pattern = {
        source = ["aws.autoscaling"]
        "detail-type" = [
          "EC2 Instance-launch Lifecycle Action",
          "EC2 Instance-terminate Lifecycle Action",
          "EC2 Instance Launch Unsuccessful",
        ]
        detail = { AutoScalingGroupName = var.group_names }
      }
    }
    health-scheduled-change = {
      description = "AWS Health scheduled changes of EC2 instances: drain before the maintenance"
      target      = local.spot
      pattern = {
        source        = ["aws.health"]
        "detail-type" = ["AWS Health Event"]
        detail        = { service = ["EC2"], eventTypeCategory = ["scheduledChange"] }
      }
    }
    backlog-alarm = {
      description = "A model's depth or backlog alarm changed state: scale up from the queues' depth"
      target      = local.scale_up
      pattern = {
        source        = ["aws.cloudwatch"]
        "detail-type" = ["CloudWatch Alarm State Change"]
        detail        = { alarmName = var.alarm_names }
      }
    }
  }
}

resource "aws_cloudwatch_event_rule" "rule" {
  for_each      = local.rules
  name          = "${var.name}-${each.key}"
  description   = each.value.description
  event_pattern = jsonencode(each.value.pattern)
}

# The safety net: a scale-up pass every minute, whatever else failed.
resource "aws_cloudwatch_event_rule" "schedule" {
  name                = "${var.name}-queue-depth-schedule"
  description         = "Scheduled Event: a scale-up pass from the queues' depth every minute"
  schedule_expression = "rate(1 minute)"
}

locals {
  targets = merge(
    { for k, r in local.rules : k => { rule = aws_cloudwatch_event_rule.rule[k], target = r.target } },
    { queue-depth-schedule = { rule = aws_cloudwatch_event_rule.schedule, target = local.scale_up } },
  )
}

resource "aws_cloudwatch_event_target" "target" {
  for_each  = local.targets
  rule      = each.value.rule.name
  target_id = "zerospot"
  arn       = each.value.target.arn

  retry_policy {
    maximum_retry_attempts       = 4
    maximum_event_age_in_seconds = 600
  }

  dead_letter_config {
    arn = var.dead_letter_arn
  }
}

resource "aws_lambda_permission" "events" {
  for_each      = local.targets
  statement_id  = "events-${each.key}"
  action        = "lambda:InvokeFunction"
  function_name = each.value.target.name
  principal     = "events.amazonaws.com"
  source_arn    = each.value.rule.arn
}
