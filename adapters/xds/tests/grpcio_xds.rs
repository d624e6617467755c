//! Cross-implementation: the same in-process control plane drives gRPC C-core's own xDS client
//! (Python `grpcio`, `tests/support/xds_client.py`) and pickwise. With ring hash on a header both
//! must send every key to the same backend; with locality weights 3:1 both must split 3:1.
//! Where Python or grpcio is missing the tests fail under CI (`CI=true`; `.ci/run` installs
//! both) and are skipped with a loud message elsewhere.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use pickwise_xds::control_plane::resources::{self, Locality, Policy};
use support::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/xds_client.py");

/// Runs C-core's xDS client; `None` if Python with grpcio is not installed and this is not CI
/// (under CI that panics: see `reference_unavailable`).
async fn c_core(bootstrap: String, args: Vec<String>) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        if let Err(why) = grpcio::python_ready() {
            return grpcio::reference_unavailable(&why);
        }
        let out = Command::new("python3")
            .arg(SCRIPT)
            .args(&args)
            .env("GRPC_XDS_BOOTSTRAP_CONFIG", bootstrap)
            .env_remove("GRPC_XDS_BOOTSTRAP")
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "C-core client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8(out.stdout).expect("utf-8"))
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_hash_on_a_header_sends_every_key_where_c_core_does() {
    let _s = serial().await;
    let (_b, addrs) = backends(4);
    // Endpoint weights 1, 2, 1, 3 in one locality of weight 2: the ring's weights are products (A42).
    let mut locality = Locality::new(2, 0, &addrs.iter().map(String::as_str).collect::<Vec<_>>());
    for (e, w) in locality.endpoints.iter_mut().zip([1, 2, 1, 3]) {
        e.1 = w;
    }
    let cp = control_plane(
        Policy::RingHash {
            min: 1024,
            max: 8 * 1024 * 1024,
        },
        &[locality],
    )
    .await;
    cp.set(resources::route_config_weighted(
        "routes",
        NAME,
        &[("backends", 1)],
        Some("x-user"),
    ));
    let keys: Vec<String> = (0..300).map(|i| format!("user-{i}")).collect();
    let dir = std::env::temp_dir().join(format!("pickwise-xds-keys-{}", std::process::id()));
    std::fs::write(&dir, keys.join("\n")).unwrap();
    let Some(out) = c_core(
        cp.bootstrap_json(),
        vec![
            format!("xds:///{NAME}"),
            "--keys".into(),
            dir.display().to_string(),
            "--header".into(),
            "x-user".into(),
        ],
    )
    .await
    else {
        return;
    };
    let _ = std::fs::remove_file(&dir);
    let theirs: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once(' ')).collect();
    assert_eq!(theirs.len(), keys.len(), "C-core answered {} keys", theirs.len());
    let ch = channel(&cp);
    // Compare steady states: while an owner is still connecting, pickwise walks the ring to the
    // next ready endpoint (Envoy's behaviour) where C-core queues the pick (gRFC A61).
    call(&ch, Some(("x-user", "warm-up"))).await.unwrap();
    let cluster = ch.cluster("backends").expect("cluster serving");
    assert_eq!(cluster.wait_ready(4, Duration::from_secs(5)).await, 4);
    let mut agree = 0;
    let mut per_backend: HashMap<String, u32> = HashMap::new();
    for k in &keys {
        let ours = call(&ch, Some(("x-user", k))).await.unwrap();
        *per_backend.entry(ours.clone()).or_default() += 1;
        if theirs.get(k.as_str()) == Some(&ours.as_str()) {
            agree += 1;
        }
    }
    eprintln!(
        "ring hash: pickwise and C-core agree on {agree}/{} keys; spread {per_backend:?}",
        keys.len()
    );
    assert_eq!(agree, keys.len(), "keys routed differently from C-core");
    assert_eq!(per_backend.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locality_weights_split_traffic_as_c_core_does() {
    let _s = serial().await;
    let (_b, a) = backends(2);
    let (a0, a1) = (a[0].clone(), a[1].clone());
    let cp = control_plane(
        Policy::RoundRobin,
        &[Locality::new(3, 0, &[&a0]), Locality::new(1, 0, &[&a1])],
    )
    .await;
    let n = 2000;
    let Some(out) = c_core(
        cp.bootstrap_json(),
        vec![format!("xds:///{NAME}"), "--count".into(), n.to_string()],
    )
    .await
    else {
        return;
    };
    let theirs: HashMap<String, u64> = serde_json::from_str(out.trim()).expect("JSON counts");
    let ch = channel(&cp);
    let (ours, errors) = spread(&ch, n).await;
    assert!(errors.is_empty(), "{errors:?}");
    let share = |m: &HashMap<String, u64>| m.get(&a0).copied().unwrap_or(0) as f64 / n as f64;
    eprintln!(
        "locality weights 3:1: C-core sends {:.3} to the weight-3 locality, pickwise {:.3}",
        share(&theirs),
        share(&ours)
    );
    // 3:1 = 0.75; binomial sd at n = 2000 is 0.0097, so ±0.04 is > 4 sd.
    for (who, s) in [("C-core", share(&theirs)), ("pickwise", share(&ours))] {
        assert!((0.71..=0.79).contains(&s), "{who} share {s}");
    }
}
