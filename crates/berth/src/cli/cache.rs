//! `berth cache purge SERVICE [PATH]`: removes a service's responses from the gateway's cache.

use std::path::Path;
use std::process::ExitCode;

use berth_api::wire::{CachePurgeRequest, CachePurgeView};

use super::args::CachePurgeArgs;
use super::client::Client;

pub async fn purge(state_dir: &Path, args: &CachePurgeArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect(state_dir)?;
    let body = serde_json::to_value(CachePurgeRequest { path: args.path.clone() })?;
    let view: CachePurgeView = client.post_json(&format!("/v1/services/{}/cache/purge", args.service), body).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        let what = match &view.path {
            Some(path) => format!("under {path}"),
            None => "in total".to_owned(),
        };
        let noun = if view.purged == 1 { "response" } else { "responses" };
        println!("{}: purged {} cached {noun} {what}", view.service, view.purged);
    }
    Ok(ExitCode::SUCCESS)
}
