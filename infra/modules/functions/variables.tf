variable "name" {
  description = "Prefix of the function names (<name>-spot-interruption, <name>-queue-depth)."
  type        = string
}

variable "lambda_dir" {
  description = "Folder with spot-interruption/bootstrap.zip and queue-depth/bootstrap.zip."
  type        = string
}

variable "spot_role_arn" {
  description = "Role of the spot-interruption function."
  type        = string
}

variable "queue_role_arn" {
  description = "Role of the queue-depth function."
  type        = string
}

variable "config_yaml" {
  description = "The scaler's configuration (ZEROSPOT_CONFIG; Lambda allows 4 KB of variables in all)."
  type        = string
  validation {
    condition     = length(var.config_yaml) < 2400
    error_message = "The configuration is over 2400 bytes; with the cluster CA (about 1.5 KB) it would pass the 4 KB Lambda allows for all variables. Pack it into the zips instead (cargo lambda build --include zerospot.yaml)."
  }
}

variable "cluster_name" {
  description = "ZEROSPOT_EKS_CLUSTER."
  type        = string
}

variable "cluster_endpoint" {
  description = "ZEROSPOT_EKS_ENDPOINT."
  type        = string
}

variable "cluster_ca" {
  description = "ZEROSPOT_EKS_CA."
  type        = string
}

variable "dead_letter_arn" {
  description = "Dead-letter queue of failed asynchronous invocations."
  type        = string
}

variable "notification_queue" {
  description = "The queue-depth function's SQS event source."
  type        = string
}

variable "dry_run" {
  description = "ZEROSPOT_DRY_RUN."
  type        = bool
}
