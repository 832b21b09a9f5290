//! Matchmaking among peers in one process (memory transport, one MemoryDht).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use averager_proto::MessageCode;
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::dht::{Dht, MemoryDht};
use crate::error::Result;
use crate::time::dht_now;
use crate::transport::{
    AveragingData, AveragingService, CallContext, DownloadData, DownloadRequest, JoinRequest, MemoryNetwork,
    MemorySettings, MemoryTransport, MessageFromLeader, MessageStream, ServerHandle, Transport,
};

struct JoinOnly(Arc<Matchmaker>);

#[async_trait]
impl AveragingService for JoinOnly {
    async fn rpc_join_group(
        &self,
        _: CallContext,
        request: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>> {
        Ok(self.0.handle_join(request))
    }
    async fn rpc_aggregate_part(
        &self,
        _: CallContext,
        _: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        Err(crate::Error::Internal("not served here".into()))
    }
    async fn rpc_download_state(
        &self,
        _: CallContext,
        _: DownloadRequest,
    ) -> Result<MessageStream<DownloadData>> {
        Ok(Box::pin(futures::stream::empty()))
    }
}

struct Peer {
    matchmaker: Arc<Matchmaker>,
    _server: Option<ServerHandle>,
}

struct Options {
    target: Option<usize>,
    min_time: Duration,
    request_timeout: Duration,
}

fn options(target: Option<usize>) -> Options {
    Options { target, min_time: Duration::from_millis(500), request_timeout: Duration::from_millis(300) }
}

async fn peers(bits: &[&str], clients: &[bool], opts: &Options) -> Vec<Peer> {
    peers_on(&MemoryNetwork::new(), bits, clients, opts).await
}

async fn peers_on(
    network: &Arc<MemoryNetwork>,
    bits: &[&str],
    clients: &[bool],
    opts: &Options,
) -> Vec<Peer> {
    let dht: Arc<dyn Dht> = Arc::new(MemoryDht::new());
    let mut out = Vec::new();
    for (i, b) in bits.iter().enumerate() {
        let name = format!("peer{i}");
        let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::with_settings(
            network.clone(),
            MemorySettings { name: Some(name.clone()), ..Default::default() },
        ));
        let client = clients.get(i).copied().unwrap_or(false);
        let config = MatchmakingConfig {
            endpoint: if client { format!("client://{name}") } else { format!("mem://{name}") },
            prefix: "mygroup".into(),
            client_mode: client,
            target_group_size: opts.target,
            min_group_size: 2,
            min_matchmaking_time: opts.min_time,
            request_timeout: opts.request_timeout,
            schema_hash: Bytes::from_static(b"schema"),
        };
        let matchmaker =
            Matchmaker::new(config, dht.clone(), transport.clone(), Arc::new(Mutex::new(b.to_string())));
        let server = if client {
            None
        } else {
            Some(transport.serve(Arc::new(JoinOnly(matchmaker.clone()))).await.unwrap())
        };
        out.push(Peer { matchmaker, _server: server });
    }
    out
}

fn request(i: usize, deadline: Option<f64>) -> SearchRequest {
    let gather = GatherPayload::new(None, PeerMode::Node, Some(&i)).unwrap().encode();
    SearchRequest { gather: gather.into(), scheduled_time: Arc::new(dht_now), deadline }
}

async fn search_all(peers: &[Peer], deadline: Option<f64>) -> Vec<Option<FormedGroup>> {
    let cancel = CancellationToken::new();
    let searches = peers.iter().enumerate().map(|(i, p)| {
        let cancel = cancel.clone();
        async move { p.matchmaker.look_for_group(request(i, deadline), &cancel).await.unwrap() }
    });
    tokio::time::timeout(Duration::from_secs(30), futures::future::join_all(searches))
        .await
        .expect("matchmaking hung")
}

