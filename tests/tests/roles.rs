//! Who may call what (DESIGN.md section 12): every RPC of every service of
//! `control.proto`, called with each caller's credential. Each caller is
//! accepted by its own service alone, refused (Unauthenticated or
//! PermissionDenied) by every other, a revoked credential is refused by
//! every node within 2 s, and a rotated admin token at once.

use std::time::{Duration, Instant};

use bulkhead_client::ControlPlaneClient;
use bulkhead_proto::auth::{CLUSTER_SECRET_METADATA, CREDENTIAL_METADATA};
use bulkhead_proto::control as pb;
use bulkhead_tests::cluster::ControlPlanes;
use tonic::Code;
use tonic::transport::Channel;

const PROTO: &str = include_str!("../../proto/proto/control.proto");

/// Every (service, rpc) of the control plane, read from the proto itself,
/// so a new RPC is in the matrix without anyone adding it.
fn rpcs() -> Vec<(String, String)> {
    let mut all = Vec::new();
    let mut service: Option<String> = None;
    for line in PROTO.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.split_whitespace().next().map(str::to_owned);
        } else if line == "}" {
            service = None;
        } else if let (Some(s), Some(rest)) = (&service, line.strip_prefix("rpc ")) {
            let name = rest.split('(').next().unwrap_or_default().trim().to_owned();
            all.push((s.clone(), name));
        }
    }
    all
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Node,
    Gateway,
    Worker,
    Admin,
    RevokedGateway,
    Nobody,
}

/// The service each caller may call (`Cluster`, the status, is open).
fn own_service(who: Who) -> Option<&'static str> {
    match who {
        Who::Node => Some("Raft"),
        Who::Gateway => Some("Member"),
        Who::Worker => Some("Fleet"),
        Who::Admin => Some("Admin"),
        Who::RevokedGateway | Who::Nobody => None,
    }
}

struct Secrets {
    node: String,
    gateway: String,
    worker: String,
    admin: String,
    revoked: String,
}

/// Calls `/bulkhead.control.v1.{service}/{rpc}` with an empty message and
/// `who`'s credential; answers the status (OK included) of the call.
async fn call(channel: &Channel, service: &str, rpc: &str, who: Who, s: &Secrets) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    if let Err(e) = grpc.ready().await {
        return tonic::Status::unavailable(e.to_string());
    }
    let mut req = tonic::Request::new(());
    let m = req.metadata_mut();
    let set = |m: &mut tonic::metadata::MetadataMap, key: &'static str, value: &str| {
        m.insert(key, value.parse().expect("ASCII metadata"));
    };
    match who {
        Who::Node => set(m, CLUSTER_SECRET_METADATA, &s.node),
        Who::Gateway => set(m, CREDENTIAL_METADATA, &s.gateway),
        Who::Worker => set(m, CREDENTIAL_METADATA, &s.worker),
        Who::RevokedGateway => set(m, CREDENTIAL_METADATA, &s.revoked),
        Who::Admin => set(m, "authorization", &format!("Bearer {}", s.admin)),
        Who::Nobody => {}
    }
    req.set_timeout(Duration::from_secs(5));
    let path = format!("/bulkhead.control.v1.{service}/{rpc}")
        .parse()
        .expect("a gRPC path");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let answer = if rpc == "Watch" {
        // A stream: accepted once its headers arrive.
        grpc.server_streaming(req, path, codec).await.map(|_| ())
    } else {
        grpc.unary(req, path, codec).await.map(|_| ())
    };
    answer.err().unwrap_or_else(|| tonic::Status::ok(""))
}

