//! The UDP side: receive datagrams, find the client, apply the rate limit, check the
//! packet, answer duplicates from the reply cache, hand verifications to the writer, and
//! send replies. Sockets and the store are passed in, so tests bind `127.0.0.1:0`.

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinSet;

use sparekey::audit::display_login;
use sparekey::{Context, Decision, Source, Verdict};

use crate::config::{BypassStatus, ClientConfig, RadiusConfig};
use crate::protocol::{self, Answer, Drop, Kind, ReplyTo, SharedSecret};
use crate::writer::{self, Done, Job, Queue, Refused, Verify};

/// How long a reply is kept to answer retransmissions (RFC 5080 section 2.2.2).
pub const REPLY_CACHE_SECS: u64 = 30;
/// [`REPLY_CACHE_SECS`] as a duration.
const REPLY_TTL: Duration = Duration::from_secs(REPLY_CACHE_SECS);
/// At most this many cached replies; past it the oldest go first.
const REPLY_CACHE_MAX: usize = 262_144;
/// At most this many replies leave the cache per request received. After a quiet spell
/// the whole cache may have run out at once, and dropping all of it under the lock (a
/// quarter of a million entries) held every request behind it for 50 to 60 ms. A reply
/// past its time that is still held is never served ([`ReplyCache::begin`]).
const EXPIRE_PER_REQUEST: usize = 8;
/// At most one log line per this many seconds about datagrams from unknown addresses.
const UNKNOWN_LOG_EVERY: Duration = Duration::from_secs(10);
/// At most this many replies per `sendmmsg` call.
const SEND_BATCH: usize = 256;

/// Counters of what happened to datagrams.
#[derive(Debug, Default)]
pub struct Counters {
    /// Accept replies sent (first answers, not duplicates).
    pub accepts: AtomicU64,
    /// Reject replies sent.
    pub rejects: AtomicU64,
    /// Status-Server requests answered.
    pub status: AtomicU64,
    /// Duplicates answered from the reply cache.
    pub duplicates_answered: AtomicU64,
    /// Duplicates dropped while the first was still being verified.
    pub duplicates_in_progress: AtomicU64,
    /// Datagrams from addresses no client covers.
    pub unknown_client: AtomicU64,
    /// Datagrams over a client's rate limit.
    pub rate_limited: AtomicU64,
    /// Requests dropped because too many were in flight.
    pub overload: AtomicU64,
    /// Malformed datagrams.
    pub malformed: AtomicU64,
    /// Packet codes not served.
    pub unsupported_code: AtomicU64,
    /// Requests without a required Message-Authenticator.
    pub no_message_authenticator: AtomicU64,
    /// Requests with a wrong Message-Authenticator (or a wrong secret).
    pub bad_message_authenticator: AtomicU64,
    /// Requests with an impossible User-Password.
    pub bad_user_password: AtomicU64,
    /// Verifications that failed in the store (and were rejected).
    pub store_errors: AtomicU64,
}

