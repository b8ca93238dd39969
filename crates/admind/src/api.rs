//! The Admin API itself: authenticate a parsed request, check the key's role, run it
//! against the store and answer in Duo's envelope. No sockets here; tests call
//! [`Api::handle`] with a [`Request`].
//!
//! Duo's envelope: `{"stat":"OK","response":...}` (lists add
//! `"metadata":{"total_objects","next_offset","prev_offset"}`), or
//! `{"stat":"FAIL","code":40401,"message":"Resource not found","message_detail":...}`
//! with the HTTP status the code starts with.

use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::net::IpAddr;

use sparekey::audit::sanitize;
use sparekey::store::{AdminKey, CodeRequest, NewUser, Role, UserUpdate};
use sparekey::{CodeInfo, Context, Device, DeviceId, DeviceKind, Error, Passcode, Source, Status};
use sparekey::{Store, User, UserFilter};

use crate::http::{Request, parse_form};
use crate::sign::{self, Signed};

/// Duo's default and largest page.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 300;
/// Codes per generation when `count` is not given (Duo's Admin API default).
const DEFAULT_COUNT: usize = 10;

/// An answer: HTTP status and JSON body.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Value,
}

/// A refusal in Duo's terms.
#[derive(Debug)]
struct Fail {
    code: u32,
    message: &'static str,
    detail: Option<String>,
}

impl Fail {
    fn new(code: u32, message: &'static str, detail: impl Into<Option<String>>) -> Self {
        Fail {
            code,
            message,
            detail: detail.into(),
        }
    }
    fn bad(detail: impl Into<String>) -> Self {
        Fail::new(40002, "Invalid request parameters", detail.into())
    }
    fn forbidden(detail: &str) -> Self {
        Fail::new(40301, "Access forbidden", detail.to_owned())
    }
    fn status(&self) -> u16 {
        (self.code / 100) as u16
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound(_) => Fail::new(40401, "Resource not found", e.to_string()),
            Error::Conflict(_) => Fail::new(40003, "Duplicate resource", e.to_string()),
            Error::Invalid { .. } | Error::Limit(_) => Fail::bad(e.to_string()),
            other => {
                // The library's errors never carry a code value or a secret.
                log::error!("store: {other}");
                Fail::new(50001, "Internal server error", None)
            }
        }
    }
}

type Out = Result<(Value, Option<Value>), Fail>;

/// A phone created by `POST /admin/v1/phones`, waiting to be attached to a user; kept in
/// memory only, as sparekey's devices always belong to a user.
#[derive(Clone, Debug)]
struct PendingPhone {
    name: Option<String>,
    number: String,
}

/// Failed authentications a peer may make at once; past them it is answered 429 until
/// its allowance comes back, one every [`AUTH_FAILURE_REFILL_SECS`].
const AUTH_FAILURE_BURST: f64 = 20.0;
const AUTH_FAILURE_REFILL_SECS: f64 = 3.0;
/// Peers whose failures are remembered at once; past this, the forgiven ones are dropped.
const MAX_TRACKED_PEERS: usize = 10_000;
/// Checked with any unknown integration key, so that it costs what a known one does.
const STAND_IN_SECRET: &[u8] = b"0000000000000000000000000000000000000000";

/// What is left of a peer's allowance of failed authentications.
#[derive(Debug, Clone, Copy)]
struct FailureBudget {
    left: f64,
    at: i64,
}

impl FailureBudget {
    fn now(self, now: i64) -> f64 {
        let back = now.saturating_sub(self.at).max(0) as f64 / AUTH_FAILURE_REFILL_SECS;
        (self.left + back).min(AUTH_FAILURE_BURST)
    }
}

/// The API over one store.
#[derive(Debug)]
pub struct Api {
    store: Store,
    hostname: Option<String>,
    pending_phones: HashMap<String, PendingPhone>,
    failures: HashMap<IpAddr, FailureBudget>,
    /// When a refusal for too many failures was last logged (one line per 10 s at most).
    throttled_logged: i64,
}

/// The request's parameters, from the query, a form body or a JSON object body.
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    fn text(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_owned)
    }
    fn number<T: std::str::FromStr>(&self, name: &'static str) -> Result<Option<T>, Fail> {
        self.get(name)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| Fail::bad(format!("{name} must be a whole number")))
            })
            .transpose()
    }
    fn flag(&self, name: &'static str) -> Result<Option<bool>, Fail> {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0" | "") => Ok(Some(false)),
            Some(_) => Err(Fail::bad(format!("{name} must be true or false"))),
        }
    }
}

