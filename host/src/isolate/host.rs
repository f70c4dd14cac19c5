//! The host's side of an isolated reward: starting the worker, sending batches, reading
//! rewards, and turning a worker that died or hung into an error naming the plugin and batch.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tch::Tensor;

use super::protocol::{
    align, byte_len, Answer, Init, KwargSlot, LeafSlot, OutputSlot, ScoreRequest, TensorSlot,
};
use super::region::Region;
use super::{IsolationOptions, WORKER_COMMAND};
use crate::kwargs::{HostKwarg, HostKwargs};
use crate::plugins::trust::sha256_file;
use crate::state::State;

/// Lines of the worker's standard error kept for error messages.
const TAIL_LINES: usize = 6;

/// A directory only this user can enter, removed with everything in it on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create() -> Result<Self> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let path = base.join(format!(
            "flowgym-reward-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::SeqCst)
        ));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        builder.create(path.join("tmp"))?;
        Ok(Self(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running worker.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    answers: BufReader<ChildStdout>,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr_done: Arc<AtomicBool>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why a worker stopped serving.
enum Failure {
    /// It exited or was killed; the description says how.
    Died(String),
    /// It did not answer in time and was stopped.
    TimedOut(Duration),
}

/// A reward whose plugin runs in a sandboxed child process.
pub struct IsolatedReward {
    id: String,
    plugin: PathBuf,
    init: Init,
    options: IsolationOptions,
    worker: Option<Worker>,
    /// The worker's CPU time as of its last answer.
    worker_cpu_seconds: Option<f64>,
    region: Region,
    _dir: PrivateDir,
}

impl IsolatedReward {
    /// Starts a worker for reward `id` of the plugin file `plugin` and waits until it has
    /// constructed the reward (a constructor error is returned as it is in-process).
    pub fn start(
        id: &str,
        plugin: &Path,
        args_json: &str,
        weight_dirs: &[PathBuf],
        options: IsolationOptions,
    ) -> Result<Self> {
        let dir = PrivateDir::create()?;
        let region_path = dir.0.join("region");
        let region = Region::create(&region_path, 1 << 20)?;
        let sha256 =
            sha256_file(plugin).with_context(|| format!("cannot read {}", plugin.display()))?;
        let init = Init {
            plugin: plugin.display().to_string(),
            sha256,
            entry: id.to_string(),
            args_json: args_json.to_string(),
            weight_dirs: weight_dirs
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
            region: region_path.display().to_string(),
            private_dir: dir.0.display().to_string(),
            memory_bytes: options.memory_bytes,
            threads: options.threads,
        };
        let mut reward = Self {
            id: id.to_string(),
            plugin: plugin.to_path_buf(),
            init,
            options,
            worker: None,
            worker_cpu_seconds: None,
            region,
            _dir: dir,
        };
        match reward.launch(true) {
            Ok(()) => Ok(reward),
            Err(Ok(message)) => Err(anyhow!(message)),
            Err(Err(failure)) => {
                let message = reward.describe(failure, "while starting");
                reward.worker = None;
                Err(anyhow!(message))
            }
        }
    }

    /// Scores a batch in the worker: `(rewards, validity)` as the plugin returned them, copied
    /// out of the shared region. A worker that dies or hangs is started again and sent the
    /// batch again up to `retries` times; then the error names the plugin, `label` and why.
    pub fn score(
        &mut self,
        sample: &State,
        latent: &State,
        kwargs: &HostKwargs,
        label: &str,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let mut attempt = 0;
        loop {
            let request = self.prepare(sample, latent, kwargs)?;
            let failure = match self.exchange(&request) {
                Ok(Answer::Scored {
                    reward,
                    valid,
                    cpu_seconds,
                }) => {
                    self.worker_cpu_seconds = Some(cpu_seconds);
                    let n = sample.len();
                    let reward = self.read(&reward, n, "rewards")?;
                    let valid = valid.map(|v| self.read(&v, n, "validity")).transpose()?;
                    return Ok((reward, valid));
                }
                Ok(Answer::Failed(message)) => bail!("reward `{}`: {message}", self.id),
                Ok(Answer::Ready { .. }) => {
                    bail!("reward `{}`: its worker answered out of turn", self.id)
                }
                Err(failure) => failure,
            };
            let message = self.describe(failure, &format!("while scoring {label}"));
            self.worker = None;
            if attempt >= self.options.retries {
                if self.options.retries == 0 {
                    bail!(
                        "{message}; to start it again and retry the batch, set --reward-retries N"
                    );
                }
                bail!("{message}; gave up after {attempt} retries");
            }
            attempt += 1;
            eprintln!(
                "warning: {message}; starting it again (retry {attempt} of {})",
                self.options.retries
            );
            if let Err(e) = self.launch(false) {
                let message = match e {
                    Ok(message) => message,
                    Err(failure) => self.describe(failure, "while starting again"),
                };
                self.worker = None;
                bail!(message);
            }
        }
    }

    /// The CPU time the current worker had used by its last answer, in seconds.
    pub fn worker_cpu_seconds(&self) -> Option<f64> {
        self.worker_cpu_seconds
    }

    /// Starts the worker and waits for it to be ready. `Err(Ok(message))`: the plugin or
    /// the worker refused (not worth retrying); `Err(Err(failure))`: it died or hung.
    fn launch(
        &mut self,
        first: bool,
    ) -> std::result::Result<(), std::result::Result<String, Failure>> {
        let worker = self.spawn().map_err(|e| Ok(format!("{e:#}")))?;
        self.worker = Some(worker);
        let init = serde_json::to_string(&self.init).map_err(|e| Ok(e.to_string()))?;
        match self.send_and_wait(&init) {
            Ok(Answer::Ready { warnings }) => {
                if first {
                    for warning in warnings {
                        eprintln!("warning: isolated reward `{}`: {warning}", self.id);
                    }
                }
                Ok(())
            }
            Ok(Answer::Failed(message)) => {
                self.worker = None;
                Err(Ok(message))
            }
            Ok(Answer::Scored { .. }) => Err(Ok("the worker answered out of turn".into())),
            // The caller describes the failure while the worker's last output is at hand.
            Err(failure) => Err(Err(failure)),
        }
    }

    fn spawn(&self) -> Result<Worker> {
        let tmp = Path::new(&self.init.private_dir).join("tmp");
        let mut command = Command::new(&self.options.executable);
        // Its own process group: Ctrl-C in the terminal reaches the host, which stops
        // cleanly after the batch, and not the worker in the middle of it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = command
            .arg(WORKER_COMMAND)
            .env("TMPDIR", &tmp)
            .env("TMP", &tmp)
            .env("TEMP", &tmp)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start the reward worker {}",
                    self.options.executable.display()
                )
            })?;
        let stdin = child.stdin.take().context("the worker's standard input")?;
        let stdout = child
            .stdout
            .take()
            .context("the worker's standard output")?;
        let stderr = child.stderr.take().context("the worker's standard error")?;
        let answers = BufReader::new(stdout);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let stderr_done = Arc::new(AtomicBool::new(false));
        let (tail_writer, done, id) = (tail.clone(), stderr_done.clone(), self.id.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[reward {id}] {line}");
                let mut tail = tail_writer.lock().unwrap_or_else(|e| e.into_inner());
                if tail.len() == TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line);
            }
            done.store(true, Ordering::SeqCst);
        });
        Ok(Worker {
            child,
            stdin,
            answers,
            tail,
            stderr_done,
        })
    }

    /// Copies the batch into the region (growing it when needed) and describes it. A tensor
    /// that is the same memory as one already copied (the latent of a model without
    /// `postprocess` is its sample) is copied once and described twice, as in the host's
    /// process, where the reward receives the same tensor twice.
    fn prepare(
        &mut self,
        sample: &State,
        latent: &State,
        kwargs: &HostKwargs,
    ) -> Result<ScoreRequest> {
        let n = sample.len();
        let mut batch = BatchWriter::default();
        let tensors = sample
            .leaves
            .iter()
            .chain(&latent.leaves)
            .map(|(_, t)| t)
            .chain(kwargs.entries.iter().filter_map(|(_, v)| match v {
                HostKwarg::Tensor(t) => Some(t),
                _ => None,
            }));
        let inputs: usize = tensors
            .filter(|t| batch.plan(t))
            .map(|t| align(byte_len(t.kind(), &t.size())))
            .sum();
        let output_len = 2 * align(n * 8);
        self.region.grow(inputs + output_len)?;
        let mut leaves = |region: &mut Region, state: &State| -> Result<Vec<LeafSlot>> {
            state
                .leaves
                .iter()
                .map(|(name, t)| {
                    Ok(LeafSlot {
                        name: name.clone(),
                        tensor: batch.put(region, t)?,
                    })
                })
                .collect()
        };
        let sample_slots = leaves(&mut self.region, sample)?;
        let latent_slots = leaves(&mut self.region, latent)?;
        let mut kwarg_slots = Vec::new();
        for (name, value) in &kwargs.entries {
            let slot = match value {
                HostKwarg::Tensor(t) => KwargSlot::Tensor(batch.put(&mut self.region, t)?),
                HostKwarg::Strings(s) => KwargSlot::Strings(s.clone()),
                HostKwarg::Text(s) => KwargSlot::Text(s.clone()),
                HostKwarg::Float(v) => KwargSlot::Float(*v),
                HostKwarg::Int(v) => KwargSlot::Int(*v),
                HostKwarg::Bool(v) => KwargSlot::Bool(*v),
            };
            kwarg_slots.push((name.clone(), slot));
        }
        Ok(ScoreRequest {
            region_len: self.region.len(),
            data_type: sample.data_type.clone(),
            sample: sample_slots,
            latent: latent_slots,
            kwargs: kwarg_slots,
            output_offset: batch.offset,
            output_len,
        })
    }

    /// Copies a returned tensor out of the region.
    fn read(&mut self, slot: &OutputSlot, n: usize, what: &str) -> Result<Tensor> {
        let Some(offset) = slot.offset else {
            bail!(
                "reward `{}` returned {what} of shape {:?} and type {} for {n} samples; expected [{n}]",
                self.id,
                slot.shape,
                slot.kind
            );
        };
        let view = self.region.view(&super::protocol::TensorSlot {
            kind: slot.kind.clone(),
            shape: slot.shape.clone(),
            offset,
        })?;
        Ok(view.copy())
    }

    fn exchange(&mut self, request: &ScoreRequest) -> std::result::Result<Answer, Failure> {
        let line = serde_json::to_string(request).map_err(|e| Failure::Died(e.to_string()))?;
        self.send_and_wait(&line)
    }

    fn send_and_wait(&mut self, line: &str) -> std::result::Result<Answer, Failure> {
        let timeout = self.options.timeout;
        let Some(worker) = self.worker.as_mut() else {
            return Err(Failure::Died("is not running".into()));
        };
        let mut message = Vec::with_capacity(line.len() + 1);
        message.extend_from_slice(line.as_bytes());
        message.push(b'\n');
        // One write, so that the worker wakes once, to a whole line.
        let sent = worker
            .stdin
            .write_all(&message)
            .and_then(|()| worker.stdin.flush());
        let received = match sent {
            Ok(()) => read_line(&mut worker.answers, timeout),
            Err(_) => Err(Silence::Closed),
        };
        match received {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| Failure::Died(format!("sent an unreadable answer ({e})"))),
            Err(Silence::Timeout) => Err(Failure::TimedOut(timeout.unwrap_or_default())),
            Err(Silence::Closed) => Err(Failure::Died(ended(worker))),
        }
    }

    /// The error text for a failure: the plugin, what happened, when, and its last words.
    fn describe(&mut self, failure: Failure, when: &str) -> String {
        let (what, tail) = match failure {
            Failure::TimedOut(limit) => (
                format!(
                    "did not answer within {} s and was stopped (the limit is set by --reward-timeout)",
                    limit.as_secs_f64()
                ),
                String::new(),
            ),
            Failure::Died(how) => {
                let tail = self.worker.as_ref().map(last_words).unwrap_or_default();
                (how, tail)
            }
        };
        let mut message = format!(
            "reward `{}` (isolated, from {}) {what} {when}",
            self.id,
            self.plugin.display()
        );
        if tail.contains("memory allocation of") && self.options.memory_bytes > 0 {
            message.push_str(&format!(
                "; it ran out of memory: its limit is {} MiB (set by --reward-memory-mib)",
                self.options.memory_bytes >> 20
            ));
        }
        if !tail.is_empty() {
            message.push_str(&format!("; its last output: {tail}"));
        }
        message
    }
}

