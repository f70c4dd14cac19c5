//! A small Hugging Face hub on 127.0.0.1 for the download tests: it serves repositories from
//! memory in the hub's API shape and records every request.
//!
//! - `GET /api/models/<org>/<name>/revision/main?blobs=true`: the listing (`sha`, `siblings`
//!   with `size`, `blobId`, and `lfs.sha256` / `lfs.size` for weight files);
//! - `GET /<org>/<name>/resolve/main/<file>`: the file, honouring `Range` (206 with
//!   `Content-Range`), with `X-Repo-Commit`, `ETag` (the git blob hash, or the sha256 for weight
//!   files, which the hub also sends as `X-Linked-Etag`);
//! - a missing repository answers 401 with `X-Error-Code: RepoNotFound` (as the hub answers an
//!   anonymous client), a missing file 404 with `EntryNotFound`, a gated repository 401 with
//!   `GatedRepo`.
//!
//! Faults can be injected per file: drop the connection half-way through transfers, serve
//! other bytes (one flipped) than the listing's hash describes, or answer 404 for a listed file.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha1::Digest as _;

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The path and query.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    gated: HashSet<String>,
    drops: BTreeMap<String, usize>,
    hidden: HashSet<String>,
    corrupt: HashSet<String>,
    seen: Vec<Seen>,
}

/// The server; it runs until the test process ends.
#[derive(Clone)]
pub struct TinyHub {
    endpoint: String,
    state: Arc<Mutex<State>>,
}

/// The commit every repository is at.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn is_lfs(name: &str) -> bool {
    [".safetensors", ".bin", ".pth"]
        .iter()
        .any(|e| name.ends_with(e))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of `data`.
pub fn sha256(data: &[u8]) -> String {
    hex(&sha2::Sha256::digest(data))
}

fn git_sha1(data: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex(&h.finalize())
}

