//! The Windows binaries (`x86_64-pc-windows-gnu`) run under Wine, each test in a prefix of its
//! own.
//!
//! The first test of a run makes a template prefix under a file lock (`wineboot --init`, a few
//! seconds, once: it is kept in the target directory for later runs) and puts the
//! `bcryptprimitives.dll` stand-in in its `system32` (tests/fixtures/windows/bcryptprimitives.c:
//! Debian's Wine 8 lacks the DLL, and Rust's standard library takes its random bytes from its
//! `ProcessPrng`), and sets Wine's null display driver. Each test then gets a copy, hard-linked except for what Windows programs
//! write (the registry, `C:\users`, `C:\ProgramData`): a fraction of a second. No display: the
//! commands run with `DISPLAY` and `WAYLAND_DISPLAY` unset and `WINEDEBUG=-all`.
//!
//! Wine and MinGW are system dependencies: [`Wine::find`] returns `None` (the test skips) when
//! one is missing, unless `CI` is set, then it panics.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The Windows binaries under test: `SOS_WINDOWS_BIN_DIR`, else
/// `target/x86_64-pc-windows-gnu/<profile>` beside the tests' own target directory.
///
/// # Panics
/// If the binary is missing, with the command that builds it.
pub fn windows_bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SOS_WINDOWS_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            // target/<profile>/deps/<test-binary>
            let exe = std::env::current_exe().expect("current_exe");
            let profile_dir = exe.parent().and_then(Path::parent).expect("target dir");
            let profile = profile_dir.file_name().expect("profile");
            profile_dir.parent().expect("target dir").join("x86_64-pc-windows-gnu").join(profile)
        }
    };
    let path = dir.join(format!("{name}.exe"));
    assert!(
        path.exists(),
        "{} is missing: cargo build --release --target x86_64-pc-windows-gnu -p sos-agent -p sos-collector",
        path.display()
    );
    path
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Wine and the MinGW compiler, found.
#[derive(Debug, Clone)]
pub struct Wine {
    /// `wine64` (Debian installs it as `/usr/lib/wine/wine64`, off the `PATH`).
    wine: PathBuf,
    /// `wineserver`, to stop a prefix's server when its test ends.
    wineserver: PathBuf,
    /// `x86_64-w64-mingw32-gcc`, for the DLL stand-in.
    gcc: PathBuf,
}