fn json_value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(json_value_text)
            .collect::<Vec<_>>()
            .join(","),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// What each role may do, following Duo's administrator roles: owners, administrators
/// and user managers manage users, phones and codes; help desk may read them, attach and
/// remove phones, and issue and delete codes as its two settings allow.
fn may_manage_users(key: &AdminKey) -> bool {
    key.role != Role::HelpDesk
}

impl Api {
    /// An API over `store`; `hostname` is the host clients sign for (else the `Host`
    /// header's, without its port).
    pub fn new(store: Store, hostname: Option<String>) -> Self {
        Api {
            store,
            hostname,
            pending_phones: HashMap::new(),
            failures: HashMap::new(),
            throttled_logged: i64::MIN,
        }
    }

    /// Whether `peer` has used up its failed authentications.
    fn throttled(&self, peer: IpAddr, now: i64) -> bool {
        self.failures.get(&peer).is_some_and(|b| b.now(now) < 1.0)
    }

    /// Takes one failed authentication from `peer`'s allowance.
    fn charge_failure(&mut self, peer: IpAddr, now: i64) {
        if self.failures.len() >= MAX_TRACKED_PEERS && !self.failures.contains_key(&peer) {
            self.failures.retain(|_, b| b.now(now) < AUTH_FAILURE_BURST);
            if self.failures.len() >= MAX_TRACKED_PEERS {
                self.failures.clear();
            }
        }
        let b = self.failures.entry(peer).or_insert(FailureBudget {
            left: AUTH_FAILURE_BURST,
            at: now,
        });
        *b = FailureBudget {
            left: (b.now(now) - 1.0).max(0.0),
            at: now,
        };
    }

    /// Answers one request from `peer`, received at Unix time `now`.
    pub fn handle(&mut self, req: &Request, peer: IpAddr, now: i64) -> Reply {
        let source = Source {
            address: Some(peer.to_string()),
            ..Source::default()
        };
        let call = format!("{} {}", req.method, sanitize(&req.path, 200));
        // A peer that keeps failing is refused before any work, and not audited each time
        // (a flood would fill the log): one line every 10 seconds says it goes on.
        if self.throttled(peer, now) {
            if now.saturating_sub(self.throttled_logged) >= 10 {
                self.throttled_logged = now;
                log::warn!("refused {call} from {peer}: too many failed authentications");
            }
            return fail_reply(&Fail::new(
                42901,
                "Too Many Requests",
                "too many failed authentications".to_owned(),
            ));
        }
        let (key, params) = match self.authenticate(req, now) {
            Ok(x) => x,
            Err(f) => {
                self.charge_failure(peer, now);
                let ctx = Context::new("admin_api").with_source(source);
                let reason = format!("{} {}", f.code, f.detail.as_deref().unwrap_or(f.message));
                // The integration key is not secret, and says who tried.
                let ikey = req
                    .header("authorization")
                    .and_then(sign::parse_authorization)
                    .map(|a| format!(" ikey={}", sanitize(&a.ikey, 64)))
                    .unwrap_or_default();
                log::warn!("refused {call} from {peer}:{ikey} {reason}");
                let call = format!("{call}{ikey}");
                if let Err(e) = self.store.record_api_call(&ctx, false, Some(&reason), call) {
                    log::error!("audit: {e}");
                }
                return fail_reply(&f);
            }
        };
        let ctx = Context::new(key.name.clone()).with_source(source);
        let result = self.route(req, &key, &params, &ctx);
        let (ok, reason) = match &result {
            Ok(_) => (true, None),
            Err(f) => (false, Some(f.code.to_string())),
        };
        if let Err(e) = self
            .store
            .record_api_call(&ctx, ok, reason.as_deref(), call)
        {
            log::error!("audit: {e}");
        }
        match result {
            Ok((response, metadata)) => {
                let mut body = json!({ "stat": "OK", "response": response });
                if let Some(m) = metadata {
                    body["metadata"] = m;
                }
                Reply { status: 200, body }
            }
            Err(f) => fail_reply(&f),
        }
    }

