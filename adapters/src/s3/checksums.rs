//! What an S3 answer vouches for about an object's content: the checksum a
//! HEAD gives of the whole object, and the ETag a multipart upload of given
//! parts must have (how a lost CompleteMultipartUpload answer is confirmed).

use corral_domain::port::{ContentChecksum, etag_md5};
use serde::Deserialize;

/// The checksum of an object's whole content that a HEAD's `header`s vouch
/// for: a CRC-64/NVME of the full object (so said, or of an object stored
/// in one part), else an ETag that is a plain MD5 — unless the object is
/// encrypted with SSE-KMS or SSE-C (whose ETags are not MD5s) or the server
/// is declared not to keep MD5 ETags.
pub(super) fn content_checksum<'h>(
    header: &impl Fn(&str) -> Option<&'h str>,
    etag: Option<&str>,
    etag_is_md5: bool,
) -> Option<ContentChecksum> {
    use base64::Engine;
    let single_part = etag.is_some_and(|e| !e.contains('-'));
    let full_object = header("x-amz-checksum-type").map_or(single_part, |t| t == "FULL_OBJECT");
    let crc = header("x-amz-checksum-crc64nvme")
        .filter(|_| full_object)
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes);
    if let Some(crc) = crc {
        return Some(ContentChecksum::Crc64Nvme(crc));
    }
    let plain = header("x-amz-server-side-encryption").is_none_or(|v| v == "AES256")
        && header("x-amz-server-side-encryption-customer-algorithm").is_none();
    etag.filter(|_| etag_is_md5 && plain)
        .and_then(etag_md5)
        .map(ContentChecksum::Md5)
}

/// The ETag S3 gives a multipart upload of these parts (their ids as
/// object_store keeps them: the part's ETag, or an XML record holding it
/// and its checksum): the MD5 of the parts' MD5s, then `-<parts>`. `None`
/// if a part's ETag is not an MD5.
pub(super) fn multipart_etag<'a>(part_ids: impl Iterator<Item = &'a str>) -> Option<String> {
    use md5::Digest;
    let mut digest = md5::Md5::new();
    let mut parts = 0usize;
    /// How object_store records a part when it sends checksums.
    #[derive(Deserialize)]
    struct PartMetadata {
        e_tag: String,
    }
    for id in part_ids {
        let etag = quick_xml::de::from_str::<PartMetadata>(id)
            .map(|m| m.e_tag)
            .unwrap_or_else(|_| id.to_owned());
        digest.update(etag_md5(&etag)?);
        parts += 1;
    }
    let hex: String = digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (parts > 0).then(|| format!("\"{hex}-{parts}\""))
}