impl Wine {
    /// Wine and MinGW, or `None` if one is missing (outside CI).
    ///
    /// # Panics
    /// If one is missing and `CI` is set.
    pub fn find() -> Option<Wine> {
        let wine = on_path("wine64").or_else(|| Some(PathBuf::from("/usr/lib/wine/wine64")).filter(|p| p.is_file()));
        let wineserver =
            on_path("wineserver").or_else(|| Some(PathBuf::from("/usr/lib/wine/wineserver")).filter(|p| p.is_file()));
        let gcc = on_path("x86_64-w64-mingw32-gcc");
        match (wine, wineserver, gcc) {
            (Some(wine), Some(wineserver), Some(gcc)) => Some(Wine { wine, wineserver, gcc }),
            _ => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "Wine or MinGW is missing (apt-get install wine64 gcc-mingw-w64-x86-64)"
                );
                eprintln!("skipped: Wine or MinGW is missing (apt-get install wine64 gcc-mingw-w64-x86-64)");
                None
            }
        }
    }

    /// The prepared template prefix, made once (under a lock) if it is not there yet.
    fn template(&self) -> PathBuf {
        let base = windows_bin_dir_parent().join("wine");
        std::fs::create_dir_all(&base).unwrap();
        let lock = std::fs::File::create(base.join("lock")).unwrap();
        lock.lock().unwrap();
        let template = base.join("template");
        if !template.join(".sos-ready").exists() {
            let _ = std::fs::remove_dir_all(&template);
            std::fs::create_dir_all(&template).unwrap();
            let out = self.command_in(&template, Path::new("wineboot")).arg("--init").output().unwrap();
            assert!(out.status.success(), "wineboot --init failed: {}", String::from_utf8_lossy(&out.stderr));
            // Wine's null display driver: windows exist without a display. Without it no window
            // can be created, and winit's event loop never receives the events the agent's
            // pipe server sends it (`status` and `trigger` time out).
            let out = self
                .command_in(&template, Path::new("reg"))
                .args(["add", r"HKCU\Software\Wine\Drivers", "/v", "Graphics", "/d", "null", "/f"])
                .output()
                .unwrap();
            assert!(out.status.success(), "reg add failed: {}", String::from_utf8_lossy(&out.stderr));
            // wineboot returns before the server has written the registry: wait for the server
            // to end, which saves it.
            let _ = Command::new(&self.wineserver).arg("-w").env("WINEPREFIX", &template).status();
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/windows/bcryptprimitives.c");
            let dll = template.join("drive_c/windows/system32/bcryptprimitives.dll");
            let out = Command::new(&self.gcc)
                .args(["-O2", "-shared", "-Wl,--kill-at", "-o"])
                .arg(&dll)
                .arg(&source)
                .arg("-ladvapi32")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "building the ProcessPrng stand-in failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(template.join(".sos-ready"), b"").unwrap();
        }
        template
    }

    /// A command run by Wine in `prefix`, without a display.
    fn command_in(&self, prefix: &Path, program: &Path) -> Command {
        let mut c = Command::new(&self.wine);
        c.arg(program)
            .env("WINEPREFIX", prefix)
            .env("WINEDEBUG", "-all")
            // No Mono/Gecko installers, no menu entries written into the host's desktop.
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=;winemenubuilder.exe=d")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null());
        c
    }

    /// Stop the Wine server of `prefix` (and every Windows process in it).
    fn stop(&self, prefix: &Path) {
        let _ = Command::new(&self.wineserver).arg("-k").env("WINEPREFIX", prefix).status();
        let _ = Command::new(&self.wineserver).arg("-w").env("WINEPREFIX", prefix).status();
    }

    /// A new prefix for one test.
    pub fn prefix(&self) -> Prefix {
        let template = self.template();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("prefix");
        // Hard links for the large, read-only part (Windows' DLLs); copies of what is written.
        let ok = Command::new("cp").arg("-al").arg(&template).arg(&root).status().unwrap().success();
        assert!(ok, "cp -al of the Wine template failed");
        for part in ["drive_c/users", "drive_c/ProgramData", "system.reg", "user.reg", "userdef.reg"] {
            let to = root.join(part);
            if to.is_dir() {
                std::fs::remove_dir_all(&to).unwrap();
            } else {
                std::fs::remove_file(&to).unwrap();
            }
            let ok = Command::new("cp").arg("-a").arg(template.join(part)).arg(&to).status().unwrap().success();
            assert!(ok, "copy of {part} failed");
        }
        Prefix { wine: self.clone(), root, _dir: dir }
    }
}

/// `target/`, the parent of the tests' profile directory.
fn windows_bin_dir_parent() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent().and_then(Path::parent).and_then(Path::parent).expect("target dir").to_path_buf()
}

/// One test's Wine prefix: its own `C:\users` and `C:\ProgramData`. Its Wine server is stopped
/// and the directory removed on drop.
#[derive(Debug)]
pub struct Prefix {
    wine: Wine,
    /// The prefix (`WINEPREFIX`).
    pub root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prefix {
    /// `exe` run in this prefix, without a display.
    pub fn command(&self, exe: &Path) -> Command {
        self.wine.command_in(&self.root, exe)
    }

    /// Run `exe` with `args` to completion.
    pub fn run(&self, exe: &Path, args: &[&str]) -> Output {
        self.command(exe).args(args).output().expect("run wine")
    }

    /// `C:\`.
    pub fn drive_c(&self) -> PathBuf {
        self.root.join("drive_c")
    }

    /// The Windows user's name (Wine takes the Unix one).
    pub fn user(&self) -> String {
        std::fs::read_dir(self.drive_c().join("users"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find(|n| n != "Public")
            .expect("a user profile in the prefix")
    }

    /// `%APPDATA%` (roaming).
    pub fn appdata(&self) -> PathBuf {
        self.drive_c().join("users").join(self.user()).join("AppData/Roaming")
    }

    /// `%LOCALAPPDATA%`.
    pub fn local_appdata(&self) -> PathBuf {
        self.drive_c().join("users").join(self.user()).join("AppData/Local")
    }

    /// `%ProgramData%`.
    pub fn program_data(&self) -> PathBuf {
        self.drive_c().join("ProgramData")
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        self.wine.stop(&self.root);
    }
}
