//! The shipped unit file: `systemd-analyze verify` accepts it without a single warning, and it
//! keeps the settings plugd relies on.

use std::process::Command;

const UNIT: &str = include_str!("../../../systemd/plugd.service");

#[test]
fn the_unit_file_verifies_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let unit = UNIT.replace("/usr/local/bin/plugd", env!("CARGO_BIN_EXE_plugd"));
    let path = dir.path().join("plugd.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect(
            "systemd-analyze is needed (scripts/test installs the systemd package when absent)",
        );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{said}"
    );
    assert!(
        said.trim().is_empty(),
        "systemd-analyze verify warned:\n{said}"
    );
}

#[test]
fn the_unit_file_keeps_what_plugd_relies_on() {
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "KillMode=mixed",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RuntimeDirectory=plugd",
        "StateDirectory=plugd",
        "Delegate=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
    ] {
        assert!(
            UNIT.lines().any(|l| l.starts_with(line)),
            "the unit lacks {line}"
        );
    }
}
