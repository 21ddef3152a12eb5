# The EKS cluster (API authentication mode: access entries, no aws-auth ConfigMap), its OIDC provider for
# IRSA, a small on-demand system node group for everything that is not a model (Knative, zerospot's scaler
# and dispatcher, CoreDNS), the node role the GPU pools' instances join with (an EC2_LINUX access entry),
# and access entries that map the Lambda functions' roles to the Kubernetes group whose RBAC deploy/ binds.

data "aws_partition" "current" {}

locals {
  partition = data.aws_partition.current.partition
}

# --- roles -----------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "cluster_trust" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]
    principals {
      type        = "Service"
      identifiers = ["eks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "cluster" {
  name               = "${var.name}-cluster"
  assume_role_policy = data.aws_iam_policy_document.cluster_trust.json
}

resource "aws_iam_role_policy_attachment" "cluster" {
  role       = aws_iam_role.cluster.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonEKSClusterPolicy"
}

data "aws_iam_policy_document" "node_trust" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

# Every node's role: join the cluster, run the VPC CNI, pull images from ECR. AWS's managed policies, the
# same as eksctl and the EKS documentation give nodes; zerospot's own permissions are on its IRSA roles.
resource "aws_iam_role" "node" {
  name               = "${var.name}-node"
  assume_role_policy = data.aws_iam_policy_document.node_trust.json
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each   = toset(["AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly"])
  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.key}"
}

resource "aws_iam_instance_profile" "node" {
  name = "${var.name}-node"
  role = aws_iam_role.node.name
}

# --- the cluster ------------------------------------------------------------------------------------------

resource "aws_kms_key" "secrets" {
  description         = "${var.name} EKS secrets envelope encryption"
  enable_key_rotation = true
  #checkov:skip=CKV2_AWS_64:the default key policy (the account's IAM decides) is what EKS documents for envelope encryption
}

resource "aws_eks_cluster" "this" {
  name                      = var.name
  version                   = var.kubernetes_version
  role_arn                  = aws_iam_role.cluster.arn
  enabled_cluster_log_types = var.log_types

  access_config {
    authentication_mode                         = "API"
    bootstrap_cluster_creator_admin_permissions = true
  }

  vpc_config {
    subnet_ids              = var.subnet_ids
    endpoint_private_access = true
    endpoint_public_access  = true
    public_access_cidrs     = var.public_access_cidrs
  }

  encryption_config {
    resources = ["secrets"]
    provider {
      key_arn = aws_kms_key.secrets.arn
    }
  }

  depends_on = [aws_iam_role_policy_attachment.cluster]
  #checkov:skip=CKV_AWS_37:control plane logs cost money while idle (audit logs never stop); set var.cluster_log_types to turn them on
  #checkov:skip=CKV_AWS_39:the newcomer's kubectl and the Lambda functions (outside the VPC) reach the API through the public endpoint, behind IAM authentication
  #checkov:skip=CKV_AWS_38:the same; narrow var.cluster_endpoint_public_access_cidrs once the functions run in the VPC
}

# IRSA: the scaler's and the dispatcher's ServiceAccounts assume their roles through this provider.
# The thumbprint is the root CA of EKS's OIDC endpoints; IAM no longer checks it for them, but providers
# older than 5.x require a value.
resource "aws_iam_openid_connect_provider" "this" {
  url             = aws_eks_cluster.this.identity[0].oidc[0].issuer
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = ["9e99a48a9960b14926bb7f3b02e22da2b0ab7280"]
}

# --- access entries -----------------------------------------------------------------------------------------

resource "aws_eks_access_entry" "gpu_nodes" {
  cluster_name  = aws_eks_cluster.this.name
  principal_arn = aws_iam_role.node.arn
  type          = "EC2_LINUX"
}

# The functions act as the Kubernetes group var.function_kubernetes_group; deploy/ binds it to a ClusterRole
# with exactly the calls of zerospot_effects::cluster (nodes, pods, evictions, events, PodAutoscalers).
resource "aws_eks_access_entry" "functions" {
  for_each          = { for i, arn in var.function_role_arns : tostring(i) => arn }
  cluster_name      = aws_eks_cluster.this.name
  principal_arn     = each.value
  type              = "STANDARD"
  kubernetes_groups = [var.function_kubernetes_group]
}

# --- the system node group --------------------------------------------------------------------------------

resource "aws_eks_node_group" "system" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "system"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = var.subnet_ids
  capacity_type   = "ON_DEMAND"
  ami_type        = "AL2023_x86_64_STANDARD"
  instance_types  = var.system_instance_types
  labels          = { "zerospot.io/role" = "system" }

  scaling_config {
    min_size     = 1
    desired_size = var.system_nodes
    max_size     = max(var.system_nodes, 3)
  }

  update_config {
    max_unavailable = 1
  }

  depends_on = [aws_iam_role_policy_attachment.node]
}
