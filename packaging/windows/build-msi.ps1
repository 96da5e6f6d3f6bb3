<#
.SYNOPSIS
  Builds the Windows installer: the app frozen with a bundled Python (PyInstaller, one folder),
  packed into a per-machine MSI by WiX, both signed when a code-signing certificate is given.

.DESCRIPTION
  Run from anywhere on 64-bit Windows with Python 3.11+ (python on PATH, or -Python) and the .NET SDK
  (for the wix tool, installed here if missing):
      powershell -ExecutionPolicy Bypass -File packaging\windows\build-msi.ps1
  Result: build\helpdesk-voice-<version>-x64.msi.

  Signing happens only when both variables are set (CI secrets):
      WINDOWS_CERT_PFX_BASE64   the code-signing certificate with its private key, a .pfx, base64
      WINDOWS_CERT_PASSWORD     its password
      WINDOWS_TIMESTAMP_URL     optional; an RFC 3161 time-stamping server (default: DigiCert's)
  The two executables are signed before they go into the MSI (SmartScreen and AppLocker look at
  the installed files, not at the MSI), then the MSI itself. Every signature is time-stamped, so
  it stays valid after the certificate expires.
#>
[CmdletBinding()]
param(
    [string]$Python = "python",
    [string]$WixVersion = "5.0.2"
)

$ErrorActionPreference = "Stop"
Set-StrictMode -Version Latest

# PowerShell does not stop on a native command's exit code by itself (before 7.3, and only opt-in
# after), so every tool runs through this.
function Invoke-Native {
    param([Parameter(Mandatory)][string]$Command, [string[]]$Arguments = @())
    & $Command @Arguments
    if ($LASTEXITCODE -ne 0) {
        throw "$Command $($Arguments -join ' ') failed with exit code $LASTEXITCODE"
    }
}

function Find-SignTool {
    $found = Get-Command signtool.exe -ErrorAction SilentlyContinue
    if ($found) { return $found.Source }
    # Hosted runners have the Windows SDK but not on PATH; take its newest x64 signtool.
    $kits = Join-Path ${env:ProgramFiles(x86)} "Windows Kits\10\bin"
    $candidates = Get-ChildItem -Path $kits -Filter signtool.exe -Recurse -ErrorAction SilentlyContinue |
        Where-Object { $_.DirectoryName -like "*\x64" } |
        Sort-Object { [version]($_.Directory.Parent.Name -replace '[^0-9.]', '') } -ErrorAction SilentlyContinue
    if (-not $candidates) { throw "signtool.exe not found: install the Windows SDK" }
    return @($candidates)[-1].FullName
}

function Invoke-Sign {
    param([string[]]$Files)
    $timestamp = if ($env:WINDOWS_TIMESTAMP_URL) { $env:WINDOWS_TIMESTAMP_URL } else { "http://timestamp.digicert.com" }
    Invoke-Native $script:SignTool (@(
        "sign", "/f", $script:Pfx, "/p", $env:WINDOWS_CERT_PASSWORD,
        "/fd", "SHA256", "/tr", $timestamp, "/td", "SHA256", "/d", "Helpdesk Voice"
    ) + $Files)
    Invoke-Native $script:SignTool (@("verify", "/pa") + $Files)
}

$Root = (Resolve-Path (Join-Path $PSScriptRoot "..\..")).Path
Set-Location $Root
$Build = Join-Path $Root "build"
$Dist = Join-Path $Build "dist\helpdesk-voice"
New-Item -ItemType Directory -Force -Path $Build | Out-Null

# Its own virtual environment: the bundle carries exactly what pyproject.toml asks for, nothing
# a developer happened to install.
$Venv = Join-Path $Build "venv-windows"
if (-not (Test-Path (Join-Path $Venv "Scripts\python.exe"))) {
    Invoke-Native $Python @("-m", "venv", $Venv)
}
$VenvPython = Join-Path $Venv "Scripts\python.exe"
Invoke-Native $VenvPython @("-m", "pip", "install", "--quiet", "--upgrade", "pip")
Invoke-Native $VenvPython @("-m", "pip", "install", "--quiet", ".[build]")
$Version = (& $VenvPython -c "from importlib.metadata import version; print(version('helpdesk-voice'))").Trim()
if ($LASTEXITCODE -ne 0 -or -not $Version) { throw "could not read the package version" }
# An MSI version is three numbers (the fourth is ignored by upgrades); 0.1.0rc1 -> 0.1.0.
$MsiVersion = ($Version -replace '^(\d+(\.\d+){0,2}).*$', '$1')

Write-Host "freezing helpdesk-voice $Version (PyInstaller)..."
if (Test-Path $Dist) { Remove-Item -Recurse -Force $Dist }
Invoke-Native $VenvPython @(
    "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN",
    "--distpath", (Join-Path $Build "dist"), "--workpath", (Join-Path $Build "pyinstaller"),
    "packaging\pyinstaller\helpdesk-voice.spec"
)
Invoke-Native (Join-Path $Dist "helpdesk-voice-cli.exe") @("--version")

$Signing = [bool]($env:WINDOWS_CERT_PFX_BASE64 -and $env:WINDOWS_CERT_PASSWORD)
$script:Pfx = Join-Path ([System.IO.Path]::GetTempPath()) ("hv-sign-" + [guid]::NewGuid() + ".pfx")
try {
    if ($Signing) {
        $script:SignTool = Find-SignTool
        [System.IO.File]::WriteAllBytes($script:Pfx, [Convert]::FromBase64String($env:WINDOWS_CERT_PFX_BASE64))
        Write-Host "signing the executables..."
        Invoke-Sign @((Join-Path $Dist "helpdesk-voice.exe"), (Join-Path $Dist "helpdesk-voice-cli.exe"))
    } else {
        Write-Host "WINDOWS_CERT_PFX_BASE64/WINDOWS_CERT_PASSWORD not set: building unsigned"
    }

    if (-not (Get-Command wix -ErrorAction SilentlyContinue)) {
        Invoke-Native dotnet @("tool", "install", "--global", "wix", "--version", $WixVersion)
        $env:PATH = "$env:PATH;$(Join-Path $env:USERPROFILE '.dotnet\tools')"
    }
    Invoke-Native wix @("--version")

    $Icon = Join-Path $Build "icons\helpdesk-voice.ico"  # written by the spec (packaging\icons.py)
    $Msi = Join-Path $Build "helpdesk-voice-$Version-x64.msi"
    Write-Host "building $Msi (WiX)..."
    Invoke-Native wix @(
        "build", "-arch", "x64",
        "-d", "Version=$MsiVersion",
        "-d", "IconFile=$Icon",
        "-bindpath", "App=$Dist",
        "-o", $Msi,
        "packaging\windows\helpdesk-voice.wxs"
    )
    if ($Signing) {
        Write-Host "signing the MSI..."
        Invoke-Sign @($Msi)
    }
} finally {
    Remove-Item -Force -ErrorAction SilentlyContinue $script:Pfx
}
$Size = "{0:N0} MB" -f ((Get-Item $Msi).Length / 1MB)
Write-Host "built $Msi ($Size)"
