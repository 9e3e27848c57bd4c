//! The README's promise to a newcomer: it starts with the two set-up commands (the demo,
//! then the tests), and the demo command writes the file EXPECTED.sha256 checks.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn repo_file(name: &str) -> String {
    fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn readme_starts_with_the_demo_and_test_commands() {
    let readme = repo_file("README.md");
    let mut lines = readme.lines().filter(|l| !l.trim().is_empty());

    let title = lines.next().expect("a title line");
    assert!(
        title.starts_with("# "),
        "first line is not a title: {title}"
    );
    let fence = lines.next().expect("a fenced block");
    assert!(
        fence.starts_with("```"),
        "the commands must come right after the title"
    );
    let commands: Vec<&str> = lines
        .by_ref()
        .take_while(|l| !l.starts_with("```"))
        .collect();

    assert_eq!(commands.len(), 2, "exactly two commands: {commands:?}");
    assert!(commands[0].contains("convert fixtures/demo/leaf.qcow2 /tmp/vdr-demo.raw"));
    assert!(commands[0].ends_with("sha256sum -c fixtures/demo/EXPECTED.sha256"));
    assert_eq!(commands[1], "./scripts/test");
}

#[test]
fn expected_sha256_checks_the_file_the_demo_command_writes() {
    let expected = repo_file("fixtures/demo/EXPECTED.sha256");
    let fields: Vec<&str> = expected.split_whitespace().collect();

    assert_eq!(fields.len(), 2, "{expected}");
    assert_eq!(fields[0].len(), 64);
    assert!(fields[0].chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(fields[1], "/tmp/vdr-demo.raw");
}

#[test]
fn ci_runs_the_test_script() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mode = fs::metadata(root.join(".ci/run"))
        .expect(".ci/run")
        .permissions()
        .mode();

    assert!(mode & 0o111 != 0, ".ci/run must be executable");
    assert!(repo_file(".ci/run").contains("exec ./scripts/test"));
}
