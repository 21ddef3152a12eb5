# A VPC with one public subnet per Availability Zone and no NAT gateway: nodes get public addresses and
# reach ECR, S3 and the AWS APIs directly, so nothing here costs money while idle (a NAT gateway would be
# about $33 a month before traffic). Nothing is reachable from the internet: the nodes' only security
# group is the EKS cluster security group, which admits traffic from its own members and nothing else.
# To keep nodes off public addresses, bring your own VPC with private subnets and a NAT gateway
# (the root module's vpc_id and subnet_ids).

data "aws_availability_zones" "available" {
  state = "available"
  #checkov:skip=CKV_AWS_394:the module takes the first az_count zones by name and AWS names new zones with later letters, so the slice stays put; a zone-name allowlist would tie the module to one region
}

locals {
  zones = slice(data.aws_availability_zones.available.names, 0, var.az_count)
}

resource "aws_vpc" "this" {
  cidr_block           = var.cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = { Name = var.name }
  #checkov:skip=CKV2_AWS_11:VPC flow logs cost money per GB while idle traffic (image pulls, heartbeats) flows; enable them in an account-wide baseline if wanted
}

# No rules: nothing may use the default security group.
resource "aws_default_security_group" "this" {
  vpc_id = aws_vpc.this.id
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id
  tags   = { Name = var.name }
}

resource "aws_subnet" "public" {
  count                   = var.az_count
  vpc_id                  = aws_vpc.this.id
  availability_zone       = local.zones[count.index]
  cidr_block              = cidrsubnet(var.cidr, 2, count.index)
  map_public_ip_on_launch = true
  tags = {
    Name                     = "${var.name}-${local.zones[count.index]}"
    "kubernetes.io/role/elb" = "1"
  }
  #checkov:skip=CKV_AWS_130:public addresses instead of a NAT gateway, so an idle stack costs nothing here; no inbound rule admits the internet (see the file's header)
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id
  tags   = { Name = "${var.name}-public" }
}

resource "aws_route" "internet" {
  route_table_id         = aws_route_table.public.id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this.id
}

resource "aws_route_table_association" "public" {
  count          = var.az_count
  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}
