# The apply test's root module (tests/infra/check.py apply): infra/main.tf's wiring of every module that
# moto and the AWS provider 3.39 can create, with the EKS module replaced by stand-ins (moto's EKS is
# bookkeeping only, and provider 3.39 predates access entries). check.py copies infra/modules next to it
# and adds the provider (moto's endpoints, version 3.39.0). The structure test checks that each module call
# here passes the same arguments as infra/main.tf's.

variable "lambda_dir" {
  description = "Folder with spot-interruption/bootstrap.zip and queue-depth/bootstrap.zip."
  type        = string
}

locals {
  name          = "zs-apply"
  spot_pool     = "gpu-spot"
  ondemand_pool = "gpu-ondemand"
  models = {
    mistral = { concurrency = 4, pool = "gpu-spot" }
    llama2  = { concurrency = 2, pool = "gpu-spot" }
  }
  pools = {
    (local.spot_pool) = {
      capacity_type  = "SPOT"
      instance_types = ["g6.xlarge", "g5.xlarge", "g4dn.xlarge"]
      max_nodes      = 4
      fallback       = local.ondemand_pool
    }
    (local.ondemand_pool) = {
      capacity_type  = "ON_DEMAND"
      instance_types = ["g6.xlarge"]
      max_nodes      = 2
      fallback       = null
    }
  }
  # Stand-ins for modules/eks's outputs.
  cluster_name = local.name
  oidc_issuer  = "oidc.eks.us-east-1.amazonaws.com/id/ZEROSPOTAPPLYTEST"
}

# --- stand-ins for modules/eks -----------------------------------------------------------------------------

resource "aws_iam_openid_connect_provider" "stand_in" {
  url             = "https://${local.oidc_issuer}"
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = ["9e99a48a9960b14926bb7f3b02e22da2b0ab7280"]
}

resource "aws_iam_role" "node" {
  name = "${local.name}-node"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "sts:AssumeRole", Principal = { Service = "ec2.amazonaws.com" } }]
  })
}

resource "aws_iam_instance_profile" "node" {
  name = "${local.name}-node"
  role = aws_iam_role.node.name
}

resource "aws_security_group" "cluster" {
  name        = "${local.name}-cluster"
  description = "stand-in for the EKS cluster security group"
  vpc_id      = module.network[0].vpc_id
}

# --- infra/main.tf's modules ----------------------------------------------------------------------------

module "network" {
  source   = "./modules/network"
  count    = 1
  name     = local.name
  cidr     = "10.42.0.0/16"
  az_count = 3
}

locals {
  subnet_ids = module.network[0].subnet_ids
}

module "queues" {
  source                    = "./modules/queues"
  name                      = local.name
  models                    = keys(local.models)
  request_max_receive_count = 10
  request_retention_s       = 86400
}

module "gpu_pools" {
  source                    = "./modules/gpu-pools"
  name                      = local.name
  cluster_name              = local.cluster_name
  cluster_endpoint          = "https://ZEROSPOT.gr7.us-east-1.eks.amazonaws.com"
  cluster_ca                = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"
  cluster_service_cidr      = "172.20.0.0/16"
  cluster_security_group_id = aws_security_group.cluster.id
  node_instance_profile_arn = aws_iam_instance_profile.node.arn
  subnet_ids                = local.subnet_ids
  ami_id                    = "ami-0123456789abcdef0"
  kubernetes_version        = "1.34"
  volume_gb                 = 100
  gpus_per_node             = 1
  mps_replicas              = 4
  pools                     = { for pool, p in local.pools : pool => { capacity_type = p.capacity_type, instance_types = p.instance_types, max_nodes = p.max_nodes } }
}

module "iam" {
  source             = "./modules/iam"
  name               = local.name
  oidc_provider_arn  = aws_iam_openid_connect_provider.stand_in.arn
  oidc_issuer        = local.oidc_issuer
  namespace          = "zerospot"
  group_arns         = values(module.gpu_pools.group_arns)
  request_queue_arns = values(module.queues.request_queue_arns)
  reply_queue_arns   = [module.queues.reply_queue_arn]
  dead_letter_queue  = module.queues.requests_dlq_arn
  events_dlq_arn     = module.queues.events_dlq_arn
  notification_queue = module.queues.notification_queue_arn
}

module "config" {
  source                = "./modules/config"
  group_names           = module.gpu_pools.group_names
  capacity_types        = { for pool, p in local.pools : pool => p.capacity_type }
  fallbacks             = { for pool, p in local.pools : pool => p.fallback }
  models                = local.models
  models_namespace      = "models"
  namespace             = "zerospot"
  request_queue_urls    = module.queues.request_queue_urls
  reply_queue_urls      = [module.queues.reply_queue_url]
  dead_letter_queue_url = module.queues.requests_dlq_url
}

module "functions" {
  source             = "./modules/functions"
  name               = local.name
  lambda_dir         = var.lambda_dir
  spot_role_arn      = module.iam.spot_interruption_role_arn
  queue_role_arn     = module.iam.queue_depth_role_arn
  config_yaml        = module.config.yaml
  cluster_name       = local.cluster_name
  cluster_endpoint   = "https://ZEROSPOT.gr7.us-east-1.eks.amazonaws.com"
  cluster_ca         = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"
  dead_letter_arn    = module.queues.events_dlq_arn
  notification_queue = module.queues.notification_queue_arn
  dry_run            = false
}

module "alarms" {
  source             = "./modules/alarms"
  name               = local.name
  request_queues     = module.queues.request_queue_names
  dead_letter_queues = [module.queues.requests_dlq_name, module.queues.events_dlq_name]
  backlog_alarm_s    = 600
  topic_arn          = null
}

module "events" {
  source              = "./modules/events"
  name                = local.name
  spot_function_arn   = module.functions.spot_interruption_arn
  spot_function_name  = module.functions.spot_interruption_name
  queue_function_arn  = module.functions.queue_depth_arn
  queue_function_name = module.functions.queue_depth_name
  group_names         = values(module.gpu_pools.group_names)
  alarm_names         = module.alarms.scale_up_alarm_names
  dead_letter_arn     = module.queues.events_dlq_arn
}

# --- what the test reads back -------------------------------------------------------------------------------

output "zerospot_config_yaml" {
  value = module.config.yaml
}

output "gpu_asg_names" {
  value = module.gpu_pools.group_names
}

output "request_queue_urls" {
  value = module.queues.request_queue_urls
}

output "reply_queue_url" {
  value = module.queues.reply_queue_url
}

output "dead_letter_queue_url" {
  value = module.queues.requests_dlq_url
}

output "roles" {
  value = {
    scaler            = module.iam.scaler_role_arn
    dispatcher        = module.iam.dispatcher_role_arn
    spot-interruption = module.iam.spot_interruption_role_arn
    queue-depth       = module.iam.queue_depth_role_arn
  }
}

output "rule_names" {
  value = module.events.rule_names
}

output "function_names" {
  value = { spot-interruption = module.functions.spot_interruption_name, queue-depth = module.functions.queue_depth_name }
}
