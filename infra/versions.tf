terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = {
      source = "hashicorp/aws"
      # aws_eks_access_entry and EKS access_config need 5.33; 6.x works too.
      version = ">= 5.33, < 7.0"
    }
    local = {
      source  = "hashicorp/local"
      version = ">= 2.4"
    }
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = merge({ "app.kubernetes.io/part-of" = "zerospot", "zerospot.io/stack" = var.name }, var.tags)
  }
}
