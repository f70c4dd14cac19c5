//! `flowgym-host trust`: pin plugin files by sha256, unpin them, list the pins.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::plugins::loader::load_plugin;
use crate::plugins::trust::{pin_key, sha256_file, trust_file_path, Pin, PinnedEntry};
use crate::plugins::TrustFile;

/// Arguments of `trust`.
#[derive(Debug, Args)]
pub struct TrustArgs {
    /// Plugin files to pin (or, with --remove, to unpin). Without files: list the pins.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Unpin the files instead.
    #[arg(long)]
    pub remove: bool,
}

/// Pins, unpins or lists, then writes the trust file.
pub fn run(args: &TrustArgs) -> Result<ExitCode> {
    let path = trust_file_path()?;
    let mut trust = TrustFile::load(&path)?;
    if args.files.is_empty() {
        if args.remove {
            bail!("--remove needs the files to unpin");
        }
        print!("{}", render(&trust, &path));
        return Ok(ExitCode::SUCCESS);
    }
    for file in &args.files {
        let key = pin_key(file);
        if args.remove {
            if trust.files.remove(&key).is_none() {
                bail!("{} is not pinned in {}", key.display(), path.display());
            }
            println!("unpinned {}", key.display());
            continue;
        }
        let pin = pin_of(file)?;
        println!(
            "pinned {}  sha256 {}  ({})",
            key.display(),
            pin.sha256,
            describe_entries(&pin)
        );
        trust.files.insert(key, pin);
    }
    trust.save(&path)?;
    println!("trust file: {}", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Hashes `file` and reads its entries; refuses files that are not plugins. The hash is taken
/// before the file is loaded, so that what is pinned is what was checked.
fn pin_of(file: &std::path::Path) -> Result<Pin> {
    let sha256 = sha256_file(file).with_context(|| format!("cannot read {}", file.display()))?;
    let plugin = load_plugin(file).map_err(|failure| {
        anyhow::anyhow!("{failure}; only plugin files that load can be pinned")
    })?;
    if sha256_file(file)? != sha256 {
        bail!("{} changed while it was being pinned", file.display());
    }
    // Sorted: the order a plugin lists its entries in is the link order, not a promise.
    let mut entries: Vec<PinnedEntry> = plugin
        .entries
        .iter()
        .map(|e| PinnedEntry {
            id: e.id.to_string(),
            version: e.version.to_string(),
        })
        .collect();
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Pin {
        sha256,
        api_version: plugin.api_version.to_string(),
        entries,
    })
}

fn describe_entries(pin: &Pin) -> String {
    let entries: Vec<String> = pin
        .entries
        .iter()
        .map(|e| format!("{} {}", e.id, e.version))
        .collect();
    format!("plugin-api {}; {}", pin.api_version, entries.join(", "))
}

/// The pins, each with the file's state now.
fn render(trust: &TrustFile, path: &std::path::Path) -> String {
    let mut out = format!(
        "trust file: {}\nrequire_trusted: {}\n",
        path.display(),
        trust.require_trusted
    );
    if trust.files.is_empty() {
        out.push_str("no pinned files; pin one with `flowgym-host trust FILE`\n");
    }
    for (file, pin) in &trust.files {
        out.push_str(&format!(
            "  {}  [{}]\n      sha256 {}  ({})\n",
            file.display(),
            trust.state_of(file),
            pin.sha256,
            describe_entries(pin)
        ));
    }
    out
}
