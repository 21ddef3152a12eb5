output "spot_interruption_arn" {
  description = "The spot-interruption function."
  value       = aws_lambda_function.fn["spot-interruption"].arn
}

output "spot_interruption_name" {
  description = "Its name."
  value       = aws_lambda_function.fn["spot-interruption"].function_name
}

output "queue_depth_arn" {
  description = "The queue-depth function."
  value       = aws_lambda_function.fn["queue-depth"].arn
}

output "queue_depth_name" {
  description = "Its name."
  value       = aws_lambda_function.fn["queue-depth"].function_name
}
