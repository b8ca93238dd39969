//! Makes the users a RADIUS benchmark runs against: a sparekey store (users with a device
//! and one reusable, unexpiring code each, lockout off so that wrong codes stay wrong
//! codes), the same users for FreeRADIUS's `files` module, and `users.csv` for the load
//! generator. The codes exist in clear only in these benchmark files.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;
use sparekey::store::CodeRequest;
use sparekey::{Config, Context, DeviceKind, NewUser, Store};

/// Writes `dir/sparekey.toml` (with `[radius]` listening on `listen`), the key and store,
/// `dir/users.csv` and `dir/freeradius-users`, for `n` users.
/// Writes `dir/sparekey.toml` for a benchmark: the store in `dir`, `synchronous` and
/// `lockout_threshold` as given, and one RADIUS client "bench" on 127.0.0.1 with no rate
/// limit; returns the config as loaded.
pub fn write_config(
    dir: &Path,
    listen: &str,
    secret: &str,
    synchronous: &str,
    lockout_threshold: u32,
) -> anyhow::Result<Config> {
    std::fs::create_dir_all(dir)?;
    let config_path = dir.join("sparekey.toml");
    let text = format!(
        "{}\n[radius]\nlisten = [\"{listen}\"]\n\n[[radius.client]]\nname = \"bench\"\naddress = \"127.0.0.1\"\nsecret = \"{secret}\"\nrate_limit = 0\n",
        Config::init_text(dir)
            .replace(
                "# synchronous = \"full\"",
                &format!("synchronous = \"{synchronous}\"")
            )
            .replace(
                "# lockout_threshold = 10",
                &format!("lockout_threshold = {lockout_threshold}")
            )
    );
    std::fs::write(&config_path, text)?;
    Ok(Config::load(&config_path)?)
}

pub fn make(
    dir: &Path,
    n: usize,
    listen: &str,
    secret: &str,
    synchronous: &str,
) -> anyhow::Result<()> {
    let config = write_config(dir, listen, secret, synchronous, 0)?;
    let mut store = Store::create(&config).context("creating the store")?;
    let ctx = Context::new("bench");
    let private = |name: &str| {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(name))
    };
    let mut csv = std::io::BufWriter::new(private("users.csv")?);
    let mut fr = std::io::BufWriter::new(private("freeradius-users")?);
    writeln!(csv, "user,code")?;
    let req = CodeRequest {
        count: 1,
        reuse_count: 0,
        valid_secs: 0,
        ..CodeRequest::default()
    };
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let pairs = store.batch(&ctx, |b| {
            let mut pairs = Vec::with_capacity(chunk.len());
            for i in chunk {
                let name = format!("user{i:07}");
                b.add_user(NewUser {
                    username: name.clone(),
                    ..NewUser::default()
                })?;
                b.add_device(&name, DeviceKind::Phone, None)?;
                let issued = b.generate_codes(&name, &req)?;
                pairs.push((name, issued.codes[0].code.expose().to_owned()));
            }
            Ok(pairs)
        })?;
        for (u, c) in pairs {
            writeln!(csv, "{u},{c}")?;
            writeln!(fr, "{u} Cleartext-Password := \"{c}\"")?;
        }
    }
    csv.flush()?;
    fr.flush()?;
    Ok(())
}
