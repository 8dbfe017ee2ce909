//! The one paginator: pages fetched lazily, each asked for with the token
//! the page before gave, until a page gives none. A token seen twice is an
//! error, not an endless listing.

use std::collections::HashSet;
use std::future::Future;
use std::hash::Hash;

use corral_domain::{Error, ErrorKind, Result};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};

/// The items of every page, in order; the next page is fetched when the
/// last item of this one is taken. `marker` names the token in errors.
pub(crate) fn paginate<T, K, F, Fut>(
    marker: &'static str,
    fetch: F,
) -> BoxStream<'static, Result<T>>
where
    T: Send + 'static,
    K: Clone + Eq + Hash + Send + std::fmt::Debug + 'static,
    F: FnMut(Option<K>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(Vec<T>, Option<K>)>> + Send,
{
    struct State<K, F> {
        fetch: F,
        token: Option<K>,
        seen: HashSet<K>,
        done: bool,
    }
    let state = State {
        fetch,
        token: None,
        seen: HashSet::new(),
        done: false,
    };
    futures::stream::try_unfold(state, move |mut s| async move {
        if s.done {
            return Ok(None);
        }
        let (items, next) = (s.fetch)(s.token.clone()).await?;
        match next {
            Some(t) => {
                if !s.seen.insert(t.clone()) {
                    return Err(Error::new(
                        ErrorKind::InvalidResponse,
                        format!(
                            "the server repeated the {marker} {t:?}: the listing would never end"
                        ),
                    ));
                }
                s.token = Some(t);
            }
            None => s.done = true,
        }
        Ok(Some((futures::stream::iter(items.into_iter().map(Ok)), s)))
    })
    .try_flatten()
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_follow_tokens_and_a_repeated_token_is_refused() {
        let items: Vec<u32> = paginate("token", |t: Option<u32>| async move {
            let at = t.unwrap_or(0);
            Ok(((at * 2..at * 2 + 2).collect(), (at < 2).then_some(at + 1)))
        })
        .try_collect()
        .await
        .unwrap();
        assert_eq!(items, [0, 1, 2, 3, 4, 5]);
        let e = paginate("token", |_: Option<u32>| async { Ok((vec![1u8], Some(9))) })
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);
    }
}
