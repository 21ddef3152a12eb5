variable "name" {
  description = "Name tag prefix."
  type        = string
}

variable "cidr" {
  description = "The VPC's IPv4 CIDR."
  type        = string
}

variable "az_count" {
  description = "Availability Zones (one public subnet each, a quarter of the CIDR)."
  type        = number
}
