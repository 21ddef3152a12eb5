variable "name" {
  description = "Prefix of every queue and topic."
  type        = string
}

variable "models" {
  description = "Model names; each gets the request queue <name>-<model>."
  type        = list(string)
}

variable "request_max_receive_count" {
  description = "Receives of a request before SQS moves it to the dead-letter queue."
  type        = number
}

variable "request_retention_s" {
  description = "Retention of the request queues, seconds."
  type        = number
}
