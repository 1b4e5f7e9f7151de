//! The audit trail and burst quota through the admin commands: every admin
//! change is a record in its tenant's hash chain, `audit verify` finds a
//! record edited on disk, and a burst is refused, approved and counted as
//! the plan says.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bulkhead_proto::control as pb;
use bulkhead_tests::cluster::ControlPlanes;
use redb::ReadableTable;

/// One record as `audit list --hashes` prints it.
#[derive(Debug)]
struct Row {
    seq: u64,
    actor: String,
    action: String,
    detail: String,
    prev_hash: String,
    hash: String,
}

/// Parses `audit list --tenant ID --hashes`: a record line, then its hashes.
fn audit_rows(cp: &ControlPlanes, tenant: &str) -> anyhow::Result<Vec<Row>> {
    let out = cp.cli(&["audit", "list", "--tenant", tenant, "--hashes"])?;
    let mut lines = out.lines().skip(1);
    let mut rows = Vec::new();
    while let Some(record) = lines.next() {
        let hashes = lines.next().context("a hash line after each record")?;
        let mut f = record.split_whitespace();
        let seq = f.next().context("seq")?.parse()?;
        let _time = f.next().context("time")?;
        let actor = f.next().context("actor")?.to_owned();
        let action = f.next().context("action")?.to_owned();
        let detail = f.collect::<Vec<_>>().join(" ");
        let h: Vec<&str> = hashes.split_whitespace().collect();
        anyhow::ensure!(
            h.len() == 4 && h[0] == "prev_hash" && h[2] == "hash",
            "hash line: {hashes:?}"
        );
        rows.push(Row {
            seq,
            actor,
            action,
            detail,
            prev_hash: h[1].to_owned(),
            hash: h[3].to_owned(),
        });
    }
    Ok(rows)
}

