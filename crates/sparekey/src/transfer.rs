//! Import and export of users, aliases, status and devices, as CSV or JSON. Codes are
//! never exported: they exist only as digests under a key the export does not carry.
//!
//! CSV columns (header required, any order, only `username` mandatory):
//! `username,aliases,realname,email,status,notes,devices`. `aliases` is a `;`-separated
//! list; `devices` is a `;`-separated list of `kind` or `kind:label`. A `\` escapes a `;` or
//! a `\` inside a name or label. An absent column leaves that field alone on existing
//! users; an empty cell clears a text field.

use serde::Serialize;
use std::io::{Read, Write};

use crate::audit::{Context, outcome, sanitize};
use crate::error::{Error, Result};
use crate::model::{Device, DeviceKind, Status, User, Username, check_text};
use crate::store::{self, Batch, NewUser, Store, UserFilter, UserUpdate};

/// The columns an import file may have, in the order export writes them.
pub const COLUMNS: [&str; 7] = [
    "username", "aliases", "realname", "email", "status", "notes", "devices",
];
/// Largest import file accepted, in rows.
pub const MAX_ROWS: usize = 2_000_000;

/// One parsed row of an import file. `None` means the column is absent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportRow {
    /// The row's line number in the file.
    pub line: u64,
    /// Username (the key that matches an existing user).
    pub username: Username,
    /// The full list of aliases.
    pub aliases: Option<Vec<Username>>,
    /// Full name.
    pub realname: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Status (an empty cell leaves it as it is).
    pub status: Option<Status>,
    /// Notes.
    pub notes: Option<String>,
    /// Devices the user must have; missing ones are added, others are left alone.
    pub devices: Option<Vec<(DeviceKind, Option<String>)>>,
}

/// Parses an import file. On failure, returns every bad row with its line number.
pub fn parse_csv(input: impl Read) -> std::result::Result<Vec<ImportRow>, Vec<(u64, String)>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let headers = rdr
        .headers()
        .map_err(|e| vec![(1, csv_message(&e))])?
        .clone();
    let mut index = [None; COLUMNS.len()];
    let mut bad = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        match COLUMNS
            .iter()
            .position(|c| c.eq_ignore_ascii_case(h.trim()))
        {
            Some(c) if index[c].is_none() => index[c] = Some(i),
            Some(_) => bad.push((1, format!("column {:?} appears twice", h))),
            None => bad.push((
                1,
                format!(
                    "unknown column {:?}; expected some of {}",
                    sanitize(h, 64),
                    COLUMNS.join(",")
                ),
            )),
        }
    }
    if index[0].is_none() {
        bad.push((1, "no username column".into()));
    }
    if !bad.is_empty() {
        return Err(bad);
    }
    let mut rows = Vec::new();
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                bad.push((line, csv_message(&e)));
                // A broken record (bad UTF-8, wrong field count) does not stop the others.
                continue;
            }
        };
        let line = rec.position().map_or(0, |p| p.line());
        if rows.len() >= MAX_ROWS {
            bad.push((line, format!("more than {MAX_ROWS} rows")));
            break;
        }
        let cell = |c: usize| index[c].and_then(|i| rec.get(i)).map(unguard_cell);
        match parse_row(
            line,
            cell(0).unwrap_or(""),
            cell(1),
            cell(2),
            cell(3),
            cell(4),
            cell(5),
            cell(6),
        ) {
            Ok(r) => rows.push(r),
            Err(e) => bad.push((line, e)),
        }
    }
    if bad.is_empty() { Ok(rows) } else { Err(bad) }
}

fn csv_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".into(),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => {
            format!("has {len} fields where the header has {expected_len}")
        }
        _ => e.to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
