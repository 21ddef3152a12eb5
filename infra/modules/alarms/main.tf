# CloudWatch alarms on the queues:
#   depth      a model has requests waiting (1 or more visible for a minute): its state change triggers a
#              scale-up pass of the queue-depth function (modules/events), in case the scaler missed it.
#   backlog    a model's oldest request has waited longer than backlog_alarm_s: capacity is not coming
#              (Spot shortage, stuck nodes, the scaler down). Its state changes also trigger a scale-up
#              pass of the queue-depth function (modules/events).
#   dead letters  anything in a dead-letter queue: a request given up, an event not delivered.
# SQS publishes these metrics once a minute, so they are a safety net, not the first-request path.

locals {
  actions = var.topic_arn == null ? [] : [var.topic_arn]
}

resource "aws_cloudwatch_metric_alarm" "depth" {
  for_each            = var.request_queues
  alarm_name          = "${var.name}-depth-${each.key}"
  alarm_description   = "Requests for ${each.key} are waiting in ${each.value}"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = each.value }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = 1
  treat_missing_data  = "notBreaching"
}

resource "aws_cloudwatch_metric_alarm" "backlog" {
  for_each            = var.request_queues
  alarm_name          = "${var.name}-backlog-${each.key}"
  alarm_description   = "Requests for ${each.key} have waited over ${var.backlog_alarm_s} s in ${each.value}"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = each.value }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.backlog_alarm_s
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.actions
  ok_actions          = local.actions
}

resource "aws_cloudwatch_metric_alarm" "dead_letters" {
  for_each            = toset(var.dead_letter_queues)
  alarm_name          = "${var.name}-dead-letters-${each.key}"
  alarm_description   = "Messages in the dead-letter queue ${each.key}: read them, their zerospot-reason attribute says why"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = each.key }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.actions
}
