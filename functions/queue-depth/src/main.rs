//! The queue-depth Lambda function (see the crate docs of `zerospot_queue_depth`).

use anyhow::Context as _;
use lambda_runtime::{LambdaEvent, service_fn};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let setup = zerospot_functions::Setup::from_env("zerospot-queue-depth")
        .await
        .context("starting the queue-depth function")?;
    let setup = &setup;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let (cluster, inventory) = setup.kube().await?;
        let responder = setup.responder(&cluster, &inventory);
        let answer =
            zerospot_queue_depth::handle(&responder, &event.payload, chrono::Utc::now()).await?;
        Ok::<Value, lambda_runtime::Error>(answer)
    }))
    .await
}