impl Counters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn dropped(&self, d: Drop) {
        Self::bump(match d {
            Drop::Malformed => &self.malformed,
            Drop::UnsupportedCode => &self.unsupported_code,
            Drop::NoMessageAuthenticator => &self.no_message_authenticator,
            Drop::BadMessageAuthenticator => &self.bad_message_authenticator,
            Drop::BadUserPassword => &self.bad_user_password,
        });
    }

    /// The counters as `name=value` pairs, for a log line.
    pub fn summary(&self) -> String {
        let all = [
            ("accepts", &self.accepts),
            ("rejects", &self.rejects),
            ("status", &self.status),
            ("duplicates_answered", &self.duplicates_answered),
            ("duplicates_in_progress", &self.duplicates_in_progress),
            ("unknown_client", &self.unknown_client),
            ("rate_limited", &self.rate_limited),
            ("overload", &self.overload),
            ("malformed", &self.malformed),
            ("unsupported_code", &self.unsupported_code),
            ("no_message_authenticator", &self.no_message_authenticator),
            ("bad_message_authenticator", &self.bad_message_authenticator),
            ("bad_user_password", &self.bad_user_password),
            ("store_errors", &self.store_errors),
        ];
        all.iter()
            .map(|(n, c)| format!("{n}={}", c.load(Ordering::Relaxed)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Where auth outcomes go besides stderr (syslog `LOG_AUTHPRIV` in the daemon).
pub trait AuthLog: Send + Sync {
    /// Records one outcome line.
    fn record(&self, line: &str);
}

/// A token bucket: `rate` per second, bursts up to twice that.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let cap = self.rate * 2.0;
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(cap);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A client, with what every one of its packets needs made once: the prepared secret and
/// the audit actor.
#[derive(Debug)]
struct Client {
    config: ClientConfig,
    secret: SharedSecret,
    /// `radius:<name>`, as [`Context::new`] makes it.
    actor: String,
    /// No rate limit: the bucket is never locked.
    unlimited: bool,
    bucket: Mutex<Bucket>,
}

/// A request's identity for duplicate detection (RFC 5080): source address and port,
/// identifier and request authenticator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key {
    from: SocketAddr,
    id: u8,
    authenticator: [u8; 16],
}

impl Hash for Key {
    /// The whole identity in one write: the keyed hasher then runs once over 36 octets,
    /// not once per field. Equal keys write equal octets.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut b = [0u8; 36];
        match self.from.ip() {
            IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => {
                b[..16].copy_from_slice(&a.octets());
                b[35] = 6;
            }
        }
        b[16..18].copy_from_slice(&self.from.port().to_be_bytes());
        b[18] = self.id;
        b[19..35].copy_from_slice(&self.authenticator);
        state.write(&b);
    }
}

#[derive(Debug)]
enum Entry {
    InProgress,
    Done(Arc<[u8]>),
}

#[derive(Debug)]
struct ReplyCache {
    map: HashMap<Key, (Instant, Entry)>,
    order: VecDeque<(Instant, Key)>,
}

impl ReplyCache {
    /// A cache with room for [`REPLY_CACHE_MAX`] replies from the start. Growing it
    /// under load would move every entry while the lock is held (milliseconds at a
    /// hundred thousand entries, a stall for every request behind it); the memory is
    /// reserved, not touched, until replies fill it.
    fn new() -> Self {
        ReplyCache {
            map: HashMap::with_capacity(REPLY_CACHE_MAX + 1),
            order: VecDeque::with_capacity(REPLY_CACHE_MAX + 1),
        }
    }

    /// Drops the oldest replies that have run out or are past the cap, a few at a time
    /// ([`EXPIRE_PER_REQUEST`]): each request adds at most two entries to `order` (its
    /// own and its reply's), so the cap still holds.
    fn expire(&mut self, now: Instant) {
        for _ in 0..EXPIRE_PER_REQUEST {
            let Some(&(at, key)) = self.order.front() else {
                break;
            };
            if now.duration_since(at) < REPLY_TTL && self.order.len() <= REPLY_CACHE_MAX {
                break;
            }
            self.order.pop_front();
            if let Slot::Occupied(e) = self.map.entry(key) {
                if e.get().0 == at {
                    e.remove();
                }
            }
        }
    }

    /// Keeps the reply to a request, for its retransmissions.
    fn answered(&mut self, key: Key, reply: Arc<[u8]>, now: Instant) {
        self.map.insert(key, (now, Entry::Done(reply)));
        self.order.push_back((now, key));
    }

    /// Looks a request up and, if it is new, marks it in progress: `Some(Some(reply))`
    /// for a duplicate already answered, `Some(None)` for one still being decided, `None`
    /// for a new request (or one whose cached reply has run out, which counts as new).
    fn begin(&mut self, key: Key, now: Instant) -> Option<Option<Arc<[u8]>>> {
        self.expire(now);
        match self.map.entry(key) {
            Slot::Occupied(e) if now.duration_since(e.get().0) < REPLY_TTL => {
                return match &e.get().1 {
                    Entry::Done(bytes) => Some(Some(bytes.clone())),
                    Entry::InProgress => Some(None),
                };
            }
            Slot::Occupied(mut e) => {
                e.insert((now, Entry::InProgress));
            }
            Slot::Vacant(e) => {
                e.insert((now, Entry::InProgress));
            }
        }
        self.order.push_back((now, key));
        None
    }
}

/// Everything the receive loops share.
struct Shared {
    clients: Vec<Client>,
    bypass: BypassStatus,
    cache: Mutex<ReplyCache>,
    counters: Arc<Counters>,
    auth_log: Option<Box<dyn AuthLog>>,
    last_unknown_log: Mutex<Option<Instant>>,
}

impl Shared {
    /// The most specific client whose network holds `ip`, with its index.
    fn client(&self, ip: IpAddr) -> Option<(usize, &Client)> {
        self.clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.config.network.contains(ip))
            .max_by_key(|(_, c)| c.config.network.prefix())
    }

    fn log_unknown(&self, from: SocketAddr) {
        let now = Instant::now();
        let mut last = self
            .last_unknown_log
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= UNKNOWN_LOG_EVERY) {
            *last = Some(now);
            log::warn!(
                "dropping datagrams from {} (no client covers it); {} so far, logged at most every {}s",
                from.ip(),
                self.counters.unknown_client.load(Ordering::Relaxed),
                UNKNOWN_LOG_EVERY.as_secs()
            );
        }
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, ReplyCache> {
        // The cache holds no invariant a panicking holder could break halfway.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Caches replies about to be sent, so that retransmissions get them again. This
    /// comes before the send: a client that retransmits as soon as it has the answer must
    /// find it here, not a request still in progress.
    fn finish(&self, sent: impl IntoIterator<Item = (Key, Arc<[u8]>)>) {
        let now = Instant::now();
        let mut c = self.cache_lock();
        for (key, bytes) in sent {
            c.answered(key, bytes, now);
        }
    }
}

/// The receive buffer asked for on each socket: a burst of requests from a concentrator
/// waits here, not in a dropped packet.
pub const RECEIVE_BUFFER: usize = 8 << 20;

/// Binds a UDP socket for serving: an IPv6 address listens on IPv6 only (so that
/// `0.0.0.0:1812` and `[::]:1812` can both be given), and the receive buffer is enlarged
/// as far as the system allows.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // A smaller buffer than asked for is still a working socket.
    let _ = s.set_recv_buffer_size(RECEIVE_BUFFER);
    s.bind(&addr.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// What the server has done, when it stops.
#[derive(Debug)]
pub struct Stopped {
    /// Final counters.
    pub counters: Arc<Counters>,
}

/// A request waiting for the writer: what it takes to answer it once its batch commits.
#[derive(Debug)]
struct Pending {
    reply_to: ReplyTo,
    /// User-Name as sent, for the log line when the verifier names no user.
    user_name: String,
    key: Key,
    client: usize,
    sock: Arc<UdpSocket>,
}

/// A reply on its way out.
#[derive(Debug)]
struct Outgoing {
    key: Key,
    sock: Arc<UdpSocket>,
    bytes: Arc<[u8]>,
}

/// Serves RADIUS on `sockets`, deciding with `store` (a [`sparekey::Store`]), until
/// `shutdown` completes; then stops receiving, finishes and commits what is in flight,
/// sends those replies, and returns.
pub async fn run(
    sockets: Vec<UdpSocket>,
    store: Box<dyn Verify>,
    config: &RadiusConfig,
    auth_log: Option<Box<dyn AuthLog>>,
    counters: Arc<Counters>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<Stopped> {
    let now = Instant::now();
    let shared = Arc::new(Shared {
        clients: config
            .clients
            .iter()
            .map(|c| Client {
                config: c.clone(),
                secret: SharedSecret::new(c.secret.expose()),
                actor: Context::new(format!("radius:{}", c.name)).actor,
                unlimited: c.rate_limit == 0,
                bucket: Mutex::new(Bucket {
                    rate: f64::from(c.rate_limit),
                    tokens: f64::from(c.rate_limit) * 2.0,
                    at: now,
                }),
            })
            .collect(),
        bypass: config.bypass_status,
        cache: Mutex::new(ReplyCache::new()),
        counters: counters.clone(),
        auth_log,
        last_unknown_log: Mutex::new(None),
    });
    // The writer hands each committed batch to one task that encodes and sends the
    // replies, so that the thread holding the store does nothing but verify.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Done<Pending>>();
    let batching = writer::Batching {
        capacity: config.max_in_flight,
        max_batch: config.max_batch,
        commit_interval: config.commit_interval,
        nice: config.writer_nice,
    };
    let (queue, writer) = writer::spawn(store, batching, move |batch| {
        // The receiver lives until the writer has ended; a send cannot fail before.
        let _ = done_tx.send(batch);
    })?;
    let replier = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(batch) = done_rx.recv().await {
                let out: Vec<Outgoing> = batch
                    .into_iter()
                    .map(|(p, verdict)| {
                        let client = &shared.clients[p.client];
                        let answer = decide(&shared, client, &p.user_name, verdict);
                        Outgoing {
                            key: p.key,
                            sock: p.sock,
                            bytes: protocol::encode_reply(&p.reply_to, answer, &client.secret)
                                .into(),
                        }
                    })
                    // An empty reply (one too large to encode) is neither sent nor cached.
                    .filter(|o| !o.bytes.is_empty())
                    .collect();
                shared.finish(out.iter().map(|o| (o.key, o.bytes.clone())));
                send_all(&out).await;
            }
        })
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut loops = JoinSet::new();
    for s in sockets {
        loops.spawn(receive(
            Arc::new(s),
            shared.clone(),
            queue.clone(),
            stop_rx.clone(),
        ));
    }
    drop(queue);
    shutdown.await;
    log::info!("stopping: no new requests; finishing those in flight");
    let _ = stop_tx.send(true);
    while loops.join_next().await.is_some() {}
    // Every queue handle is gone with the loops: the writer ends once the queue is empty,
    // and the replier once the writer's last batch is answered.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    let _ = replier.await;
    log::info!("stopped: {}", counters.summary());
    Ok(Stopped { counters })
}

async fn receive(
    sock: Arc<UdpSocket>,
    shared: Arc<Shared>,
    queue: Queue<Pending>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; protocol::MAX_PACKET + 1];
    // The last source address and its text: a NAS sends from one address, so the
    // audit's copy is made from this rather than formatted for every request.
    let mut address: Option<(IpAddr, String)> = None;
    loop {
        let (n, from) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    log::warn!("receiving: {e}");
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        handle(&shared, &sock, &queue, &buf[..n], from, &mut address).await;
    }
}

