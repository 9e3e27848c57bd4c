//! The tree of an image mount: `disk.raw` (the leaf's view of the chain, its full
//! virtual size), one `pN.raw` per partition of its MBR or GPT, and `info.json`
//! (the chain's layers, the partition table used and the findings).

use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{json, Value};
use vdr_formats::partition::{read_partitions, PartitionTable};
use vdr_formats::{Chain, VirtualDisk};

use crate::tree::{node, Content, Kind, Tree, ROOT};

/// Builds the tree for `chain`, opened from `source` (named in info.json). Files take
/// the time `time` (the image file's mtime). A partition table that cannot be read is
/// recorded in info.json; `disk.raw` is always there.
pub fn image_tree(chain: Chain, source: &str, time: SystemTime) -> Tree {
    let chain = Arc::new(chain);
    let disk: Arc<dyn VirtualDisk> = chain.clone();
    let mut tree = Tree::new(time);
    let table = read_partitions(disk.as_ref());
    let whole = Content::Disk {
        disk: disk.clone(),
        start: 0,
        len: disk.size(),
    };
    tree.add(ROOT, "disk.raw", node(Kind::File(whole), time));
    if let Ok(Some(table)) = &table {
        for p in &table.partitions {
            let part = Content::Disk {
                disk: disk.clone(),
                start: p.start,
                len: p.len,
            };
            tree.add(
                ROOT,
                &format!("p{}.raw", p.index),
                node(Kind::File(part), time),
            );
        }
    }
    let info = info_json(&chain, source, &table);
    let text = serde_json::to_vec_pretty(&info).unwrap_or_default();
    let mut bytes = text;
    bytes.push(b'\n');
    tree.add(
        ROOT,
        "info.json",
        node(Kind::File(Content::Bytes(bytes.into())), time),
    );
    tree
}

/// The info.json object: `{source, format, virtual_size, layers, partition_table,
/// findings}`.
fn info_json(
    chain: &Chain,
    source: &str,
    table: &Result<Option<PartitionTable>, vdr_formats::Error>,
) -> Value {
    let layers: Vec<Value> = chain
        .layers()
        .iter()
        .map(|l| serde_json::to_value(l.info()).unwrap_or(Value::Null))
        .collect();
    let findings: Vec<Value> = chain
        .findings()
        .iter()
        .map(|f| serde_json::to_value(f).unwrap_or(Value::Null))
        .collect();
    let partition_table = match table {
        Ok(Some(t)) => json!({
            "scheme": t.scheme.name(),
            "sector_size": t.sector_size,
            "partitions": t.partitions.iter().map(|p| json!({
                "file": format!("p{}.raw", p.index),
                "index": p.index,
                "start": p.start,
                "len": p.len,
                "type": p.type_id,
                "description": p.description,
                "name": p.name,
            })).collect::<Vec<_>>(),
            "findings": t.findings,
        }),
        Ok(None) => Value::Null,
        Err(e) => json!({"error": e.to_string()}),
    };
    json!({
        "source": source,
        "format": chain.leaf().info().format,
        "virtual_size": chain.size(),
        "layers": layers,
        "partition_table": partition_table,
        "findings": findings,
    })
}
