//! Eight peers, one sending values 1e6 times larger (see `support/byzantine.rs` for the setup and
//! the criterion): the mean ruins every honest peer; each robust reducer keeps the honest peers
//! within 2 standard errors of the honest mean, and within 2x the honest mean's own error.

#[path = "support/byzantine.rs"]
mod byzantine;

use averager_reducers as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn robust_reducers_resist_one_huge_sender() {
    for (reducer, settings) in byzantine::reducers() {
        let f = byzantine::run(reducer, settings, true, 16).await.unwrap();
        println!(
            "{reducer}: to honest mean {:.3e} ({:.2} SE), to mu {:.3e} ({:.2}x the honest mean's)",
            f.to_honest_mean,
            f.ratio_to_honest_se(),
            f.to_mu,
            f.ratio_to_honest_mu()
        );
        if reducer == "mean" {
            assert!(f.ratio_to_honest_se() > 1e3, "the mean was not ruined: {f:?}");
        } else {
            assert!(f.ratio_to_honest_se() <= 2.0, "{reducer}: {f:?}");
            assert!(f.ratio_to_honest_mu() <= 2.0, "{reducer}: {f:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reducer_settings_fail_at_construction() {
    let err =
        byzantine::run("trimmed-mean", serde_json::json!({ "trim": "one" }), false, 1).await.unwrap_err();
    assert!(err.contains("trimmed-mean settings"), "{err}");
}