/// Handles one datagram: answers at once what needs no store, and queues a verification
/// for the writer.
async fn handle(
    shared: &Arc<Shared>,
    sock: &Arc<UdpSocket>,
    queue: &Queue<Pending>,
    datagram: &[u8],
    from: SocketAddr,
    address: &mut Option<(IpAddr, String)>,
) {
    let c = &shared.counters;
    let Some((index, client)) = shared.client(from.ip()) else {
        Counters::bump(&c.unknown_client);
        shared.log_unknown(from);
        return;
    };
    let now = Instant::now();
    if !client.unlimited
        && !client
            .bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(now)
    {
        Counters::bump(&c.rate_limited);
        return;
    }
    let req = match protocol::decode(
        datagram,
        &client.secret,
        client.config.require_message_authenticator,
    ) {
        Ok(r) => r,
        Err(d) => {
            c.dropped(d);
            log::debug!(
                "dropped a datagram from {from} (client {}): {}",
                client.config.name,
                d.as_str()
            );
            return;
        }
    };
    let key = Key {
        from,
        id: req.identifier(),
        authenticator: *req.reply_to.authenticator(),
    };
    let cached = shared.cache_lock().begin(key, now);
    match cached {
        Some(Some(bytes)) => {
            Counters::bump(&c.duplicates_answered);
            send(sock, &bytes, from).await;
            return;
        }
        Some(None) => {
            Counters::bump(&c.duplicates_in_progress);
            return;
        }
        None => {}
    }
    let mut login = match req.kind {
        Kind::Status => {
            Counters::bump(&c.status);
            let bytes: Arc<[u8]> =
                protocol::encode_reply(&req.reply_to, Answer::Accept, &client.secret).into();
            shared.finish([(key, bytes.clone())]);
            send(sock, &bytes, from).await;
            return;
        }
        Kind::Access(l) => l,
    };
    let name = &client.config.name;
    let Some(password) = login.password.take() else {
        // CHAP, EAP and the rest need the code in the clear; a digest cannot answer them.
        log::info!(
            "auth client={name} user={} result=reject reason=not_pap",
            display_login(&login.user_name)
        );
        Counters::bump(&c.rejects);
        let bytes: Arc<[u8]> =
            protocol::encode_reply(&req.reply_to, Answer::Reject, &client.secret).into();
        shared.finish([(key, bytes.clone())]);
        send(sock, &bytes, from).await;
        return;
    };
    let ip = from.ip();
    let address = match address {
        Some((a, text)) if *a == ip => text.clone(),
        _ => {
            let text = ip.to_string();
            *address = Some((ip, text.clone()));
            text
        }
    };
    // Built directly rather than through `Context::with_source`: the actor was made by
    // `Context::new` once per client, the station and NAS are sanitized by the decoder,
    // and an address's text has nothing to sanitize.
    let ctx = Context {
        actor: client.actor.clone(),
        source: Source {
            address: Some(address),
            station: login.station.take(),
            nas: login.nas.take(),
            tty: None,
        },
        allow_bypass: shared.bypass == BypassStatus::Allow,
    };
    let pending = Pending {
        reply_to: req.reply_to,
        user_name: login.user_name.clone(),
        key,
        client: index,
        sock: sock.clone(),
    };
    if let Err(why) = queue.offer(Job {
        login: login.user_name,
        passcode: password,
        ctx,
        token: pending,
    }) {
        // Forget the request so that the NAS's retransmission gets a fresh try.
        shared.cache_lock().map.remove(&key);
        if why == Refused::Full {
            Counters::bump(&c.overload);
        }
    }
}

