#!/bin/sh
# Build the SOS agent for macOS: SOS.app and an installer package.
#     installer/macos/build.sh          (from the repository root, on a Mac with Rust and Xcode CLT)
# Output: target/macos/SOS.app and target/macos/sos-agent-<version>.pkg (unsigned; sign and
# notarize with your Developer ID: productsign, xcrun notarytool).
set -eu
cd "$(dirname "$0")/../.."
rustup target add aarch64-apple-darwin x86_64-apple-darwin
cargo build --release -p sos-agent --target aarch64-apple-darwin
cargo build --release -p sos-agent --target x86_64-apple-darwin
version=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="sos-agent"))')

out=target/macos
root="$out/root"
app="$root/Applications/SOS.app"
rm -rf "$out"
mkdir -p "$app/Contents/MacOS" "$app/Contents/Resources" "$root/Library/LaunchAgents" \
         "$root/Library/Application Support/sos"
lipo -create -output "$app/Contents/MacOS/sos-agent" \
    target/aarch64-apple-darwin/release/sos-agent target/x86_64-apple-darwin/release/sos-agent
sed "s/@VERSION@/$version/g" installer/macos/Info.plist > "$app/Contents/Info.plist"

# The icon: the SVG rendered by Quick Look, then every size iconutil wants.
iconset="$out/AppIcon.iconset"
mkdir -p "$iconset"
qlmanage -t -s 1024 -o "$out" installer/linux/sos-agent.svg >/dev/null
for s in 16 32 128 256 512; do
    sips -z $s $s "$out/sos-agent.svg.png" --out "$iconset/icon_${s}x${s}.png" >/dev/null
    d=$((s * 2))
    sips -z $d $d "$out/sos-agent.svg.png" --out "$iconset/icon_${s}x${s}@2x.png" >/dev/null
done
iconutil -c icns -o "$app/Contents/Resources/AppIcon.icns" "$iconset"

install -m 644 installer/macos/org.sos-button.agent.plist "$root/Library/LaunchAgents/"
install -m 644 installer/macos/agent.toml "$root/Library/Application Support/sos/agent.toml.default"
pkgbuild --root "$root" --identifier org.sos-button.agent.pkg --version "$version" \
    --scripts installer/macos/scripts --install-location / "$out/sos-agent-$version.pkg"
echo "built $app and $out/sos-agent-$version.pkg"
