//! Micro-benches of the per-call hot paths.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use grpc_proxy::config::Config;
use grpc_proxy::{Call, ClusterId, Code, Director, RouteTable, Status};
use http::{HeaderMap, HeaderValue};

fn table(routes: usize) -> RouteTable {
    let mut text = String::from("[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n");
    for i in 0..routes - 1 {
        text.push_str(&format!(
            "[[routes]]\nmethod = \"/pkg.Service{i}/Method\"\ncluster = \"a\"\n"
        ));
    }
    // The call matches the last route, behind routes - 1 exact-method
    // routes: a linear scan's worst case, which the method index skips.
    text.push_str(
        "[[routes]]\nservice = \"pkg.Target\"\nheaders = [{ name = \"authorization\", values = [\"Bearer a\", \"Bearer b\"] }]\ncluster = \"a\"\n",
    );
    let config = Config::parse(&text, "bench").expect("valid config");
    let ids: HashMap<String, ClusterId> = HashMap::new();
    let mut ids = ids;
    let mut builder = grpc_proxy::ProxyBuilder::new("127.0.0.1:0".parse().expect("addr"));
    ids.insert(
        "a".into(),
        builder.cluster("a", ["127.0.0.1:1".parse().expect("addr")]),
    );
    RouteTable::new(&config.routes, &ids).expect("compiles")
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert("te", HeaderValue::from_static("trailers"));
    h.insert("grpc-timeout", HeaderValue::from_static("250m"));
    h.insert("user-agent", HeaderValue::from_static("grpc-go/1.60.0"));
    h.insert("authorization", HeaderValue::from_static("Bearer b"));
    h.insert(
        "x-request-id",
        HeaderValue::from_static("0f8fad5b-d9cb-469f-a165-70867728950e"),
    );
    h
}

fn director(c: &mut Criterion) {
    let headers = request_headers();
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    for n in [10, 1000] {
        let t = table(n);
        c.bench_function(&format!("director: match the last of {n} routes"), |b| {
            b.iter(|| {
                let call = Call::new(black_box("/pkg.Target/Method"), Some("api"), &headers, peer);
                black_box(t.route(&call))
            })
        });
    }
}

fn headers(c: &mut Criterion) {
    let template = request_headers();
    c.bench_function("headers: strip hop-by-hop (none present)", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |h| grpc_proxy::grpc::headers::strip_hop_by_hop(black_box(h)),
            criterion::BatchSize::SmallInput,
        )
    });
}

fn timeout(c: &mut Criterion) {
    c.bench_function("grpc-timeout: parse", |b| {
        b.iter(|| grpc_proxy::grpc::timeout::parse(black_box(b"99999999u")))
    });
}

fn status(c: &mut Criterion) {
    let unavailable = Status::new(
        Code::Unavailable,
        "upstream 10.0.0.1:50051: connect failed: refused",
    );
    c.bench_function("status: build a trailers-only response", |b| {
        b.iter(|| black_box(&unavailable).to_trailers_only())
    });
}

criterion_group!(benches, director, headers, timeout, status);
criterion_main!(benches);
