//! Files and server-side tools (issue 15), driven deterministically: a
//! [`ScriptedWorker`] (not llama.cpp: it calls the tool and arguments the
//! test's message scripts) stands behind a real `bulkhead up`, so that
//! each tool's run in the sandbox, the files that go in and come out, the
//! audit trail and the refusals are what is tested. The template path with
//! the real demo model is `gateway_up::server_side_tools_…`.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bulkhead_tests::scripted_worker::{SCRIPTED_MODEL, ScriptedWorker};
use bulkhead_tests::system::{Api, Up, eventually};
use serde_json::{Value, json};

/// A `multipart/form-data` upload of one file with a purpose.
fn upload(api: &Api, key: &str, filename: &str, bytes: &[u8]) -> reqwest::RequestBuilder {
    let boundary = "bulkhead-test-boundary-7d1f";
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    api.post("/v1/files", key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
}

async fn uploaded(api: &Api, key: &str, filename: &str, bytes: &[u8]) -> String {
    let a = api.send(upload(api, key, filename, bytes)).await.unwrap();
    assert_eq!(a.status, 200, "{filename}: {:?}", a.body);
    assert_eq!(a.body["object"], "file");
    assert_eq!(a.body["bytes"], bytes.len());
    a.body["id"].as_str().unwrap().to_owned()
}

/// A one-page PDF whose text is `text` (Helvetica), with a right xref.
fn pdf(text: &str) -> Vec<u8> {
    let stream = format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_owned(),
        format!("<< /Length {} >>\nstream\n{stream}\nendstream", stream.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_owned(),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for o in offsets {
        out.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

/// An SQLite database and an XLSX workbook, made with Python's standard
/// library in `dir`.
fn make_db_and_xlsx(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
    let script = r#"
import sqlite3, sys, zipfile
con = sqlite3.connect(sys.argv[1] + "/crm.db")
con.execute("create table customers (id integer, name text, city text, revenue integer)")
con.executemany("insert into customers values (?, ?, ?, ?)",
                [(1, "Acme", "Paris", 120), (2, "Globex", "Berlin", 340), (3, "Initech", "Austin", 75)])
con.commit()
ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
rel = 'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
with zipfile.ZipFile(sys.argv[1] + "/plan.xlsx", "w") as z:
    z.writestr("[Content_Types].xml", '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>')
    z.writestr("xl/workbook.xml", f'<workbook {ns} {rel}><sheets><sheet name="Targets" sheetId="1" r:id="rId1"/></sheets></workbook>')
    z.writestr("xl/_rels/workbook.xml.rels", '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Target="worksheets/sheet1.xml"/></Relationships>')
    z.writestr("xl/sharedStrings.xml", f'<sst {ns}><si><t>region</t></si><si><t>target</t></si><si><t>Nordics</t></si></sst>')
    z.writestr("xl/worksheets/sheet1.xml", f'<worksheet {ns}><sheetData><row r="1"><c t="s"><v>0</v></c><c t="s"><v>1</v></c></row><row r="2"><c t="s"><v>2</v></c><c><v>9100</v></c></row></sheetData></worksheet>')
"#;
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
    (
        std::fs::read(dir.join("crm.db")).unwrap(),
        std::fs::read(dir.join("plan.xlsx")).unwrap(),
    )
}

/// A request scripted for the [`ScriptedWorker`]: an earlier user message
/// attaches `files`, the last one names the call.
fn scripted(tool: &str, arguments: Value, files: &[&str]) -> Value {
    let mut parts = vec![json!({"type": "text", "text": "Here are my files."})];
    parts.extend(
        files
            .iter()
            .map(|id| json!({"type": "file", "file": {"file_id": id}})),
    );
    json!({
        "model": SCRIPTED_MODEL,
        "messages": [
            {"role": "user", "content": parts},
            {"role": "user", "content": json!({"call": tool, "arguments": arguments}).to_string()},
        ],
        "tools": [{"type": tool}],
    })
}

/// The files API: uploads counted against the plan's storage (16 MiB for
/// basic) and refused past it with 403 `storage_quota_exceeded`, a file
/// over 16 MiB refused with 413, a user's key reaching only its own
/// files, the content coming back byte for byte as a download, deletion,
/// and a deleted tenant's files archived and gone.
#[tokio::test]
async fn files_are_kept_per_tenant_and_user_within_the_plans_storage() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path()).await.unwrap();
    let hr = up
        .tenant_with_key("hr", &["--plan", "basic", "--max-keys", "10"])
        .unwrap();
    let api = &up.api;

    let nine_mib = vec![b'x'; 9 << 20];
    let first = uploaded(api, &hr, "big.txt", &nine_mib).await;
    let full = api
        .send(upload(api, &hr, "more.txt", &nine_mib))
        .await
        .unwrap();
    assert_eq!(full.status, 403, "{:?}", full.body);
    assert_eq!(full.code(), "storage_quota_exceeded");
    let message = full.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("of 16777216 bytes are used"), "{message}");
    let huge = api
        .send(upload(api, &hr, "huge.bin", &vec![0u8; (16 << 20) + 1]))
        .await
        .unwrap();
    assert_eq!(huge.status, 413, "{:?}", huge.body);
    let no_file = api
        .send(
            api.post("/v1/files", &hr)
                .json(&json!({"purpose": "user_data"})),
        )
        .await
        .unwrap();
    assert_eq!(no_file.status, 400, "{:?}", no_file.body);
    assert_eq!(no_file.body["error"]["param"], "file");

    let list = api.send(api.get("/v1/files", &hr)).await.unwrap();
    assert_eq!(list.status, 200);
    let data = list.body["data"].as_array().unwrap();
    assert_eq!(
        data.len(),
        1,
        "nothing but the first upload was kept: {data:?}"
    );
    assert_eq!(data[0]["id"], first.as_str());
    assert_eq!(list.body["storage"]["used_bytes"], 9 << 20);

    // Users: alice's file is hers; the tenant-wide key sees all.
    let alice = up.user_key("hr", "alice").unwrap();
    let bob = up.user_key("hr", "bob").unwrap();
    let notes = "name,phone\nAda,555-0100\n";
    let hers = uploaded(api, &alice, "notes.csv", notes.as_bytes()).await;
    let content = api
        .http
        .get(format!("{}/v1/files/{hers}/content", api.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(content.status(), 200);
    assert_eq!(content.headers()["content-type"], "text/csv");
    assert_eq!(
        content.headers()["content-disposition"],
        "attachment; filename=\"notes.csv\""
    );
    assert_eq!(content.bytes().await.unwrap(), notes.as_bytes());
    let not_bobs = api
        .send(api.get(&format!("/v1/files/{hers}"), &bob))
        .await
        .unwrap();
    assert_eq!(not_bobs.status, 404, "{:?}", not_bobs.body);
    assert_eq!(not_bobs.code(), "file_not_found");
    let bobs_list = api.send(api.get("/v1/files", &bob)).await.unwrap();
    assert_eq!(bobs_list.body["data"].as_array().unwrap().len(), 0);
    let all = api.send(api.get("/v1/files", &hr)).await.unwrap();
    assert_eq!(all.body["data"].as_array().unwrap().len(), 2);
    let bob_deletes = api
        .send(api.delete(&format!("/v1/files/{hers}"), &bob))
        .await
        .unwrap();
    assert_eq!(bob_deletes.status, 404);

    let deleted = api
        .send(api.delete(&format!("/v1/files/{first}"), &hr))
        .await
        .unwrap();
    assert_eq!(deleted.status, 200, "{:?}", deleted.body);
    assert_eq!(deleted.body["deleted"], true);
    let gone = api
        .send(api.get(&format!("/v1/files/{first}"), &hr))
        .await
        .unwrap();
    assert_eq!(gone.status, 404);
    // Room again once the big file is gone.
    uploaded(api, &hr, "more.txt", &nine_mib).await;

    // A deleted tenant's files go to its archive, then away.
    let out = up.admin(&["tenant", "delete", "hr"]).unwrap();
    let archive = out
        .split_whitespace()
        .map(|w| w.trim_end_matches(')'))
        .find(|w| w.ends_with(".jsonl"))
        .unwrap_or_else(|| panic!("no archive path in: {out}"));
    let archived = std::fs::read_to_string(archive).unwrap();
    let files: Vec<Value> = archived
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "file")
        .collect();
    assert_eq!(files.len(), 2, "both files archived");
    assert!(
        files.iter().any(|f| f["record"]["filename"] == "notes.csv"
            && f["record"]["content_base64"] == "bmFtZSxwaG9uZQpBZGEsNTU1LTAxMDAK"),
        "{files:?}"
    );
}

/// The tool loop with each tool, deterministic: `code_run` reads an
/// attached CSV and writes a report the user downloads; `file_parse` reads
/// a PDF, an XLSX and a CSV; `sql_query` reads an uploaded SQLite file and
/// cannot change it; each step is in the audit trail; a tenant without
/// the tools is refused.
#[tokio::test]
async fn server_side_tools_read_the_tenants_files_and_give_files_back() {
    let dir = tempfile::tempdir().unwrap();
    let up = Up::start(dir.path()).await.unwrap();
    let _worker = ScriptedWorker::start(&up.control_plane, &up.admin_client(), "scripted-1")
        .await
        .unwrap();
    let sales = up
        .tenant_with_key(
            "sales",
            &["--plan", "enterprise", "--model", SCRIPTED_MODEL],
        )
        .unwrap();
    let hr = up
        .tenant_with_key("hr", &["--plan", "basic", "--model", SCRIPTED_MODEL])
        .unwrap();
    let api = &up.api;
    // The scripted worker registers within a lease.
    eventually(
        "the scripted model is served",
        Duration::from_secs(30),
        || async {
            let hi = json!({"messages": [{"role": "user", "content": "hi"}]});
            let a = api.chat(&sales, hi).await.ok()?;
            (a.status == 200).then_some(())
        },
    )
    .await
    .unwrap();

    let work = tempfile::tempdir().unwrap();
    let (db, xlsx) = make_db_and_xlsx(work.path());
    let csv = "name,city\nAcme,Paris\nGlobex,Berlin\nInitech,Austin\n";
    let csv_id = uploaded(api, &sales, "customers.csv", csv.as_bytes()).await;
    let db_id = uploaded(api, &sales, "crm.db", &db).await;
    let xlsx_id = uploaded(api, &sales, "plan.xlsx", &xlsx).await;
    let pdf_id = uploaded(api, &sales, "q3.pdf", &pdf("Quarterly revenue 4242 EUR")).await;

    // code_run, in a session: the attached CSV goes in, the report comes
    // out, in the answer and among the tenant's files.
    let code = "import csv\nrows = list(csv.reader(open('customers.csv')))[1:]\nwith open('report.csv', 'w') as f:\n    f.write('customer,city\\n')\n    for name, city in rows[:3]:\n        f.write(name.upper() + ',' + city + '\\n')\nprint(len(rows), 'customers')\n";
    let session = api
        .send(api.post("/v1/sessions", &sales).json(&json!({})))
        .await
        .unwrap();
    let session = session.body["id"].as_str().unwrap().to_owned();
    let a = api
        .send(
            api.post("/v1/chat/completions", &sales)
                .header("x-session-id", &session)
                .json(&scripted("code_run", json!({"code": code}), &[&csv_id])),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 200, "{:?}", a.body);
    let step = &a.body["tool_steps"][0];
    assert_eq!(step["status"], "exit 0", "{step}");
    assert_eq!(step["stdout"], "3 customers\n");
    let file = &step["files"][0];
    assert_eq!(file["name"], "report.csv", "{step}");
    use base64::Engine;
    let report = base64::engine::general_purpose::STANDARD
        .decode(file["content_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(
        String::from_utf8(report).unwrap(),
        "customer,city\nACME,Paris\nGLOBEX,Berlin\nINITECH,Austin\n"
    );
    assert!(a.text.contains("3 customers"), "{}", a.text);
    let kept = file["file_id"].as_str().unwrap();
    let download = api
        .http
        .get(format!("{}/v1/files/{kept}/content", api.base))
        .bearer_auth(&sales)
        .send()
        .await
        .unwrap();
    assert_eq!(
        download.headers()["content-disposition"],
        "attachment; filename=\"report.csv\""
    );
    assert!(download.text().await.unwrap().contains("GLOBEX,Berlin"));
    // The session keeps the step (without the file's content) for its
    // readers, and a follow-up in it goes on.
    let turns = api
        .send(api.get(&format!("/v1/sessions/{session}/messages"), &sales))
        .await
        .unwrap();
    let roles: Vec<&str> = turns.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["role"].as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        ["user", "user", "tool", "assistant"],
        "{:?}",
        turns.body
    );
    let kept_step: Value =
        serde_json::from_str(turns.body["data"][2]["content"].as_str().unwrap()).unwrap();
    assert_eq!(kept_step["tool"], "code_run");
    assert_eq!(kept_step["files"][0]["file_id"], kept);
    assert!(
        kept_step["files"][0].get("content_base64").is_none(),
        "{kept_step}"
    );
    let follow_up = api
        .send(
            api.post("/v1/chat/completions", &sales)
                .header("x-session-id", &session)
                .json(&json!({"messages": [{"role": "user", "content": "thanks"}]})),
        )
        .await
        .unwrap();
    assert_eq!(follow_up.status, 200, "{:?}", follow_up.body);
    assert_eq!(follow_up.text, "Nothing to do.");

    // file_parse: PDF, XLSX and CSV, by id or by name.
    for (file, expect) in [
        (pdf_id.as_str(), "Quarterly revenue 4242 EUR"),
        (xlsx_id.as_str(), "Nordics\t9100"),
        ("customers.csv", "Globex\tBerlin"),
    ] {
        let a = api
            .chat(&sales, scripted("file_parse", json!({"file": file}), &[]))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "{:?}", a.body);
        let step = &a.body["tool_steps"][0];
        assert_eq!(step["status"], "exit 0", "{file}: {step}");
        assert!(
            step["stdout"].as_str().unwrap().contains(expect),
            "{file}: {step}"
        );
    }

    // sql_query: reads, and cannot write.
    let query = |q: &str| scripted("sql_query", json!({"database": db_id, "query": q}), &[]);
    let a = api
        .chat(
            &sales,
            query("SELECT name, revenue FROM customers WHERE revenue > 100 ORDER BY id"),
        )
        .await
        .unwrap();
    let step = &a.body["tool_steps"][0];
    assert_eq!(step["status"], "exit 0", "{step}");
    let rows: Value = serde_json::from_str(step["stdout"].as_str().unwrap()).unwrap();
    assert_eq!(rows["rows"], json!([["Acme", 120], ["Globex", 340]]));
    for write in [
        "DELETE FROM customers",
        "ATTACH DATABASE '/work/x.db' AS x",
        "PRAGMA journal_mode = DELETE",
    ] {
        let a = api.chat(&sales, query(write)).await.unwrap();
        let step = &a.body["tool_steps"][0];
        assert_eq!(step["status"], "exit 1", "{write}: {step}");
        assert!(
            step["stderr"].as_str().unwrap().contains("not authorized"),
            "{write}: {step}"
        );
    }
    let a = api
        .chat(&sales, query("SELECT count(*) AS n FROM customers"))
        .await
        .unwrap();
    assert!(
        a.body["tool_steps"][0]["stdout"]
            .as_str()
            .unwrap()
            .contains("[[3]]")
    );
    let content = api
        .http
        .get(format!("{}/v1/files/{db_id}/content", api.base))
        .bearer_auth(&sales)
        .send()
        .await
        .unwrap();
    assert_eq!(
        content.bytes().await.unwrap(),
        db,
        "the stored database is unchanged"
    );

    // Every run is in the audit trail.
    let audit = up.admin(&["audit", "list", "--tenant", "sales"]).unwrap();
    for tool in ["code_run", "file_parse", "sql_query"] {
        assert!(
            audit.contains(tool),
            "{tool} missing from the audit trail:\n{audit}"
        );
    }

    // Basic has no tools.
    let refused = api
        .chat(&hr, scripted("file_parse", json!({"file": "x.csv"}), &[]))
        .await
        .unwrap();
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    assert_eq!(refused.code(), "tool_not_allowed");
    // Another tenant's file id is no file of this one.
    let hr_up = api
        .send(upload(api, &hr, "mine.csv", b"a,b\n"))
        .await
        .unwrap();
    assert_eq!(hr_up.status, 200);
    let theirs = api
        .chat(
            &hr,
            json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": csv_id}}]}]}),
        )
        .await
        .unwrap();
    assert_eq!(theirs.status, 404, "{:?}", theirs.body);
    assert_eq!(theirs.code(), "file_not_found");
}