    fn authenticate(&mut self, req: &Request, now: i64) -> Result<(AdminKey, Params), Fail> {
        let unauth = |code, message, detail: &str| Fail::new(code, message, detail.to_owned());
        let auth = req
            .header("authorization")
            .and_then(sign::parse_authorization)
            .ok_or_else(|| unauth(40101, "Missing request credentials", "authorization"))?;
        let date = req
            .header("x-duo-date")
            .or_else(|| req.header("date"))
            .ok_or_else(|| unauth(40101, "Missing request credentials", "date"))?;
        let query = parse_form(&req.query).ok_or_else(|| Fail::bad("malformed query"))?;
        let content_type = req
            .header("content-type")
            .unwrap_or("")
            .to_ascii_lowercase();
        let json_body = content_type.starts_with("application/json");
        let mut signed_params = query.clone();
        let mut params = query;
        if json_body {
            let v: Value =
                serde_json::from_slice(&req.body).map_err(|_| Fail::bad("malformed JSON body"))?;
            let Value::Object(map) = v else {
                return Err(Fail::bad("the JSON body must be an object"));
            };
            params.extend(map.iter().map(|(k, v)| (k.clone(), json_value_text(v))));
        } else if !req.body.is_empty() {
            let text = std::str::from_utf8(&req.body).map_err(|_| Fail::bad("malformed body"))?;
            let form = parse_form(text).ok_or_else(|| Fail::bad("malformed form body"))?;
            signed_params.extend(form.iter().cloned());
            params.extend(form);
        }
        let header_host = req.header("host").map(strip_port);
        let host = self
            .hostname
            .as_deref()
            .or(header_host)
            .ok_or_else(|| Fail::bad("no Host header"))?;
        let duo_headers: Vec<(String, String)> = req
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-duo-"))
            .cloned()
            .collect();
        let signed = Signed {
            method: &req.method,
            host,
            path: &req.path,
            params: &signed_params,
            body: &req.body,
            json_body,
            date,
            duo_headers: &duo_headers,
        };
        // An unknown key and a bad signature answer alike, so that a caller cannot tell
        // which integration keys exist.
        let invalid = || {
            unauth(
                40103,
                "Invalid signature in request credentials",
                "signature",
            )
        };
        let Some((key, secret)) = self
            .store
            .admin_key_secret(&auth.ikey)
            .map_err(Fail::from)?
        else {
            let _ = sign::verify(&signed, &auth, STAND_IN_SECRET);
            return Err(invalid());
        };
        sign::verify(&signed, &auth, secret.expose().as_bytes()).ok_or_else(invalid)?;
        if !sign::date_is_fresh(date, now) {
            return Err(unauth(40105, "Request has expired", "date"));
        }
        Ok((key, Params(params)))
    }

    fn route(&mut self, req: &Request, key: &AdminKey, p: &Params, ctx: &Context) -> Out {
        let segs: Vec<&str> = req.path.trim_end_matches('/').split('/').collect();
        let Some(rest) = segs.strip_prefix(&["", "admin", "v1"]) else {
            return Err(Fail::new(40401, "Resource not found", None));
        };
        let rest: Vec<String> = rest
            .iter()
            .map(|s| crate::http::unescape(s).unwrap_or_default())
            .collect();
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        let need_users = || {
            if may_manage_users(key) {
                Ok(())
            } else {
                Err(Fail::forbidden("this integration key may not manage users"))
            }
        };
        match (req.method.as_str(), rest.as_slice()) {
            ("GET", ["users"]) => self.list_users(p),
            ("POST", ["users"]) => {
                need_users()?;
                self.add_user(p, ctx)
            }
            ("GET", ["users", id]) => self.user_json(id).map(|u| (u, None)),
            ("POST", ["users", id]) => {
                need_users()?;
                self.update_user(id, p, ctx)
            }
            ("DELETE", ["users", id]) => {
                need_users()?;
                self.store.trash_user(id, ctx)?;
                Ok((json!(""), None))
            }
            ("POST", ["users", id, "bypass_codes"]) => self.generate(id, key, p, ctx),
            ("GET", ["users", id, "bypass_codes"]) => {
                let codes = self.store.list_codes(Some(id))?;
                self.code_page(codes, p)
            }
            ("GET", ["bypass_codes"]) => {
                let codes = self.store.list_codes(None)?;
                self.code_page(codes, p)
            }
            ("GET", ["bypass_codes", id]) => {
                let code = self.find_code(id)?;
                Ok((self.code_json(&code)?, None))
            }
            ("DELETE", ["bypass_codes", id]) => {
                self.find_code(id)?;
                self.store.delete_code(id, ctx)?;
                Ok((json!(""), None))
            }
            ("POST", ["phones"]) => self.create_phone(p),
            ("POST", ["users", id, "phones"]) => self.attach_phone(id, p, ctx),
            ("GET", ["users", id, "phones"]) => {
                let user = self.store.find_user(id)?;
                let phones: Vec<Value> = self
                    .store
                    .list_devices(user.id.as_str())?
                    .iter()
                    .map(phone_json)
                    .collect();
                Ok(page(phones, p)?)
            }
            ("DELETE", ["users", id, "phones", phone]) => {
                self.store.remove_device(id, phone, ctx)?;
                Ok((json!(""), None))
            }
            (_, ["users" | "bypass_codes" | "phones", ..]) => {
                Err(Fail::new(40501, "Method not allowed", None))
            }
            _ => Err(Fail::new(40401, "Resource not found", None)),
        }
    }