/// Turns the verifier's answer into Accept or Reject, and logs it.
fn decide(
    shared: &Shared,
    client: &Client,
    user_name: &str,
    verdict: Result<Verdict, String>,
) -> Answer {
    let c = &shared.counters;
    // The outcome line is only made when something will read it.
    let wanted = shared.auth_log.is_some() || log::log_enabled!(log::Level::Info);
    let name = &client.config.name;
    let (answer, line) = match verdict {
        Ok(v) => {
            let answer = match v.decision {
                Decision::Accept | Decision::Bypass => Answer::Accept,
                Decision::Reject(_) => Answer::Reject,
            };
            let line = wanted.then(|| {
                let user = v
                    .username
                    .clone()
                    .unwrap_or_else(|| display_login(user_name));
                let result = if answer == Answer::Accept {
                    "accept"
                } else {
                    "reject"
                };
                let code = v
                    .code_id
                    .as_ref()
                    .map(|id| format!(" code={id}"))
                    .unwrap_or_default();
                format!(
                    "auth client={name} user={user} result={result} reason={}{code}",
                    v.reason_str()
                )
            });
            (answer, line)
        }
        Err(e) => {
            Counters::bump(&c.store_errors);
            log::error!("store error; request denied: {e}");
            let user = display_login(user_name);
            (
                Answer::Reject,
                Some(format!(
                    "auth client={name} user={user} result=reject reason=store_error"
                )),
            )
        }
    };
    Counters::bump(if answer == Answer::Accept {
        &c.accepts
    } else {
        &c.rejects
    });
    if let Some(line) = line {
        log::info!("{line}");
        if let Some(l) = &shared.auth_log {
            l.record(&line);
        }
    }
    answer
}

