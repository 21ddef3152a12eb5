output "cluster_name" {
  description = "The EKS cluster: aws eks update-kubeconfig --name <this> --region <region>."
  value       = module.eks.cluster_name
}

output "aws_region" {
  description = "The region everything is in."
  value       = data.aws_region.current.id
}

output "scaler_role_arn" {
  description = "IRSA role of ServiceAccount zerospot/zerospot-scaler (annotation eks.amazonaws.com/role-arn)."
  value       = module.iam.scaler_role_arn
}

output "dispatcher_role_arn" {
  description = "IRSA role of ServiceAccount zerospot/zerospot-dispatcher (annotation eks.amazonaws.com/role-arn)."
  value       = module.iam.dispatcher_role_arn
}

output "functions_kubernetes_group" {
  description = "The Kubernetes group the Lambda functions' roles act as; deploy/ binds its RBAC to it."
  value       = "zerospot:functions"
}

output "gpu_asg_names" {
  description = "Auto Scaling group per pool (gpu-spot, and gpu-ondemand with the fallback)."
  value       = module.gpu_pools.group_names
}

output "mps_replicas" {
  description = "MPS replicas per GPU the node-template tags announce; the device plugin's config in deploy/ must say the same."
  value       = var.mps_replicas
}

output "request_queue_urls" {
  description = "Request queue per model."
  value       = module.queues.request_queue_urls
}

output "reply_queue_url" {
  description = "The replies queue (zerospot submit/converse --reply-queue)."
  value       = module.queues.reply_queue_url
}

output "dead_letter_queue_url" {
  description = "Requests given up, with the reason in their zerospot-reason attribute."
  value       = module.queues.requests_dlq_url
}

output "requests_topic_arn" {
  description = "Publish a request here with the message attribute `model` for the fastest scale-from-zero (the queue-depth function sees it at once)."
  value       = module.queues.requests_topic_arn
}

output "zerospot_config_yaml" {
  description = "The scaler's and dispatcher's configuration: the ConfigMap zerospot-config, key scaler.yaml (terraform output -raw zerospot_config_yaml > scaler.yaml)."
  value       = module.config.yaml
}
