//! A node's persistent identity: an ed25519 key in a file, so a peer keeps its PeerId (and the
//! endpoint others know it by) across restarts.
//!
//! The file holds the key in libp2p's protobuf encoding. It is created with mode 0600 (owner
//! read and write only) when absent; an existing file is loaded as is, and one that does not hold
//! a key is an error rather than being replaced.

use std::io::Write;
use std::path::Path;

use averager_core::{Error, Result};
use libp2p::identity::Keypair;

/// The largest identity file read: an ed25519 key takes under 100 bytes.
const MAX_IDENTITY_BYTES: u64 = 4096;

/// Loads the key in `path`, or creates the file with a new ed25519 key (mode 0600) when it does
/// not exist.
///
/// # Errors
/// [`Error::Config`] when the file cannot be read or created, or does not hold a key.
pub fn load_or_create_identity(path: &Path) -> Result<Keypair> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.len() > MAX_IDENTITY_BYTES {
                return Err(Error::Config(format!(
                    "identity file {} is {} bytes, not a key",
                    path.display(),
                    meta.len()
                )));
            }
            let bytes = std::fs::read(path)
                .map_err(|e| Error::Config(format!("cannot read identity file {}: {e}", path.display())))?;
            Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
                Error::Config(format!("identity file {} does not hold a libp2p key: {e}", path.display()))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path),
        Err(e) => Err(Error::Config(format!("cannot read identity file {}: {e}", path.display()))),
    }
}

fn create(path: &Path) -> Result<Keypair> {
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair
        .to_protobuf_encoding()
        .map_err(|e| Error::Internal(format!("cannot encode a new ed25519 key: {e}")))?;
    let mut options = std::fs::OpenOptions::new();
    // `create_new`: two processes racing to create the file must not both write a key.
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| Error::Config(format!("cannot create identity file {}: {e}", path.display())))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::Config(format!("cannot write identity file {}: {e}", path.display())))?;
    Ok(keypair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_identity_is_private_and_loads_back_as_the_same_peer() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("node.key");
        let created = load_or_create_identity(&path).expect("created");
        let loaded = load_or_create_identity(&path).expect("loaded");
        assert_eq!(created.public().to_peer_id(), loaded.public().to_peer_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("the file exists").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        }
    }

    #[test]
    fn a_file_that_is_not_a_key_is_an_error_and_is_left_alone() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("node.key");
        std::fs::write(&path, b"not a key").expect("written");
        assert!(matches!(load_or_create_identity(&path), Err(Error::Config(_))));
        assert_eq!(std::fs::read(&path).expect("still there"), b"not a key");
    }
}
