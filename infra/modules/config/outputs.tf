output "yaml" {
  description = "The configuration file's text."
  value       = yamlencode(local.config)
}