    fn list_users(&mut self, p: &Params) -> Out {
        let users = match p.get("username") {
            Some(name) => match self.store.find_user(name) {
                Ok(u) if u.username.as_str() == name => vec![u],
                Ok(_) | Err(Error::NotFound(_)) | Err(Error::Invalid { .. }) => Vec::new(),
                Err(e) => return Err(e.into()),
            },
            None => self.store.list_users(&UserFilter::default())?,
        };
        let mut all = Vec::with_capacity(users.len());
        for u in &users {
            all.push(self.user_value(u)?);
        }
        page(all, p)
    }

    fn user_json(&mut self, id: &str) -> Result<Value, Fail> {
        let u = self.store.find_user(id)?;
        self.user_value(&u)
    }

    fn user_value(&mut self, u: &User) -> Result<Value, Fail> {
        let phones: Vec<Value> = self
            .store
            .list_devices(u.id.as_str())?
            .iter()
            .map(phone_json)
            .collect();
        let status = if u.trashed_at.is_some() {
            "pending deletion"
        } else if u.lockout.is_some() {
            "locked out"
        } else {
            u.status.as_str()
        };
        let mut aliases = Map::new();
        for (i, a) in u.aliases.iter().enumerate() {
            aliases.insert(format!("alias{}", i + 1), json!(a.as_str()));
        }
        Ok(json!({
            "user_id": u.id.as_str(),
            "username": u.username.as_str(),
            "realname": u.realname.clone().unwrap_or_default(),
            "email": u.email.clone().unwrap_or_default(),
            "notes": u.notes.clone().unwrap_or_default(),
            "status": status,
            "aliases": aliases,
            "created": u.created_at,
            "last_login": u.last_login,
            "is_enrolled": !phones.is_empty(),
            "phones": phones,
            "tokens": [],
            "groups": [],
            "u2ftokens": [],
            "webauthncredentials": [],
        }))
    }

    fn add_user(&mut self, p: &Params, ctx: &Context) -> Out {
        let username = p.text("username").ok_or_else(|| {
            Fail::new(
                40001,
                "Missing required request parameters",
                "username".to_owned(),
            )
        })?;
        let status = p.get("status").map(str::parse::<Status>).transpose()?;
        let new = NewUser {
            username,
            aliases: (1..=8)
                .filter_map(|i| p.text(&format!("alias{i}")))
                .filter(|a| !a.is_empty())
                .collect(),
            realname: p.text("realname"),
            email: p.text("email"),
            notes: p.text("notes"),
            status,
        };
        let u = self.store.add_user(new, ctx)?;
        Ok((self.user_value(&u)?, None))
    }

