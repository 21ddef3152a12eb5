# GPU pools as self-managed Auto Scaling groups at min 0, so that every label, taint and tag the scaler
# reads is set here (an EKS managed node group would create its own group, with tags set apart):
#   - nodes join with the labels eks.amazonaws.com/nodegroup=<pool> (the scaler's default node selector),
#     eks.amazonaws.com/capacityType=SPOT|ON_DEMAND and zerospot.io/pool=<pool>, and the taint
#     nvidia.com/gpu=present:NoSchedule (nodeadm's kubelet flags in the user data);
#   - the group carries the Cluster Autoscaler's node-template tags, from which the scaler takes a pool's
#     shape while it has no node (scaler/effects/src/observe.rs, group_shape): GPUs per node, MPS replicas
#     and sharing strategy, and the nvidia.com/gpu resource count (GPUs x replicas);
#   - Spot pools mix instance types, take capacity-optimized Spot pools and replace instances at risk
#     (capacity rebalance); lifecycle hooks let the spot-interruption function drain a node before it goes
#     and complete a launch once the node is GPU-ready.

data "aws_ssm_parameter" "gpu_ami" {
  count = var.ami_id == null ? 1 : 0
  name  = "/aws/service/eks/optimized-ami/${var.kubernetes_version}/amazon-linux-2023/x86_64/nvidia/recommended/image_id"
}

locals {
  ami_id = var.ami_id == null ? data.aws_ssm_parameter.gpu_ami[0].value : var.ami_id

  labels = { for pool, p in var.pools : pool => {
    "eks.amazonaws.com/nodegroup"     = pool
    "eks.amazonaws.com/capacityType"  = p.capacity_type
    "zerospot.io/pool"                = pool
    "nvidia.com/gpu.count"            = tostring(var.gpus_per_node)
    "nvidia.com/gpu.replicas"         = tostring(var.mps_replicas)
    "nvidia.com/gpu.sharing-strategy" = "mps"
  } }
  # Labels the kubelet sets itself; the nvidia.com/gpu.* ones come from GPU feature discovery and the
  # device plugin once the node runs, and only the template tags repeat them.
  kubelet_labels = { for pool, p in var.pools : pool => join(",", [
    for k in ["eks.amazonaws.com/nodegroup", "eks.amazonaws.com/capacityType", "zerospot.io/pool"] : "${k}=${local.labels[pool][k]}"
  ]) }
  taint = "nvidia.com/gpu=present:NoSchedule"

  node_template_tags = { for pool, p in var.pools : pool => merge(
    { for k, v in local.labels[pool] : "k8s.io/cluster-autoscaler/node-template/label/${k}" => v },
    {
      "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu" = tostring(var.gpus_per_node * var.mps_replicas)
      "k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"     = "present:NoSchedule"
    }
  ) }
}

resource "aws_launch_template" "pool" {
  for_each               = var.pools
  name                   = "${var.name}-${each.key}"
  image_id               = local.ami_id
  update_default_version = true
  vpc_security_group_ids = [var.cluster_security_group_id]
  ebs_optimized          = true

  iam_instance_profile {
    arn = var.node_instance_profile_arn
  }

  # IMDSv2 only, one hop: pods cannot borrow the node's role (zerospot's pods use IRSA).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = var.volume_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = false
  }

  # Amazon Linux 2023 EKS AMIs join the cluster with nodeadm, configured by this NodeConfig.
  user_data = base64encode(<<-EOT
    MIME-Version: 1.0
    Content-Type: multipart/mixed; boundary="ZEROSPOT"

    --ZEROSPOT
    Content-Type: application/node.eks.aws

    apiVersion: node.eks.aws/v1alpha1
    kind: NodeConfig
    spec:
      cluster:
        name: ${var.cluster_name}
        apiServerEndpoint: ${var.cluster_endpoint}
        certificateAuthority: ${var.cluster_ca}
        cidr: ${var.cluster_service_cidr}
      kubelet:
        flags:
          - --node-labels=${local.kubelet_labels[each.key]}
          - --register-with-taints=${local.taint}

    --ZEROSPOT--
  EOT
  )

  tag_specifications {
    resource_type = "instance"
    tags = {
      Name                                        = "${var.name}-${each.key}"
      "kubernetes.io/cluster/${var.cluster_name}" = "owned"
      "zerospot.io/pool"                          = each.key
    }
  }
  tag_specifications {
    resource_type = "volume"
    tags          = { Name = "${var.name}-${each.key}" }
  }
}

resource "aws_autoscaling_group" "pool" {
  for_each            = var.pools
  name                = "${var.name}-${each.key}"
  vpc_zone_identifier = var.subnet_ids
  min_size            = 0
  max_size            = each.value.max_nodes
  # zerospot sets the desired capacity; Terraform only creates the group at zero.
  desired_capacity      = 0
  capacity_rebalance    = each.value.capacity_type == "SPOT"
  health_check_type     = "EC2"
  protect_from_scale_in = false
  # The scaler and the functions choose which instance leaves (TerminateInstanceInAutoScalingGroup).
  termination_policies = ["OldestLaunchTemplate", "Default"]

  mixed_instances_policy {
    instances_distribution {
      on_demand_base_capacity                  = 0
      on_demand_percentage_above_base_capacity = each.value.capacity_type == "SPOT" ? 0 : 100
      on_demand_allocation_strategy            = "prioritized"
      spot_allocation_strategy                 = "capacity-optimized"
    }
    launch_template {
      launch_template_specification {
        launch_template_id = aws_launch_template.pool[each.key].id
        version            = "$Latest"
      }
      dynamic "override" {
        for_each = each.value.instance_types
        content {
          instance_type = override.value
        }
      }
    }
  }

  dynamic "tag" {
    for_each = merge(local.node_template_tags[each.key], {
      "k8s.io/cluster-autoscaler/${var.cluster_name}" = "owned"
      "zerospot.io/pool"                              = each.key
    })
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = false
    }
  }

  lifecycle {
    ignore_changes = [desired_capacity]
  }
}

# Let the spot-interruption function drain a node before its instance terminates (it heartbeats every
# 60 s while pods leave and then completes with CONTINUE), and hold a launch until the node is GPU-ready.
# If the function is down, the timeout's default result lets the group go on.
resource "aws_autoscaling_lifecycle_hook" "terminate" {
  for_each               = var.pools
  name                   = "zerospot-drain"
  autoscaling_group_name = aws_autoscaling_group.pool[each.key].name
  lifecycle_transition   = "autoscaling:EC2_INSTANCE_TERMINATING"
  heartbeat_timeout      = 300
  default_result         = "CONTINUE"
}

resource "aws_autoscaling_lifecycle_hook" "launch" {
  for_each               = var.pools
  name                   = "zerospot-gpu-ready"
  autoscaling_group_name = aws_autoscaling_group.pool[each.key].name
  lifecycle_transition   = "autoscaling:EC2_INSTANCE_LAUNCHING"
  heartbeat_timeout      = 900
  default_result         = "CONTINUE"
}