/// Why no answer came.
enum Silence {
    /// The time limit passed.
    Timeout,
    /// The worker closed its end (it died).
    Closed,
}

/// The next line from the worker, waiting at most `timeout`. It is read in the calling
/// thread (poll, then read), so that an answer costs no hand-over between threads.
fn read_line(
    reader: &mut BufReader<ChildStdout>,
    timeout: Option<Duration>,
) -> std::result::Result<String, Silence> {
    use std::os::fd::AsRawFd;
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut line = Vec::new();
    loop {
        let buffered = reader.buffer();
        if let Some(end) = buffered.iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buffered[..end]);
            reader.consume(end + 1);
            return String::from_utf8(line).map_err(|_| Silence::Closed);
        }
        line.extend_from_slice(buffered);
        let taken = buffered.len();
        reader.consume(taken);
        if !wait_readable(reader.get_ref().as_raw_fd(), deadline) {
            return Err(Silence::Timeout);
        }
        if reader.fill_buf().map_err(|_| Silence::Closed)?.is_empty() {
            return Err(Silence::Closed);
        }
    }
}

/// Whether `fd` became readable (or closed) before `deadline`.
fn wait_readable(fd: std::os::fd::RawFd, deadline: Option<Instant>) -> bool {
    loop {
        let wait_ms = match deadline {
            None => -1,
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return false;
                }
                (left.as_millis() + 1).min(i32::MAX as u128) as i32
            }
        };
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, wait_ms) };
        if ready > 0 {
            return true;
        }
        if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // Let the read report the error.
            return true;
        }
    }
}

