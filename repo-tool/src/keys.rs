//! `repo-tool keys`: key files.

use anyhow::Result;

use crate::cli::KeysCommand;

/// Runs a `keys` subcommand and prints one line per key: name, key id, private key file.
pub fn run(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Generate { dir, names } => {
            for name in names {
                let k = ota_publish::generate_key(&dir, &name)?;
                println!("{name}\t{}\t{}", k.keyid, k.private_path.display());
            }
        }
    }
    Ok(())
}
