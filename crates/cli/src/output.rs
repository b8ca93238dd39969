//! Everything the CLI prints on stdout, as text for people or JSON for scripts. Codes
//! appear here once, when issued, and nowhere else.

use serde_json::{Value, json};
use std::path::Path;

use sparekey::store::{IssuedCode, PurgeReport};
use sparekey::transfer::ImportReport;
use sparekey::{AuditEvent, CodeInfo, Config, Decision, Device, User, Verdict};

use crate::AuditFormat;
use crate::duration::format_time;

/// The output mode.
#[derive(Debug)]
pub struct Out {
    pub json: bool,
}

fn opt_time(t: Option<i64>) -> String {
    t.map_or_else(|| "never".into(), format_time)
}

fn print_json(v: &Value) {
    // Serialising a `Value` cannot fail.
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn uses(u: Option<u32>) -> String {
    u.map_or_else(|| "unlimited".into(), |n| n.to_string())
}

impl Out {
    pub fn new(json: bool) -> Self {
        Out { json }
    }

    pub fn done(&self, what: &str) {
        if self.json {
            print_json(&json!({ "ok": true, "message": what }));
        } else {
            println!("{what}");
        }
    }

    pub fn init(&self, config_path: &Path, config: &Config) {
        if self.json {
            print_json(&json!({
                "config": config_path,
                "key_file": config.store.key_file,
                "store": config.store.path,
            }));
        } else {
            println!("created {}", config_path.display());
            println!(
                "created {} (keep it secret; back it up apart from the store)",
                config.store.key_file.display()
            );
            println!("created {}", config.store.path.display());
            println!("next: export SPAREKEY_CONFIG={}", config_path.display());
        }
    }

    pub fn user_changed(&self, verb: &str, user: &User) {
        if self.json {
            print_json(&json!(user));
        } else {
            println!("{verb} user {} ({})", user.username, user.id);
        }
    }

    pub fn users(&self, users: &[User]) {
        if self.json {
            print_json(&json!(users));
            return;
        }
        println!(
            "{:<24} {:<9} {:<10} {:<20} ALIASES",
            "USERNAME", "STATUS", "FLAGS", "ID"
        );
        for u in users {
            let mut flags = Vec::new();
            if u.lockout.is_some() {
                flags.push("locked");
            }
            if u.trashed_at.is_some() {
                flags.push("trashed");
            }
            let aliases: Vec<&str> = u.aliases.iter().map(|a| a.as_str()).collect();
            println!(
                "{:<24} {:<9} {:<10} {:<20} {}",
                u.username.as_str(),
                u.status.as_str(),
                if flags.is_empty() {
                    "-".into()
                } else {
                    flags.join(",")
                },
                u.id.as_str(),
                aliases.join(",")
            );
        }
    }

    pub fn user_detail(&self, u: &User, devices: &[Device], codes: &[CodeInfo]) {
        if self.json {
            let mut v = json!(u);
            v["devices"] = json!(devices);
            v["codes"] = json!(codes);
            print_json(&v);
            return;
        }
        println!("username:        {}", u.username);
        println!("id:              {}", u.id);
        let aliases: Vec<&str> = u.aliases.iter().map(|a| a.as_str()).collect();
        println!(
            "aliases:         {}",
            if aliases.is_empty() {
                "-".into()
            } else {
                aliases.join(", ")
            }
        );
        println!("realname:        {}", u.realname.as_deref().unwrap_or("-"));
        println!("email:           {}", u.email.as_deref().unwrap_or("-"));
        println!("notes:           {}", u.notes.as_deref().unwrap_or("-"));
        println!("status:          {}", u.status);
        match &u.lockout {
            Some(l) => println!(
                "locked out:      since {} ({})",
                format_time(l.since),
                l.reason
            ),
            None => println!("locked out:      no"),
        }
        println!("failed attempts: {}", u.failed_attempts);
        println!("created:         {}", format_time(u.created_at));
        println!(
            "last login:      {}",
            u.last_login.map_or_else(|| "never".into(), format_time)
        );
        if let Some(t) = u.trashed_at {
            println!("in the trash:    since {}", format_time(t));
        }
        println!(
            "devices:         {}",
            if devices.is_empty() {
                "none (not enrolled: bypass codes will not work)"
            } else {
                ""
            }
        );
        for d in devices {
            println!("  {} {} {}", d.id, d.kind, d.name.as_deref().unwrap_or(""));
        }
        println!(
            "codes:           {}",
            if codes.is_empty() { "none" } else { "" }
        );
        for c in codes {
            println!(
                "  {} expires {} uses left {}",
                c.id,
                opt_time(c.expires_at),
                uses(c.uses_remaining)
            );
        }
    }

    pub fn device_added(&self, d: &Device) {
        if self.json {
            print_json(&json!(d));
        } else {
            println!("added device {} ({})", d.id, d.kind);
        }
    }

    pub fn devices(&self, devices: &[Device]) {
        if self.json {
            print_json(&json!(devices));
            return;
        }
        println!("{:<20} {:<9} {:<20} NAME", "ID", "KIND", "CREATED");
        for d in devices {
            println!(
                "{:<20} {:<9} {:<20} {}",
                d.id.as_str(),
                d.kind.as_str(),
                format_time(d.created_at),
                d.name.as_deref().unwrap_or("")
            );
        }
    }

    /// Newly issued codes: as text, exactly one code per line and nothing else.
    pub fn issued(&self, codes: &[IssuedCode], replaced: u64, enrolled: bool) {
        if self.json {
            let list: Vec<Value> = codes
                .iter()
                .map(|c| {
                    json!({
                        "id": c.info.id,
                        "code": c.code.expose(),
                        "expires_at": c.info.expires_at,
                        "uses_remaining": c.info.uses_remaining,
                    })
                })
                .collect();
            let user_id = codes.first().map(|c| c.info.user_id.to_string());
            print_json(
                &json!({ "user_id": user_id, "codes": list, "replaced": replaced, "enrolled": enrolled }),
            );
        } else {
            for c in codes {
                println!("{}", c.code.expose());
            }
        }
    }

    pub fn codes(&self, codes: &[CodeInfo]) {
        if self.json {
            print_json(&json!(codes));
            return;
        }
        println!(
            "{:<20} {:<20} {:<20} {:<9} {:<9} CREATED BY",
            "ID", "USER ID", "EXPIRES", "USES LEFT", "ISSUED"
        );
        for c in codes {
            println!(
                "{:<20} {:<20} {:<20} {:<9} {:<9} {}",
                c.id.as_str(),
                c.user_id.as_str(),
                opt_time(c.expires_at),
                uses(c.uses_remaining),
                if c.reuse_count == 0 {
                    "unlimited".into()
                } else {
                    c.reuse_count.to_string()
                },
                c.created_by
            );
        }
    }

    /// The decision goes to stderr as text (stdout stays free for scripts), or to stdout as JSON.
    pub fn verdict(&self, v: &Verdict) {
        let (decision, reason) = match v.decision {
            Decision::Accept => ("accept", None),
            Decision::Bypass => ("bypass", None),
            Decision::Reject(r) => ("reject", Some(r.as_str())),
        };
        if self.json {
            print_json(&json!({
                "decision": decision,
                "reason": reason,
                "user_id": v.user_id,
                "username": v.username,
                "code_id": v.code_id,
                "uses_remaining": v.uses_remaining,
            }));
            return;
        }
        let who = v.username.as_deref().unwrap_or("-");
        match v.decision {
            Decision::Accept => eprintln!(
                "accepted: user {who}, code {} ({} uses left)",
                v.code_id.as_ref().map_or("-", |c| c.as_str()),
                uses(v.uses_remaining)
            ),
            Decision::Bypass => {
                eprintln!("bypass: user {who} is in bypass status; no code was used")
            }
            Decision::Reject(r) => eprintln!("rejected: {}", r.as_str()),
        }
    }

    pub fn audit(&self, events: &[AuditEvent], format: AuditFormat) -> anyhow::Result<()> {
        match format {
            AuditFormat::Json => print_json(&json!(events)),
            AuditFormat::Csv => {
                let mut w = csv::Writer::from_writer(std::io::stdout().lock());
                w.write_record([
                    "id", "time", "actor", "action", "user_id", "username", "code_id", "outcome",
                    "reason", "address", "station", "nas", "tty", "detail",
                ])?;
                for e in events {
                    let o = |v: &Option<String>| v.clone().unwrap_or_default();
                    w.write_record([
                        e.id.to_string(),
                        format_time(e.time),
                        e.actor.clone(),
                        e.action.clone(),
                        o(&e.user_id),
                        o(&e.username),
                        o(&e.code_id),
                        e.outcome.clone(),
                        o(&e.reason),
                        o(&e.source.address),
                        o(&e.source.station),
                        o(&e.source.nas),
                        o(&e.source.tty),
                        o(&e.detail),
                    ])?;
                }
                w.flush()?;
            }
            AuditFormat::Text => {
                for e in events {
                    let mut line = format!(
                        "{} {} {} {} {}",
                        format_time(e.time),
                        e.actor,
                        e.action,
                        e.username.as_deref().unwrap_or("-"),
                        e.outcome
                    );
                    for (k, v) in [
                        ("reason", &e.reason),
                        ("code", &e.code_id),
                        ("address", &e.source.address),
                        ("station", &e.source.station),
                        ("nas", &e.source.nas),
                        ("tty", &e.source.tty),
                    ] {
                        if let Some(v) = v {
                            line.push_str(&format!(" {k}={v}"));
                        }
                    }
                    if let Some(d) = &e.detail {
                        line.push_str(&format!(" [{d}]"));
                    }
                    println!("{line}");
                }
            }
        }
        Ok(())
    }

    pub fn import(&self, r: &ImportReport) {
        if self.json {
            print_json(&json!(r));
            return;
        }
        let would = if r.dry_run { "would " } else { "" };
        for u in &r.created {
            println!("{would}create user {u}");
        }
        for (u, fields) in &r.updated {
            println!("{would}update user {u} ({})", fields.join(", "));
        }
        for (u, d) in &r.devices_added {
            println!("{would}add device {d} to {u}");
        }
        println!(
            "{}{} created, {} updated, {} devices added, {} unchanged",
            if r.dry_run {
                "dry run, nothing changed: "
            } else {
                ""
            },
            r.created.len(),
            r.updated.len(),
            r.devices_added.len(),
            r.unchanged
        );
    }

    pub fn purge(&self, r: &PurgeReport) {
        if self.json {
            print_json(&json!(r));
        } else {
            println!(
                "dropped {} expired codes; removed {} users past trash retention",
                r.expired_codes,
                r.purged_users.len()
            );
            for u in &r.purged_users {
                println!("removed user {u}");
            }
        }
    }

    pub fn check_config(&self, c: &Config, warnings: &[String]) {
        if self.json {
            print_json(&json!({
                "ok": true,
                "config": c.file,
                "store": c.location().to_string(),
                "key_file": c.store.key_file,
                "warnings": warnings,
            }));
        } else {
            println!("config {}: ok", c.file.display());
            println!("key file {}: ok", c.store.key_file.display());
            println!("store {}: ok", c.location());
        }
    }

    pub fn copied(&self, r: &sparekey::store::CopyReport, target: &Config) {
        if self.json {
            print_json(&json!({
                "users": r.users,
                "devices": r.devices,
                "codes": r.codes,
                "audit_events": r.audit_events,
                "admin_keys": r.admin_keys,
                "to": target.location().to_string(),
            }));
        } else {
            println!(
                "copied {} users, {} devices, {} codes and {} audit events to {}",
                r.users,
                r.devices,
                r.codes,
                r.audit_events,
                target.location()
            );
        }
    }
}
