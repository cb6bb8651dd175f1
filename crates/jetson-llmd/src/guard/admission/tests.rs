//! Admission under paused time: priority order, fair shares, limits, bounded waits, clients
//! that leave, and reload while requests wait.

use super::*;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

fn class(name: &str, priority: i32, share: u32) -> ClassSettings {
    ClassSettings { priority, share, ..ClassSettings::named(name) }
}

fn settings(parallel: u32, classes: Vec<ClassSettings>) -> GuardSettings {
    GuardSettings { parallel, classes, ..GuardSettings::default() }
}

type Waiting = Pin<Box<dyn Future<Output = Result<Slot, Refusal>> + Send>>;

fn wait(a: &Arc<Admission>, class: &str) -> Waiting {
    wait_bytes(a, class, 0)
}

fn wait_bytes(a: &Arc<Admission>, class: &str, bytes: usize) -> Waiting {
    let (a, class) = (a.clone(), class.to_string());
    Box::pin(async move { a.admit(&class, bytes).await })
}

/// Polls once: the slot if it was given.
fn poll_now(f: &mut Waiting) -> Option<Result<Slot, Refusal>> {
    let waker = std::task::Waker::noop();
    match f.as_mut().poll(&mut Context::from_waker(waker)) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}

/// Frees the slot `held`, then `n` times: which of the two queues ("a" or "b") got the slot
/// (each admitted request holds it until the next round).
fn turns(held: Slot, qa: &mut Vec<Waiting>, qb: &mut Vec<Waiting>, n: usize) -> String {
    let mut held = Some(held);
    let mut order = String::new();
    for _ in 0..n {
        drop(held.take());
        for (name, q) in [("a", &mut *qa), ("b", &mut *qb)] {
            let got = (0..q.len()).find_map(|i| match poll_now(&mut q[i]) {
                Some(Ok(s)) => Some((i, s)),
                _ => None,
            });
            if let Some((i, s)) = got {
                held = Some(s);
                drop(q.remove(i));
                order.push_str(name);
                break;
            }
        }
    }
    order
}

fn stats(a: &Admission, class: &str) -> ClassStats {
    a.snapshot().into_iter().find(|s| s.class == class).expect("class listed")
}

#[tokio::test(start_paused = true)]
async fn a_waiting_chat_goes_before_a_batch_backlog() {
    let a = Admission::new(&settings(1, vec![class("chat", 10, 1), class("batch", 0, 1)]), None, usize::MAX);
    let running = a.admit("batch", 0).await.expect("a free slot");
    let mut batch: Vec<Waiting> = (0..5).map(|_| wait(&a, "batch")).collect();
    for b in &mut batch {
        assert!(poll_now(b).is_none(), "one slot, taken");
    }
    let mut chat = wait(&a, "chat");
    assert!(poll_now(&mut chat).is_none());
    assert_eq!(stats(&a, "batch").queued, 5);
    drop(running);
    let slot = poll_now(&mut chat).expect("the chat is next").expect("admitted");
    assert_eq!(slot.class, "chat");
    for b in &mut batch {
        assert!(poll_now(b).is_none(), "the batch waits for the chat's slot");
    }
    drop(slot);
    // Then the batch, first come first served.
    let b0 = poll_now(&mut batch[0]).expect("the oldest batch request").expect("ok");
    assert!(poll_now(&mut batch[1]).is_none());
    drop(b0);
    assert!(poll_now(&mut batch[1]).is_some());
}

#[tokio::test(start_paused = true)]
async fn equal_priorities_share_by_weight() {
    let a = Admission::new(&settings(1, vec![class("a", 0, 3), class("b", 0, 1)]), None, usize::MAX);
    let first = a.admit("a", 0).await.expect("free");
    let mut qa: VecDeque<Waiting> = (0..40).map(|_| wait(&a, "a")).collect();
    let mut qb: VecDeque<Waiting> = (0..40).map(|_| wait(&a, "b")).collect();
    for f in qa.iter_mut().chain(qb.iter_mut()) {
        assert!(poll_now(f).is_none());
    }
    let mut held = Some(first);
    let mut order = String::new();
    for _ in 0..40 {
        drop(held.take());
        let got_a = qa.front_mut().and_then(poll_now);
        let got_b = qb.front_mut().and_then(poll_now);
        let slot = match (got_a, got_b) {
            (Some(s), None) => {
                qa.pop_front();
                s
            }
            (None, Some(s)) => {
                qb.pop_front();
                s
            }
            other => panic!("exactly one class admitted per free slot: {:?}", (other.0.is_some(), other.1.is_some())),
        };
        let slot = slot.expect("admitted");
        order.push_str(&slot.class);
        held = Some(slot);
    }
    let (na, nb) = (order.matches('a').count(), order.matches('b').count());
    assert_eq!((na, nb), (30, 10), "3:1 by share: {order}");
    // Interleaved, not a run of one class then the other.
    assert!(!order.contains("aaaa") && !order.contains("bb"), "{order}");
}

