output "scaler_role_arn" {
  description = "Annotate ServiceAccount zerospot/zerospot-scaler with eks.amazonaws.com/role-arn = this."
  value       = aws_iam_role.scaler.arn
}

output "dispatcher_role_arn" {
  description = "Annotate ServiceAccount zerospot/zerospot-dispatcher with eks.amazonaws.com/role-arn = this."
  value       = aws_iam_role.dispatcher.arn
}

output "spot_interruption_role_arn" {
  description = "The spot-interruption function's role."
  value       = aws_iam_role.spot_interruption.arn
}

output "queue_depth_role_arn" {
  description = "The queue-depth function's role."
  value       = aws_iam_role.queue_depth.arn
}
