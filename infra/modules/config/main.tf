# Renders the scaler's and the dispatcher's configuration file (scaler/effects/src/config.rs, commented
# example in scaler/examples/scaler.yaml) from what the other modules made. GPUs per node and MPS
# replicas are not repeated: the scaler reads them from the nodes, or for a pool at zero from its group's
# node-template tags (modules/gpu-pools). No resources: the apply test renders it against moto and checks
# it with zerospot's own parser.

locals {
  # In order of preference: Spot pools first, their on-demand fallbacks after.
  pool_order = concat(
    [for pool, t in var.capacity_types : pool if t == "SPOT"],
    [for pool, t in var.capacity_types : pool if t != "SPOT"],
  )
  config = {
    pools = [for pool in local.pool_order : merge(
      {
        name          = pool
        asg_name      = var.group_names[pool]
        capacity_type = var.capacity_types[pool] == "SPOT" ? "spot" : "on_demand"
      },
      var.fallbacks[pool] == null ? {} : { fallback = var.fallbacks[pool] }
    )]
    models = [for model, m in var.models : {
      name        = model
      pool        = m.pool
      namespace   = var.models_namespace
      service     = model
      queue_url   = var.request_queue_urls[model]
      concurrency = m.concurrency
    }]
    dispatcher = {
      reply_queues      = var.reply_queue_urls
      dead_letter_queue = var.dead_letter_queue_url
    }
    controller = {
      namespace = var.namespace
    }
  }
}
