//! A client of gRPC server reflection (`grpc.reflection.v1`): the file
//! that defines a service, and the files it imports, asked of the target
//! on one stream, once, before the load (over TLS when the load is).

use std::net::SocketAddr;

use bytes::{Buf, Bytes};
use prost::Message;
use prost_reflect::DescriptorPool;
use prost_types::FileDescriptorProto;

/// `grpc.reflection.v1.ServerReflectionRequest`, the fields used here.
#[derive(Clone, PartialEq, Message)]
struct Request {
    #[prost(string, tag = "1")]
    host: String,
    #[prost(oneof = "Ask", tags = "3, 4")]
    ask: Option<Ask>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Ask {
    #[prost(string, tag = "3")]
    FileByFilename(String),
    #[prost(string, tag = "4")]
    FileContainingSymbol(String),
}

/// `grpc.reflection.v1.ServerReflectionResponse`, the fields used here.
#[derive(Clone, PartialEq, Message)]
struct Response {
    #[prost(oneof = "Answer", tags = "4, 7")]
    answer: Option<Answer>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Answer {
    #[prost(message, tag = "4")]
    Files(Files),
    #[prost(message, tag = "7")]
    Error(Error),
}

#[derive(Clone, PartialEq, Message)]
struct Files {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file_descriptor_proto: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct Error {
    #[prost(int32, tag = "1")]
    error_code: i32,
    #[prost(string, tag = "2")]
    error_message: String,
}

const PATH: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";

/// The schema of `service` (and all it imports), asked of `target`, over
/// `tls` if given.
pub fn pool(
    target: SocketAddr,
    authority: Option<&str>,
    tls: Option<&grpc_proxy::ClientTls>,
    service: &str,
) -> Result<DescriptorPool, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("reflection: {e}"))?;
    let authority = authority.map_or_else(|| target.to_string(), str::to_string);
    let files = rt.block_on(async {
        let asking = async {
            let tcp = tokio::net::TcpStream::connect(target)
                .await
                .map_err(|x| format!("reflection: connect: {x}"))?;
            match tls {
                None => ask(tcp, &authority, service, "http").await,
                Some(tls) => {
                    let connector = tls.for_worker();
                    let stream = tokio_rustls::TlsConnector::from(connector.config.clone())
                        .connect(connector.server_name.clone(), tcp)
                        .await
                        .map_err(|x| format!("reflection: TLS handshake: {x}"))?;
                    ask(stream, &authority, service, "https").await
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), asking)
            .await
            .map_err(|_| "reflection: no answer within 10 s".to_string())?
    })?;
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(files)
        .map_err(|e| format!("reflection: the server's files do not make a schema ({e})"))?;
    Ok(pool)
}

async fn ask<T>(
    io: T,
    authority: &str,
    service: &str,
    scheme: &str,
) -> Result<Vec<FileDescriptorProto>, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let e = |what: &str, err: &dyn std::fmt::Display| format!("reflection: {what}: {err}");
    let (client, conn) = h2::client::handshake(io)
        .await
        .map_err(|x| e("HTTP/2", &x))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.map_err(|x| e("HTTP/2", &x))?;
    let request = http::Request::post(format!("{scheme}://{authority}{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .map_err(|x| e("request", &x))?;
    let (response, mut send) = client
        .send_request(request, false)
        .map_err(|x| e("request", &x))?;
    let mut asked = vec![Ask::FileContainingSymbol(service.to_string())];
    let mut files: Vec<FileDescriptorProto> = Vec::new();
    send.send_data(frame(&asked[0]), false)
        .map_err(|x| e("request", &x))?;
    let response = response.await.map_err(|x| e("response", &x))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("reflection: HTTP {}", response.status()));
    }
    let mut body = response.into_body();
    let mut buf = bytes::BytesMut::new();
    let mut pending = 1;
    while pending > 0 {
        let Some(chunk) = body.data().await else {
            let trailers = body.trailers().await.ok().flatten();
            let status = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?");
            return Err(format!(
                "reflection: the server has no reflection service, or ended it (grpc-status {status})"
            ));
        };
        let chunk = chunk.map_err(|x| e("response", &x))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        while let Some(message) = next_message(&mut buf) {
            pending -= 1;
            let answer =
                Response::decode(message).map_err(|x| e("not a ServerReflectionResponse", &x))?;
            match answer.answer {
                Some(Answer::Files(f)) => {
                    for bytes in f.file_descriptor_proto {
                        let file = FileDescriptorProto::decode(bytes.as_slice())
                            .map_err(|x| e("not a FileDescriptorProto", &x))?;
                        if !files.iter().any(|k| k.name == file.name) {
                            files.push(file);
                        }
                    }
                }
                Some(Answer::Error(err)) => {
                    return Err(format!(
                        "reflection: {} (code {})",
                        err.error_message, err.error_code
                    ))
                }
                None => return Err("reflection: an empty answer".into()),
            }
            // Imports the server has not sent yet.
            let known: Vec<String> = files.iter().filter_map(|f| f.name.clone()).collect();
            for file in &files {
                for dep in &file.dependency {
                    let ask_for = Ask::FileByFilename(dep.clone());
                    if !known.contains(dep) && !asked.contains(&ask_for) {
                        send.send_data(frame(&ask_for), false)
                            .map_err(|x| e("request", &x))?;
                        asked.push(ask_for);
                        pending += 1;
                    }
                }
            }
        }
    }
    let _ = send.send_data(Bytes::new(), true);
    Ok(files)
}

/// One gRPC message of a reflection request.
fn frame(ask: &Ask) -> Bytes {
    let request = Request {
        host: String::new(),
        ask: Some(ask.clone()),
    };
    crate::grpc::frame(&request.encode_to_vec())
}

/// The next whole gRPC message in `buf`, if one has arrived.
fn next_message(buf: &mut bytes::BytesMut) -> Option<Bytes> {
    if buf.len() < 5 {
        return None;
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return None;
    }
    buf.advance(5);
    Some(buf.split_to(len).freeze())
}