fn check_consistent(groups: &[Option<FormedGroup>], peers: &[Peer]) {
    for (i, group) in groups.iter().enumerate() {
        let group = group.as_ref().unwrap_or_else(|| panic!("peer {i} found no group"));
        let me = &peers[i].matchmaker.config().endpoint;
        assert!(group.endpoints.contains(me), "peer {i} is not in its own group");
        assert_eq!(group.endpoints.len(), group.gathered.len());
        for other in &group.endpoints {
            let j = peers.iter().position(|p| &p.matchmaker.config().endpoint == other).unwrap();
            assert_eq!(groups[j].as_ref(), Some(group), "peers {i} and {j} disagree on the group");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_peers_with_target_four_form_one_full_group_and_move_to_distinct_buckets() {
    let peers = peers(&["0110"; 4], &[], &options(Some(4))).await;
    let groups = search_all(&peers, None).await;
    check_consistent(&groups, &peers);
    assert_eq!(groups[0].as_ref().unwrap().endpoints.len(), 4);
    let bits: std::collections::HashSet<String> = peers.iter().map(|p| p.matchmaker.group_bits()).collect();
    assert_eq!(bits.len(), 4, "every member lands in its own bucket: {bits:?}");
    assert!(bits.iter().all(|b| b.len() == 4 && b.starts_with("10")), "{bits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_8_too_few_peers_find_no_group_by_the_deadline() {
    let opts = Options {
        target: Some(2),
        min_time: Duration::from_secs(1),
        request_timeout: Duration::from_millis(500),
    };
    let peers = peers(&["000", "001", "010", "011"], &[], &opts).await;
    let groups = search_all(&peers, Some(dht_now() + 2.0)).await;
    assert!(groups.iter().all(Option::is_none), "{groups:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_target_the_group_closes_at_the_leaders_expiration() {
    let peers = peers(&[""; 3], &[], &options(None)).await;
    let groups = search_all(&peers, None).await;
    check_consistent(&groups, &peers);
    assert_eq!(groups[0].as_ref().unwrap().endpoints.len(), 3);
    // Empty bits stay empty.
    assert!(peers.iter().all(|p| p.matchmaker.group_bits().is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_joins_a_node_but_never_leads() {
    let peers = peers(&["1", "1"], &[true, false], &options(Some(2))).await;
    let groups = search_all(&peers, None).await;
    check_consistent(&groups, &peers);
    assert_eq!(groups[0].as_ref().unwrap().endpoints.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_peers_with_target_two_pair_up() {
    let peers = peers(&["00"; 8], &[], &options(Some(2))).await;
    let groups = search_all(&peers, Some(dht_now() + 20.0)).await;
    let formed: Vec<&FormedGroup> = groups.iter().flatten().collect();
    assert!(formed.iter().all(|g| g.endpoints.len() == 2));
    assert!(formed.len() >= 6, "at least three pairs form: {groups:?}");
    // Members of each formed pair agree on it.
    for (i, group) in groups.iter().enumerate() {
        let Some(group) = group else { continue };
        for other in &group.endpoints {
            let j = peers.iter().position(|p| &p.matchmaker.config().endpoint == other).unwrap();
            assert_eq!(groups[j].as_ref(), Some(group), "peers {i} and {j} disagree");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_requests_are_validated_in_spec_order() {
    let peers = peers(&["01"], &[], &options(Some(3))).await;
    let mm = peers[0].matchmaker.clone();
    let good = |endpoint: &str| JoinRequest {
        endpoint: endpoint.into(),
        schema_hash: Bytes::from_static(b"schema"),
        expiration: dht_now() + 100.0,
        gather: Bytes::new(),
        client_mode: false,
        group_key: group_key("mygroup", "01"),
    };
    async fn first_code(mm: &Arc<Matchmaker>, r: JoinRequest) -> (i32, String) {
        let mut replies = mm.handle_join(r);
        let first = replies.next().await.unwrap().unwrap();
        (first.code, first.suggested_leader)
    }
    // Not searching.
    assert_eq!(first_code(&mm, good("mem://x")).await.0, MessageCode::NotLookingForGroup as i32);

    {
        let mut state = mm.state.lock().await;
        state.searching = true;
    }
    let code = |c: MessageCode| c as i32;
    let mut bad = good("mem://x");
    bad.schema_hash = Bytes::new();
    assert_eq!(first_code(&mm, bad).await.0, code(MessageCode::ProtocolViolation));
    let mut bad = good("mem://x");
    bad.expiration = f64::NAN;
    assert_eq!(first_code(&mm, bad).await.0, code(MessageCode::ProtocolViolation));
    let mut bad = good("mem://x");
    bad.schema_hash = Bytes::from_static(b"other");
    assert_eq!(first_code(&mm, bad).await.0, code(MessageCode::BadSchemaHash));
    let mut bad = good("mem://x");
    bad.group_key = group_key("mygroup", "10");
    assert_eq!(first_code(&mm, bad).await.0, code(MessageCode::BadGroupKey));
    assert_eq!(first_code(&mm, good("mem://x")).await.0, code(MessageCode::NotDeclared));

    {
        let mut state = mm.state.lock().await;
        state.declared_key = Some(group_key("mygroup", "01"));
        state.declared_expiration = dht_now() + 50.0;
    }
    let mut bad = good("mem://x");
    bad.expiration = dht_now() + 10.0;
    assert_eq!(first_code(&mm, bad).await.0, code(MessageCode::BadExpirationTime));
    // An expiration of 0 counts as +inf.
    let mut zero = good("mem://zero");
    zero.expiration = 0.0;
    let mut accepted = mm.handle_join(zero);
    assert_eq!(accepted.next().await.unwrap().unwrap().code, code(MessageCode::Accepted));
    assert_eq!(first_code(&mm, good("mem://zero")).await.0, code(MessageCode::DuplicateEndpoint));
    assert_eq!(first_code(&mm, good("mem://peer0")).await.0, code(MessageCode::DuplicateEndpoint));
    let mut second = mm.handle_join(good("mem://y"));
    assert_eq!(second.next().await.unwrap().unwrap().code, code(MessageCode::Accepted));
    // Target 3 reached: assembled, and both followers get BEGIN_ALLREDUCE.
    for stream in [&mut accepted, &mut second] {
        let begin = stream.next().await.unwrap().unwrap();
        assert_eq!(begin.code, code(MessageCode::BeginAllreduce));
        assert_eq!(begin.ordered_group_endpoints.len(), 3);
    }
    assert_eq!(first_code(&mm, good("mem://z")).await.0, code(MessageCode::NotLookingForGroup));

    {
        // Assembly moved this peer's bits (protocol 3.9); go back to the key the requests name.
        *mm.bits.lock().unwrap() = "01".into();
        let mut state = mm.state.lock().await;
        state.assembled = None;
        state.current_leader = Some("mem://boss".into());
    }
    assert_eq!(
        first_code(&mm, good("mem://z")).await,
        (code(MessageCode::NotALeader), "mem://boss".to_string())
    );
}

/// A join service that never answers: a leader that is dead without a reset.
struct Silent;

#[async_trait]
impl AveragingService for Silent {
    async fn rpc_join_group(
        &self,
        _: CallContext,
        _: JoinRequest,
    ) -> Result<MessageStream<MessageFromLeader>> {
        Ok(Box::pin(futures::stream::pending()))
    }
    async fn rpc_aggregate_part(
        &self,
        _: CallContext,
        _: MessageStream<AveragingData>,
    ) -> Result<MessageStream<AveragingData>> {
        Ok(Box::pin(futures::stream::pending()))
    }
    async fn rpc_download_state(
        &self,
        _: CallContext,
        _: DownloadRequest,
    ) -> Result<MessageStream<DownloadData>> {
        Ok(Box::pin(futures::stream::pending()))
    }
}

/// Issue 11: a peer waiting out a dead leader's `request_timeout` must not look dead to its own
/// callers. Peer 0 asks a silent leader to take it; a join request that reaches peer 0 meanwhile is
/// answered at once, `NOT_A_LEADER` naming that leader, instead of waiting for the join lock until
/// the caller's own `request_timeout` (which started later than peer 0's) may run out.
#[tokio::test(start_paused = true)]
async fn a_peer_asking_a_dead_leader_redirects_its_callers_at_once() {
    let opts = Options { request_timeout: Duration::from_secs(3), ..options(Some(4)) };
    let network = MemoryNetwork::new();
    let peers = peers_on(&network, &["01"], &[], &opts).await;
    let mm = peers[0].matchmaker.clone();
    let silent_transport = MemoryTransport::with_settings(
        network,
        MemorySettings { name: Some("silent".into()), ..Default::default() },
    );
    let silent = silent_transport.serve(Arc::new(Silent)).await.unwrap();
    {
        let mut state = mm.state.lock().await;
        state.searching = true;
        state.declared_key = Some(group_key("mygroup", "01"));
        state.declared_expiration = dht_now() + 50.0;
    }
    let asking = {
        let mm = mm.clone();
        let leader = silent.endpoint().to_string();
        tokio::spawn(async move { mm.request_join(leader, dht_now(), dht_now() + 60.0).await })
    };
    // Peer 0 holds its join lock while it waits for the silent leader's first reply.
    let mut asking_rx = mm.asking.subscribe();
    asking_rx.wait_for(Option::is_some).await.unwrap();
    let began = tokio::time::Instant::now();
    let request = JoinRequest {
        endpoint: "mem://caller".into(),
        schema_hash: Bytes::from_static(b"schema"),
        expiration: dht_now() + 100.0,
        gather: Bytes::new(),
        client_mode: false,
        group_key: group_key("mygroup", "01"),
    };
    let first = mm.handle_join(request).next().await.unwrap().unwrap();
    assert_eq!(first.code, MessageCode::NotALeader as i32);
    assert_eq!(first.suggested_leader, silent.endpoint());
    assert!(began.elapsed() < Duration::from_millis(100), "answered after {:?}", began.elapsed());
    // Peer 0's own request still ends by its request_timeout, and it is a leader again.
    assert_eq!(asking.await.unwrap().unwrap(), None);
    assert!(mm.asking.borrow().is_none());
}
