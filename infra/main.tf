# zerospot on AWS: one EKS cluster with a small on-demand system node group, GPU pools (Auto Scaling groups
# at min 0) that the scaler and the Lambda functions size, the request and reply queues, the EventBridge
# rules that feed the functions, and the IAM each part needs. See README.md in this folder.

data "aws_region" "current" {}

locals {
  # Pool names are the EKS node group names the scaler selects nodes by (eks.amazonaws.com/nodegroup).
  spot_pool     = "gpu-spot"
  ondemand_pool = "gpu-ondemand"
  lambda_dir    = startswith(var.lambda_dir, "/") ? var.lambda_dir : "${path.root}/${var.lambda_dir}"
  all_pools = {
    (local.spot_pool) = {
      capacity_type  = "SPOT"
      instance_types = var.gpu_instance_types
      max_nodes      = var.gpu_max_nodes
      fallback       = var.ondemand_fallback ? local.ondemand_pool : null
    }
    (local.ondemand_pool) = {
      capacity_type  = "ON_DEMAND"
      instance_types = var.ondemand_instance_types
      max_nodes      = var.ondemand_max_nodes
      fallback       = null
    }
  }
  pools = { for pool, p in local.all_pools : pool => p if pool == local.spot_pool || var.ondemand_fallback }
}

module "network" {
  source   = "./modules/network"
  count    = var.vpc_id == null ? 1 : 0
  name     = var.name
  cidr     = var.vpc_cidr
  az_count = var.az_count
}

locals {
  subnet_ids = var.vpc_id == null ? module.network[0].subnet_ids : var.subnet_ids
}

module "queues" {
  source                    = "./modules/queues"
  name                      = var.name
  models                    = keys(var.models)
  request_max_receive_count = var.request_max_receive_count
  request_retention_s       = var.request_retention_s
}

module "eks" {
  source                    = "./modules/eks"
  name                      = var.name
  kubernetes_version        = var.kubernetes_version
  subnet_ids                = local.subnet_ids
  public_access_cidrs       = var.cluster_endpoint_public_access_cidrs
  log_types                 = var.cluster_log_types
  system_instance_types     = var.system_instance_types
  system_nodes              = var.system_nodes
  function_role_arns        = [module.iam.spot_interruption_role_arn, module.iam.queue_depth_role_arn]
  function_kubernetes_group = "zerospot:functions"
}

module "gpu_pools" {
  source                    = "./modules/gpu-pools"
  name                      = var.name
  cluster_name              = module.eks.cluster_name
  cluster_endpoint          = module.eks.endpoint
  cluster_ca                = module.eks.certificate_authority
  cluster_service_cidr      = module.eks.service_cidr
  cluster_security_group_id = module.eks.cluster_security_group_id
  node_instance_profile_arn = module.eks.node_instance_profile_arn
  subnet_ids                = local.subnet_ids
  ami_id                    = var.gpu_ami_id
  kubernetes_version        = var.kubernetes_version
  volume_gb                 = var.gpu_volume_gb
  gpus_per_node             = var.gpus_per_node
  mps_replicas              = var.mps_replicas
  pools                     = { for pool, p in local.pools : pool => { capacity_type = p.capacity_type, instance_types = p.instance_types, max_nodes = p.max_nodes } }
}

module "iam" {
  source             = "./modules/iam"
  name               = var.name
  oidc_provider_arn  = module.eks.oidc_provider_arn
  oidc_issuer        = module.eks.oidc_issuer
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
  models                = var.models
  models_namespace      = "models"
  namespace             = "zerospot"
  request_queue_urls    = module.queues.request_queue_urls
  reply_queue_urls      = [module.queues.reply_queue_url]
  dead_letter_queue_url = module.queues.requests_dlq_url
}

module "functions" {
  source             = "./modules/functions"
  name               = var.name
  lambda_dir         = local.lambda_dir
  spot_role_arn      = module.iam.spot_interruption_role_arn
  queue_role_arn     = module.iam.queue_depth_role_arn
  config_yaml        = module.config.yaml
  cluster_name       = module.eks.cluster_name
  cluster_endpoint   = module.eks.endpoint
  cluster_ca         = module.eks.certificate_authority
  dead_letter_arn    = module.queues.events_dlq_arn
  notification_queue = module.queues.notification_queue_arn
  dry_run            = var.dry_run
}

module "alarms" {
  source             = "./modules/alarms"
  name               = var.name
  request_queues     = module.queues.request_queue_names
  dead_letter_queues = [module.queues.requests_dlq_name, module.queues.events_dlq_name]
  backlog_alarm_s    = var.backlog_alarm_s
  topic_arn          = var.alarm_topic_arn
}

module "events" {
  source              = "./modules/events"
  name                = var.name
  spot_function_arn   = module.functions.spot_interruption_arn
  spot_function_name  = module.functions.spot_interruption_name
  queue_function_arn  = module.functions.queue_depth_arn
  queue_function_name = module.functions.queue_depth_name
  group_names         = values(module.gpu_pools.group_names)
  alarm_names         = module.alarms.scale_up_alarm_names
  dead_letter_arn     = module.queues.events_dlq_arn
}

resource "local_file" "config" {
  count           = var.write_config_file == null ? 0 : 1
  filename        = var.write_config_file
  content         = module.config.yaml
  file_permission = "0644"
}
