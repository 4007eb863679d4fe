//! Any method with its request written as JSON: the method's schema from
//! `.proto` files (compiled in-process by protox), a descriptor set
//! (`protoc --descriptor_set_out`), or the server's reflection service
//! (`grpc.reflection.v1`, as ghz and grpcurl use it). The JSON becomes
//! the request message once, by the protobuf JSON mapping (prost-reflect);
//! responses are never decoded.

use std::path::PathBuf;

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};

use crate::run::Rpc;

/// Where a method's schema comes from.
#[derive(Clone, Debug)]
pub enum Schema {
    /// `.proto` files, and the folders their imports are found in.
    Proto {
        /// The files.
        files: Vec<PathBuf>,
        /// Import paths (the files' own folders are searched too).
        imports: Vec<PathBuf>,
    },
    /// A serialized `FileDescriptorSet`.
    Protoset(PathBuf),
    /// The target's reflection service.
    Reflection,
}

/// A method ready to load: its path, kind, and the request message.
#[derive(Clone, Debug)]
pub struct Call {
    /// `/package.Service/Method`.
    pub path: String,
    /// Its kind, from the schema.
    pub rpc: Rpc,
    /// The request, encoded.
    pub request: Bytes,
}

/// Reads the schema of `source` (reflection asks `target`, over `tls` if
/// given).
pub fn pool(
    source: &Schema,
    target: std::net::SocketAddr,
    authority: Option<&str>,
    tls: Option<&grpc_proxy::ClientTls>,
    service: &str,
) -> Result<DescriptorPool, String> {
    match source {
        Schema::Proto { files, imports } => {
            let mut includes: Vec<PathBuf> = imports.clone();
            for f in files {
                if let Some(dir) = f.parent() {
                    let dir = if dir.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        dir.to_path_buf()
                    };
                    if !includes.contains(&dir) {
                        includes.push(dir);
                    }
                }
            }
            let set = protox::compile(files, &includes).map_err(|e| format!("--proto: {e}"))?;
            DescriptorPool::from_file_descriptor_set(set).map_err(|e| format!("--proto: {e}"))
        }
        Schema::Protoset(path) => {
            let bytes =
                std::fs::read(path).map_err(|e| format!("--protoset {}: {e}", path.display()))?;
            DescriptorPool::decode(bytes.as_slice())
                .map_err(|e| format!("--protoset {}: not a descriptor set ({e})", path.display()))
        }
        Schema::Reflection => crate::reflection::pool(target, authority, tls, service),
    }
}

/// The method at `path` in `pool`, with `json` as its request.
pub fn call(pool: &DescriptorPool, path: &str, json: &str) -> Result<Call, String> {
    let method = find(pool, path)?;
    let mut de = serde_json::Deserializer::from_str(json);
    let request = DynamicMessage::deserialize(method.input(), &mut de)
        .map_err(|e| format!("--data: not a {} ({e})", method.input().full_name()))?;
    de.end()
        .map_err(|e| format!("--data: trailing text after the message ({e})"))?;
    let rpc = match (method.is_client_streaming(), method.is_server_streaming()) {
        (false, false) => Rpc::Unary,
        (false, true) => Rpc::ServerStream,
        (true, false) => Rpc::ClientStream,
        (true, true) => Rpc::Bidi,
    };
    Ok(Call {
        path: path.to_string(),
        rpc,
        request: Bytes::from(request.encode_to_vec()),
    })
}

fn find(pool: &DescriptorPool, path: &str) -> Result<MethodDescriptor, String> {
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .ok_or_else(|| format!("method {path:?} is not /package.Service/Method"))?;
    let svc = pool
        .get_service_by_name(service)
        .ok_or_else(|| format!("the schema has no service {service:?}"))?;
    let found = svc.methods().find(|m| m.name() == method);
    found.ok_or_else(|| format!("service {service:?} has no method {method:?}"))
}

/// The service part of `/package.Service/Method`.
pub fn service_of(path: &str) -> Option<&str> {
    path.strip_prefix('/')?.split_once('/').map(|(s, _)| s)
}
