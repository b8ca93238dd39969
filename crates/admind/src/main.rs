//! `sparekey-admind --config FILE`: the server is not wired up yet.

fn main() -> std::process::ExitCode {
    eprintln!("sparekey-admind: the server is not built yet; see issue 8");
    std::process::ExitCode::from(2)
}
