output "cluster_name" {
  description = "The cluster's name."
  value       = aws_eks_cluster.this.name
}

output "endpoint" {
  description = "API endpoint."
  value       = aws_eks_cluster.this.endpoint
}

output "certificate_authority" {
  description = "Certificate authority data (base64 of PEM)."
  value       = aws_eks_cluster.this.certificate_authority[0].data
}

output "service_cidr" {
  description = "The cluster's Kubernetes service CIDR."
  value       = aws_eks_cluster.this.kubernetes_network_config[0].service_ipv4_cidr
}

output "cluster_security_group_id" {
  description = "The security group EKS made for the control plane and the nodes."
  value       = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}

output "oidc_provider_arn" {
  description = "IRSA OIDC provider."
  value       = aws_iam_openid_connect_provider.this.arn
}

output "oidc_issuer" {
  description = "OIDC issuer without https://."
  value       = replace(aws_eks_cluster.this.identity[0].oidc[0].issuer, "https://", "")
}

output "node_instance_profile_arn" {
  description = "Instance profile of the GPU nodes."
  value       = aws_iam_instance_profile.node.arn
}