#[tokio::test(start_paused = true)]
async fn a_class_limit_leaves_slots_to_others() {
    let a = Admission::new(&settings(2, vec![ClassSettings { limit: 1, ..class("batch", 0, 1) }, class("chat", 0, 1)]), None, usize::MAX);
    let _b1 = a.admit("batch", 0).await.expect("free");
    let mut b2 = wait(&a, "batch");
    assert!(poll_now(&mut b2).is_none(), "batch is at its limit of 1 with a slot still free");
    let c = a.admit("chat", 0).await.expect("the second slot is the chat's");
    assert_eq!(stats(&a, "batch").running, 1);
    assert_eq!(stats(&a, "chat").running, 1);
    drop(c);
    assert!(poll_now(&mut b2).is_none(), "still at its limit");
}

#[tokio::test(start_paused = true)]
async fn waiting_is_bounded() {
    let a = Admission::new(&settings(1, vec![ClassSettings { max_queue: 2, max_wait: Duration::from_secs(30), ..class("batch", 0, 1) }]), None, usize::MAX);
    let _running = a.admit("batch", 0).await.expect("free");
    let mut q: Vec<Waiting> = (0..2).map(|_| wait(&a, "batch")).collect();
    for f in &mut q {
        assert!(poll_now(f).is_none());
    }
    match a.admit("batch", 0).await {
        Err(Refusal::QueueFull { class, max }) => assert_eq!((class.as_str(), max), ("batch", 2)),
        other => panic!("a full queue refuses at once: {other:?}"),
    }
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(poll_now(&mut q[0]).is_none());
    tokio::time::advance(Duration::from_secs(2)).await;
    match poll_now(&mut q[0]) {
        Some(Err(Refusal::Waited { class, waited })) => assert_eq!((class.as_str(), waited.as_secs()), ("batch", 31)),
        other => panic!("max_wait passed: {:?}", other.map(|r| r.map(|s| s.class.clone()))),
    }
    let s = stats(&a, "batch");
    assert_eq!((s.refused_full, s.refused_wait, s.queued), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_frees_its_place_at_once() {
    let a = Admission::new(&settings(1, vec![class("chat", 1, 1)]), None, usize::MAX);
    let running = a.admit("default", 0).await.expect("free");
    let mut gone = wait(&a, "default");
    let mut next = wait(&a, "default");
    assert!(poll_now(&mut gone).is_none() && poll_now(&mut next).is_none());
    drop(gone);
    let s = stats(&a, "default");
    assert_eq!((s.queued, s.left), (1, 1));
    drop(running);
    assert!(poll_now(&mut next).expect("the slot goes to the one still waiting").is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_slot_sent_to_a_client_already_gone_is_given_back() {
    let a = Admission::new(&settings(1, vec![class("x", 0, 1)]), None, usize::MAX);
    let running = a.admit("x", 0).await.expect("free");
    let mut w = wait(&a, "x");
    assert!(poll_now(&mut w).is_none());
    // The slot is sent while the waiter is still queued; the waiter is then dropped unread.
    drop(running);
    drop(w);
    let s = stats(&a, "x");
    assert_eq!((s.running, s.queued), (0, 0), "the slot came back with the dropped future");
    assert!(a.admit("x", 0).await.is_ok(), "and is free for the next request");
}

#[tokio::test(start_paused = true)]
async fn an_idle_class_does_not_bank_its_share() {
    // "b" was idle while "a" ran 20 requests; when b comes back it gets its share from now on,
    // not 20 requests in a row.
    let a = Admission::new(&settings(1, vec![class("a", 0, 1), class("b", 0, 1)]), None, usize::MAX);
    for _ in 0..20 {
        drop(a.admit("a", 0).await.expect("free"));
    }
    let first = a.admit("a", 0).await.expect("free");
    let mut qa: Vec<Waiting> = (0..3).map(|_| wait(&a, "a")).collect();
    let mut qb: Vec<Waiting> = (0..3).map(|_| wait(&a, "b")).collect();
    for f in qa.iter_mut().chain(qb.iter_mut()) {
        assert!(poll_now(f).is_none());
    }
    let order = turns(first, &mut qa, &mut qb, 6);
    // b starts from the clock (the start of a's request in Ollama), so it goes first once, then
    // the two take turns.
    assert_eq!(order, "bababa", "turns from now on: b's idle time was not banked");
}

#[tokio::test(start_paused = true)]
async fn reload_keeps_the_queue_and_applies_new_priorities() {
    let s1 = settings(1, vec![class("chat", 0, 1), class("batch", 10, 1)]);
    let a = Admission::new(&s1, None, usize::MAX);
    let running = a.admit("batch", 0).await.expect("free");
    let mut b = wait(&a, "batch");
    let mut c = wait(&a, "chat");
    let mut gone = wait(&a, "old");
    assert!(poll_now(&mut b).is_none() && poll_now(&mut c).is_none() && poll_now(&mut gone).is_none());
    // SIGHUP: chat first now; a class removed sends its waiters to default.
    a.configure(&settings(1, vec![class("chat", 10, 1), class("batch", 0, 1)]), None);
    assert_eq!(stats(&a, "batch").running, 1, "the request in Ollama is still counted");
    drop(running);
    assert_eq!(poll_now(&mut c).expect("chat first after the reload").expect("ok").class, "chat");
    // Two slots now: batch and default both go.
    a.configure(&settings(2, vec![class("chat", 10, 1), class("batch", 0, 1)]), None);
    assert!(poll_now(&mut b).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_request_of_a_class_removed_while_it_ran_is_given_back_to_default() {
    let a = Admission::new(&settings(1, vec![class("old", 0, 1)]), None, usize::MAX);
    let running = a.admit("old", 0).await.expect("free");
    a.configure(&settings(1, vec![class("new", 0, 1)]), None);
    assert_eq!(stats(&a, "default").running, 1, "counted under default while it runs");
    drop(running);
    assert_eq!(stats(&a, "default").running, 0, "and given back there");
    assert!(a.admit("default", 0).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_class_idle_while_the_board_was_idle_does_not_bank_either() {
    // a ran 20 alone, then nothing ran at all; b arrives alone, then both queue.
    let a = Admission::new(&settings(1, vec![class("a", 0, 1), class("b", 0, 1)]), None, usize::MAX);
    for _ in 0..20 {
        drop(a.admit("a", 0).await.expect("free"));
    }
    let b0 = a.admit("b", 0).await.expect("free");
    let mut qa: Vec<Waiting> = (0..4).map(|_| wait(&a, "a")).collect();
    let mut qb: Vec<Waiting> = (0..4).map(|_| wait(&a, "b")).collect();
    for f in qa.iter_mut().chain(qb.iter_mut()) {
        assert!(poll_now(f).is_none());
    }
    let order = turns(b0, &mut qa, &mut qb, 6);
    assert!(!order.contains("bbb"), "b did not take a's 20 turns back: {order}");
}

#[tokio::test(start_paused = true)]
async fn a_class_removed_and_written_again_while_its_request_ran_keeps_the_counts_right() {
    let a = Admission::new(&settings(1, vec![class("batch", 0, 1)]), None, usize::MAX);
    let running = a.admit("batch", 0).await.expect("free");
    a.configure(&settings(1, vec![]), None);
    a.configure(&settings(1, vec![class("batch", 0, 1)]), None);
    drop(running);
    let s = a.snapshot();
    assert!(s.iter().all(|c| c.running == 0), "{s:?}");
    assert!(a.admit("default", 0).await.is_ok(), "default has its slot");
}

#[tokio::test(start_paused = true)]
async fn waiting_bodies_keep_to_their_share_of_the_budget() {
    let a = Admission::new(&settings(1, vec![class("batch", 0, 1)]), None, 1000);
    let _running = a.admit("batch", 900).await.expect("free: a request that goes on at once is not counted");
    let mut w = wait_bytes(&a, "batch", 600);
    assert!(poll_now(&mut w).is_none());
    match a.admit("batch", 600).await {
        Err(Refusal::BodiesFull { class, .. }) => assert_eq!(class, "batch"),
        other => panic!("over the waiting share: {other:?}"),
    }
    drop(w);
    let mut w = wait_bytes(&a, "batch", 600);
    assert!(poll_now(&mut w).is_none(), "the share came back with the request that left");
}

#[tokio::test(start_paused = true)]
async fn no_classes_means_off() {
    let a = Admission::new(&GuardSettings::default(), Some("4"), usize::MAX);
    assert!(!a.enabled());
    assert_eq!(a.slot_count(), 4, "OLLAMA_NUM_PARALLEL from the environment");
    assert!(a.snapshot().is_empty());
    assert_eq!(slots(&settings(2, vec![]), Some("4")), 2, "[guard] parallel wins");
    assert_eq!(slots(&GuardSettings::default(), Some("many")), 1, "Ollama's default");
}

#[test]
fn classified_by_header_then_key_then_network() {
    let mut s = settings(1, vec![ClassSettings { keys: vec!["indexer".into()], ..class("batch", 0, 1) }, ClassSettings { from: vec!["192.168.1.0/24".parse().expect("net")], ..class("lan", 5, 1) }, class("chat", 10, 1)]);
    s.class_header = Some("x-client-class".into());
    let lan: std::net::IpAddr = "192.168.1.7".parse().expect("ip");
    let mapped: std::net::IpAddr = "::ffff:192.168.1.7".parse().expect("ip");
    let other: std::net::IpAddr = "10.0.0.1".parse().expect("ip");
    let who = |client, key, header| Who { client, key, header };
    assert_eq!(classify(&s, &who(lan, None, None)), "lan");
    assert_eq!(classify(&s, &who(mapped, None, None)), "lan", "v4-mapped");
    assert_eq!(classify(&s, &who(lan, Some("indexer"), None)), "batch", "a key before a network");
    assert_eq!(classify(&s, &who(lan, Some("indexer"), Some("Chat"))), "chat", "the header first");
    assert_eq!(classify(&s, &who(other, None, Some("nope"))), "default", "an unknown class name is no class");
    assert_eq!(classify(&s, &who(other, Some("laptop"), None)), "default");
}
