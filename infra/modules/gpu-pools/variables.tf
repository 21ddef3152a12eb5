variable "name" {
  description = "Prefix of the groups and launch templates."
  type        = string
}

variable "pools" {
  description = "Pools by name (the name is the node group label): capacity type SPOT or ON_DEMAND, instance types (same GPU count), largest size."
  type = map(object({
    capacity_type  = string
    instance_types = list(string)
    max_nodes      = number
  }))
  validation {
    condition     = alltrue([for p in var.pools : contains(["SPOT", "ON_DEMAND"], p.capacity_type) && length(p.instance_types) > 0 && p.max_nodes >= 1])
    error_message = "pools: capacity_type must be SPOT or ON_DEMAND, with at least one instance type and max_nodes >= 1."
  }
}

variable "cluster_name" {
  description = "EKS cluster the nodes join."
  type        = string
}

variable "cluster_endpoint" {
  description = "Its API endpoint."
  type        = string
}

variable "cluster_ca" {
  description = "Its certificate authority data (base64)."
  type        = string
}

variable "cluster_service_cidr" {
  description = "Its service CIDR."
  type        = string
}

variable "cluster_security_group_id" {
  description = "The EKS cluster security group (nodes and control plane talk through it)."
  type        = string
}

variable "node_instance_profile_arn" {
  description = "Instance profile of the node role (joined to the cluster by an EC2_LINUX access entry)."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets of the groups (every Availability Zone given widens the Spot pools)."
  type        = list(string)
}

variable "ami_id" {
  description = "GPU AMI; null takes EKS's AL2023 NVIDIA AMI for kubernetes_version."
  type        = string
  default     = null
}

variable "kubernetes_version" {
  description = "For the AMI's SSM parameter."
  type        = string
}

variable "volume_gb" {
  description = "Root volume size, GiB."
  type        = number
}

variable "gpus_per_node" {
  description = "GPUs per instance."
  type        = number
}

variable "mps_replicas" {
  description = "MPS replicas per GPU (the device plugin's sharing config)."
  type        = number
}
