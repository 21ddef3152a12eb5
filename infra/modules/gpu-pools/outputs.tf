output "group_names" {
  description = "Auto Scaling group name per pool."
  value       = { for pool, g in aws_autoscaling_group.pool : pool => g.name }
}

output "group_arns" {
  description = "Auto Scaling group ARN per pool."
  value       = { for pool, g in aws_autoscaling_group.pool : pool => g.arn }
}
