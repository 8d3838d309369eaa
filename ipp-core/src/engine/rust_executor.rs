//! The Rust executor: functions registered by name, with serde arguments and results.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::executor::{Executor, Outcome, Outputs};
use crate::protocol::apply::{reply_content, RustCall, NOOP, PULL, PUSH};
use crate::protocol::{Message, RemoteError};
use crate::serialize::{Bincode, Json, Payload, Raw, Serializer};

/// The `ename` of an error returned by a registered function.
pub const RUST_ERROR: &str = "RustError";
/// The `ename` of a panic inside a registered function.
pub const RUST_PANIC: &str = "RustPanic";

/// A registered function, type-erased: payloads in, payloads out.
type CallFn = dyn Fn(&TaskContext, Vec<Payload>) -> Result<Vec<Payload>, Box<RemoteError>>
    + Send
    + Sync
    + 'static;

/// A registered function and where it runs.
struct Registered {
    call: Arc<CallFn>,
    /// Runs on the engine's own task, not on the blocking pool (see
    /// [`RustExecutor::register_inline`]).
    inline: bool,
}

/// What a registered function sees of the request it runs: it prints to the request's
/// stdout/stderr (published on IOPub, so the client's `AsyncResult.stdout` gets it).
///
/// A function runs on tokio's blocking pool, so these calls may wait for room in the IOPub
/// queue; they never fail the function (output after the engine stopped is dropped).
#[derive(Clone, Debug)]
pub struct TaskContext {
    outputs: Outputs,
    handle: tokio::runtime::Handle,
    function: Arc<str>,
}

impl TaskContext {
    /// Publishes `text` on stdout, as is (no newline added).
    pub fn print(&self, text: impl AsRef<str>) {
        self.publish("stdout", text.as_ref());
    }

    /// Publishes `text` and a newline on stdout.
    pub fn println(&self, text: impl AsRef<str>) {
        self.publish("stdout", &format!("{}\n", text.as_ref()));
    }

    /// Publishes `text` on stderr, as is.
    pub fn eprint(&self, text: impl AsRef<str>) {
        self.publish("stderr", text.as_ref());
    }

    /// Publishes `text` and a newline on stderr.
    pub fn eprintln(&self, text: impl AsRef<str>) {
        self.publish("stderr", &format!("{}\n", text.as_ref()));
    }

    /// The registered name of the running function.
    pub fn function(&self) -> &str {
        &self.function
    }

    /// The `msg_id` of the request being run.
    pub fn msg_id(&self) -> &str {
        self.outputs.msg_id()
    }

    /// The engine's id.
    pub fn engine_id(&self) -> u32 {
        self.outputs.engine_id()
    }

    fn publish(&self, stream: &str, text: &str) {
        // We are on a blocking-pool thread (the function runs in `spawn_blocking`), where
        // `block_on` is allowed; it gives back-pressure instead of dropping output.
        if let Err(err) = self.handle.block_on(self.outputs.stream(stream, text)) {
            tracing::debug!(error = %err, stream, "output dropped: the engine is stopping");
        }
    }
}

