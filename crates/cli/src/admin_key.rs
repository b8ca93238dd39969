//! `sparekey admin-key create|list|revoke`: integration keys for the Duo-compatible Admin
//! API (`sparekey-admind`). The secret key is printed once, at creation, and never again.

use clap::Subcommand;
use serde_json::json;

use sparekey::store::{AdminKey, NewAdminKey, Role};
use sparekey::{Context, Store};

use crate::Outcome;
use crate::duration::format_time;
use crate::output::Out;

#[derive(Subcommand, Debug)]
pub enum AdminKeyCmd {
    /// Create an integration key; prints its ikey and its skey (shown this once only)
    Create {
        /// A name for the key: the actor of every call it makes, in the audit
        #[arg(long)]
        name: String,
        /// owner, administrator, user_manager or help_desk
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Help desk: may not create bypass codes
        #[arg(long)]
        no_create_codes: bool,
        /// Help desk: may not customise bypass codes (count, codes, reuse, validity)
        #[arg(long)]
        no_customise_codes: bool,
    },
    /// List integration keys (never a secret)
    List,
    /// Revoke an integration key, by ikey or name
    Revoke { key: String },
}

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse().map_err(|e: sparekey::Error| e.to_string())
}

fn key_json(k: &AdminKey) -> serde_json::Value {
    json!({
        "ikey": k.ikey,
        "name": k.name,
        "role": k.role,
        "may_create_codes": k.may_create_codes,
        "may_customise_codes": k.may_customise_codes,
        "created_at": k.created_at,
        "revoked_at": k.revoked_at,
    })
}

fn print(v: &serde_json::Value) {
    // Serialising a `Value` cannot fail.
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub fn run(mut store: Store, cmd: AdminKeyCmd, ctx: &Context, out: &Out) -> Outcome {
    match cmd {
        AdminKeyCmd::Create {
            name,
            role,
            no_create_codes,
            no_customise_codes,
        } => {
            if role != Role::HelpDesk && (no_create_codes || no_customise_codes) {
                return Err(anyhow::anyhow!(
                    "--no-create-codes and --no-customise-codes are for help_desk keys"
                )
                .into());
            }
            let new = NewAdminKey {
                name,
                role,
                may_create_codes: !no_create_codes,
                may_customise_codes: !no_customise_codes,
            };
            let (key, secret) = store.create_admin_key(new, ctx)?;
            if out.json {
                let mut v = key_json(&key);
                v["skey"] = json!(secret.expose());
                print(&v);
            } else {
                println!("integration key: {}", key.ikey);
                println!("secret key:      {}", secret.expose());
                eprintln!("sparekey: the secret key is shown this once; store it now");
            }
        }
        AdminKeyCmd::List => {
            let keys = store.list_admin_keys()?;
            if out.json {
                print(&json!(keys.iter().map(key_json).collect::<Vec<_>>()));
            } else {
                println!(
                    "{:<20} {:<13} {:<20} {:<20} NAME",
                    "IKEY", "ROLE", "CREATED", "REVOKED"
                );
                for k in &keys {
                    println!(
                        "{:<20} {:<13} {:<20} {:<20} {}",
                        k.ikey,
                        k.role.as_str(),
                        format_time(k.created_at),
                        k.revoked_at.map_or_else(|| "-".into(), format_time),
                        k.name
                    );
                }
            }
        }
        AdminKeyCmd::Revoke { key } => {
            let k = store.revoke_admin_key(&key, ctx)?;
            out.done(&format!("revoked integration key {} ({})", k.ikey, k.name));
        }
    }
    Ok(())
}