impl TinyHub {
    /// Starts a server on a free port of 127.0.0.1.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let hub = Self {
            endpoint,
            state: Arc::default(),
        };
        let server = hub.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let server = server.clone();
                std::thread::spawn(move || {
                    let _ = server.serve(stream);
                });
            }
        });
        hub
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Adds the repository `repo` with the files of `dir` (recursively), named by their paths
    /// under `dir`.
    pub fn add_dir(&self, repo: &str, dir: &Path) {
        let mut files = BTreeMap::new();
        collect(dir, dir, &mut files);
        self.state.lock().unwrap().repos.insert(repo.into(), files);
    }

    /// Adds or replaces one file of `repo`.
    pub fn add_file(&self, repo: &str, name: &str, data: Vec<u8>) {
        let mut state = self.state.lock().unwrap();
        state
            .repos
            .entry(repo.into())
            .or_default()
            .insert(name.into(), data);
    }

    /// Makes `repo` answer 401 (gated).
    pub fn gate(&self, repo: &str) {
        self.state.lock().unwrap().gated.insert(repo.into());
    }

    /// Cuts the next `times` transfers of `repo`'s `file` half-way through what they ask for.
    pub fn drop_transfers(&self, repo: &str, file: &str, times: usize) {
        let key = format!("{repo}/{file}");
        self.state.lock().unwrap().drops.insert(key, times);
    }

    /// Serves `repo`'s `file` with one byte flipped (the listing keeps the true hash), or again
    /// as it is.
    pub fn corrupt(&self, repo: &str, file: &str, corrupt: bool) {
        let key = format!("{repo}/{file}");
        let mut state = self.state.lock().unwrap();
        if corrupt {
            state.corrupt.insert(key);
        } else {
            state.corrupt.remove(&key);
        }
    }

    /// Answers 404 for `repo`'s `file` while the listing still shows it.
    pub fn hide(&self, repo: &str, file: &str) {
        let key = format!("{repo}/{file}");
        self.state.lock().unwrap().hidden.insert(key);
    }

    /// The requests so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The requests for files (not listings) so far.
    pub fn file_requests(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.path.contains("/resolve/"))
            .collect()
    }

    fn serve(&self, stream: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (mut range, mut authorization) = (None, None);
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = Some(value.trim().to_string());
                match name.trim().to_ascii_lowercase().as_str() {
                    "range" => range = value,
                    "authorization" => authorization = value,
                    _ => {}
                }
            }
        }
        let seen = Seen {
            path: path.clone(),
            range: range.clone(),
            authorization,
        };
        self.state.lock().unwrap().seen.push(seen);
        self.respond(stream, &path, range.as_deref())
    }

    fn respond(&self, mut out: TcpStream, path: &str, range: Option<&str>) -> std::io::Result<()> {
        let state = self.state.lock().unwrap();
        let path = path.split('?').next().unwrap_or("");
        let (repo, file) = if let Some(rest) = path.strip_prefix("/api/models/") {
            let repo = rest.split("/revision/").next().unwrap_or("");
            (repo.to_string(), None)
        } else if let Some((repo, file)) = path.trim_start_matches('/').split_once("/resolve/main/")
        {
            (repo.to_string(), Some(file.to_string()))
        } else {
            drop(state);
            return reply(&mut out, 404, &[], b"not found");
        };
        if state.gated.contains(&repo) {
            drop(state);
            let headers = [("X-Error-Code", "GatedRepo".to_string())];
            return reply(
                &mut out,
                401,
                &headers,
                b"Access to this repository is restricted",
            );
        }
        let Some(files) = state.repos.get(&repo).cloned() else {
            drop(state);
            let headers = [("X-Error-Code", "RepoNotFound".to_string())];
            return reply(&mut out, 401, &headers, b"Repository not found");
        };
        let Some(file) = file else {
            drop(state);
            return reply(&mut out, 200, &[], listing(&files).as_bytes());
        };
        let hidden = state.hidden.contains(&format!("{repo}/{file}"));
        let Some(data) = files.get(&file).cloned().filter(|_| !hidden) else {
            drop(state);
            let headers = [("X-Error-Code", "EntryNotFound".to_string())];
            return reply(&mut out, 404, &headers, b"Entry not found");
        };
        let key = format!("{repo}/{file}");
        let corrupt = state.corrupt.contains(&key);
        drop(state);
        let etag = if is_lfs(&file) {
            sha256(&data)
        } else {
            git_sha1(&data)
        };
        let mut body = data.clone();
        if corrupt {
            let mid = body.len() / 2;
            body[mid] ^= 0xff;
        }
        let (start, end) = parse_range(range, body.len());
        let mut headers = vec![
            ("X-Repo-Commit", COMMIT.to_string()),
            ("ETag", format!("\"{etag}\"")),
            ("Accept-Ranges", "bytes".to_string()),
        ];
        if is_lfs(&file) {
            headers.push(("X-Linked-Etag", format!("\"{etag}\"")));
            headers.push(("X-Linked-Size", data.len().to_string()));
        }
        let status = if range.is_some() {
            let total = body.len();
            headers.push((
                "Content-Range",
                format!("bytes {start}-{}/{total}", end - 1),
            ));
            206
        } else {
            200
        };
        let slice = &body[start..end];
        let full_transfer = end - start > 1;
        if full_transfer && self.take_drop(&key) {
            // Promise the whole slice, send half, and close.
            head(&mut out, status, &headers, slice.len())?;
            out.write_all(&slice[..slice.len() / 2])?;
            out.flush()?;
            return out.shutdown(std::net::Shutdown::Both);
        }
        reply(&mut out, status, &headers, slice)
    }
}

impl TinyHub {
    /// Whether to cut this transfer of `key` (one of the drops asked for).
    fn take_drop(&self, key: &str) -> bool {
        let mut state = self.state.lock().unwrap();
        match state.drops.get_mut(key) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

fn collect(root: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let name = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            files.insert(name, std::fs::read(&path).unwrap());
        }
    }
}

fn listing(files: &BTreeMap<String, Vec<u8>>) -> String {
    let siblings: Vec<serde_json::Value> = files
        .iter()
        .map(|(name, data)| {
            let mut s = serde_json::json!({
                "rfilename": name,
                "size": data.len(),
                "blobId": git_sha1(data),
            });
            if is_lfs(name) {
                s["lfs"] = serde_json::json!({
                    "sha256": sha256(data),
                    "size": data.len(),
                    "pointerSize": 134,
                });
            }
            s
        })
        .collect();
    serde_json::json!({"id": "x", "sha": COMMIT, "siblings": siblings}).to_string()
}

/// `[start, end)` of a `bytes=a-b` or `bytes=a-` range over `len` bytes.
fn parse_range(range: Option<&str>, len: usize) -> (usize, usize) {
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return (0, len);
    };
    let (a, b) = spec.split_once('-').unwrap_or((spec, ""));
    let start = a.parse().unwrap_or(0).min(len);
    let end = b.parse::<usize>().map(|b| b + 1).unwrap_or(len).min(len);
    (start, end.max(start))
}

fn head(
    out: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    len: usize,
) -> std::io::Result<()> {
    let mut text = format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    out.write_all(text.as_bytes())
}

fn reply(
    out: &mut TcpStream,
    status: u16,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    head(out, status, headers, body.len())?;
    out.write_all(body)?;
    out.flush()
}
