output "vpc_id" {
  description = "The VPC."
  value       = aws_vpc.this.id
}

output "subnet_ids" {
  description = "One public subnet per Availability Zone."
  value       = aws_subnet.public[*].id
}
