//! The plan's guest text and the PARTUUIDs it derives from the partition table.

use super::*;

#[test]
fn guest_plan_text_uses_dashes_and_safe_labels() {
    let plan = Plan {
        scheme: Some("gpt".into()),
        entries: vec![
            PlanEntry {
                device: "vda1".into(),
                offset: 1 << 20,
                len: 1 << 30,
                fs: Some("ext4".into()),
                uuid: Some("0123".into()),
                label: Some("my root; rm -rf".into()),
                partuuid: None,
                partlabel: None,
            },
            PlanEntry {
                device: "vda2".into(),
                offset: 0,
                len: 0,
                fs: None,
                uuid: None,
                label: None,
                partuuid: None,
                partlabel: None,
            },
        ],
        findings: Vec::new(),
    };
    assert_eq!(
        plan.to_guest_text(),
        "vda1 ext4 0123 my_root__rm_-rf\nvda2 - - -\n"
    );
    assert_eq!(plan.filesystems(), ["ext4"]);
}
