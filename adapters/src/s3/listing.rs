//! ListObjectsV2 with raw keys: `object_store` parses every key into its
//! `Path` type and fails the whole page on one it cannot parse (a planted
//! `a/../b`, `a//b`, or a name with a newline); corral must hide such keys
//! and count them, so it reads the XML itself and hands the keys over
//! exactly as spelled (the domain decides what may be shown).

use corral_domain::port::{ListItem, ListOptions, ListStream, ObjectMeta};
use corral_domain::retry::Backoff;
use corral_domain::{ErrorKind, ObjectKey, Operation, Result};
use serde::Deserialize;

use super::signed::{Signed, invalid_response, parse_time};
use crate::paginate::paginate;
use crate::retry::retry;

/// One page of ListObjectsV2, with raw keys.
#[derive(Debug, Default)]
struct ListPage {
    items: Vec<ListItem>,
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    contents: Vec<Contents>,
    #[serde(default)]
    common_prefixes: Vec<CommonPrefix>,
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
    encoding_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
    #[serde(default)]
    size: u64,
    last_modified: Option<String>,
    #[serde(rename = "ETag")]
    e_tag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CommonPrefix {
    prefix: String,
}

/// A ListObjectsV2 answer, parsed: its objects and prefixes in key order,
/// and the token of the next page. Keys are taken as the XML spells them
/// (the domain decides what may be shown); an answer that cannot be used
/// is an error, never a panic.
fn parse_list_page(body: &[u8]) -> Result<ListPage> {
    let result: ListBucketResult = quick_xml::de::from_reader(body)
        .map_err(|e| invalid_response(format!("the ListObjectsV2 answer is not valid XML: {e}")))?;
    if result.encoding_type.is_some() {
        return Err(invalid_response(
            "the server url-encoded keys it was not asked to encode".to_owned(),
        ));
    }
    let mut items = Vec::with_capacity(result.contents.len() + result.common_prefixes.len());
    for c in result.contents {
        items.push(ListItem::Object(ObjectMeta {
            key: ObjectKey::from_raw(c.key),
            size: c.size,
            last_modified: parse_time(c.last_modified.as_deref()),
            etag: c.e_tag,
            checksum: None,
        }));
    }
    for p in result.common_prefixes {
        items.push(ListItem::Prefix(ObjectKey::from_raw(p.prefix)));
    }
    items.sort_by(|a, b| a.key().cmp(b.key()));
    let next = match (result.is_truncated, result.next_continuation_token) {
        (true, Some(t)) if !t.is_empty() => Some(t),
        (true, _) => {
            return Err(invalid_response(
                "the listing is truncated but the server gave no continuation token".to_owned(),
            ));
        }
        (false, _) => None,
    };
    Ok(ListPage { items, next })
}

/// One page, fetched again while its answer is unusable (not XML, or
/// truncated without a way to go on): a glitch that a second request
/// usually clears. A server that keeps answering so is refused.
async fn list_page(
    signed: &Signed,
    prefix: &str,
    options: &ListOptions,
    token: Option<&str>,
) -> Result<ListPage> {
    retry(
        Backoff::requests(signed.max_retries),
        "fetching the listing page",
        |e| e.kind() == ErrorKind::InvalidResponse,
        || list_page_once(signed, prefix, options, token),
    )
    .await
}

async fn list_page_once(
    signed: &Signed,
    prefix: &str,
    options: &ListOptions,
    token: Option<&str>,
) -> Result<ListPage> {
    // No `encoding-type=url`: s3s-fs echoes it without encoding keys, so a
    // decoded key could name another object. Raw XML keys are exact; a key
    // with a control character arrives as is and the domain hides it.
    let mut query = vec![("list-type", "2"), ("prefix", prefix)];
    if options.delimiter {
        query.push(("delimiter", "/"));
    }
    if let Some(t) = token {
        query.push(("continuation-token", t));
    } else if let Some(after) = &options.start_after {
        query.push(("start-after", after.as_str()));
    }
    let body = signed
        .send(http::Method::GET, &query, Operation::List)
        .await?;
    parse_list_page(&body)
}

/// A lazily paginated listing.
pub(super) fn list(signed: &Signed, prefix: ObjectKey, options: ListOptions) -> ListStream {
    let signed = signed.clone();
    paginate("continuation token", move |token: Option<String>| {
        let (signed, prefix, options) = (signed.clone(), prefix.clone(), options.clone());
        async move {
            let page = list_page(&signed, prefix.as_str(), &options, token.as_deref()).await?;
            Ok((page.items, page.next))
        }
    })
}

#[cfg(test)]
mod tests {
    /// Listing answers come from the server: fuzzed, they never panic, and
    /// keys arrive exactly as the XML spells them.
    mod listing_answers {
        use super::super::parse_list_page;
        use corral_domain::port::ListItem;
        use proptest::prelude::*;

