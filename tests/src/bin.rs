//! Where the binaries under test are.

use std::path::PathBuf;

/// The path of binary `name` from this workspace, built in the same profile as the tests
/// (`cargo test --release --workspace` builds them: the agent and collector packages have
/// integration tests, which makes cargo build their binaries). `SOS_BIN_DIR` overrides.
///
/// # Panics
/// If the binary is not there, with the command that builds it.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SOS_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            // target/<profile>/deps/<test-binary>
            exe.parent().and_then(|p| p.parent()).expect("target dir").to_path_buf()
        }
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --release --workspace`, or set SOS_BIN_DIR",
        path.display()
    );
    path
}
