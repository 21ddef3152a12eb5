output "scale_up_alarm_names" {
  description = "The depth and backlog alarms (their state changes trigger the queue-depth function)."
  value       = concat([for a in aws_cloudwatch_metric_alarm.depth : a.alarm_name], [for a in aws_cloudwatch_metric_alarm.backlog : a.alarm_name])
}
