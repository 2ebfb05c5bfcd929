#!/bin/sh
# Build the SOS agent MSI on Linux with msitools' wixl (CI does this on every run).
#   installer/windows/build.sh [BIN_DIR] [OUT]
# BIN_DIR holds sos-agent.exe (default: $CARGO_TARGET_DIR or target, then
# x86_64-pc-windows-gnu/release: cargo build --release --target x86_64-pc-windows-gnu -p sos-agent);
# OUT defaults to <that target dir>/sos-agent-<version>.msi.
# Needs: apt-get install wixl msitools.
#
# wixl builds sos-agent.wxs but ignores a few of its attributes (it warns about them); the
# msibuild queries below write into the MSI what WiX would have written for them:
#   - Component MachineConfig: NeverOverwrite and Permanent (256 x64 + 16 + 128 = 400), so the
#     machine config is kept on upgrade and uninstall;
#   - Property ENROLL_CODE and COLLECTOR Secure (SecureCustomProperties), ENROLL_CODE Hidden
#     (MsiHiddenProperties);
#   - the Start-menu shortcut's AppUserModelID (a MsiShortcutProperty row; wixl rejects the
#     ShortcutProperty element, so the .wxs leaves it out when Wixl is defined);
#   - CustomAction EnrollMachine HideTarget (+8192: 18 exe + 1024 deferred + 2048 no
#     impersonation + 8192), so the enrollment code is not written to the MSI log.
set -eu
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"
bin_dir="${1:-$target/x86_64-pc-windows-gnu/release}"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
out="${2:-$target/sos-agent-$version.msi}"
# wixl resolves sources relative to the current directory only.
rel_bin="$(realpath --relative-to=. "$bin_dir")"
mkdir -p "$(dirname "$out")"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! wixl --arch x64 -D Wixl=1 -D Version="$version" -D BinDir="$rel_bin" \
        -D ConfigTemplate=installer/windows/agent.toml -o "$out" installer/windows/sos-agent.wxs 2>"$log"; then
    cat "$log" >&2
    exit 1
fi
# The warnings about the attributes handled below are expected; anything else is shown.
grep -v -e "has no property named 'Secure'" -e "has no property named 'Hidden'" \
    -e "has no property named 'NeverOverwrite'" -e "has no property named 'Permanent'" -e '^$' "$log" >&2 || true
msibuild "$out" \
    -q "UPDATE Component SET Attributes = 400 WHERE Component = 'MachineConfig'" \
    -q "UPDATE Property SET Value = 'COLLECTOR;ENROLL_CODE;WIX_DOWNGRADE_DETECTED;WIX_UPGRADE_DETECTED' WHERE Property = 'SecureCustomProperties'" \
    -q "INSERT INTO Property (Property, Value) VALUES ('MsiHiddenProperties', 'ENROLL_CODE')" \
    -q "UPDATE CustomAction SET Type = 11282 WHERE Action = 'EnrollMachine'" \
    -q "CREATE TABLE \`MsiShortcutProperty\` (\`MsiShortcutProperty\` CHAR(72) NOT NULL, \`Shortcut_\` CHAR(72) NOT NULL, \`PropertyKey\` CHAR(0) NOT NULL, \`PropVariantValue\` CHAR(0) NOT NULL PRIMARY KEY \`MsiShortcutProperty\`)" \
    -q "INSERT INTO \`MsiShortcutProperty\` (\`MsiShortcutProperty\`, \`Shortcut_\`, \`PropertyKey\`, \`PropVariantValue\`) VALUES ('SosAppUserModelId', 'SosShortcut', 'System.AppUserModel.ID', 'org.sos-button.agent')"
echo "built $out"
