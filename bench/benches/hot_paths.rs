//! Micro-benches of the per-call hot paths.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use grpc_proxy::config::Config;
use grpc_proxy::routing::routes::RouteDirector;
use grpc_proxy::{Call, ClusterId, Code, CoreId, Director, DirectorRecipe, RouteTable, Status};
use grpc_proxy_tests::tokens::{self, SigningKey};
use http::{HeaderMap, HeaderValue};

fn table(routes: usize) -> RouteDirector {
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
    RouteTable::new(&config.routes, &ids)
        .expect("compiles")
        .build(CoreId {
            worker: 0,
            cpu: None,
        })
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

/// A tonic-like request head.
const HEAD: [(&[u8], &[u8]); 8] = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/grpc.testing.BenchmarkService/UnaryCall"),
    (b":authority", b"127.0.0.1:50051"),
    (b"content-type", b"application/grpc"),
    (b"user-agent", b"tonic/0.14.2"),
    (b"te", b"trailers"),
    (b"grpc-timeout", b"999000u"),
];

/// The head as h2 sends it on a new connection: every field a Huffman-coded
/// literal with incremental indexing.
fn first_block() -> Vec<u8> {
    use grpc_proxy::hpack::{huffman, primitive};
    let mut block = Vec::new();
    for (name, value) in HEAD {
        block.push(0x40);
        for text in [name, value] {
            primitive::encode_integer(7, 0x80, huffman::encoded_len(text), &mut block);
            huffman::encode(text, &mut block);
        }
    }
    block
}

fn hpack(c: &mut Criterion) {
    use grpc_proxy::hpack::{encode_field, huffman, Decoder};
    // A bearer token: h2 and most clients never index `authorization`, so
    // every call's head carries it Huffman-coded.
    let token = format!(
        "Bearer eyJhbGciOiJFUzI1NiIsImtpZCI6ImJlbmNoIiwidHlwIjoiSldUIn0.{}",
        "eyJzdWIiOiJ1c2VyLTEiLCJzY29wZSI6InJlYWQgZWNobyJ9x".repeat(4)
    );
    let mut coded = Vec::new();
    huffman::encode(token.as_bytes(), &mut coded);
    let mut out = Vec::with_capacity(token.len());
    c.bench_function(
        &format!("hpack/huffman decode a {}-byte bearer token", token.len()),
        |b| {
            b.iter(|| {
                out.clear();
                huffman::decode(black_box(&coded), &mut out).expect("valid");
                out.len()
            })
        },
    );
    let first = first_block();
    c.bench_function("hpack/decode first request head (Huffman, inserts)", |b| {
        b.iter(|| {
            let mut decoder = Decoder::new(4096);
            let mut n = 0;
            let _ = decoder.decode(black_box(&first), 16 << 10, |f| n += f.value.len());
            n
        })
    });
    // Later heads on the connection: every field indexed from the table.
    let mut decoder = Decoder::new(4096);
    let _ = decoder.decode(&first, 16 << 10, |_| {});
    let indexed: Vec<u8> = (0..HEAD.len() as u8).map(|i| 0x80 | (62 + i)).collect();
    c.bench_function("hpack/decode later request head (indexed)", |b| {
        b.iter(|| {
            let mut n = 0;
            let _ = decoder.decode(black_box(&indexed), 16 << 10, |f| n += f.value.len());
            n
        })
    });
    let mut out = Vec::with_capacity(512);
    c.bench_function("hpack/encode request head (static + raw)", |b| {
        b.iter(|| {
            out.clear();
            for (name, value) in HEAD {
                encode_field(black_box(name), black_box(value), false, &mut out);
            }
            out.len()
        })
    });
}

/// A director of one route to `a`, with `route` keys added, and the
/// directory its JWKS lives in.
fn jwt_director(route: &str, keys: &[&SigningKey]) -> (RouteDirector, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let jwks = tokens::jwks_file(&dir, keys);
    let text = format!(
        "[[clusters]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\ncluster = \"a\"\n{}\n",
        route.replace("JWKS", &jwks.display().to_string())
    );
    let config = Config::parse(&text, "bench").expect("valid config");
    let mut builder = grpc_proxy::ProxyBuilder::new("127.0.0.1:0".parse().expect("addr"));
    let id = builder.cluster("a", ["127.0.0.1:1".parse().expect("addr")]);
    let ids = HashMap::from([("a".to_owned(), id)]);
    let table = RouteTable::new(&config.routes, &ids).expect("compiles");
    let core = CoreId {
        worker: 0,
        cpu: None,
    };
    (table.build(core), dir)
}

/// The director's cost with a JWT route: a token it has verified before
/// (cache hit), a token it has not (a signature check), next to the same
/// route without `jwt`; and with edits that use a claim.
fn jwt(c: &mut Criterion) {
    const JWT: &str = r#"jwt = { issuer = "https://auth.test", audiences = ["api"], jwks = "JWKS", claims = [{ name = "scope", contains = "echo" }] }"#;
    let (es, rs, ed) = (
        SigningKey::ec("ec"),
        SigningKey::rsa("rsa"),
        SigningKey::ed("ed"),
    );
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    let claims = |sub: usize| {
        let mut c = tokens::claims(&format!("user-{sub}"));
        c["scope"] = serde_json::json!("read echo");
        c
    };
    let head = |token: &str| {
        let mut h = request_headers();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).expect("ASCII"),
        );
        h
    };
    let (plain, _d0) = jwt_director("", &[]);
    let one = head(&es.sign(&claims(0)));
    c.bench_function("director/jwt: plain route", |b| {
        b.iter(|| black_box(plain.route(&Call::new("/pkg.S/M", Some("api"), &one, peer))))
    });
    let (with_jwt, _d1) = jwt_director(JWT, &[&es, &rs, &ed]);
    c.bench_function("director/jwt: ES256 token, cache hit", |b| {
        b.iter(|| black_box(with_jwt.route(&Call::new("/pkg.S/M", Some("api"), &one, peer))))
    });
    let edits = format!(
        "{JWT}\nrequest_headers = {{ remove = [\"authorization\"], set = {{ \"x-user-id\" = \"${{jwt.sub}}\" }} }}"
    );
    let (with_edits, _d2) = jwt_director(&edits, &[&es]);
    c.bench_function("director/jwt: cache hit, x-user-id from the claims", |b| {
        b.iter(|| black_box(with_edits.route(&Call::new("/pkg.S/M", Some("api"), &one, peer))))
    });
    // Misses: more distinct tokens than a worker keeps, taken in turn.
    for (name, key) in [("ES256", &es), ("RS256", &rs), ("EdDSA", &ed)] {
        let heads: Vec<HeaderMap> = (0..5000).map(|i| head(&key.sign(&claims(i)))).collect();
        let mut i = 0;
        c.bench_function(&format!("director/jwt: {name} token, cache miss"), |b| {
            b.iter(|| {
                i = (i + 1) % heads.len();
                black_box(with_jwt.route(&Call::new("/pkg.S/M", Some("api"), &heads[i], peer)))
            })
        });
    }
}

criterion_group!(benches, director, headers, timeout, status, hpack, jwt);
criterion_main!(benches);
