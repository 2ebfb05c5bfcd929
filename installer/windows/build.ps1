# Build the SOS agent MSI: .\installer\windows\build.ps1   (from the repository root)
# Needs: Rust (x86_64-pc-windows-msvc), the .NET SDK and WiX v4+ with its util extension:
#   dotnet tool install --global wix
#   wix extension add --global WixToolset.Util.wixext
# Output: target\sos-agent-<version>.msi
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")
cargo build --release -p sos-agent
$version = (cargo metadata --no-deps --format-version 1 | ConvertFrom-Json).packages |
    Where-Object { $_.name -eq "sos-agent" } | Select-Object -ExpandProperty version
wix build -arch x64 -ext WixToolset.Util.wixext `
    -d Version=$version -d BinDir=target\release -d ConfigTemplate=installer\windows\agent.toml `
    -o "target\sos-agent-$version.msi" installer\windows\sos-agent.wxs
Write-Host "built target\sos-agent-$version.msi"