/// Whether the service's guard turned the caller away: Unauthenticated (no
/// or a wrong secret) or PermissionDenied (another caller's), with the
/// guard's error code.
fn refused(status: &tonic::Status) -> bool {
    let code = status
        .metadata()
        .get(bulkhead_proto::ERROR_CODE_METADATA)
        .and_then(|v| v.to_str().ok());
    matches!(
        (status.code(), code),
        (Code::Unauthenticated, Some("invalid_credential"))
            | (
                Code::Unauthenticated,
                Some(bulkhead_proto::auth::INVALID_ADMIN_TOKEN)
            )
            | (Code::PermissionDenied, Some("wrong_caller"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_may_call_its_own_service_alone() -> anyhow::Result<()> {
    let cp = ControlPlanes::start(3, &[])?;
    let admin = cp.client();
    let gateway = cp.credential("gateway").await?;
    let worker = cp.credential("worker").await?;
    // A gateway credential, revoked: refused everywhere from then on.
    let revoked_client = cp.member_client().await?;
    let revoked = revoked_client
        .credential()
        .expect("a credential")
        .expose()
        .to_owned();
    let listed = admin
        .admin()
        .send(
            pb::ListCredentialsRequest {
                include_revoked: false,
            },
            |mut c, r| async move { c.list_credentials(r).await },
        )
        .await?;
    let victim = listed
        .credentials
        .iter()
        .filter(|c| c.role == "gateway")
        .map(|c| c.name.clone())
        .max()
        .expect("the gateway credentials issued");
    admin
        .admin()
        .send(
            pb::RevokeCredentialRequest { credential: victim },
            |mut c, r| async move { c.revoke_credential(r).await },
        )
        .await?;
    let secrets = Secrets {
        node: cp.secret.expose().to_owned(),
        gateway,
        worker,
        admin: cp.admin_token.clone(),
        revoked,
    };
    let leader = cp.leader(Duration::from_secs(10)).await?;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cp.nodes[leader].addr))?
            .connect()
            .await?;

    let rpcs = rpcs();
    let services: std::collections::BTreeSet<&str> = rpcs.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(
        services.into_iter().collect::<Vec<_>>(),
        ["Admin", "Cluster", "Fleet", "Member", "Raft"],
        "the services of control.proto"
    );
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (service, rpc) in &rpcs {
        for who in [
            Who::Node,
            Who::Gateway,
            Who::Worker,
            Who::Admin,
            Who::RevokedGateway,
            Who::Nobody,
        ] {
            // Rotating the admin token is checked last, on its own.
            if who == Who::Admin && rpc == "RotateAdminToken" {
                continue;
            }
            let status = call(&channel, service, rpc, who, &secrets).await;
            let allowed = service == "Cluster" || own_service(who) == Some(service.as_str());
            checked += 1;
            if allowed == refused(&status) {
                wrong.push(format!(
                    "{who:?} calling {service}/{rpc}: {} {:?} {}",
                    if allowed { "refused" } else { "let through" },
                    status.code(),
                    status.message()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} calls went the wrong way:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(checked > 50 * 6 - 2, "{checked} calls checked");

    // A rotated admin token: the old one is refused at once.
    let status = call(&channel, "Admin", "RotateAdminToken", Who::Admin, &secrets).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    let status = call(&channel, "Admin", "ListPlans", Who::Admin, &secrets).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    Ok(())
}

/// A revoked gateway credential is refused by every node within 2 s, and the
/// watch stream it opened ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_credential_is_refused_by_every_node_within_two_seconds() -> anyhow::Result<()> {
    let cp = ControlPlanes::start(3, &[])?;
    let admin = cp.client();
    // The CLI issues and lists credentials, never showing a secret twice.
    let out = cp.cli(&[
        "credential",
        "create",
        "--role",
        "gateway",
        "--name",
        "gw-1",
    ])?;
    let secret = out
        .lines()
        .last()
        .map(str::trim)
        .filter(|l| l.starts_with("bkg_"))
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no credential in: {out}"))?;
    let list = cp.cli(&["credential", "list"])?;
    assert!(list.contains("gw-1") && list.contains("gateway"), "{list}");
    assert!(!list.contains(&secret), "{list}");
    // A second credential of the same name is refused while the first is in force.
    let dup = admin
        .admin()
        .send(
            pb::CreateCredentialRequest {
                role: "gateway".into(),
                name: "gw-1".into(),
            },
            |mut c, r| async move { c.create_credential(r).await },
        )
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists, "{dup}");
    // An unknown role is a clear error.
    let bad = cp.cli(&["credential", "create", "--role", "root", "--name", "x"]);
    let bad = bad.unwrap_err().to_string();
    assert!(bad.contains("unknown role `root`"), "{bad}");

    let credential = bulkhead_proto::Credential::new(&secret).map_err(anyhow::Error::msg)?;
    let node_clients: Vec<ControlPlaneClient> = cp
        .nodes
        .iter()
        .map(|n| {
            ControlPlaneClient::new(vec![n.addr.clone()], None).with_credential(credential.clone())
        })
        .collect();
    // In force: every node lets the gateway watch.
    for client in &node_clients {
        client
            .member()
            .send(
                pb::WatchRequest { from_version: 0 },
                |mut c, r| async move { c.watch(r).await },
            )
            .await?;
    }
    let mut stream = node_clients[0]
        .member()
        .send(
            pb::WatchRequest { from_version: 0 },
            |mut c, r| async move { c.watch(r).await },
        )
        .await?;

    cp.cli(&["credential", "revoke", "gw-1"])?;
    let revoked = Instant::now();
    for (i, client) in node_clients.iter().enumerate() {
        loop {
            let status = client
                .member()
                .send_for(
                    Duration::from_millis(500),
                    pb::WatchRequest { from_version: 0 },
                    |mut c, r| async move { c.watch(r).await },
                )
                .await
                .err();
            if status
                .as_ref()
                .is_some_and(|s| s.code() == Code::Unauthenticated)
            {
                break;
            }
            assert!(
                revoked.elapsed() < Duration::from_secs(2),
                "node {i} still accepts the revoked credential after {:?}",
                revoked.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // The stream opened before the revocation ends with Unauthenticated.
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status.code()),
            }
        }
    })
    .await?;
    assert_eq!(ended, Some(Code::Unauthenticated));
    let all = cp.cli(&["credential", "list", "--all"])?;
    let line = all.lines().find(|l| l.contains("gw-1")).unwrap_or_default();
    assert!(
        !line.trim_end().ends_with('-'),
        "revoked at is shown: {all}"
    );
    Ok(())
}
