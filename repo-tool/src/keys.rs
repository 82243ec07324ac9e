//! `repo-tool keys`: key files, and key pairs generated inside PKCS#11 tokens.

use anyhow::Result;

use crate::cli::KeysCommand;

/// Runs a `keys` subcommand and prints one line per key: name, key id, and the private key file
/// (`generate`) or the token key's URI and public key file (`generate-in-token`).
pub fn run(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Generate { dir, names } => {
            for name in names {
                let k = ota_publish::generate_key(&dir, &name)?;
                println!("{name}\t{}\t{}", k.keyid, k.private_path.display());
            }
        }
        KeysCommand::GenerateInToken {
            uri,
            algorithm,
            dir,
            name,
            module,
        } => {
            let k = ota_publish::generate_token_key(&uri, module.path.as_deref(), algorithm, &dir, &name)?;
            println!("{name}\t{}\t{uri}\t{}", k.keyid, k.public_path.display());
        }
    }
    Ok(())
}