/// Runs Rust functions registered by name: what a Rust program's engines use.
///
/// A client calls a function with [`RustCall`] (an `apply_request` whose content names the
/// function); its one argument arrives as a [`Payload`] and is decoded with the payload's own
/// format. The result goes back in the **same** format (`json` or `bincode`); for a `raw`
/// argument, the result is `raw` when it serializes as bytes and `bincode` otherwise; with no
/// argument at all it is `bincode`. A function taking several values takes a tuple or a
/// struct; a function with no argument takes `()` (the client sends no payload).
///
/// Built-ins: [`PUSH`] stores each argument under the matching name in the engine's
/// namespace, [`PULL`] returns the named values (`NameError` if one is missing), [`NOOP`]
/// does nothing; [`Executor::clear`] empties the namespace.
///
/// Functions run on tokio's blocking pool, so a long computation never stalls heartbeats
/// or control messages; those registered with [`RustExecutor::register_inline`] (short by
/// contract) run on the engine's task and skip the pool's thread hand-offs. An error becomes a remote error with `ename` [`RUST_ERROR`], a panic
/// one with `ename` [`RUST_PANIC`]; the engine keeps serving either way.
///
/// ```
/// use ipp_core::engine::RustExecutor;
///
/// let executor = RustExecutor::new();
/// executor
///     .register("checked_square", |n: i64| n.checked_mul(n).ok_or("overflow"))
///     .register_infallible("double", |n: u64| 2 * n)
///     .register_with_context("greet", |ctx, name: String| {
///         ctx.println(format!("hello, {name}"));
///         Ok::<_, std::convert::Infallible>(name.len())
///     });
/// assert_eq!(executor.names(), ["checked_square", "double", "greet"]);
/// ```
#[derive(Default)]
pub struct RustExecutor {
    // std locks: held only for a lookup or an insert, never across `.await`.
    functions: RwLock<BTreeMap<String, Registered>>,
    namespace: Mutex<HashMap<String, Payload>>,
}

impl fmt::Debug for RustExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RustExecutor")
            .field("functions", &self.names())
            .finish_non_exhaustive()
    }
}

impl RustExecutor {
    /// An executor with no functions and an empty namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `f` under `name` (replacing an earlier one): `f` takes one serde value and
    /// returns a serde value or an error shown to the client with its `Display` text.
    pub fn register<A, R, E, F>(&self, name: impl Into<String>, f: F) -> &Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        E: fmt::Display + 'static,
        F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    {
        self.register_with_context(name, move |_: &TaskContext, arg: A| f(arg))
    }

