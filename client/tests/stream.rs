//! The events as a `futures_core::Stream` under tokio (feature `async`).

use std::future::poll_fn;
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use natter::Event;

#[test]
fn tokio_reads_the_events_as_a_stream() {
    let net = natter_fixtures::TestNet::start();
    let alice = net.client("alice");
    let mut stream = alice.event_stream();
    let id = alice.search("alice").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let found = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let next = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await;
                match next {
                    Some(Event::SearchResult {
                        search, outcome, ..
                    }) if search == id => {
                        return Some(outcome);
                    }
                    Some(_) => {}
                    None => return None,
                }
            }
        })
        .await
    });
    let outcome = found.expect("in time").expect("before the stream ended");
    assert_eq!(outcome.online(), 1, "{outcome}");
    // Closing the client ends the stream.
    alice.close();
    let end = rt.block_on(poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)));
    // What was still queued comes first; then the end.
    let mut end = end;
    while end.is_some() {
        end = rt.block_on(poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)));
    }
}