        fn escape(key: &str) -> String {
            key.chars()
                .map(|c| match c {
                    '&' => "&amp;".to_owned(),
                    '<' => "&lt;".to_owned(),
                    '>' => "&gt;".to_owned(),
                    c if (c as u32) < 0x20 => format!("&#x{:x};", c as u32),
                    c => c.to_string(),
                })
                .collect()
        }

        fn page(keys: &[String], prefixes: &[String], token: Option<&str>) -> String {
            let mut xml =
                String::from(r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult>"#);
            for k in keys {
                xml.push_str(&format!(
                    "<Contents><Key>{}</Key><Size>1</Size><ETag>\"e\"</ETag></Contents>",
                    escape(k)
                ));
            }
            for p in prefixes {
                xml.push_str(&format!(
                    "<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>",
                    escape(p)
                ));
            }
            match token {
                Some(t) => xml.push_str(&format!(
                    "<IsTruncated>true</IsTruncated><NextContinuationToken>{}</NextContinuationToken>",
                    escape(t)
                )),
                None => xml.push_str("<IsTruncated>false</IsTruncated>"),
            }
            xml.push_str("</ListBucketResult>");
            xml
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z/. ]{1,12}",
                "[^\\x00]{1,12}",
                Just(" leading and trailing ".to_owned()),
                Just("tab\tand\nnewline\r".to_owned()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 20_000, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
                let _ = parse_list_page(&body);
            }

            #[test]
            fn mutated_pages_never_panic(
                keys in prop::collection::vec(key(), 0..4),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                how in 0..3u8,
            ) {
                let mut body = page(&keys, &[], Some("t")).into_bytes();
                let i = at.index(body.len());
                match how {
                    0 => body.truncate(i),
                    1 => body[i] = byte,
                    _ => body.insert(i, byte),
                }
                let _ = parse_list_page(&body);
            }

            #[test]
            fn keys_arrive_exactly_as_spelled(
                keys in prop::collection::vec(key(), 0..5),
                prefixes in prop::collection::vec(key(), 0..3),
                token in prop::option::of("[A-Za-z0-9+/=]{1,16}"),
            ) {
                let parsed = parse_list_page(page(&keys, &prefixes, token.as_deref()).as_bytes())
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut objects: Vec<String> = Vec::new();
                let mut dirs: Vec<String> = Vec::new();
                for item in parsed.items {
                    match item {
                        ListItem::Object(m) => objects.push(m.key.as_str().to_owned()),
                        ListItem::Prefix(p) => dirs.push(p.as_str().to_owned()),
                        ListItem::Special(k, _) => {
                            return Err(TestCaseError::fail(format!("S3 reported a special entry {k:?}")));
                        }
                    }
                }
                let (mut want_objects, mut want_dirs) = (keys.clone(), prefixes.clone());
                want_objects.sort();
                want_dirs.sort();
                objects.sort();
                dirs.sort();
                prop_assert_eq!(objects, want_objects);
                prop_assert_eq!(dirs, want_dirs);
                prop_assert_eq!(parsed.next, token);
            }
        }
    }
}