/// The id object_store keeps for a part (see [`multipart_etag`]) from
/// the answer to an UploadPartCopy: its ETag, with its checksum where the
/// server gave one.
pub(super) fn copy_part_id(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct CopyPartResult {
        #[serde(rename = "ETag")]
        e_tag: String,
        #[serde(default, rename = "ChecksumSHA256")]
        checksum_sha256: Option<String>,
        #[serde(default, rename = "ChecksumCRC64NVME")]
        checksum_crc64nvme: Option<String>,
    }
    /// As object_store writes it.
    #[derive(serde::Serialize)]
    struct PartMetadata {
        e_tag: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        checksum_sha256: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        checksum_crc64nvme: Option<String>,
    }
    let r: CopyPartResult = quick_xml::de::from_reader(body).ok()?;
    if r.checksum_sha256.is_none() && r.checksum_crc64nvme.is_none() {
        return Some(r.e_tag);
    }
    quick_xml::se::to_string(&PartMetadata {
        e_tag: r.e_tag,
        checksum_sha256: r.checksum_sha256,
        checksum_crc64nvme: r.checksum_crc64nvme,
    })
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copied_parts_keep_their_etag_and_checksum() {
        let plain = br#"<?xml version="1.0"?><CopyPartResult><LastModified>2026-01-01T00:00:00Z</LastModified><ETag>"abc"</ETag></CopyPartResult>"#;
        assert_eq!(copy_part_id(plain).as_deref(), Some("\"abc\""));
        let with = br#"<CopyPartResult><ETag>"abc"</ETag><ChecksumCRC64NVME>x1ObT5zM8/g=</ChecksumCRC64NVME></CopyPartResult>"#;
        let id = copy_part_id(with).unwrap();
        assert!(
            id.contains("<e_tag>\"abc\"</e_tag>") || id.contains("<e_tag>&quot;abc&quot;</e_tag>"),
            "{id}"
        );
        assert!(id.contains("x1ObT5zM8/g="), "{id}");
        assert_eq!(
            multipart_etag([id.as_str()].into_iter()),
            None,
            "not an MD5 ETag"
        );
        assert_eq!(copy_part_id(b"<Error/>"), None);
    }

    #[test]
    fn which_checksum_a_head_vouches_for() {
        let md5 = "\"9e107d9d372bb6826bd81d3542a419d6\"";
        let crc = "x1ObT5zM8/g="; // 8 bytes
        let check = |headers: &[(&str, &str)], etag: &str, etag_is_md5: bool| {
            let header = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
            content_checksum(&header, Some(etag), etag_is_md5)
        };
        let crc_value = ContentChecksum::Crc64Nvme(0xc7539b4f9cccf3f8);
        // A full-object CRC wins over the MD5, in one part or many.
        let full = [
            ("x-amz-checksum-crc64nvme", crc),
            ("x-amz-checksum-type", "FULL_OBJECT"),
        ];
        assert_eq!(check(&full, md5, true), Some(crc_value));
        assert_eq!(check(&full, "\"abc-3\"", true), Some(crc_value));
        // Without a type, only an object in one part has a full-object CRC.
        let untyped = [("x-amz-checksum-crc64nvme", crc)];
        assert_eq!(check(&untyped, md5, true), Some(crc_value));
        assert_eq!(check(&untyped, "\"abc-3\"", true), None);
        let composite = [
            ("x-amz-checksum-crc64nvme", crc),
            ("x-amz-checksum-type", "COMPOSITE"),
        ];
        assert!(matches!(
            check(&composite, md5, true),
            Some(ContentChecksum::Md5(_))
        ));
        // A CRC that is not 8 bytes is ignored (a server got it wrong).
        let short = [("x-amz-checksum-crc64nvme", "G1nPAg==")];
        assert!(matches!(
            check(&short, md5, true),
            Some(ContentChecksum::Md5(_))
        ));
        // MD5 ETags: not under SSE-KMS or SSE-C, nor when declared otherwise.
        assert!(matches!(
            check(&[], md5, true),
            Some(ContentChecksum::Md5(_))
        ));
        assert!(matches!(
            check(&[("x-amz-server-side-encryption", "AES256")], md5, true),
            Some(ContentChecksum::Md5(_))
        ));
        assert_eq!(
            check(&[("x-amz-server-side-encryption", "aws:kms")], md5, true),
            None
        );
        assert_eq!(
            check(
                &[("x-amz-server-side-encryption-customer-algorithm", "AES256")],
                md5,
                true
            ),
            None
        );
        assert_eq!(check(&[], md5, false), None);
        assert_eq!(check(&[], "\"abc-3\"", true), None);
    }

    #[test]
    fn the_etag_of_a_multipart_upload_is_computed_from_its_parts() {
        // Three parts of 5 MiB of `bytes(range(256))` repeated, as measured on
        // s3s-fs, moto and Garage: "10ccd64f051a319244e160dd762a1604-3".
        use md5::Digest;
        let data: Vec<u8> = (0..=255u8).cycle().take(15 << 20).collect();
        let ids: Vec<String> = data
            .chunks(5 << 20)
            .enumerate()
            .map(|(i, c)| {
                let hex: String = md5::Md5::digest(c).iter().map(|b| format!("{b:02x}")).collect();
                if i == 0 {
                    format!("\"{hex}\"")
                } else {
                    format!("<PartMetadata><e_tag>&quot;{hex}&quot;</e_tag><checksum_crc64nvme>x</checksum_crc64nvme></PartMetadata>")
                }
            })
            .collect();
        assert_eq!(
            multipart_etag(ids.iter().map(String::as_str)).as_deref(),
            Some("\"10ccd64f051a319244e160dd762a1604-3\"")
        );
        assert_eq!(multipart_etag(["\"not-an-md5\""].into_iter()), None);
        assert_eq!(multipart_etag(std::iter::empty()), None);
    }
}