/// How a worker whose answers stopped ended (it is waited for, up to 5 s, then killed).
fn ended(worker: &mut Worker) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match worker.child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = worker.child.kill();
                break worker.child.wait().ok();
            }
        }
    };
    // Let the standard-error reader catch the last lines.
    let deadline = Instant::now() + Duration::from_secs(1);
    while !worker.stderr_done.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    match status {
        Some(status) => describe_status(status),
        None => "stopped answering".to_string(),
    }
}

fn last_words(worker: &Worker) -> String {
    let tail = worker.tail.lock().unwrap_or_else(|e| e.into_inner());
    tail.iter().cloned().collect::<Vec<_>>().join(" | ")
}

/// "crashed with SIGSEGV (segmentation fault)", "exited with status 3", ...
pub fn describe_status(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            let name = match signal {
                libc::SIGSEGV => "SIGSEGV (segmentation fault)",
                libc::SIGABRT => "SIGABRT (abort)",
                libc::SIGBUS => "SIGBUS (bus error)",
                libc::SIGILL => "SIGILL (illegal instruction)",
                libc::SIGFPE => "SIGFPE (arithmetic fault)",
                libc::SIGKILL => "SIGKILL (killed; the system may have run out of memory)",
                libc::SIGSYS => "SIGSYS (a forbidden system call)",
                libc::SIGTERM => "SIGTERM (terminated)",
                _ => "a signal",
            };
            return format!("crashed with {name}, signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "ended".to_string(),
    }
}