/// Sends a committed batch's replies: those for one socket go out together, a
/// `sendmmsg` call for up to [`SEND_BATCH`] of them, rather than a system call each.
async fn send_all(out: &[Outgoing]) {
    let mut i = 0;
    while i < out.len() {
        let sock = &out[i].sock;
        let run = out[i..]
            .iter()
            .take_while(|o| Arc::ptr_eq(&o.sock, sock))
            .count();
        for chunk in out[i..i + run].chunks(SEND_BATCH) {
            send_many(sock, chunk).await;
        }
        i += run;
    }
}

async fn send_many(sock: &UdpSocket, out: &[Outgoing]) {
    use rustix::net::addr::SocketAddrArg;
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, sendmmsg};
    let mut at = 0;
    while at < out.len() {
        let rest = &out[at..];
        // The headers point into `rest`; they are made inside the call, since they
        // cannot be held across an await.
        let sent = sock
            .async_io(Interest::WRITABLE, || {
                let addrs: Vec<_> = rest.iter().map(|o| o.key.from.as_any()).collect();
                let iovs: Vec<[IoSlice<'_>; 1]> =
                    rest.iter().map(|o| [IoSlice::new(&o.bytes)]).collect();
                let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = rest
                    .iter()
                    .map(|_| SendAncillaryBuffer::default())
                    .collect();
                let mut msgs: Vec<MMsgHdr<'_>> = addrs
                    .iter()
                    .zip(&iovs)
                    .zip(controls.iter_mut())
                    .map(|((a, iov), c)| MMsgHdr::new_with_addr(a, iov, c))
                    .collect();
                Ok(sendmmsg(sock, &mut msgs, SendFlags::empty())?)
            })
            .await;
        match sent {
            Ok(n) if n > 0 => at += n,
            // The first reply could not be sent: skip it, as `send_to` would have.
            Ok(_) => at += 1,
            Err(e) => {
                log::warn!("sending to {}: {e}", rest[0].key.from);
                at += 1;
            }
        }
    }
}