    /// Registers a function that cannot fail.
    pub fn register_infallible<A, R, F>(&self, name: impl Into<String>, f: F) -> &Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.register_with_context(name, move |_: &TaskContext, arg: A| {
            Ok::<R, std::convert::Infallible>(f(arg))
        })
    }

    /// Registers a function that also receives the [`TaskContext`] (to print to the
    /// request's stdout/stderr).
    pub fn register_with_context<A, R, E, F>(&self, name: impl Into<String>, f: F) -> &Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        E: fmt::Display + 'static,
        F: Fn(&TaskContext, A) -> Result<R, E> + Send + Sync + 'static,
    {
        self.insert(name.into(), f, false)
    }

    /// Registers a function that returns within microseconds (a lookup, a small
    /// arithmetic step, a no-op): it runs on the engine's own task instead of tokio's
    /// blocking pool, which saves two thread hand-offs per call (about half of an engine's
    /// CPU per no-op task). While it runs, the engine answers nothing else (heartbeats and
    /// control wait), so anything that can take longer than ~100 µs belongs in
    /// [`RustExecutor::register`]. Errors and panics are reported as for `register`.
    ///
    /// ```
    /// use ipp_core::engine::RustExecutor;
    ///
    /// let executor = RustExecutor::new();
    /// executor.register_inline("add", |(a, b): (i64, i64)| a.checked_add(b).ok_or("overflow"));
    /// assert_eq!(executor.names(), ["add"]);
    /// ```
    pub fn register_inline<A, R, E, F>(&self, name: impl Into<String>, f: F) -> &Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        E: fmt::Display + 'static,
        F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    {
        self.insert(name.into(), move |_: &TaskContext, arg: A| f(arg), true)
    }

    /// [`RustExecutor::register_inline`] for a function that cannot fail.
    pub fn register_inline_infallible<A, R, F>(&self, name: impl Into<String>, f: F) -> &Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.register_inline(name, move |arg: A| {
            Ok::<R, std::convert::Infallible>(f(arg))
        })
    }

    fn insert<A, R, E, F>(&self, name: String, f: F, inline: bool) -> &Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        E: fmt::Display + 'static,
        F: Fn(&TaskContext, A) -> Result<R, E> + Send + Sync + 'static,
    {
        let label: Arc<str> = Arc::from(name.as_str());
        let call = move |ctx: &TaskContext, args: Vec<Payload>| {
            let (arg, format) = decode_argument::<A>(&label, &args)?;
            let result = f(ctx, arg).map_err(|err| function_error::<E>(&label, &err))?;
            Ok(vec![encode_result(&label, &result, &format)?])
        };
        let registered = Registered {
            call: Arc::new(call),
            inline,
        };
        self.functions
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, registered);
        self
    }

    /// The registered names, sorted (built-ins excluded).
    pub fn names(&self) -> Vec<String> {
        self.functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    fn function(&self, name: &str) -> Option<(Arc<CallFn>, bool)> {
        self.functions
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|registered| (Arc::clone(&registered.call), registered.inline))
    }

    fn namespace(&self) -> std::sync::MutexGuard<'_, HashMap<String, Payload>> {
        self.namespace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, call: RustCall) -> Outcome {
        if call.names.len() != call.args.len() {
            return Outcome::error(
                "ValueError",
                format!(
                    "{PUSH} got {} names but {} values",
                    call.names.len(),
                    call.args.len()
                ),
            );
        }
        let mut namespace = self.namespace();
        for (name, value) in call.names.into_iter().zip(call.args) {
            namespace.insert(name, value);
        }
        ok_values(&[])
    }

    fn pull(&self, call: &RustCall) -> Outcome {
        let namespace = self.namespace();
        let mut values = Vec::with_capacity(call.names.len());
        for name in &call.names {
            match namespace.get(name) {
                Some(value) => values.push(value.clone()),
                None => {
                    return Outcome::error("NameError", format!("name '{name}' is not defined"))
                }
            }
        }
        drop(namespace);
        ok_values(&values)
    }

    async fn call(&self, call: RustCall, outputs: &Outputs) -> Outcome {
        let Some((function, inline)) = self.function(&call.function) else {
            let mut names = self.names();
            names.extend([PUSH, PULL, NOOP].map(str::to_owned));
            return Outcome::error(
                "NameError",
                format!(
                    "no Rust function named '{}' is registered on this engine (registered: {})",
                    call.function,
                    names.join(", ")
                ),
            );
        };
        let label: Arc<str> = Arc::from(call.function.as_str());
        let ctx = TaskContext {
            outputs: outputs.clone(),
            handle: tokio::runtime::Handle::current(),
            function: Arc::clone(&label),
        };
        let (args, map) = (call.args, call.map);
        // The blocking pool keeps long computations off the runtime threads (inline functions
        // are short by contract and run here); a panic is caught either way.
        let run = move || {
            if !map {
                return function(&ctx, args);
            }
            // A map chunk: one call per item, one result per item, in order.
            let mut results = Vec::with_capacity(args.len());
            for arg in args {
                results.extend(function(&ctx, vec![arg])?);
            }
            Ok(results)
        };
        let ran = if inline {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).map_err(Ran::Panicked)
        } else {
            tokio::task::spawn_blocking(run)
                .await
                .map_err(|err| match err.try_into_panic() {
                    Ok(payload) => Ran::Panicked(payload),
                    Err(_) => Ran::Cancelled,
                })
        };
        match ran {
            Ok(Ok(values)) => ok_values(&values),
            Ok(Err(error)) => Outcome::Error(*error),
            Err(Ran::Panicked(payload)) => {
                let message = panic_message(payload);
                Outcome::Error(RemoteError {
                    ename: RUST_PANIC.into(),
                    evalue: message.clone(),
                    traceback: vec![
                        format!("Rust function '{label}' panicked\n"),
                        format!("{RUST_PANIC}: {message}\n"),
                    ],
                    engine_info: Default::default(),
                })
            }
            Err(Ran::Cancelled) => Outcome::error(
                "RuntimeError",
                format!("Rust function '{label}' was cancelled because the engine is stopping"),
            ),
        }
    }
}

