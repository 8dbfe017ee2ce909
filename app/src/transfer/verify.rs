//! `cp --verify`: a copied file is read back and its CRC-64/NVME compared
//! with its source's.

use std::path::Path;

use corral_domain::{Error, ErrorKind, VirtualPath};

use super::upload::local_err;
use crate::sandbox::UserSandbox;

/// The CRC-64 of a local file and of a sandbox file must agree.
pub(super) async fn verify_copy(
    sb: &UserSandbox,
    local: &Path,
    remote: &VirtualPath,
) -> Result<(), Error> {
    let path = local.to_path_buf();
    let local_crc = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let mut f = std::fs::File::open(&path)?;
        let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
        let mut buf = vec![0u8; 8 << 20];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)?;
            if n == 0 {
                return Ok(digest.finalize());
            }
            digest.update(&buf[..n]);
        }
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?
    .map_err(|e| local_err(local, "cannot read", e))?;
    let mut d = sb.open(remote).await?;
    let mut digest = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    while let Some(chunk) = d.next_chunk().await? {
        digest.update(&chunk);
    }
    if digest.finalize() != local_crc {
        return Err(Error::new(
            ErrorKind::InvalidResponse,
            format!(
                "verification failed: {remote} does not match {} (CRC-64 differs)",
                local.display()
            ),
        ));
    }
    Ok(())
}
