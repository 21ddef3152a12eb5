output "request_queue_urls" {
  description = "Request queue URL per model."
  value       = { for m, q in aws_sqs_queue.requests : m => q.id }
}

output "request_queue_arns" {
  description = "Request queue ARN per model."
  value       = { for m, q in aws_sqs_queue.requests : m => q.arn }
}

output "request_queue_names" {
  description = "Request queue name per model."
  value       = { for m, q in aws_sqs_queue.requests : m => q.name }
}

output "requests_dlq_url" {
  description = "Dead-letter queue of the request queues and of the dispatcher."
  value       = aws_sqs_queue.requests_dlq.id
}

output "requests_dlq_arn" {
  description = "Its ARN."
  value       = aws_sqs_queue.requests_dlq.arn
}

output "requests_dlq_name" {
  description = "Its name."
  value       = aws_sqs_queue.requests_dlq.name
}

output "reply_queue_url" {
  description = "The replies queue (the dispatcher's allowed reply_to)."
  value       = aws_sqs_queue.replies.id
}

output "reply_queue_arn" {
  description = "Its ARN."
  value       = aws_sqs_queue.replies.arn
}

output "events_dlq_arn" {
  description = "Dead-letter queue of EventBridge targets, failed asynchronous invocations and notifications."
  value       = aws_sqs_queue.events_dlq.arn
}

output "events_dlq_name" {
  description = "Its name."
  value       = aws_sqs_queue.events_dlq.name
}

output "notification_queue_arn" {
  description = "The queue-depth function's SQS event source."
  value       = aws_sqs_queue.notifications.arn
}

output "requests_topic_arn" {
  description = "Publish requests here (message attribute `model`) for the fastest scale-from-zero."
  value       = aws_sns_topic.requests.arn
}