/// The value of a `name:` line of a command's output.
fn field(out: &str, name: &str) -> anyhow::Result<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_owned())
        .with_context(|| format!("no {name:?} in {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_changes_are_chained_and_an_edit_on_disk_is_found() -> anyhow::Result<()> {
    let mut cp = ControlPlanes::start(1, &[])?;
    let client = cp.client();
    cp.cli(&["tenant", "create", "acme", "--plan", "enterprise"])?;
    cp.cli(&["tenant", "create", "basicco"])?;
    cp.cli(&["tenant", "update", "acme", "--max-concurrent", "4"])?;
    let created = cp.cli(&["key", "create", "--tenant", "acme"])?;
    let key_id = field(&created, "key id:")?
        .split_whitespace()
        .next()
        .context("key id")?
        .to_owned();
    cp.cli(&["key", "revoke", &key_id])?;

    // A basic tenant may not ask for a burst: refused, and nothing recorded.
    let before = audit_rows(&cp, "basicco")?.len();
    let out = cp.cli_at(
        &cp.addrs(),
        &[
            "burst", "request", "--tenant", "basicco", "--reason", "big day",
        ],
    )?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tenant `basicco` is on plan `basic`, which does not include burst requests"),
        "{err}"
    );
    let refused = client
        .admin()
        .send(
            pb::BurstRequest {
                tenant_id: "basicco".into(),
                reason: "big day".into(),
            },
            |mut c, req| async move { c.request_burst(req).await },
        )
        .await
        .expect_err("a burst on basic is refused");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let none = cp.cli(&["burst", "list", "--tenant", "basicco"])?;
    assert_eq!(none.lines().count(), 1, "only the header: {none}");
    assert_eq!(audit_rows(&cp, "basicco")?.len(), before);

    // Enterprise may: requested, approved, listed, and today's quota is 150%.
    let requested = cp.cli(&[
        "burst",
        "request",
        "--tenant",
        "acme",
        "--reason",
        "product launch",
    ])?;
    let burst_id = field(&requested, "burst:")?;
    assert_eq!(field(&requested, "status:")?, "pending");
    let approved = cp.cli(&["burst", "approve", &burst_id, "--note", "go ahead"])?;
    assert_eq!(field(&approved, "status:")?, "approved");
    assert_eq!(field(&approved, "note:")?, "go ahead");
    let list = cp.cli(&["burst", "list", "--status", "approved"])?;
    let row = list
        .lines()
        .find(|l| l.starts_with(&burst_id))
        .with_context(|| format!("burst in {list}"))?;
    assert!(
        row.contains("acme") && row.contains("approved") && row.contains("product launch"),
        "{row}"
    );
    let acme = client
        .admin()
        .send(
            pb::TenantRef { id: "acme".into() },
            |mut c, req| async move { c.get_tenant(req).await },
        )
        .await?;
    let daily = acme.limits.unwrap_or_default().daily_tokens;
    // The burst's own day (a run across midnight asks about that day).
    let burst_day = field(&requested, "day:")?;
    let usage = client
        .admin()
        .send(
            pb::UsageRangeRequest {
                tenant_id: "acme".into(),
                from_day: burst_day.clone(),
                to_day: burst_day.clone(),
            },
            |mut c, req| async move { c.usage_range(req).await },
        )
        .await?;
    let today = usage
        .days
        .first()
        .context("the burst's day in the usage report")?;
    assert_eq!(today.quota, daily * 3 / 2, "{today:?}");
    let shown = cp.cli(&["usage", "--tenant", "acme", "--days", "2"])?;
    assert!(
        shown
            .lines()
            .any(|l| l.contains(&burst_day) && l.contains(&(daily * 3 / 2).to_string())),
        "{shown}"
    );

    cp.cli(&["share", "grant", "--from", "acme", "--to", "basicco"])?;
    let shares = cp.cli(&["share", "list", "--tenant", "basicco"])?;
    assert!(
        shares
            .lines()
            .any(|l| l.starts_with("acme") && l.contains('*')),
        "{shares}"
    );

    // acme's chain: every change in order, by the admin, each linked to the last.
    let rows = audit_rows(&cp, "acme")?;
    let actions: Vec<&str> = rows.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "tenant.created",
            "tenant.updated",
            "key.created",
            "key.revoked",
            "burst.requested",
            "burst.approved",
            "share.granted",
        ]
    );
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1, "{r:?}");
        assert_eq!(r.actor, "admin", "{r:?}");
        assert_eq!(r.hash.len(), 64, "{r:?}");
        let prev = if i == 0 {
            "-"
        } else {
            rows[i - 1].hash.as_str()
        };
        assert_eq!(
            r.prev_hash, prev,
            "record {} links to the one before",
            r.seq
        );
    }
    assert!(rows[2].detail.contains(&key_id), "{:?}", rows[2]);
    assert!(rows[4].detail.contains(&burst_id), "{:?}", rows[4]);
    let grantee = audit_rows(&cp, "basicco")?;
    assert_eq!(
        grantee.last().map(|r| r.action.as_str()),
        Some("share.granted"),
        "the grant is in the grantee's chain too"
    );
    let ok = cp.cli(&["audit", "verify"])?;
    assert!(ok.starts_with("ok: "), "{ok}");
    assert!(ok.contains("records verified"), "{ok}");

    // Where the node keeps its database: next to the archives a delete writes.
    cp.cli(&["tenant", "create", "scratch"])?;
    let deleted = cp.cli(&["tenant", "delete", "scratch"])?;
    let archive = deleted
        .trim()
        .rsplit_once("(archived to ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .with_context(|| format!("archive path in {deleted}"))?;
    let data_dir: PathBuf = PathBuf::from(archive)
        .parent()
        .and_then(|archives| archives.parent())
        .context("archives/ under the data dir")?
        .to_path_buf();

    // Edit one record's detail on disk (still valid JSON), with the node down.
    cp.kill(0);
    {
        let db = redb::Database::open(data_dir.join("control-plane.redb"))?;
        let table: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("audit");
        let wtx = db.begin_write()?;
        {
            let mut t = wtx.open_table(table)?;
            let key = "acme/000000000003";
            let text = t
                .get(key)?
                .context("acme's third record")?
                .value()
                .to_owned();
            let mut record: serde_json::Value = serde_json::from_str(&text)?;
            assert_eq!(record["action"], "key.created");
            record["detail"] = serde_json::json!({"tenant_id": "acme", "key_id": "someone else"})
                .to_string()
                .into();
            let edited = record.to_string();
            t.insert(key, edited.as_str())?;
        }
        wtx.commit()?;
    }
    cp.restart(0)?;
    cp.leader(Duration::from_secs(30)).await?;

    let out = cp.cli_at(&cp.addrs(), &["audit", "verify"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with("broken: tenant acme record 3: "),
        "names the tenant and the record: {text}"
    );
    assert!(text.contains("does not match its hash"), "{text}");
    let out = cp.cli_at(&cp.addrs(), &["audit", "verify", "--tenant", "acme"])?;
    assert_eq!(out.status.code(), Some(1));
    // Other chains are intact.
    let other = cp.cli(&["audit", "verify", "--tenant", "basicco"])?;
    assert!(other.starts_with("ok: 1 chains, "), "{other}");
    Ok(())
}
