variable "region" {
  description = "AWS region. It needs g4dn, g5 or g6 Spot capacity (us-east-1, us-west-2 and eu-west-1 have all three)."
  type        = string
  default     = "us-east-1"
  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as us-east-1."
  }
}

variable "name" {
  description = "Name of the stack: the EKS cluster, and the prefix of every queue, group, role and function."
  type        = string
  default     = "zerospot"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name))
    error_message = "name must be 3-20 characters: lower-case letters, digits and '-', starting with a letter."
  }
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

# --- network ---------------------------------------------------------------------------------------------

variable "vpc_id" {
  description = "An existing VPC to use. Null (the default) creates one with public subnets and no NAT gateway."
  type        = string
  default     = null
}

variable "subnet_ids" {
  description = "With vpc_id: the subnets (at least two Availability Zones) for the cluster and every node. Their nodes need a route to the internet (a public subnet or a NAT gateway) to pull images and reach AWS APIs."
  type        = list(string)
  default     = []
  validation {
    condition     = length(var.subnet_ids) == 0 || length(var.subnet_ids) >= 2
    error_message = "subnet_ids needs at least two subnets in two Availability Zones (EKS requires it)."
  }
}

variable "vpc_cidr" {
  description = "CIDR of the VPC created when vpc_id is null."
  type        = string
  default     = "10.42.0.0/16"
  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be an IPv4 CIDR of /20 or larger (each Availability Zone gets a quarter of it at most)."
  }
}

variable "az_count" {
  description = "Availability Zones to spread the created subnets over (more zones, more Spot pools to draw from)."
  type        = number
  default     = 3
  validation {
    condition     = var.az_count >= 2 && var.az_count <= 4
    error_message = "az_count must be 2, 3 or 4."
  }
}

# --- EKS ------------------------------------------------------------------------------------------------

variable "kubernetes_version" {
  description = "EKS Kubernetes version (major.minor)."
  type        = string
  default     = "1.34"
  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must look like 1.34."
  }
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "Who may reach the cluster's public API endpoint (still behind IAM authentication). The Lambda functions run outside the VPC and reach it from AWS's public ranges, so narrowing this needs the functions in the VPC."
  type        = list(string)
  default     = ["0.0.0.0/0"]
  validation {
    condition     = alltrue([for c in var.cluster_endpoint_public_access_cidrs : can(cidrhost(c, 0))])
    error_message = "cluster_endpoint_public_access_cidrs must be IPv4 CIDRs."
  }
}

variable "cluster_log_types" {
  description = "Control plane log types sent to CloudWatch Logs (api, audit, authenticator, controllerManager, scheduler). Off by default: an idle cluster still writes audit logs that cost money."
  type        = list(string)
  default     = []
  validation {
    condition     = alltrue([for t in var.cluster_log_types : contains(["api", "audit", "authenticator", "controllerManager", "scheduler"], t)])
    error_message = "cluster_log_types may only hold api, audit, authenticator, controllerManager and scheduler."
  }
}

variable "system_instance_types" {
  description = "Instance types of the on-demand system node group (Knative, zerospot's scaler and dispatcher, CoreDNS)."
  type        = list(string)
  default     = ["t3.medium"]
  validation {
    condition     = length(var.system_instance_types) > 0
    error_message = "system_instance_types needs at least one instance type."
  }
}

variable "system_nodes" {
  description = "Nodes in the system node group (2 keeps the scaler's and the dispatcher's two replicas on different nodes)."
  type        = number
  default     = 2
  validation {
    condition     = var.system_nodes >= 1 && var.system_nodes <= 10
    error_message = "system_nodes must be between 1 and 10."
  }
}

# --- GPU pools ------------------------------------------------------------------------------------------

variable "gpu_instance_types" {
  description = "Instance types of the Spot GPU pool, all with the same number of GPUs (gpus_per_node). More types and zones, fewer capacity failures."
  type        = list(string)
  default     = ["g6.xlarge", "g5.xlarge", "g4dn.xlarge"]
  validation {
    condition     = length(var.gpu_instance_types) > 0 && alltrue([for t in var.gpu_instance_types : can(regex("^(g4dn|g5|g5g|g6|g6e|gr6|p3|p4d|p5)\\.", t))])
    error_message = "gpu_instance_types must be NVIDIA GPU instance types (g4dn, g5, g6, g6e, gr6, p3, p4d, p5)."
  }
}

variable "gpus_per_node" {
  description = "GPUs of each instance type in gpu_instance_types and ondemand_instance_types (1 for every .xlarge to .8xlarge g4dn/g5/g6)."
  type        = number
  default     = 1
  validation {
    condition     = var.gpus_per_node >= 1 && var.gpus_per_node <= 8
    error_message = "gpus_per_node must be between 1 and 8."
  }
}

variable "mps_replicas" {
  description = "MPS slots per GPU: the NVIDIA device plugin's sharing.mps.replicas, which deploy/overlays/mps/nvidia-device-plugin.yaml must repeat (2 there: two 7B models at 4-bit fit a g4dn's 16 GB T4). Each model pod takes one."
  type        = number
  default     = 2
  validation {
    condition     = var.mps_replicas >= 1 && var.mps_replicas <= 48
    error_message = "mps_replicas must be between 1 and 48 (CUDA MPS allows 48 clients per GPU)."
  }
}

