variable "name" {
  description = "Prefix of the rule names (the events dead-letter queue's policy admits <name>-*)."
  type        = string
}

variable "spot_function_arn" {
  description = "The spot-interruption function."
  type        = string
}

variable "spot_function_name" {
  description = "Its name (for the invoke permissions)."
  type        = string
}

variable "queue_function_arn" {
  description = "The queue-depth function."
  type        = string
}

variable "queue_function_name" {
  description = "Its name."
  type        = string
}

variable "group_names" {
  description = "The pools' Auto Scaling groups (lifecycle events of other groups are not routed)."
  type        = list(string)
}

variable "alarm_names" {
  description = "Alarms whose state changes trigger a scale-up pass."
  type        = list(string)
}

variable "dead_letter_arn" {
  description = "Dead-letter queue of every target."
  type        = string
}
