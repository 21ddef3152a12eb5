variable "group_names" {
  description = "Auto Scaling group per pool."
  type        = map(string)
}

variable "capacity_types" {
  description = "SPOT or ON_DEMAND per pool."
  type        = map(string)
}

variable "fallbacks" {
  description = "Per pool, the pool that takes its demand after Spot capacity failures, or null."
  type        = map(string)
}

variable "models" {
  description = "Models by name: pool and concurrency."
  type = map(object({
    concurrency = number
    pool        = string
  }))
}

variable "models_namespace" {
  description = "Namespace of the models' Knative Services."
  type        = string
}

variable "namespace" {
  description = "zerospot's namespace (Lease, Events)."
  type        = string
}

variable "request_queue_urls" {
  description = "Request queue URL per model."
  type        = map(string)
}

variable "reply_queue_urls" {
  description = "Queues the dispatcher may reply to."
  type        = list(string)
}

variable "dead_letter_queue_url" {
  description = "The dispatcher's dead-letter queue."
  type        = string
}
