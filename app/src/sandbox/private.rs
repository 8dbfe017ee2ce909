//! corral's own small documents, kept in the sandbox of `/` under the
//! directory the domain reserves ([`corral_domain::key::PRIVATE_DIR`]):
//! never listed, and no user path reaches them. A front-end keeps there
//! what must outlive its process and be seen by every instance over the
//! same bucket (the WebDAV server's dead properties).

use bytes::Bytes;
use corral_domain::port::PutMode;
use corral_domain::{Error, ErrorKind, ObjectKey, ObjectStorage, VirtualPath};
use futures::TryStreamExt;

use super::{At, UserSandbox};

impl UserSandbox {
    fn private_place(&self, name: &str) -> Result<(At<'_>, ObjectKey), Error> {
        let root = VirtualPath::parse("/").map_err(Error::from)?;
        let t = self.mount(&root, "cannot keep the server's data in")?;
        let key = t.root().private_key(name)?;
        Ok((t, key))
    }

    /// corral's own document `name` (a plain name such as
    /// `webdav-props.json`), or `None` if there is none.
    pub async fn read_private(&self, name: &str) -> Result<Option<Bytes>, Error> {
        let (t, key) = self.private_place(name)?;
        let r = match t.storage().get(&key, None).await {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let parts: Vec<Bytes> = r.body.try_collect().await?;
        Ok(Some(parts.concat().into()))
    }

    /// Stores corral's own document `name` whole (`None`: removes it).
    pub async fn write_private(&self, name: &str, data: Option<Bytes>) -> Result<(), Error> {
        let (t, key) = self.private_place(name)?;
        match data {
            Some(data) => {
                t.storage().put(&key, data, PutMode::Overwrite).await?;
            }
            None => {
                let failed = t.storage().delete_many(vec![key]).await?;
                if let Some((_, e)) = failed
                    .into_iter()
                    .find(|(_, e)| e.kind() != ErrorKind::NotFound)
                {
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}