fn parse_row(
    line: u64,
    username: &str,
    aliases: Option<&str>,
    realname: Option<&str>,
    email: Option<&str>,
    status: Option<&str>,
    notes: Option<&str>,
    devices: Option<&str>,
) -> std::result::Result<ImportRow, String> {
    let e = |e: Error| e.to_string();
    let username = Username::parse(username).map_err(e)?;
    let aliases = aliases
        .map(|a| {
            split_escaped(a)
                .iter()
                .map(|s| Username::parse(s))
                .collect::<Result<Vec<_>>>()
        })
        .transpose()
        .map_err(|err| format!("aliases: {err}"))?;
    if aliases
        .as_ref()
        .is_some_and(|a| a.len() > crate::model::MAX_ALIASES)
    {
        return Err(format!("more than {} aliases", crate::model::MAX_ALIASES));
    }
    let text =
        |field: &'static str, v: Option<&str>| -> std::result::Result<Option<String>, String> {
            v.map(|v| check_text(field, Some(v.to_owned())).map(Option::unwrap_or_default))
                .transpose()
                .map_err(e)
        };
    let status = match status.map(str::trim) {
        None | Some("") => None,
        Some(s) => Some(s.parse::<Status>().map_err(e)?),
    };
    let devices = devices
        .map(|d| {
            split_escaped(d)
                .iter()
                .map(|item| {
                    // A kind never contains ':', so the label is everything after the first.
                    let (kind, label) = match item.split_once(':') {
                        Some((k, l)) => (k, Some(l.trim().to_owned())),
                        None => (item.as_str(), None),
                    };
                    let kind = kind.parse::<DeviceKind>().map_err(e)?;
                    let label = check_text("device label", label).map_err(e)?;
                    Ok((kind, label))
                })
                .collect::<std::result::Result<Vec<_>, String>>()
        })
        .transpose()?;
    Ok(ImportRow {
        line,
        username,
        aliases,
        realname: text("realname", realname)?,
        email: text("email", email)?,
        status,
        notes: text("notes", notes)?,
        devices,
    })
}

/// Splits on unescaped `;`, unescaping `\x` to `x`, dropping empty items.
fn split_escaped(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.push(chars.next().unwrap_or('\\')),
            ';' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// What a spreadsheet takes for the start of a formula (and the guard itself).
const FORMULA_LEADS: [char; 7] = ['=', '+', '-', '@', '\t', '\r', '\''];

/// A cell as written to an export: one that a spreadsheet would run as a formula gets a
/// leading `'`, so that opening an export cannot run what a user's name or notes hold.
fn guard_cell(s: &str) -> std::borrow::Cow<'_, str> {
    if s.starts_with(FORMULA_LEADS) {
        format!("'{s}").into()
    } else {
        s.into()
    }
}

