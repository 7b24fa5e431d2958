//! Man pages and shell completions for `signerd`, `signer-client` and
//! `signer-gateway`, generated from their clap definitions, so the pages
//! never disagree with `--help`. Each binary has a hidden `generate-docs
//! DIR` command calling [`write`]; `scripts/package-deb.sh` runs it and
//! installs the result.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::path::Path;

use clap_complete::Shell;

/// Writes `DIR/man/NAME.1` and one page per subcommand
/// (`NAME-SUB.1`), and `DIR/completions/` for bash, zsh and fish.
pub fn write(mut cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(cmd.clone(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, &name, &completions)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_completions_for_each_subcommand() {
        let cmd = clap::Command::new("tool")
            .about("A tool.")
            .subcommand(clap::Command::new("run").about("Runs."));
        let dir = std::env::temp_dir().join(format!("clidoc-{}", std::process::id()));
        write(cmd, &dir).expect("write");
        for f in [
            "man/tool.1",
            "man/tool-run.1",
            "completions/tool.bash",
            "completions/_tool",
            "completions/tool.fish",
        ] {
            assert!(dir.join(f).exists(), "{f}");
        }
        let page = std::fs::read_to_string(dir.join("man/tool-run.1")).expect("page");
        assert!(page.contains("Runs."), "{page}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