async fn send(sock: &UdpSocket, bytes: &[u8], to: SocketAddr) {
    if bytes.is_empty() {
        return;
    }
    if let Err(e) = sock.send_to(bytes, to).await {
        log::warn!("sending to {to}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> Key {
        let mut authenticator = [0u8; 16];
        authenticator[..4].copy_from_slice(&n.to_be_bytes());
        Key {
            from: SocketAddr::from(([127, 0, 0, 1], 1812)),
            id: n as u8,
            authenticator,
        }
    }

    /// A cache of `n` answered requests, all cached at `at`.
    fn answered(n: u32, at: Instant) -> ReplyCache {
        let mut c = ReplyCache::new();
        for i in 0..n {
            assert!(c.begin(key(i), at).is_none());
            c.answered(key(i), Arc::from(&b"reply"[..]), at);
        }
        c
    }

    #[test]
    fn after_a_quiet_spell_a_request_drops_only_a_few_replies() {
        let t0 = Instant::now();
        let mut c = answered(10_000, t0);
        let later = t0 + Duration::from_secs(REPLY_CACHE_SECS + 1);
        assert!(c.begin(key(1_000_000), later).is_none());
        // 20,000 entries in `order` (each request's and its reply's), 10,000 in the map:
        // the first request after the spell drops a few, not all of them.
        assert!(c.order.len() > 19_900, "order {}", c.order.len());
        assert!(c.map.len() > 9_900, "map {}", c.map.len());
        // Enough requests drop them all.
        for i in 0..5_000 {
            c.begin(key(2_000_000 + i), later);
        }
        assert_eq!(c.map.len(), 5_001);
    }

    #[test]
    fn a_reply_past_its_time_is_never_served_even_while_still_held() {
        let t0 = Instant::now();
        let mut c = answered(100, t0);
        let retransmitted = key(99);
        assert_eq!(
            c.begin(retransmitted, t0 + Duration::from_secs(1))
                .map(|r| r.is_some()),
            Some(true),
            "a retransmission in time gets the reply"
        );
        let later = t0 + Duration::from_secs(REPLY_CACHE_SECS);
        assert!(
            c.map.contains_key(&retransmitted),
            "still held behind the others"
        );
        assert!(
            c.begin(retransmitted, later).is_none(),
            "counts as a new request"
        );
        assert!(matches!(c.map.get(&retransmitted), Some((at, Entry::InProgress)) if *at == later));
        // Its old place in `order` no longer removes it when it comes up.
        for i in 0..100 {
            c.begin(key(1_000 + i), later);
        }
        assert!(matches!(
            c.map.get(&retransmitted),
            Some((_, Entry::InProgress))
        ));
        assert_eq!(c.begin(retransmitted, later), Some(None));
    }

    #[test]
    fn the_cap_holds_under_a_steady_stream() {
        let t0 = Instant::now();
        let mut c = ReplyCache::new();
        let n = REPLY_CACHE_MAX as u32 + 10_000;
        for i in 0..n {
            c.begin(key(i), t0);
            c.answered(key(i), Arc::from(&b"reply"[..]), t0);
        }
        assert!(
            c.order.len() <= REPLY_CACHE_MAX + 2,
            "order {}",
            c.order.len()
        );
        assert!(c.map.len() <= REPLY_CACHE_MAX, "map {}", c.map.len());
        assert!(c.map.contains_key(&key(n - 1)) && !c.map.contains_key(&key(0)));
    }
}
