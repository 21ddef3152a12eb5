variable "name" {
  description = "Cluster name and role name prefix."
  type        = string
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets of the control plane's network interfaces and the system nodes."
  type        = list(string)
}

variable "public_access_cidrs" {
  description = "CIDRs allowed to the public API endpoint."
  type        = list(string)
}

variable "log_types" {
  description = "Control plane log types."
  type        = list(string)
}

variable "system_instance_types" {
  description = "Instance types of the system node group."
  type        = list(string)
}

variable "system_nodes" {
  description = "Desired size of the system node group."
  type        = number
}

variable "function_role_arns" {
  description = "The Lambda functions' roles, mapped to function_kubernetes_group."
  type        = list(string)
}

variable "function_kubernetes_group" {
  description = "Kubernetes group of the functions' roles (deploy/ binds its RBAC)."
  type        = string
}
