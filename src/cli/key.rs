//! `storesync key`: Ed25519 key pairs for signed snapshots, in the text forms of Nix's
//! binary-cache keys (see `storesync::trust`).

use std::io::{self, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;
use storesync::error::{Error, Result};
use storesync::trust;

use super::output::render;
use super::Global;

pub const EXAMPLES: &str = "\
Examples:
  # once, on a trusted machine; keep the secret key out of the cache and out of logs:
  storesync key generate --secret ci-key.sec --public ci-key.pub --name ci-2025
  # the job that saves signs (the key text may also come from STORESYNC_SIGN_KEY):
  storesync save --cache ~/.cache/storesync --sign-key ci-key.sec
  # every job that restores refuses snapshots not signed by that key:
  sudo storesync restore --cache ~/.cache/storesync --trusted-key \"$(cat ci-key.pub)\"

Exit codes: 0 written, 1 a file exists or cannot be written (nothing is overwritten), 2 usage.";

#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Generate a key pair: the secret key signs snapshots (`save --sign-key`), the public key
    /// checks them (`--trusted-key`).
    #[command(after_help = EXAMPLES)]
    Generate(GenerateArgs),
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Where to write the secret key (created with mode 0600; must not exist).
    #[arg(long, value_name = "FILE")]
    pub secret: PathBuf,
    /// Where to write the public key (mode 0644; must not exist).
    #[arg(long, value_name = "FILE")]
    pub public: PathBuf,
    /// The key's name, recorded in every signature it makes [default: this machine's host
    /// name, or `storesync`].
    #[arg(long)]
    pub name: Option<String>,
}

/// What `key generate` made.
#[derive(Serialize)]
struct Generated {
    name: String,
    public_key: String,
    secret_file: PathBuf,
    public_file: PathBuf,
}

pub fn run(g: &Global, a: &KeyArgs) -> Result<u8> {
    match &a.command {
        KeyCommand::Generate(a) => generate(g, a),
    }
}

fn generate(g: &Global, a: &GenerateArgs) -> Result<u8> {
    let name = a.name.clone().unwrap_or_else(default_name);
    let (secret, public) = trust::generate(&name).map_err(|e| match e {
        trust::TrustError::BadName { .. } => Error::Usage(format!("--name: {e}")),
        e => e.into(),
    })?;
    secret.write_key_files(&a.secret, &a.public)?;
    let out = Generated {
        name,
        public_key: public.to_string(),
        secret_file: a.secret.clone(),
        public_file: a.public.clone(),
    };
    render(g.format(), &out, text)?;
    Ok(0)
}

fn text(out: &mut dyn Write, k: &Generated) -> io::Result<()> {
    writeln!(
        out,
        "secret key `{}` written to {} (keep it secret: it signs snapshots, --sign-key)",
        k.name,
        k.secret_file.display()
    )?;
    writeln!(
        out,
        "public key written to {} (give it to restore as --trusted-key):",
        k.public_file.display()
    )?;
    writeln!(out, "{}", k.public_key)
}

/// This machine's host name when it is a valid key name, else `storesync`.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let host = host.trim();
    let valid = !host.is_empty()
        && host.len() <= trust::MAX_NAME_LEN
        && !host
            .chars()
            .any(|c| c == ':' || c == ',' || c.is_whitespace() || c.is_control());
    if valid {
        host.to_owned()
    } else {
        "storesync".to_owned()
    }
}