/// Lays tensors out one after another in the region, each distinct memory once.
#[derive(Default)]
struct BatchWriter {
    /// The next free byte.
    offset: usize,
    /// Tensors planned or written, by identity, with their slots once written.
    seen: Vec<(TensorIdentity, Option<TensorSlot>)>,
}

/// What makes two tensors the same memory: data pointer, element type, shape and strides.
#[derive(PartialEq)]
struct TensorIdentity(usize, tch::Kind, Vec<i64>, Vec<i64>);

impl TensorIdentity {
    fn of(tensor: &Tensor) -> Self {
        Self(
            tensor.data_ptr() as usize,
            tensor.kind(),
            tensor.size(),
            tensor.stride(),
        )
    }
}

impl BatchWriter {
    /// Whether `tensor` needs space of its own (the first time its memory is seen).
    fn plan(&mut self, tensor: &Tensor) -> bool {
        let identity = TensorIdentity::of(tensor);
        if self.seen.iter().any(|(seen, _)| *seen == identity) {
            return false;
        }
        self.seen.push((identity, None));
        true
    }

    /// Copies `tensor` into the region, or describes the copy made of the same memory before.
    fn put(&mut self, region: &mut Region, tensor: &Tensor) -> Result<TensorSlot> {
        let identity = TensorIdentity::of(tensor);
        let position = self.seen.iter().position(|(seen, _)| *seen == identity);
        if let Some(slot) = position.and_then(|i| self.seen[i].1.clone()) {
            return Ok(slot);
        }
        let slot = region.write(self.offset, tensor)?;
        self.offset = align(self.offset + byte_len(tensor.kind(), &tensor.size()));
        match position {
            Some(i) => self.seen[i].1 = Some(slot.clone()),
            None => self.seen.push((identity, Some(slot.clone()))),
        }
        Ok(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn memory_shared_by_sample_and_latent_is_copied_once() {
        let dir = std::env::temp_dir().join(format!("flowgym-batch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("region");
        let images = Tensor::arange(2 * 3 * 4 * 4, (Kind::Float, Device::Cpu)).view([2, 3, 4, 4]);
        // The same memory read another way is another tensor.
        let transposed = images.transpose(2, 3);
        let tensors = [&images, &images.shallow_clone(), &transposed];
        let mut batch = BatchWriter::default();
        let planned: Vec<bool> = tensors.iter().map(|t| batch.plan(t)).collect();
        assert_eq!(planned, [true, false, true]);
        let bytes = align(images.numel() * 4);
        let mut region = Region::create(&path, 2 * bytes).unwrap();
        let slots: Vec<TensorSlot> = tensors
            .iter()
            .map(|t| batch.put(&mut region, t).unwrap())
            .collect();
        assert_eq!(slots[0].offset, slots[1].offset);
        assert_eq!((slots[2].offset, batch.offset), (bytes, 2 * bytes));
        let mut worker = Region::open(&path).unwrap();
        for (slot, tensor) in slots.iter().zip(tensors) {
            assert!(worker.view(slot).unwrap().equal(tensor));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