    fn update_user(&mut self, id: &str, p: &Params, ctx: &Context) -> Out {
        let user = self.store.find_user(id)?;
        let mut up = UserUpdate {
            username: p.text("username"),
            realname: p.text("realname"),
            email: p.text("email"),
            notes: p.text("notes"),
            status: p.get("status").map(str::parse::<Status>).transpose()?,
            ..UserUpdate::default()
        };
        // aliasN sets the Nth alias; an empty value removes it.
        let mut slots: Vec<Option<String>> = (0..8)
            .map(|i| user.aliases.get(i).map(|a| a.as_str().to_owned()))
            .collect();
        let mut aliases_given = false;
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(v) = p.text(&format!("alias{}", i + 1)) {
                aliases_given = true;
                *slot = (!v.is_empty()).then_some(v);
            }
        }
        if aliases_given {
            up.aliases = Some(slots.into_iter().flatten().collect());
        }
        let u = if up.is_empty() {
            user
        } else {
            self.store.update_user(user.id.as_str(), up, ctx)?
        };
        Ok((self.user_value(&u)?, None))
    }

    fn generate(&mut self, id: &str, key: &AdminKey, p: &Params, ctx: &Context) -> Out {
        if !key.may_create_codes {
            return Err(Fail::forbidden(
                "this integration key may not create bypass codes",
            ));
        }
        let customised = ["count", "codes", "reuse_count", "valid_secs"]
            .iter()
            .any(|k| p.get(k).is_some());
        if customised && !key.may_customise_codes {
            return Err(Fail::forbidden(
                "this integration key may not customise bypass codes",
            ));
        }
        let count: Option<usize> = p.number("count")?;
        let codes = match p.get("codes") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .enumerate()
                .map(|(i, c)| {
                    // Never echo the value: its position is enough.
                    Passcode::parse(c)
                        .map_err(|_| Fail::bad(format!("code #{} is not 6-20 digits", i + 1)))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if count.is_some() && !codes.is_empty() {
            return Err(Fail::bad("count and codes cannot both be given"));
        }
        let req = CodeRequest {
            count: count.unwrap_or(DEFAULT_COUNT),
            codes,
            reuse_count: p.number("reuse_count")?.unwrap_or(1),
            valid_secs: p.number("valid_secs")?.unwrap_or(0),
            preserve_existing: p.flag("preserve_existing")?.unwrap_or(false),
            ..CodeRequest::default()
        };
        let user = self.store.find_user(id)?;
        let issued = self.store.generate_codes(user.id.as_str(), req, ctx)?;
        let list: Vec<Value> = issued
            .codes
            .iter()
            .map(|c| json!(c.code.expose()))
            .collect();
        Ok((Value::Array(list), None))
    }

    fn find_code(&mut self, id: &str) -> Result<CodeInfo, Fail> {
        self.store
            .list_codes(None)?
            .into_iter()
            .find(|c| c.id.as_str() == id)
            .ok_or_else(|| {
                Fail::new(
                    40401,
                    "Resource not found",
                    format!("bypass code {}", sanitize(id, 64)),
                )
            })
    }

    fn code_json(&mut self, c: &CodeInfo) -> Result<Value, Fail> {
        let user = self.store.find_user(c.user_id.as_str())?;
        Ok(json!({
            "bypass_code_id": c.id.as_str(),
            "admin_email": c.created_by,
            "created": c.created_at,
            "expiration": c.expires_at,
            "reuse_count": c.reuse_count,
            "remaining_uses": c.uses_remaining,
            "user": {
                "user_id": user.id.as_str(),
                "username": user.username.as_str(),
                "realname": user.realname.unwrap_or_default(),
                "email": user.email.unwrap_or_default(),
                "status": user.status.as_str(),
                "created": user.created_at,
                "last_login": user.last_login,
            },
        }))
    }

    fn code_page(&mut self, codes: Vec<CodeInfo>, p: &Params) -> Out {
        let (start, end, total) = bounds(codes.len(), p)?;
        let mut out = Vec::with_capacity(end - start);
        for c in &codes[start..end] {
            out.push(self.code_json(c)?);
        }
        Ok((Value::Array(out), Some(metadata(start, end, total, p)?)))
    }

    fn create_phone(&mut self, p: &Params) -> Out {
        let id = DeviceId::generate()?;
        let phone = PendingPhone {
            name: p.text("name").filter(|n| !n.is_empty()),
            number: p.text("number").unwrap_or_default(),
        };
        let out = json!({
            "phone_id": id.as_str(),
            "name": phone.name.clone().unwrap_or_default(),
            "number": phone.number,
            "type": p.text("type").unwrap_or_else(|| "Mobile".into()),
            "platform": p.text("platform").unwrap_or_else(|| "Generic Smartphone".into()),
            "activated": false,
            "users": [],
        });
        // Bounded, so that a client cannot grow the server's memory without end.
        if self.pending_phones.len() >= 10_000 {
            self.pending_phones.clear();
        }
        self.pending_phones.insert(id.as_str().to_owned(), phone);
        Ok((out, None))
    }

    fn attach_phone(&mut self, user: &str, p: &Params, ctx: &Context) -> Out {
        let phone_id = p.text("phone_id").ok_or_else(|| {
            Fail::new(
                40001,
                "Missing required request parameters",
                "phone_id".to_owned(),
            )
        })?;
        let pending = self.pending_phones.get(&phone_id).cloned().ok_or_else(|| {
            Fail::new(
                40401,
                "Resource not found",
                format!("phone {}", sanitize(&phone_id, 64)),
            )
        })?;
        let label = pending
            .name
            .or((!pending.number.is_empty()).then_some(pending.number));
        self.store
            .add_device_with_id(user, &phone_id, DeviceKind::Phone, label, ctx)?;
        self.pending_phones.remove(&phone_id);
        Ok((json!(""), None))
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| h.trim_start_matches('['));
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn phone_json(d: &Device) -> Value {
    json!({
        "phone_id": d.id.as_str(),
        "name": d.name.clone().unwrap_or_default(),
        "number": "",
        "type": match d.kind { DeviceKind::Phone => "Mobile", _ => "Unknown" },
        "platform": "Generic Smartphone",
        "activated": true,
        "capabilities": [],
        "created": d.created_at,
    })
}

fn bounds(total: usize, p: &Params) -> Result<(usize, usize, usize), Fail> {
    let limit: usize = p
        .number("limit")?
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let offset: usize = p.number("offset")?.unwrap_or(0);
    let start = offset.min(total);
    let end = start.saturating_add(limit).min(total);
    Ok((start, end, total))
}

fn metadata(start: usize, end: usize, total: usize, p: &Params) -> Result<Value, Fail> {
    let limit: usize = p
        .number("limit")?
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT);
    let mut m = json!({ "total_objects": total });
    if end < total {
        m["next_offset"] = json!(end);
    }
    if start > 0 {
        m["prev_offset"] = json!(start.saturating_sub(limit));
    }
    Ok(m)
}

fn page(all: Vec<Value>, p: &Params) -> Out {
    let (start, end, total) = bounds(all.len(), p)?;
    let items: Vec<Value> = all.into_iter().skip(start).take(end - start).collect();
    Ok((Value::Array(items), Some(metadata(start, end, total, p)?)))
}

fn fail_reply(f: &Fail) -> Reply {
    let mut body = json!({ "stat": "FAIL", "code": f.code, "message": f.message });
    if let Some(d) = &f.detail {
        body["message_detail"] = json!(d);
    }
    Reply {
        status: f.status(),
        body,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use ring::hmac;
    use sparekey::store::NewAdminKey;
    use sparekey::{DigestKey, ManualClock, Policy};
    use std::fmt::Write as _;
    use std::sync::Arc;

    const NOW: i64 = 1_800_000_000;
    const DATE: &str = "Fri, 15 Jan 2027 08:00:00 -0000";

    struct Fixture {
        api: Api,
        ikey: String,
        skey: String,
        /// How far the server's clock is ahead of the request's date.
        skew: i64,
        /// Where requests come from.
        peer: IpAddr,
    }

    fn fixture(role: Role, create: bool, customise: bool) -> Fixture {
        let mut store = Store::in_memory(
            DigestKey::from_bytes([5; 32]),
            Policy::default(),
            Arc::new(ManualClock::at(NOW)),
        )
        .unwrap();
        let (k, s) = store
            .create_admin_key(
                NewAdminKey {
                    name: "tool".into(),
                    role,
                    may_create_codes: create,
                    may_customise_codes: customise,
                },
                &Context::new("test"),
            )
            .unwrap();
        Fixture {
            api: Api::new(store, Some("api.example".into())),
            ikey: k.ikey,
            skey: s.expose().to_owned(),
            skew: 0,
            peer: "127.0.0.1".parse().unwrap(),
        }
    }

    fn b64(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let mut n = 0u32;
            for (i, &b) in chunk.iter().enumerate() {
                n |= u32::from(b) << (16 - 8 * i);
            }
            for i in 0..4 {
                out.push(if i <= chunk.len() {
                    char::from(A[((n >> (18 - 6 * i)) & 63) as usize])
                } else {
                    '='
                });
            }
        }
        out
    }

    impl Fixture {
        /// A request signed with signature version 5 (a JSON body for POST).
        fn call(&mut self, method: &str, target: &str, json_body: Option<Value>) -> Reply {
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let body = json_body.map(|v| v.to_string()).unwrap_or_default();
            let params = parse_form(query).unwrap();
            let signed = Signed {
                method,
                host: "api.example",
                path,
                params: &params,
                body: body.as_bytes(),
                json_body: !body.is_empty(),
                date: DATE,
                duo_headers: &[],
            };
            let sig = hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA512, self.skey.as_bytes()),
                sign::canonical_v5(&signed).as_bytes(),
            );
            let mut hex = String::new();
            for b in sig.as_ref() {
                let _ = write!(hex, "{b:02x}");
            }
            let mut headers = vec![
                (
                    "authorization".to_owned(),
                    format!("Basic {}", b64(format!("{}:{hex}", self.ikey).as_bytes())),
                ),
                ("date".to_owned(), DATE.to_owned()),
            ];
            if !body.is_empty() {
                headers.push(("content-type".to_owned(), "application/json".to_owned()));
            }
            let req = Request {
                method: method.to_owned(),
                path: path.to_owned(),
                query: query.to_owned(),
                headers,
                body: body.into_bytes(),
            };
            let now = sign::parse_date(DATE).unwrap() + self.skew;
            self.api.handle(&req, self.peer, now)
        }

        fn enrolled(&mut self, name: &str) -> String {
            let u = self.call("POST", "/admin/v1/users", Some(json!({ "username": name })));
            assert_eq!(u.status, 200, "{:?}", u.body);
            let id = u.body["response"]["user_id"].as_str().unwrap().to_owned();
            self.api
                .store
                .add_device(&id, DeviceKind::Phone, None, &Context::new("test"))
                .unwrap();
            id
        }
    }

    #[test]
    fn lists_are_paged_with_duos_metadata() {
        let mut f = fixture(Role::Owner, true, true);
        for n in ["a1", "a2", "a3"] {
            f.enrolled(n);
        }
        let first = f.call("GET", "/admin/v1/users?limit=2&offset=0", None);
        assert_eq!(first.body["stat"], "OK");
        assert_eq!(first.body["response"].as_array().unwrap().len(), 2);
        assert_eq!(
            first.body["metadata"],
            json!({ "total_objects": 3, "next_offset": 2 })
        );
        let last = f.call("GET", "/admin/v1/users?limit=2&offset=2", None);
        assert_eq!(last.body["response"][0]["username"], "a3");
        assert_eq!(
            last.body["metadata"],
            json!({ "total_objects": 3, "prev_offset": 0 })
        );
        let one = f.call("GET", "/admin/v1/users?username=a2", None);
        assert_eq!(one.body["response"].as_array().unwrap().len(), 1);
        let none = f.call("GET", "/admin/v1/users?username=zz", None);
        assert_eq!(none.body["response"], json!([]));
    }

    #[test]
    fn failures_use_duos_envelope_and_status() {
        let mut f = fixture(Role::Owner, true, true);
        let r = f.call("GET", "/admin/v1/users/U0000000000000000000", None);
        assert_eq!(r.status, 404);
        assert_eq!(r.body["stat"], "FAIL");
        assert_eq!(r.body["code"], 40401);
        assert_eq!(f.call("PUT", "/admin/v1/users", None).body["code"], 40501);
        assert_eq!(f.call("GET", "/admin/v2/users", None).status, 404);
        let id = f.enrolled("bo");
        let both = f.call(
            "POST",
            &format!("/admin/v1/users/{id}/bypass_codes"),
            Some(json!({ "count": "1", "codes": "123456789" })),
        );
        assert_eq!((both.status, &both.body["code"]), (400, &json!(40002)));
        let eleven = f.call(
            "POST",
            &format!("/admin/v1/users/{id}/bypass_codes"),
            Some(json!({ "count": "11" })),
        );
        assert_eq!(eleven.status, 400);
        let bad = f.call(
            "POST",
            &format!("/admin/v1/users/{id}/bypass_codes"),
            Some(json!({ "codes": "12345,987654321" })),
        );
        let text = bad.body.to_string();
        assert!(bad.status == 400 && text.contains("#1") && !text.contains("12345"));
    }

    #[test]
    fn generation_defaults_follow_duos_admin_api() {
        let mut f = fixture(Role::UserManager, true, true);
        let id = f.enrolled("cy");
        let r = f.call(
            "POST",
            &format!("/admin/v1/users/{id}/bypass_codes"),
            Some(json!({})),
        );
        assert_eq!(r.body["response"].as_array().unwrap().len(), 10);
        let listed = f.call("GET", &format!("/admin/v1/users/{id}/bypass_codes"), None);
        let first = &listed.body["response"][0];
        assert_eq!(first["reuse_count"], 1);
        assert_eq!(first["expiration"], Value::Null);
        assert_eq!(first["admin_email"], "tool");
    }

    #[test]
    fn help_desk_keys_honour_their_two_settings() {
        let mut f = fixture(Role::HelpDesk, true, false);
        let id = {
            // Users are made by the store here: a help-desk key may not add them.
            let ctx = Context::new("test");
            let u = f
                .api
                .store
                .add_user(
                    NewUser {
                        username: "di".into(),
                        ..NewUser::default()
                    },
                    &ctx,
                )
                .unwrap();
            u.id.to_string()
        };
        let path = format!("/admin/v1/users/{id}/bypass_codes");
        let custom = f.call("POST", &path, Some(json!({ "valid_secs": "30" })));
        assert_eq!((custom.status, &custom.body["code"]), (403, &json!(40301)));
        assert_eq!(f.call("POST", &path, Some(json!({}))).status, 200);
        assert_eq!(
            f.call("POST", "/admin/v1/users", Some(json!({ "username": "x" })))
                .status,
            403
        );
        assert_eq!(
            f.call("DELETE", &format!("/admin/v1/users/{id}"), None)
                .status,
            403
        );

        let mut g = fixture(Role::HelpDesk, false, true);
        let u = g
            .api
            .store
            .add_user(
                NewUser {
                    username: "ed".into(),
                    ..NewUser::default()
                },
                &Context::new("test"),
            )
            .unwrap();
        let r = g.call(
            "POST",
            &format!("/admin/v1/users/{}/bypass_codes", u.id),
            Some(json!({})),
        );
        assert_eq!(r.status, 403);
        assert_eq!(g.call("GET", "/admin/v1/bypass_codes", None).status, 200);
    }

    #[test]
    fn unsigned_and_mis_signed_requests_are_401() {
        let mut f = fixture(Role::Owner, true, true);
        let bare = Request {
            method: "GET".into(),
            path: "/admin/v1/users".into(),
            query: String::new(),
            headers: vec![("date".into(), DATE.into())],
            body: Vec::new(),
        };
        let now = sign::parse_date(DATE).unwrap();
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let r = f.api.handle(&bare, peer, now);
        assert_eq!((r.status, &r.body["code"]), (401, &json!(40101)));
        // A good signature, five minutes off and then a second more.
        for (skew, status) in [(300, 200), (-300, 200), (301, 401), (-301, 401)] {
            f.skew = skew;
            let r = f.call("GET", "/admin/v1/users", None);
            assert_eq!(r.status, status, "{skew}");
            if status == 401 {
                assert_eq!(r.body["code"], 40105);
            }
        }
        f.skew = 0;
        let skey = std::mem::replace(&mut f.skey, "x".repeat(40));
        let bad = f.call("GET", "/admin/v1/users", None);
        assert_eq!((bad.status, &bad.body["code"]), (401, &json!(40103)));
        f.skey = skey;
        let events = f
            .api
            .store
            .audit(&sparekey::AuditFilter::default())
            .unwrap();
        assert!(
            events
                .iter()
                .any(|e| e.actor == "admin_api"
                    && e.reason.as_deref() == Some("40101 authorization"))
        );
        let bad_sig = events
            .iter()
            .find(|e| e.reason.as_deref() == Some("40103 signature"))
            .unwrap();
        let detail = bad_sig.detail.as_deref().unwrap();
        assert_eq!(detail, format!("GET /admin/v1/users ikey={}", f.ikey));
        assert!(!format!("{events:?}").contains(&f.skey));
    }

    #[test]
    fn a_peer_that_keeps_failing_is_refused_for_a_while_and_others_are_not() {
        let mut f = fixture(Role::Owner, true, true);
        let right = f.skey.clone();
        f.skey = "not-the-secret".repeat(3);
        for _ in 0..20 {
            assert_eq!(f.call("GET", "/admin/v1/users", None).status, 401);
        }
        let r = f.call("GET", "/admin/v1/users", None);
        assert_eq!((r.status, r.body["code"].as_u64()), (429, Some(42901)));
        // Refused before any check: the right secret waits too, and nothing is audited.
        let audited = f
            .api
            .store
            .audit(&sparekey::AuditFilter::default())
            .unwrap()
            .len();
        f.skey = right;
        assert_eq!(f.call("GET", "/admin/v1/users", None).status, 429);
        assert_eq!(
            f.api
                .store
                .audit(&sparekey::AuditFilter::default())
                .unwrap()
                .len(),
            audited
        );
        // Another peer has its own allowance.
        f.peer = "127.0.0.2".parse().unwrap();
        assert_eq!(f.call("GET", "/admin/v1/users", None).status, 200);
        // One failure's allowance comes back every three seconds.
        f.peer = "127.0.0.1".parse().unwrap();
        f.skew = 2;
        assert_eq!(f.call("GET", "/admin/v1/users", None).status, 429);
        f.skew = 3;
        assert_eq!(f.call("GET", "/admin/v1/users", None).status, 200);
    }

    #[test]
    fn an_unknown_key_and_a_wrong_signature_get_the_same_answer() {
        let mut f = fixture(Role::Owner, true, true);
        f.skey = "not-the-secret".repeat(3);
        let wrong = f.call("GET", "/admin/v1/users", None);
        f.ikey = "DINOSUCHKEY0000000000".into();
        let unknown = f.call("GET", "/admin/v1/users", None);
        assert_eq!((wrong.status, &wrong.body), (unknown.status, &unknown.body));
    }
}
