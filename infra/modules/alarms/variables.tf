variable "name" {
  description = "Prefix of the alarm names."
  type        = string
}

variable "request_queues" {
  description = "Request queue name per model."
  type        = map(string)
}

variable "dead_letter_queues" {
  description = "Names of the dead-letter queues."
  type        = list(string)
}

variable "backlog_alarm_s" {
  description = "Age of the oldest request that raises the backlog alarm, seconds."
  type        = number
}

variable "topic_arn" {
  description = "SNS topic told of alarm changes, or null."
  type        = string
  default     = null
}
