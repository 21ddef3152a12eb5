output "rule_names" {
  description = "Every rule, by kind."
  value       = merge({ for k, r in aws_cloudwatch_event_rule.rule : k => r.name }, { queue-depth-schedule = aws_cloudwatch_event_rule.schedule.name })
}
