//! The promises of protocol 8.2, one test each.
use std::pin::pin;
use std::time::Duration;

use futures::FutureExt;

use super::*;

/// A guard against a hang, not a synchronisation: every wait here is woken by a state change.
const LIMIT: Duration = Duration::from_secs(5);

fn control(require_trigger: bool) -> StepControl<u32> {
    StepControl::new(10.0, 1.0, Some(100.0), true, require_trigger, vec![1, 2]).unwrap()
}

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f).await.expect("waited too long")
}

#[test]
fn new_refuses_bad_values() {
    assert!(matches!(StepControl::<u32>::new(0.0, -1.0, None, true, false, vec![]), Err(Error::Config(_))));
    assert!(StepControl::<u32>::new(f64::NAN, 1.0, None, true, false, vec![]).is_err());
}

#[test]
fn stages_only_move_forward_except_a_retry() {
    let c = control(false);
    assert_eq!((c.stage(), c.began_allreduce()), (Stage::Idle, false));
    c.set_stage(Stage::RunningAllreduce);
    assert!(c.began_allreduce());
    c.set_stage(Stage::AwaitingTrigger);
    assert_eq!(c.stage(), Stage::RunningAllreduce);
    c.set_stage(Stage::Idle);
    assert_eq!(c.stage(), Stage::RunningAllreduce);
    // A retry starts a new round; began_allreduce stays set.
    c.set_stage(Stage::LookingForGroup);
    assert_eq!((c.stage(), c.began_allreduce()), (Stage::LookingForGroup, true));
    assert!(!c.is_done());
    c.set_stage(Stage::Finished);
    assert_eq!(c.stage(), Stage::Finished);
    for later in [Stage::LookingForGroup, Stage::RunningAllreduce, Stage::Idle] {
        c.set_stage(later);
        assert_eq!(c.stage(), Stage::Finished);
    }
}

/// A caller woken by the result must already see the final stage (the Python binding's
/// `result()` then `stage` once saw `RunningAllreduce`, as result and stage were two changes).
#[tokio::test]
async fn finish_sets_the_result_and_the_final_stage_in_one_change() {
    let c = control(false);
    c.set_stage(Stage::RunningAllreduce);
    let mut rx = c.shared.state.subscribe();
    c.finish(Ok(3));
    let seen = rx.wait_for(|s| s.result.is_some()).await.map(|s| s.stage).unwrap();
    assert_eq!(seen, Stage::Finished);
    assert!(!rx.has_changed().unwrap(), "one change, not two");
    // The first result wins, as with set_result.
    c.finish(Ok(4));
    assert_eq!(c.result().await.unwrap(), 3);
}

#[tokio::test]
async fn finishing_without_a_result_is_an_internal_error() {
    let c = control(false);
    c.set_stage(Stage::Finished);
    assert!(c.is_done() && !c.cancelled());
    assert!(matches!(c.result().await, Err(Error::Internal(_))));
    // A result set before finishing is kept.
    let c = control(false);
    assert!(c.set_result(Ok(7)));
    c.set_stage(Stage::Finished);
    assert_eq!(c.result().await.unwrap(), 7);
}

#[tokio::test]
async fn wait_for_stage_resolves() {
    let c = control(false);
    let mut awaiting = pin!(c.wait_for_stage(Stage::AwaitingTrigger));
    c.set_stage(Stage::LookingForGroup);
    assert!(awaiting.as_mut().now_or_never().is_none());
    // The future is 'static: it can be moved to another task.
    let running = tokio::spawn(c.wait_for_stage(Stage::RunningAllreduce));
    c.averager_handle().set_stage(Stage::AwaitingTrigger);
    within(awaiting).await;
    c.set_stage(Stage::RunningAllreduce);
    within(running).await.unwrap();
    // A stage left again by a retry still counts for a late waiter.
    c.set_stage(Stage::LookingForGroup);
    within(c.wait_for_stage(Stage::RunningAllreduce)).await;
    assert!(c.wait_for_stage(Stage::Finished).now_or_never().is_none());
}

#[tokio::test]
async fn trigger_is_idempotent() {
    let c = control(true);
    assert!(!c.triggered() && c.require_trigger());
    let mut waiting = pin!(c.wait_for_trigger());
    assert!(waiting.as_mut().now_or_never().is_none());
    c.allow_allreduce();
    assert!(c.triggered());
    c.allow_allreduce();
    assert!(c.triggered());
    within(waiting).await.unwrap();
    // A cancel after the trigger leaves it set.
    c.cancel();
    assert!(c.triggered());
    c.wait_for_trigger().await.unwrap();

    let untriggered = control(false);
    assert!(untriggered.triggered());
    untriggered.allow_allreduce();
    untriggered.wait_for_trigger().await.unwrap();
}

