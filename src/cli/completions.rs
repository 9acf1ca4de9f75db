//! `storesync completions SHELL` and `storesync man`: shell completions and man pages,
//! generated from the clap definitions so that they never disagree with `--help`.
//!
//! Both render into memory first and then write stdout (or files) in one go: the generators
//! panic on a failed write, while a closed pipe (`storesync man | head`) must end quietly.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory};
use clap_complete::Shell;
use storesync::error::{Error, Result};

use super::output::stdout_err;
use super::Global;

pub const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  storesync completions bash > /usr/share/bash-completion/completions/storesync
  storesync completions zsh > \"${fpath[1]}/_storesync\"
  storesync completions fish > ~/.config/fish/completions/storesync.fish";

pub const MAN_EXAMPLES: &str = "\
Examples:
  storesync man | man -l -
  # storesync.1 and one page per command (storesync-save.1, ...):
  storesync man --dir /usr/local/share/man/man1";

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write storesync.1 and a page per command (storesync-save.1, storesync-key-generate.1,
    /// ...) into DIR instead of storesync.1 to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn completions(_: &Global, a: &CompletionsArgs) -> Result<u8> {
    let mut cmd = super::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "storesync", &mut buf);
    write_stdout(&buf)?;
    Ok(0)
}

pub fn man(_: &Global, a: &ManArgs) -> Result<u8> {
    let mut cmd = super::Cli::command();
    cmd.build();
    match &a.dir {
        None => write_stdout(&render(&cmd, "storesync").map_err(stdout_err)?)?,
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::Io(dir.clone(), e))?;
            write_pages(&cmd, "storesync", dir)?;
        }
    }
    Ok(0)
}

/// The man page of `cmd`, titled `name`.
fn render(cmd: &clap::Command, name: &str) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone().display_name(name.to_owned())).render(&mut buf)?;
    Ok(buf)
}

/// `name.1` for `cmd`, then `name-SUB.1` for each visible subcommand, recursively (not for
/// the `help` subcommands clap adds).
fn write_pages(cmd: &clap::Command, name: &str, dir: &Path) -> Result<()> {
    let file = dir.join(format!("{name}.1"));
    let page = render(cmd, name).map_err(|e| Error::Io(file.clone(), e))?;
    std::fs::write(&file, page).map_err(|e| Error::Io(file.clone(), e))?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(())
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(stdout_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_every_command() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut buf = Vec::new();
            clap_complete::generate(
                shell,
                &mut super::super::Cli::command(),
                "storesync",
                &mut buf,
            );
            let text = String::from_utf8(buf).unwrap();
            for word in [
                "restore",
                "save",
                "gc",
                "--restore-key",
                "--keep-last",
                "completions",
            ] {
                assert!(text.contains(word), "{shell}: no `{word}`");
            }
        }
    }

    #[test]
    fn man_pages_one_per_command() {
        let mut cmd = super::super::Cli::command();
        cmd.build();
        let page = String::from_utf8(render(&cmd, "storesync").unwrap()).unwrap();
        assert!(page.contains(".TH storesync 1"), "{page}");
        let dir = tempfile::tempdir().unwrap();
        write_pages(&cmd, "storesync", dir.path()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        for want in [
            "storesync.1",
            "storesync-save.1",
            "storesync-key-generate.1",
        ] {
            assert!(names.iter().any(|n| n == want), "{names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("help")), "{names:?}");
        let save = std::fs::read_to_string(dir.path().join("storesync-save.1")).unwrap();
        assert!(save.contains(".TH storesync-save 1"), "{save}");
    }
}
