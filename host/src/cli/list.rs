//! `flowgym-host list`: what is installed.

use std::process::ExitCode;

use clap::Args;
use flowgym_plugin_api::{EntryKind, EntryMeta};

use super::Cli;
use crate::plugins::Registry;

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {}

/// Prints plugins (with their trust state), data types, models, rewards, and refused files.
pub fn run(cli: &Cli, _args: &ListArgs) -> anyhow::Result<ExitCode> {
    let registry = cli.registry()?;
    for warning in &registry.warnings {
        eprintln!("warning: {warning}");
    }
    print!("{}", render(&registry));
    Ok(ExitCode::SUCCESS)
}

/// The listing, as text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    out.push_str("Plugin files:\n");
    if registry.plugins.is_empty() {
        out.push_str("  (none found)\n");
    }
    for plugin in &registry.plugins {
        let libtorch = match &plugin.libtorch {
            Some(v) => format!("libtorch {v}"),
            None => "no libtorch".to_string(),
        };
        let package = match &plugin.package {
            Some(package) => format!("{package}, "),
            None => String::new(),
        };
        out.push_str(&format!(
            "  {}  ({package}plugin-api {}, {libtorch}, {} entries)\n",
            plugin.path.display(),
            plugin.api_version,
            plugin.entries.len()
        ));
        out.push_str(&format!(
            "      trust: {}\n",
            registry.trust_state(&plugin.path)
        ));
    }
    out.push_str("\nData types:\n");
    let mut seen: Vec<&str> = Vec::new();
    for plugin in &registry.plugins {
        for dt in &plugin.data_types {
            let name = dt.id.name.as_str();
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
            match registry.declared_data_type(name) {
                Ok(_) => out.push_str(&format!(
                    "  {}  {:?} layout  {}  ({})\n",
                    dt.id,
                    dt.layout,
                    dt.description,
                    plugin.path.display()
                )),
                Err(e) => out.push_str(&format!("  {name}: refused: {e}\n")),
            }
        }
    }
    for (title, kind) in [
        ("Models", EntryKind::BaseModel),
        ("Rewards", EntryKind::Reward),
    ] {
        out.push_str(&format!("\n{title}:\n"));
        for entry in registry.entries().filter(|e| e.meta.kind == kind) {
            render_entry(
                &mut out,
                entry.meta,
                &entry.plugin.path.display().to_string(),
            );
        }
    }
    let duplicates = registry.duplicates();
    if !duplicates.is_empty() {
        out.push_str("\nIds defined more than once (pick one with --prefer FILE):\n");
        for (id, files) in duplicates {
            out.push_str(&format!("  {id}: {}\n", files.join(", ")));
        }
    }
    if !registry.failures.is_empty() {
        out.push_str("\nRefused files:\n");
        for failure in &registry.failures {
            out.push_str(&format!("  {failure}\n"));
        }
    }
    out
}

fn render_entry(out: &mut String, meta: &EntryMeta, file: &str) {
    out.push_str(&format!(
        "  {}  {}  (data type {})  {}\n",
        meta.id, meta.version, meta.data_type, meta.description
    ));
    let verb = match meta.kind {
        EntryKind::BaseModel => "produces",
        EntryKind::Reward => "accepts",
    };
    let leaves: Vec<String> = meta.leaves.iter().map(|l| l.to_string()).collect();
    out.push_str(&format!("      {verb}: {}\n", leaves.join(", ")));
    if meta.kind == EntryKind::BaseModel && meta.capabilities.cpu_only {
        out.push_str(
            "      capabilities: CPU only (on other devices the host moves its tensors)\n",
        );
    }
    if meta.kind == EntryKind::Reward {
        let c = &meta.capabilities;
        let batch = if c.max_batch == 0 {
            "any batch".to_string()
        } else {
            format!("batches up to {}", c.max_batch)
        };
        out.push_str(&format!(
            "      capabilities: {batch}, {}\n",
            if c.cpu_only { "CPU only" } else { "any device" },
        ));
    }
    if meta.arguments.is_empty() {
        out.push_str("      arguments: none\n");
    } else {
        out.push_str("      arguments:\n");
        for arg in meta.arguments.iter() {
            let accepted = if arg.accepted.is_empty() {
                String::new()
            } else {
                format!(" ({})", arg.accepted)
            };
            out.push_str(&format!(
                "        {}: {} = {}  {}{accepted}\n",
                arg.name, arg.type_name, arg.default, arg.description
            ));
        }
    }
    out.push_str(&format!("      from: {file}\n"));
}
