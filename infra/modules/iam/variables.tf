variable "name" {
  description = "Prefix of the role names."
  type        = string
}

variable "oidc_provider_arn" {
  description = "The cluster's IAM OIDC provider (IRSA)."
  type        = string
}

variable "oidc_issuer" {
  description = "The cluster's OIDC issuer without https:// (oidc.eks.REGION.amazonaws.com/id/ID)."
  type        = string
}

variable "namespace" {
  description = "Namespace of the zerospot-scaler and zerospot-dispatcher ServiceAccounts."
  type        = string
}

variable "group_arns" {
  description = "ARNs of the pools' Auto Scaling groups."
  type        = list(string)
}

variable "request_queue_arns" {
  description = "ARNs of the models' request queues."
  type        = list(string)
}

variable "reply_queue_arns" {
  description = "ARNs of the queues the dispatcher may reply to."
  type        = list(string)
}

variable "dead_letter_queue" {
  description = "ARN of the dispatcher's dead-letter queue."
  type        = string
}

variable "events_dlq_arn" {
  description = "ARN of the functions' dead-letter queue."
  type        = string
}

variable "notification_queue" {
  description = "ARN of the queue-depth function's SQS event source."
  type        = string
}