/// The inverse of [`guard_cell`] on import: an export imports back unchanged.
fn unguard_cell(s: &str) -> &str {
    match s.strip_prefix('\'') {
        Some(rest) if rest.starts_with(FORMULA_LEADS) => rest,
        _ => s,
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ';' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What an import did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImportReport {
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Users created.
    pub created: Vec<String>,
    /// Users changed, with the fields that changed.
    pub updated: Vec<(String, Vec<&'static str>)>,
    /// Devices added: user, kind and label.
    pub devices_added: Vec<(String, String)>,
    /// Rows that changed nothing.
    pub unchanged: usize,
}

/// A user as exported.
#[derive(Clone, Debug, Serialize)]
pub struct ExportedUser {
    /// The user.
    #[serde(flatten)]
    pub user: User,
    /// Their devices.
    pub devices: Vec<Device>,
}

impl Store {
    /// Applies an import in one transaction: every row is checked against the store and
    /// the rows before it; if any is bad, all bad rows are reported and nothing changes. A
    /// dry run goes through every step and then rolls back, so it reports exactly what a
    /// real run would do.
    pub fn import(
        &mut self,
        file: &str,
        rows: &[ImportRow],
        dry_run: bool,
        ctx: &Context,
    ) -> Result<ImportReport> {
        let mut report = ImportReport {
            dry_run,
            ..ImportReport::default()
        };
        self.write_then(!dry_run, ctx, |batch| {
            let mut bad = Vec::new();
            for row in rows {
                match import_row(batch, row) {
                    Ok(Some(change)) => change.record(&mut report),
                    Ok(None) => report.unchanged += 1,
                    Err(
                        e @ (Error::Invalid { .. }
                        | Error::Conflict(_)
                        | Error::Limit(_)
                        | Error::NotFound(_)),
                    ) => {
                        bad.push((row.line, e.to_string()));
                    }
                    Err(e) => return Err(e),
                }
            }
            if !bad.is_empty() {
                return Err(Error::Import {
                    file: file.to_owned(),
                    rows: bad,
                });
            }
            let detail = format!(
                "file={} created={} updated={} devices_added={}",
                sanitize(file, 128),
                report.created.len(),
                report.updated.len(),
                report.devices_added.len()
            );
            let (tx, env, ctx) = batch.parts();
            store::audit(
                tx,
                env,
                ctx,
                "import",
                None,
                None,
                outcome::OK,
                None,
                Some(detail),
            )
        })?;
        Ok(report)
    }

    /// Every user not in the trash, with their devices.
    pub fn export(&mut self) -> Result<Vec<ExportedUser>> {
        self.read(|tx, _| {
            let users = tx.list_users(&UserFilter {
                trashed: Some(false),
                ..UserFilter::default()
            })?;
            users
                .into_iter()
                .map(|user| {
                    Ok(ExportedUser {
                        devices: tx.devices(&user.id)?,
                        user,
                    })
                })
                .collect()
        })
    }
}

/// What one row changed.
struct RowChange {
    username: String,
    created: bool,
    updated: Vec<&'static str>,
    devices: Vec<String>,
}

impl RowChange {
    fn record(self, report: &mut ImportReport) {
        if self.created {
            report.created.push(self.username.clone());
        } else if !self.updated.is_empty() {
            report.updated.push((self.username.clone(), self.updated));
        }
        report
            .devices_added
            .extend(self.devices.into_iter().map(|d| (self.username.clone(), d)));
    }
}

/// Applies one row; `None` if it changed nothing.
fn import_row(batch: &mut Batch<'_>, row: &ImportRow) -> Result<Option<RowChange>> {
    let name = row.username.as_str();
    let (user, created, updated) = match batch.find_user(name) {
        Ok(u)
            if u.username.key(batch.normalization()) != row.username.key(batch.normalization()) =>
        {
            return Err(Error::Conflict(format!(
                "{} is an alias of user {}",
                row.username, u.username
            )));
        }
        Ok(u) if u.trashed_at.is_some() => {
            return Err(Error::Conflict(format!(
                "user {} is in the trash",
                u.username
            )));
        }
        Ok(u) => {
            let update = UserUpdate {
                aliases: row
                    .aliases
                    .as_ref()
                    .map(|a| a.iter().map(|n| n.to_string()).collect()),
                realname: row.realname.clone(),
                email: row.email.clone(),
                notes: row.notes.clone(),
                status: row.status,
                ..UserUpdate::default()
            };
            if update.is_empty() {
                (u, false, Vec::new())
            } else {
                let (u, changed) = batch.update_user(name, update)?;
                (u, false, changed)
            }
        }
        Err(e) if e.is_not_found() => {
            let new = NewUser {
                username: row.username.to_string(),
                aliases: row
                    .aliases
                    .iter()
                    .flatten()
                    .map(|n| n.to_string())
                    .collect(),
                realname: row.realname.clone(),
                email: row.email.clone(),
                notes: row.notes.clone(),
                status: row.status,
            };
            (batch.add_user(new)?, true, Vec::new())
        }
        Err(e) => return Err(e),
    };
    let mut devices = Vec::new();
    if let Some(wanted) = &row.devices {
        let mut have = batch.devices(&user)?;
        for (kind, label) in wanted {
            if have.iter().any(|d| d.kind == *kind && d.name == *label) {
                continue;
            }
            let d = batch.add_device(name, *kind, label.clone())?;
            devices.push(device_cell(&d));
            have.push(d);
        }
    }
    let changed = created || !updated.is_empty() || !devices.is_empty();
    Ok(changed.then(|| RowChange {
        username: user.username.to_string(),
        created,
        updated,
        devices,
    }))
}

fn device_cell(d: &Device) -> String {
    match &d.name {
        Some(n) => format!("{}:{}", d.kind, escape(n)),
        None => d.kind.to_string(),
    }
}

/// Writes users as CSV in the import format, so that an export imports back unchanged.
pub fn write_csv(users: &[ExportedUser], out: impl Write) -> Result<()> {
    let mut w = csv::Writer::from_writer(out);
    let io = |e: csv::Error| Error::Store(format!("writing CSV: {e}"));
    w.write_record(COLUMNS).map_err(io)?;
    for e in users {
        let u = &e.user;
        let aliases: Vec<String> = u.aliases.iter().map(|a| escape(a.as_str())).collect();
        let devices: Vec<String> = e.devices.iter().map(device_cell).collect();
        let cells = [
            u.username.as_str(),
            &aliases.join(";"),
            u.realname.as_deref().unwrap_or(""),
            u.email.as_deref().unwrap_or(""),
            u.status.as_str(),
            u.notes.as_deref().unwrap_or(""),
            &devices.join(";"),
        ];
        w.write_record(cells.map(guard_cell).iter().map(|c| c.as_bytes()))
            .map_err(io)?;
    }
    w.flush()
        .map_err(|e| Error::Store(format!("writing CSV: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_file() {
        let csv = "username,aliases,realname,email,status,notes,devices\n\
                   alice,al;ALICE@corp,Alice A,a@x,active,,phone:work phone;token\n\
                   bob,,,,bypass,note,\n";
        let rows = parse_csv(csv.as_bytes()).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[0].aliases.as_ref().unwrap().len(), 2);
        assert_eq!(
            rows[0].devices.as_ref().unwrap()[0],
            (DeviceKind::Phone, Some("work phone".into()))
        );
        assert_eq!(rows[1].status, Some(Status::Bypass));
        assert_eq!(rows[1].realname.as_deref(), Some(""));
    }

    #[test]
    fn reports_every_bad_row_with_its_line() {
        let csv = "username,status,devices\n\
                   ok,active,phone\n\
                   ,active,\n\
                   carol,sleeping,\n\
                   dave,active,pager\n\
                   eve,active\n\
                   \"a\0b\",active,\n";
        let bad = parse_csv(csv.as_bytes()).unwrap_err();
        let lines: Vec<u64> = bad.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [3, 4, 5, 6, 7], "{bad:?}");
    }

    #[test]
    fn refuses_unknown_and_missing_columns() {
        assert_eq!(
            parse_csv("user,status\nx,active\n".as_bytes()).unwrap_err()[0].0,
            1
        );
        assert!(parse_csv("status\nactive\n".as_bytes()).is_err());
        assert!(parse_csv("username,username\nx,y\n".as_bytes()).is_err());
        assert!(parse_csv(&b"username\n\xff\xfe\n"[..]).is_err());
    }

    #[test]
    fn an_export_runs_no_formula_and_imports_back_unchanged() {
        let names = [
            "=HYPERLINK(\"x\")",
            "+1",
            "-x",
            "@sum",
            "'=quoted",
            "'plain",
            "plain",
        ];
        for n in names {
            let guarded = guard_cell(n);
            assert!(
                !guarded.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{guarded}"
            );
            assert_eq!(unguard_cell(&guarded), n);
        }
        assert_eq!(guard_cell("alice"), "alice");
        let csv = "username,notes\n'=cmd,'-note\n";
        let rows = parse_csv(csv.as_bytes()).unwrap();
        assert_eq!(rows[0].username.as_str(), "=cmd");
        assert_eq!(rows[0].notes.as_deref(), Some("-note"));
    }

    #[test]
    fn escapes_round_trip() {
        let s = format!("{};{}", escape("a;b"), escape("c\\d"));
        assert_eq!(split_escaped(&s), ["a;b", "c\\d"]);
    }
}