variable "gpu_max_nodes" {
  description = "Largest size of the Spot GPU pool."
  type        = number
  default     = 4
  validation {
    condition     = var.gpu_max_nodes >= 1 && var.gpu_max_nodes <= 100
    error_message = "gpu_max_nodes must be between 1 and 100."
  }
}

variable "ondemand_fallback" {
  description = "Create an on-demand GPU pool (min 0) that takes the demand after repeated Spot capacity failures."
  type        = bool
  default     = true
}

variable "ondemand_instance_types" {
  description = "Instance types of the on-demand fallback pool (the group launches the first it can)."
  type        = list(string)
  default     = ["g6.xlarge", "g5.xlarge"]
  validation {
    condition     = length(var.ondemand_instance_types) > 0
    error_message = "ondemand_instance_types needs at least one instance type."
  }
}

variable "ondemand_max_nodes" {
  description = "Largest size of the on-demand fallback pool."
  type        = number
  default     = 2
  validation {
    condition     = var.ondemand_max_nodes >= 1 && var.ondemand_max_nodes <= 100
    error_message = "ondemand_max_nodes must be between 1 and 100."
  }
}

variable "gpu_ami_id" {
  description = "AMI of the GPU nodes. Null (the default) takes EKS's Amazon Linux 2023 NVIDIA AMI for kubernetes_version from its public SSM parameter."
  type        = string
  default     = null
  validation {
    condition     = var.gpu_ami_id == null || can(regex("^ami-[0-9a-f]{8,17}$", var.gpu_ami_id))
    error_message = "gpu_ami_id must be an AMI id (ami-...)."
  }
}

variable "gpu_volume_gb" {
  description = "Root volume of a GPU node, GiB (the Ollama image and the models are pulled onto it)."
  type        = number
  default     = 100
  validation {
    condition     = var.gpu_volume_gb >= 40 && var.gpu_volume_gb <= 2000
    error_message = "gpu_volume_gb must be between 40 and 2000."
  }
}

# --- models and queues ----------------------------------------------------------------------------------

variable "models" {
  description = "Models by the name clients use; each is a Knative Service of that name in namespace `models` (deploy/) with its own request queue `<name>-<model>`. concurrency = the server's OLLAMA_NUM_PARALLEL = the Service's containerConcurrency."
  type = map(object({
    concurrency = optional(number, 4)
    pool        = optional(string, "gpu-spot")
  }))
  default = {
    mistral = {}
    llama2  = {}
  }
  validation {
    condition     = length(var.models) > 0 && alltrue([for k, m in var.models : can(regex("^[a-z][a-z0-9-]{0,40}$", k)) && m.concurrency >= 1 && m.concurrency <= 64])
    error_message = "models: names must be Kubernetes names (lower-case letters, digits, '-'; a letter first), concurrency between 1 and 64."
  }
  validation {
    condition     = alltrue([for m in var.models : contains(["gpu-spot", "gpu-ondemand"], m.pool)])
    error_message = "models: pool must be gpu-spot or gpu-ondemand."
  }
}

variable "request_max_receive_count" {
  description = "Receives of a request before SQS moves it to the dead-letter queue (the dispatcher gives up earlier, after max_attempts, and says why)."
  type        = number
  default     = 10
  validation {
    condition     = var.request_max_receive_count >= 1 && var.request_max_receive_count <= 1000
    error_message = "request_max_receive_count must be between 1 and 1000."
  }
}

variable "request_retention_s" {
  description = "How long a request may wait in its queue, seconds (SQS allows 60 to 1209600)."
  type        = number
  default     = 86400
  validation {
    condition     = var.request_retention_s >= 60 && var.request_retention_s <= 1209600
    error_message = "request_retention_s must be between 60 and 1209600."
  }
}

variable "backlog_alarm_s" {
  description = "Alarm when a model's oldest request has waited this long, seconds (a cold start takes 3-5 minutes)."
  type        = number
  default     = 600
  validation {
    condition     = var.backlog_alarm_s >= 60
    error_message = "backlog_alarm_s must be at least 60."
  }
}

variable "alarm_topic_arn" {
  description = "An SNS topic told when an alarm fires or clears (an operator's e-mail, a pager). Null: the alarms only trigger the queue-depth function."
  type        = string
  default     = null
}

# --- functions ------------------------------------------------------------------------------------------

variable "lambda_dir" {
  description = "Folder holding spot-interruption/bootstrap.zip and queue-depth/bootstrap.zip from `cargo lambda build --release --arm64 --output-format zip` (its --lambda-dir, by default target/lambda). Relative paths are relative to this folder (infra/)."
  type        = string
  default     = "../target/lambda"
}

variable "dry_run" {
  description = "Run the Lambda functions with ZEROSPOT_DRY_RUN=true: they log every write instead of making it."
  type        = bool
  default     = false
}

variable "write_config_file" {
  description = "Also write the rendered zerospot configuration to this path (for `kubectl create configmap` or deploy/). Null: only the output zerospot_config_yaml."
  type        = string
  default     = null
}