#[async_trait]
impl Executor for RustExecutor {
    async fn apply(&self, request: &Message, outputs: &Outputs) -> Outcome {
        let call = match RustCall::from_request(request.content_map(), &request.buffers) {
            Ok(Some(call)) => call,
            Ok(None) => {
                return Outcome::error(
                    "NotImplementedError",
                    "this engine runs registered Rust functions, not Python: it cannot run a \
                     pickled ipyparallel apply (call a registered Rust function by name instead)",
                )
            }
            Err(err) => return Outcome::error("ValueError", err.to_string()),
        };
        match call.function.as_str() {
            PUSH => self.push(call),
            PULL => self.pull(&call),
            NOOP => ok_values(&[]),
            _ => self.call(call, outputs).await,
        }
    }

    async fn execute(&self, _request: &Message, _outputs: &Outputs) -> Outcome {
        Outcome::error(
            "NotImplementedError",
            "execute of code is not supported by the Rust executor: this engine runs \
             registered Rust functions, not Python code",
        )
    }

    fn clear(&self) {
        self.namespace().clear();
    }

    /// A running Rust function cannot be interrupted: the signal is acknowledged and
    /// dropped (documented in the engine's module guide).
    fn signal(&self, signal: i32) -> crate::error::Result<()> {
        tracing::debug!(
            signal,
            "signal acknowledged; Rust functions cannot be interrupted"
        );
        Ok(())
    }
}

/// Why a function call returned no result.
enum Ran {
    Panicked(Box<dyn std::any::Any + Send>),
    /// The blocking pool shut down (the engine is stopping).
    Cancelled,
}

fn ok_values(values: &[Payload]) -> Outcome {
    let (content, buffers) = reply_content(values);
    Outcome::Ok { content, buffers }
}

/// Decodes the one argument of a call, and says which format the result should use.
fn decode_argument<A: DeserializeOwned>(
    function: &str,
    args: &[Payload],
) -> Result<(A, String), Box<RemoteError>> {
    let bad = |reason: String| type_error(function, reason);
    match args {
        [] => serde_json::from_value(Value::Null)
            .map(|arg| (arg, Bincode.name().to_owned()))
            .map_err(|_| {
                bad(format!(
                    "'{function}' takes an argument of type {} but the call has none",
                    std::any::type_name::<A>()
                ))
            }),
        [payload] => payload
            .decode::<A>()
            .map(|arg| (arg, payload.format.clone()))
            .map_err(|err| {
                bad(format!(
                    "cannot decode the argument of '{function}' as {}: {err}",
                    std::any::type_name::<A>()
                ))
            }),
        more => Err(bad(format!(
            "'{function}' takes one argument (use a tuple or a struct for several), got {}",
            more.len()
        ))),
    }
}

/// Encodes a result in `format` (see [`RustExecutor`] for the rule).
fn encode_result<R: Serialize>(
    function: &str,
    result: &R,
    format: &str,
) -> Result<Payload, Box<RemoteError>> {
    let encoded = match format {
        "json" => Json.encode(result),
        "raw" => Raw.encode(result).or_else(|_| Bincode.encode(result)),
        _ => Bincode.encode(result),
    };
    encoded.map_err(|err| {
        type_error(
            function,
            format!("cannot encode the result of '{function}' as {format}: {err}"),
        )
    })
}

fn type_error(function: &str, message: String) -> Box<RemoteError> {
    Box::new(RemoteError {
        ename: "TypeError".into(),
        traceback: vec![
            format!("calling Rust function '{function}'\n"),
            format!("TypeError: {message}\n"),
        ],
        evalue: message,
        engine_info: Default::default(),
    })
}

fn function_error<E: fmt::Display>(function: &str, error: &E) -> Box<RemoteError> {
    let message = error.to_string();
    Box::new(RemoteError {
        ename: RUST_ERROR.into(),
        traceback: vec![
            format!("Rust function '{function}' returned an error\n"),
            format!("  error type: {}\n", std::any::type_name::<E>()),
            format!("{RUST_ERROR}: {message}\n"),
        ],
        evalue: message,
        engine_info: Default::default(),
    })
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(text) => (*text).to_owned(),
            Err(_) => "panic with a non-text payload".to_owned(),
        },
    }
}
