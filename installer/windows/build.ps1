# Build the SOS agent MSI on Windows: .\installer\windows\build.ps1   (from the repository root)
# Not run on this project's CI, which builds the same MSI on Linux with wixl (build.sh).
# Needs: Rust (x86_64-pc-windows-msvc), the .NET SDK and WiX v4 or later:
#   dotnet tool install --global wix
# sos-agent.wxs is written in the WiX v3 schema that wixl reads; WiX v4+ converts a copy first.
# Output: target\sos-agent-<version>.msi
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")
cargo build --release -p sos-agent
$version = (cargo metadata --no-deps --format-version 1 | ConvertFrom-Json).packages |
    Where-Object { $_.name -eq "sos-agent" } | Select-Object -ExpandProperty version
Copy-Item installer\windows\sos-agent.wxs target\sos-agent.wxs
wix convert target\sos-agent.wxs
wix build -arch x64 `
    -d Version=$version -d BinDir=target\release -d ConfigTemplate=installer\windows\agent.toml `
    -o "target\sos-agent-$version.msi" target\sos-agent.wxs
Write-Host "built target\sos-agent-$version.msi"
