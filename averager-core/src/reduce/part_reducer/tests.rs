use std::time::Duration;

use futures::future::join_all;
use futures::poll;

use super::*;
use crate::reduce::MeanReducer;
use crate::tensor::Tensor;

const WAIT: Duration = Duration::from_secs(10);

fn mean() -> Arc<dyn Reducer> {
    Arc::new(MeanReducer)
}

fn f32s(values: &[f32]) -> Tensor {
    Tensor::from_f32(vec![values.len()], values.to_vec()).unwrap()
}

fn values(outcome: &PartOutcome) -> Vec<f32> {
    match outcome {
        PartOutcome::Reduced(t) => t.as_f32().unwrap().to_vec(),
        PartOutcome::KeepLocal => panic!("expected a reduced part"),
    }
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f).await.expect("timed out")
}

/// Sender `s` sends `[10 * s + k; 2]` as part k.
fn part(s: usize, k: usize) -> Tensor {
    let x = (10 * s + k) as f32;
    f32s(&[x, -x])
}

fn mean_of(senders: &[usize], k: usize) -> Vec<f32> {
    let x = senders.iter().map(|&s| (10 * s + k) as f32).sum::<f32>() / senders.len() as f32;
    vec![x, -x]
}

#[tokio::test]
async fn senders_in_any_order_get_the_mean() {
    let pr = Arc::new(PartReducer::new(mean(), vec![(2, DType::F32); 3], 3).unwrap());
    let mut tasks = Vec::new();
    for s in 0..3 {
        for k in (0..3).rev() {
            let pr = pr.clone();
            tasks.push(tokio::spawn(async move {
                let t = part(s, k);
                (k, pr.accumulate(s, k, &t.view(), 1.0).await)
            }));
        }
    }
    for task in within(join_all(tasks)).await {
        let (k, outcome) = task.unwrap();
        assert_eq!(values(&outcome.unwrap()), mean_of(&[0, 1, 2], k));
    }
    assert!(pr.is_finished());
    assert_eq!(pr.received_fraction(), 1.0);
    assert!(pr.lock().results.is_empty(), "results are kept only until taken");
}

/// protocol 11.4: the reference keeps expecting a sender banned while it waits to submit a part.
#[tokio::test]
async fn sender_banned_while_waiting_to_submit_does_not_stall() {
    let pr = PartReducer::new(mean(), vec![(2, DType::F32); 3], 3).unwrap();
    let (p0, p1) = (part(2, 0), part(2, 1));
    let (v0, v1) = (p0.view(), p1.view());
    let mut f0 = Box::pin(pr.accumulate(2, 0, &v0, 1.0));
    assert!(poll!(&mut f0).is_pending());
    let mut f1 = Box::pin(pr.accumulate(2, 1, &v1, 1.0));
    assert!(poll!(&mut f1).is_pending());
    assert_eq!(pr.lock().received, 1, "part 1 of sender 2 is waiting, not contributed");

    // Its handler is cancelled and the sender banned, as the span reducer does.
    drop(f1);
    pr.sender_failed(2);

    let others = (0..2).map(|s| {
        let pr = &pr;
        async move {
            let mut out = Vec::new();
            for k in 0..3 {
                let t = part(s, k);
                out.push(pr.accumulate(s, k, &t.view(), 1.0).await.unwrap());
            }
            out
        }
    });
    let results = within(join_all(others)).await;
    for out in &results {
        assert_eq!(values(&out[0]), mean_of(&[0, 1, 2], 0));
        assert_eq!(values(&out[1]), mean_of(&[0, 1], 1));
        assert_eq!(values(&out[2]), mean_of(&[0, 1], 2));
    }
    // Banned after contributing: still counted for part 0 and still gets its result.
    assert_eq!(values(&within(f0).await.unwrap()), mean_of(&[0, 1, 2], 0));
    assert!(pr.is_finished());
    assert!(pr.lock().results.is_empty());
    assert!((pr.received_fraction() - 7.0 / 9.0).abs() < 1e-12);
}

#[tokio::test]
async fn finish_wakes_waiters_with_an_error() {
    let pr = Arc::new(PartReducer::new(mean(), vec![(2, DType::F32); 2], 3).unwrap());
    let mut tasks = Vec::new();
    for (s, k) in [(0, 0), (0, 1), (1, 0)] {
        let pr = pr.clone();
        tasks.push(tokio::spawn(async move {
            let t = part(s, k);
            pr.accumulate(s, k, &t.view(), 1.0).await
        }));
    }
    // Let the three tasks reach their waits; sender 2 never comes.
    while pr.lock().received < 2 {
        tokio::task::yield_now().await;
    }
    pr.finish();
    for task in within(join_all(tasks)).await {
        assert!(matches!(task.unwrap(), Err(Error::Cancelled(_))));
    }
    assert!(pr.is_finished());
    within(pr.wait_finished()).await;
    let t = part(2, 0);
    assert!(matches!(pr.accumulate(2, 0, &t.view(), 1.0).await, Err(Error::Cancelled(_))));
    pr.finish();
}

