//! `responders passwd NAME` and `responders invite NAME`: console accounts.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use sos_collector::http::{accounts, hash_password, invitation_token, token_hash, MIN_PASSWORD_LEN};
use sos_collector::Config;

use super::open_store_rw;

fn check_account(config: &Config, name: &str) -> anyhow::Result<()> {
    let all = accounts(config);
    if !all.iter().any(|(n, _)| n == name) {
        let known: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        anyhow::bail!(
            "{name:?} is not a console account: accounts are the names in [http] admins and [[responders]] \
             (now: {})",
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        );
    }
    Ok(())
}

/// Read one line from stdin without echo when it is a terminal.
fn read_secret(prompt: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    #[cfg(unix)]
    let saved = if tty {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        let mut t = rustix::termios::tcgetattr(&stdin)?;
        let saved = t.clone();
        t.local_modes.remove(rustix::termios::LocalModes::ECHO);
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &t)?;
        Some(saved)
    } else {
        None
    };
    #[cfg(not(unix))]
    if tty {
        // The collector is a Linux service; elsewhere the password echoes.
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    #[cfg(unix)]
    if let Some(saved) = saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &saved);
        eprintln!();
    }
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// `responders passwd NAME`: set the console password of `name`, read from stdin (twice, without
/// echo, on a terminal).
pub fn passwd(config: &Config, name: &str) -> anyhow::Result<()> {
    check_account(config, name)?;
    let password = read_secret(&format!("New console password for {name}: "))?;
    if std::io::stdin().is_terminal() && read_secret("Again: ")? != password {
        anyhow::bail!("the two passwords differ; nothing changed");
    }
    if password.chars().count() < MIN_PASSWORD_LEN || password.len() > 1024 {
        anyhow::bail!("the password must be {MIN_PASSWORD_LEN} to 1024 characters long; nothing changed");
    }
    let hash = hash_password(&password).map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
    let store = open_store_rw(config)?;
    store.run(store.store().set_password_hash(name, &hash, sos_collector::store::now_ms()))?;
    eprintln!("The console password of {name} is set (argon2id); it works at once.");
    Ok(())
}

/// `responders invite NAME`: print a one-time link where `name` sets their own password.
pub fn invite(config: &Config, name: &str, expires_hours: u64) -> anyhow::Result<()> {
    check_account(config, name)?;
    let Some(http) = &config.http else {
        anyhow::bail!("the console is off (no [http] in the configuration); an invitation link would lead nowhere");
    };
    if expires_hours == 0 || expires_hours > 24 * 30 {
        anyhow::bail!("--expires-hours must be between 1 and 720 (30 days)");
    }
    let token = invitation_token();
    let now = sos_collector::store::now_ms();
    let store = open_store_rw(config)?;
    store.run(store.store().create_invitation(
        name,
        &token_hash(&token),
        now,
        now + expires_hours as i64 * 3_600_000,
    ))?;
    println!("{}/invite/{token}", http.public_url);
    eprintln!(
        "\nA one-time link for {name} to set their console password, valid for {expires_hours} h. Send it by a \
         channel only {name} reads; whoever opens it first sets the password."
    );
    Ok(())
}
