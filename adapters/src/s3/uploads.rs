//! Pending multipart uploads (ListMultipartUploads) and the bucket rule
//! that aborts incomplete ones (PutBucketLifecycleConfiguration): S3 APIs
//! `object_store` does not have.

use bytes::Bytes;
use corral_domain::port::{PendingUpload, StoredPart, UploadId};
use corral_domain::retry::Backoff;
use corral_domain::{Error, ErrorKind, ObjectKey, Operation, Result};
use futures::TryStreamExt;
use serde::Deserialize;

use super::signed::{Signed, invalid_response, parse_time};
use crate::paginate::paginate;
use crate::retry::retry;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListMultipartUploadsResult {
    #[serde(default)]
    upload: Vec<Upload>,
    #[serde(default)]
    is_truncated: bool,
    next_key_marker: Option<String>,
    next_upload_id_marker: Option<String>,
    encoding_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Upload {
    key: String,
    upload_id: String,
    initiated: Option<String>,
}

/// ListMultipartUploads under `prefix`, every page.
pub(super) async fn list_multipart_uploads(
    signed: &Signed,
    prefix: &ObjectKey,
) -> Result<Vec<PendingUpload>> {
    let (signed, prefix) = (signed.clone(), prefix.clone());
    paginate(
        "upload listing markers",
        move |markers: Option<(String, String)>| {
            let (signed, prefix) = (signed.clone(), prefix.clone());
            async move {
                retry(
                    Backoff::requests(signed.max_retries),
                    "fetching the upload listing page",
                    |e| e.kind() == ErrorKind::InvalidResponse,
                    || multipart_page(&signed, &prefix, markers.as_ref()),
                )
                .await
            }
        },
    )
    .try_collect()
    .await
}

/// One page of ListMultipartUploads, and the markers of the next one.
async fn multipart_page(
    signed: &Signed,
    prefix: &ObjectKey,
    markers: Option<&(String, String)>,
) -> Result<(Vec<PendingUpload>, Option<(String, String)>)> {
    let mut query = vec![("uploads", ""), ("prefix", prefix.as_str())];
    if let Some((k, u)) = markers {
        query.push(("key-marker", k));
        query.push(("upload-id-marker", u));
    }
    let body = signed
        .send(http::Method::GET, &query, Operation::ListMultipart)
        .await?;
    let result: ListMultipartUploadsResult =
        quick_xml::de::from_reader(body.as_ref()).map_err(|e| {
            invalid_response(format!(
                "the ListMultipartUploads answer is not valid XML: {e}"
            ))
        })?;
    if result.encoding_type.is_some() {
        return Err(invalid_response(
            "the server url-encoded keys it was not asked to encode".to_owned(),
        ));
    }
    let uploads = result
        .upload
        .into_iter()
        .map(|u| PendingUpload {
            key: ObjectKey::from_raw(u.key),
            upload_id: UploadId(u.upload_id),
            initiated: parse_time(u.initiated.as_deref()),
        })
        .collect();
    match (
        result.is_truncated,
        result.next_key_marker,
        result.next_upload_id_marker,
    ) {
        (true, Some(k), Some(u)) => Ok((uploads, Some((k, u)))),
        (true, _, _) => Err(invalid_response(
            "the upload listing is truncated but the server gave no markers".to_owned(),
        )),
        (false, _, _) => Ok((uploads, None)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListPartsResult {
    #[serde(default)]
    part: Vec<Part>,
    #[serde(default)]
    is_truncated: bool,
    next_part_number_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Part {
    part_number: u32,
    #[serde(rename = "ETag")]
    etag: String,
    size: u64,
}

/// ListParts of one upload, every page, in part order.
pub(super) async fn list_parts(
    signed: &Signed,
    key: &ObjectKey,
    upload: &UploadId,
) -> Result<Vec<StoredPart>> {
    let (signed, key, upload) = (signed.clone(), key.clone(), upload.clone());
    let mut parts: Vec<StoredPart> =
        paginate("part number markers", move |marker: Option<String>| {
            let (signed, key, upload) = (signed.clone(), key.clone(), upload.clone());
            async move {
                retry(
                    Backoff::requests(signed.max_retries),
                    "fetching the part listing page",
                    |e| e.kind() == ErrorKind::InvalidResponse,
                    || parts_page(&signed, &key, &upload, marker.as_deref()),
                )
                .await
            }
        })
        .try_collect()
        .await?;
    parts.sort_by_key(|p| p.number);
    Ok(parts)
}

async fn parts_page(
    signed: &Signed,
    key: &ObjectKey,
    upload: &UploadId,
    marker: Option<&str>,
) -> Result<(Vec<StoredPart>, Option<String>)> {
    let mut query = vec![("uploadId", upload.0.as_str())];
    if let Some(m) = marker {
        query.push(("part-number-marker", m));
    }
    let (_, body) = signed
        .send_object(
            http::Method::GET,
            key,
            &query,
            &[],
            Operation::ListMultipart,
        )
        .await?;
    let result: ListPartsResult = quick_xml::de::from_reader(body.as_ref())
        .map_err(|e| invalid_response(format!("the ListParts answer is not valid XML: {e}")))?;
    let parts = result
        .part
        .into_iter()
        .map(|p| StoredPart {
            number: p.part_number,
            etag: p.etag,
            size: p.size,
        })
        .collect();
    match (result.is_truncated, result.next_part_number_marker) {
        (true, Some(m)) => Ok((parts, Some(m))),
        (true, None) => Err(invalid_response(
            "the part listing is truncated but the server gave no marker".to_owned(),
        )),
        (false, _) => Ok((parts, None)),
    }
}

/// Installs a bucket lifecycle rule that aborts incomplete multipart
/// uploads `days` after they start. Refuses to replace existing rules
/// unless `replace`.
pub(super) async fn set_upload_expiry(signed: &Signed, days: u32, replace: bool) -> Result<()> {
    match signed
        .send(
            http::Method::GET,
            &[("lifecycle", "")],
            Operation::Configure,
        )
        .await
    {
        Ok(existing) if !replace && String::from_utf8_lossy(&existing).contains("<Rule>") => {
            return Err(Error::new(
                ErrorKind::Conflict,
                "the bucket already has lifecycle rules and setting this one would replace them: add the rule with your usual tool, or ask to replace them",
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            return Err(Error::unsupported(format!(
                "the server at {} does not support bucket lifecycle rules: abort leftovers with `corral uploads abort --older-than 24h` instead",
                signed.ctx.endpoint.as_deref().unwrap_or("the endpoint")
            )));
        }
        Err(e) => return Err(e),
    }
    let body = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Rule><ID>corral-abort-incomplete-multipart-uploads</ID><Filter><Prefix></Prefix></Filter><Status>Enabled</Status><AbortIncompleteMultipartUpload><DaysAfterInitiation>{days}</DaysAfterInitiation></AbortIncompleteMultipartUpload></Rule></LifecycleConfiguration>"#
    );
    signed.send_body(http::Method::PUT, &[("lifecycle", "")], Bytes::from(body), Operation::Configure)
            .await
            .map(|_| ())
            .map_err(|e| {
                if e.kind() == ErrorKind::Unsupported {
                    Error::unsupported(format!(
                        "the server at {} does not support bucket lifecycle rules: abort leftovers with `corral uploads abort --older-than 24h` instead",
                        signed.ctx.endpoint.as_deref().unwrap_or("the endpoint")
                    ))
                } else {
                    e
                }
            })
}