#[tokio::test]
async fn bad_inputs_are_errors() {
    let pr = PartReducer::new(mean(), vec![(2, DType::F32); 2], 2).unwrap();
    let good = part(0, 0);
    assert!(matches!(pr.accumulate(2, 0, &good.view(), 1.0).await, Err(Error::Reducer(_))));
    assert!(matches!(pr.accumulate(0, 2, &good.view(), 1.0).await, Err(Error::Reducer(_))));

    // The same part twice: the second submission fails, the first still counts.
    let good_view = good.view();
    let mut first = Box::pin(pr.accumulate(0, 0, &good_view, 1.0));
    assert!(poll!(&mut first).is_pending());
    assert!(matches!(pr.accumulate(0, 0, &good.view(), 1.0).await, Err(Error::Reducer(_))));
    assert!(!pr.is_banned(0));

    let other = part(1, 0);
    let other_view = other.view();
    let second = pr.accumulate(1, 0, &other_view, 1.0);
    let (a, b) = within(futures::future::join(first, second)).await;
    assert_eq!(values(&a.unwrap()), mean_of(&[0, 1], 0));
    assert_eq!(values(&b.unwrap()), mean_of(&[0, 1], 0));
    // Part 0 was reduced already.
    assert!(matches!(pr.accumulate(0, 0, &good.view(), 1.0).await, Err(Error::Reducer(_))));

    // A wrong length bans the sender, so part 1 completes with sender 0 alone.
    let short = f32s(&[1.0]);
    assert!(matches!(pr.accumulate(1, 1, &short.view(), 1.0).await, Err(Error::Reducer(_))));
    assert!(pr.is_banned(1));
    let late = part(1, 1);
    assert!(pr.accumulate(1, 1, &late.view(), 1.0).await.is_err(), "a banned sender is refused");
    let p = part(0, 1);
    assert_eq!(values(&within(pr.accumulate(0, 1, &p.view(), 1.0)).await.unwrap()), mean_of(&[0], 1));
    assert!(pr.is_finished());
    assert!(matches!(pr.accumulate(0, 1, &p.view(), 1.0).await, Err(Error::Reducer(_))));
}

#[tokio::test]
async fn wrong_dtype_and_bad_weight_ban_the_sender() {
    let pr = PartReducer::new(mean(), vec![(2, DType::F32)], 3).unwrap();
    let wrong = Tensor::from_f64(vec![2], vec![1.0, 2.0]).unwrap();
    assert!(pr.accumulate(0, 0, &wrong.view(), 1.0).await.is_err());
    let p = part(1, 0);
    assert!(pr.accumulate(1, 0, &p.view(), f64::NAN).await.is_err());
    assert!(pr.is_banned(0) && pr.is_banned(1) && !pr.is_banned(2));
    let p = part(2, 0);
    assert_eq!(values(&within(pr.accumulate(2, 0, &p.view(), 1.0)).await.unwrap()), mean_of(&[2], 0));
}

#[tokio::test]
async fn empty_and_abandoned_parts() {
    let pr = PartReducer::new(mean(), Vec::new(), 3).unwrap();
    assert!(pr.is_finished());
    assert_eq!(pr.num_parts(), 0);
    within(pr.wait_finished()).await;

    let pr = PartReducer::new(mean(), vec![(2, DType::F32); 4], 0).unwrap();
    assert!(pr.is_finished(), "with no senders every part completes at once");
    assert!(pr.lock().results.is_empty());

    // Everyone banned: the remaining parts complete (as KeepLocal) and the reducer finishes.
    let pr = PartReducer::new(mean(), vec![(2, DType::F32); 3], 2).unwrap();
    pr.sender_failed(0);
    pr.sender_failed(0);
    pr.sender_failed(7);
    assert!(!pr.is_finished());
    pr.sender_failed(1);
    assert!(pr.is_finished());

    // A contributor that stops waiting does not leave its part's result behind.
    let pr = PartReducer::new(mean(), vec![(2, DType::F32)], 2).unwrap();
    let (p0, p1) = (part(0, 0), part(1, 0));
    let v0 = p0.view();
    let mut gone = Box::pin(pr.accumulate(0, 0, &v0, 1.0));
    assert!(poll!(&mut gone).is_pending());
    drop(gone);
    let last = within(pr.accumulate(1, 0, &p1.view(), 1.0)).await.unwrap();
    assert_eq!(values(&last), mean_of(&[0, 1], 0));
    assert!(pr.lock().results.is_empty());
}

#[tokio::test]
async fn all_zero_weights_keep_local() {
    let pr = PartReducer::new(mean(), vec![(2, DType::F32)], 2).unwrap();
    let (p0, p1) = (part(0, 0), part(1, 0));
    let (a, b) = within(futures::future::join(
        pr.accumulate(0, 0, &p0.view(), 0.0),
        pr.accumulate(1, 0, &p1.view(), 0.0),
    ))
    .await;
    assert_eq!(*a.unwrap(), PartOutcome::KeepLocal);
    assert_eq!(*b.unwrap(), PartOutcome::KeepLocal);
}