#[tokio::test]
async fn cancel_before_a_result() {
    let c = control(true);
    let round = c.averager_handle();
    let trigger = tokio::spawn({
        let round = round.clone();
        async move { round.wait_for_trigger().await }
    });
    let signal = tokio::spawn({
        let round = round.clone();
        async move { round.cancelled_signal().await }
    });
    let result = tokio::spawn({
        let c = c.clone();
        async move { c.result().await }
    });
    assert!(c.cancel());
    assert!(c.cancelled() && c.is_done() && !c.triggered());
    assert!(matches!(within(trigger).await.unwrap(), Err(Error::Cancelled(_))));
    within(signal).await.unwrap();
    assert!(matches!(within(result).await.unwrap(), Err(Error::Cancelled(_))));
    // The round loop's late result and a second cancel change nothing.
    assert!(!round.set_result(Ok(1)));
    assert!(!c.cancel());
    c.allow_allreduce();
    assert!(!c.triggered());
    assert!(matches!(c.result().await, Err(Error::Cancelled(_))));
}

#[tokio::test]
async fn cancel_after_a_result_keeps_it() {
    let c = control(false);
    c.set_stage(Stage::RunningAllreduce);
    assert!(c.averager_handle().set_result(Ok(42)));
    assert!(!c.set_result(Ok(0)));
    assert!(!c.cancel());
    assert!(!c.cancelled() && c.is_done());
    assert_eq!(c.result().await.unwrap(), 42);
    // The round loop still hears the cancel, as in hivemind.
    within(c.cancelled_signal()).await;
}

#[test]
fn weight_and_schedule_are_fixed_once_allreduce_begins() {
    let c = control(false);
    c.set_weight(2.5).unwrap();
    c.set_scheduled_time(20.0);
    assert_eq!((c.weight(), c.scheduled_time()), (2.5, 20.0));
    assert!(matches!(c.set_weight(-1.0), Err(Error::Config(_))));
    assert!(c.set_weight(f64::INFINITY).is_err());
    c.set_scheduled_time(f64::NAN);
    assert_eq!((c.weight(), c.scheduled_time()), (2.5, 20.0));
    c.set_stage(Stage::AwaitingTrigger);
    c.set_weight(3.0).unwrap();
    assert_eq!(c.weight(), 3.0);
    c.set_stage(Stage::RunningAllreduce);
    c.set_weight(9.0).unwrap();
    c.set_scheduled_time(99.0);
    assert_eq!((c.weight(), c.scheduled_time()), (3.0, 20.0));
    // A retry does not reopen them: began_allreduce stays set.
    c.set_stage(Stage::LookingForGroup);
    c.set_weight(9.0).unwrap();
    assert_eq!(c.weight(), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_awaiters_all_get_the_result() {
    let c = control(false);
    let waiters: Vec<_> = (0..16)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.result().await })
        })
        .collect();
    c.averager_handle().set_result(Ok(5));
    for waiter in waiters {
        assert_eq!(within(waiter).await.unwrap().unwrap(), 5);
    }
}

#[test]
fn accessors_and_debug() {
    let c = control(false);
    assert_eq!((c.deadline(), c.allow_retries(), c.data_for_gather()), (Some(100.0), true, &[1u8, 2][..]));
    assert!(format!("{c:?}").contains("Idle"));
    assert_eq!(Stage::RunningAllreduce as u8, 3);
}

fn untriggered_drops() -> usize {
    UNTRIGGERED_DROPS.with(|n| n.get())
}

#[test]
fn dropping_the_last_user_handle_of_an_untriggered_step_warns() {
    let before = untriggered_drops();
    drop(control(false));
    let cancelled = control(true);
    cancelled.cancel();
    drop(cancelled);
    let triggered = control(true);
    triggered.allow_allreduce();
    drop(triggered);
    assert_eq!(untriggered_drops(), before);

    let c = control(true);
    let second = c.clone();
    let round = c.averager_handle();
    drop(c);
    drop(round.clone());
    assert_eq!(untriggered_drops(), before);
    drop(second);
    assert_eq!(untriggered_drops(), before + 1);
    // The round loop's handle is not the user's: dropping it says nothing.
    drop(round);
    assert_eq!(untriggered_drops(), before + 1);
}
